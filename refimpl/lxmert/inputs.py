"""LXMERT's input checks: the one place that validates what a caller passes to an LXMERT model.

Each check names the argument, the first bad position and the allowed range; every id that
indexes an embedding table (``input_ids``, ``token_type_ids``, the positions) is checked here,
once, so the layers can look rows up without checking again. ``check_inputs`` returns the 0/1
keep masks (1 = attend), the same kind of mask LiLT's ``check_inputs`` returns;
``check_targets`` checks the pre-training labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backend import get_namespace
from ..checks import broadcasts_to, check_index_range, first_bad
from ..config import LxmertConfig
from .heads import visual_losses

__all__ = ["check_inputs", "check_targets", "check_labels"]


def _shape(x) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def _float_input(x, name: str, dtype):
    """``x`` as a finite float array of ``dtype``, or ``ValueError`` naming ``name`` and the position."""
    xp = get_namespace(x)
    x = xp.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be a real numeric array, got dtype {x.dtype}")
    x = x.astype(dtype, copy=False)
    finite = xp.isfinite(x)
    if not bool(finite.all()):
        pos = first_bad(~finite)
        raise ValueError(f"{name}[{', '.join(map(str, pos))}] = {float(x[pos])} is not finite (NaN or inf)")
    return x


def _int_input(x, name: str):
    x = get_namespace(x).asarray(x)
    if x.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {x.dtype}")
    return x


def _mask(mask, name: str, target: tuple[int, int], dtype):
    """A 0/1 keep-mask ``[batch|1, len|1]``, checked, in ``dtype``, broadcast to ``target``."""
    xp = get_namespace(mask)
    mask = xp.asarray(mask)
    if mask.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be a numeric or bool array, got dtype {mask.dtype}")
    if mask.ndim != 2 or not broadcasts_to(_shape(mask), target):
        raise ValueError(
            f"{name} has shape {_shape(mask)}; expected [batch, len] = {list(target)} (size-1 axes broadcast)"
        )
    return xp.broadcast_to(_float_input(mask, name, dtype), target)  # [b, len]


def check_labels(labels, name: str, n_items: int, n_classes: int):
    """Class-id labels as the oracle's ``.view(-1)`` sees them.

    Args:
        labels: integer array of ``n_items`` elements (any shape), ids in ``[0, n_classes)``
            or -100 (ignored).
        name: the argument's name, used in the message.
        n_items: the number of labels expected.
        n_classes: the number of classes.

    Returns:
        ``[n_items]``, flattened.

    Raises:
        ValueError: naming ``name``, the first bad position and the allowed range.
    """
    labels = _int_input(labels, name)
    if labels.size != n_items:
        raise ValueError(f"{name} has shape {_shape(labels)} ({labels.size} items); expected {n_items} items")
    flat = labels.reshape(-1)
    bad = (flat != -100) & ((flat < 0) | (flat >= n_classes))
    if bool(bad.any()):
        idx = first_bad(bad.reshape(labels.shape))
        raise ValueError(
            f"{name}[{', '.join(map(str, idx))}] = {int(labels[idx])} is outside the allowed range "
            f"[0, {n_classes - 1}] (or -100 to ignore)"
        )
    return flat


def check_inputs(
    config: LxmertConfig,
    dtype,
    input_ids=None,
    visual_feats=None,
    visual_pos=None,
    attention_mask=None,
    visual_attention_mask=None,
    token_type_ids=None,
    inputs_embeds=None,
) -> dict[str, Any]:
    """Validate LxmertModel's inputs and fill in the oracle's defaults.

    Args:
        config: the model config (its layer counts are checked too).
        dtype: the model's float dtype.
        input_ids: integer ``[batch, seq]`` (or ``inputs_embeds`` ``[batch, seq, hidden]``).
        visual_feats: ``[batch, boxes, visual_feat_dim]``; visual_pos: ``[batch, boxes, visual_pos_dim]``.
        attention_mask: ``[batch, seq]``, default all ones; visual_attention_mask:
            ``[batch, boxes]``, default ``None``: no region is masked.
        token_type_ids: integer ``[batch, seq]``, default zeros.

    Returns:
        dict of ``input_ids, inputs_embeds, token_type_ids, visual_feats, visual_pos``, the
        0/1 keep masks (1 = attend, in ``dtype``) ``attention_mask`` ``[batch, seq]`` and
        ``visual_attention_mask`` (``[batch, boxes]`` or ``None``: no region is masked), and
        the sizes ``batch, seq, boxes``. `refimpl.lxmert.modeling.lxmert_model` makes the
        masks additive.

    Raises:
        ValueError: naming the argument, the first bad position and the allowed range.
    """
    c, dt = config, dtype
    if c.x_layers == 0 and (c.l_layers == 0 or c.r_layers == 0):
        which = "l_layers" if c.l_layers == 0 else "r_layers"
        raise ValueError(
            f"config.x_layers = 0 and config.{which} = 0: the model has no "
            f"{'language' if which == 'l_layers' else 'vision'} output (the oracle's forward fails with IndexError)"
        )
    # text: ids or vectors
    if input_ids is not None and inputs_embeds is not None:
        raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time")
    if input_ids is not None:
        input_ids = _int_input(input_ids, "input_ids")
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape [batch, seq], got {_shape(input_ids)}")
        check_index_range(input_ids, c.vocab_size, "input_ids")
        b, n_tok = _shape(input_ids)
    elif inputs_embeds is not None:
        inputs_embeds = _float_input(inputs_embeds, "inputs_embeds", dt)
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[2] != c.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape [batch, seq, hidden_size={c.hidden_size}], got {_shape(inputs_embeds)}"
            )
        b, n_tok = _shape(inputs_embeds)[:2]
    else:
        raise ValueError("You have to specify either input_ids or inputs_embeds")
    xp = get_namespace(input_ids if input_ids is not None else inputs_embeds)
    text = "input_ids" if input_ids is not None else "inputs_embeds"
    if b == 0 or n_tok == 0:
        raise ValueError(
            f"{text} has shape {_shape(input_ids if input_ids is not None else inputs_embeds)}; need at least one row and one token"
        )
    if n_tok > c.max_position_embeddings:
        raise ValueError(
            f"{text} has {n_tok} tokens, more than the position table holds "
            f"(config.max_position_embeddings = {c.max_position_embeddings})"
        )
    # vision: region features and boxes
    if visual_feats is None:
        raise ValueError("`visual_feats` cannot be `None`")
    if visual_pos is None:
        raise ValueError("`visual_pos` cannot be `None`")
    visual_feats = _float_input(visual_feats, "visual_feats", dt)
    visual_pos = _float_input(visual_pos, "visual_pos", dt)
    for name, x, dim, field in (
        ("visual_feats", visual_feats, c.visual_feat_dim, "visual_feat_dim"),
        ("visual_pos", visual_pos, c.visual_pos_dim, "visual_pos_dim"),
    ):
        if x.ndim != 3 or x.shape[2] != dim:
            raise ValueError(f"{name} must have shape [batch, boxes, {field}={dim}], got {_shape(x)}")
        if x.shape[0] != b:
            raise ValueError(f"{name} has batch size {x.shape[0]} but {text} has {b}")
    n_box = visual_feats.shape[1]
    if visual_pos.shape[1] != n_box:
        raise ValueError(f"visual_pos has {visual_pos.shape[1]} boxes but visual_feats has {n_box}")
    # token types: zeros by default
    if token_type_ids is None:
        token_type_ids = xp.zeros((b, n_tok), dtype=xp.int64)
    token_type_ids = _int_input(token_type_ids, "token_type_ids")
    if not broadcasts_to(_shape(token_type_ids), (b, n_tok)):
        raise ValueError(
            f"token_type_ids has shape {_shape(token_type_ids)}; expected [batch, seq] = {[b, n_tok]}"
        )
    check_index_range(token_type_ids, c.type_vocab_size, "token_type_ids")
    # masks: text defaults to all ones; no visual mask means no masking at all
    if attention_mask is None:
        attention_mask = xp.ones((b, n_tok), dtype=dt)
    attention_mask = _mask(attention_mask, "attention_mask", (b, n_tok), dt)
    if visual_attention_mask is not None:
        visual_attention_mask = _mask(visual_attention_mask, "visual_attention_mask", (b, n_box), dt)
    return {
        "input_ids": input_ids,
        "inputs_embeds": inputs_embeds,
        "token_type_ids": token_type_ids,
        "visual_feats": visual_feats,
        "visual_pos": visual_pos,
        "attention_mask": attention_mask,
        "visual_attention_mask": visual_attention_mask,
        "batch": b,
        "seq": n_tok,
        "boxes": n_box,
    }


def check_targets(
    config: LxmertConfig, dtype, inputs: dict, labels=None, obj_labels=None, matched_label=None, ans=None
) -> dict:
    """Validate the pre-training labels the oracle will read (those of enabled tasks) as its ``.view`` calls see them.

    Args:
        config: the model config (``task_*`` flags, label counts).
        dtype: the model's float dtype.
        inputs: the result of `check_inputs` (for ``batch``, ``seq``, ``boxes``).
        labels: ``[batch, seq]`` masked-LM ids; matched_label: ``[batch]``; ans: ``[batch]``;
            obj_labels: ``{key: (labels, confidence)}`` (see `refimpl.lxmert.modeling.LxmertForPreTraining.forward`).

    Returns:
        dict with ``any`` (whether any label was given) and the checked, flattened labels of
        the enabled tasks.
    """
    c, dt = config, dtype
    b, n_tok, n_box = inputs["batch"], inputs["seq"], inputs["boxes"]
    t: dict = {"any": not (labels is None and matched_label is None and obj_labels is None and ans is None)}
    if labels is not None and c.task_mask_lm:
        t["labels"] = check_labels(labels, "labels", b * n_tok, c.vocab_size)
    if matched_label is not None and c.task_matched:
        t["matched_label"] = check_labels(matched_label, "matched_label", b, 2)
    if ans is not None and c.task_qa:
        t["ans"] = check_labels(ans, "ans", b, c.num_qa_labels)
    if obj_labels is not None and c.task_obj_predict:
        if not isinstance(obj_labels, Mapping):
            raise ValueError(
                f"obj_labels must be a dict of (labels, confidence) pairs, got {type(obj_labels).__name__}"
            )
        vis = {}
        for key, info in visual_losses(c).items():
            name = f"obj_labels[{key!r}]"
            if key not in obj_labels:
                raise ValueError(
                    f"{name} is missing: config.visual_{key}_loss is on (keys given: {sorted(obj_labels)})"
                )
            pair = obj_labels[key]
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"{name} must be a (labels, confidence) pair")
            label, conf = pair
            if info["loss"] == "visual_ce":
                label = check_labels(label, f"{name}[0]", b * n_box, info["num"])
            else:
                label = _float_input(label, f"{name}[0]", dt)
                if label.size != b * n_box * info["num"]:
                    raise ValueError(
                        f"{name}[0] has shape {_shape(label)}; expected [batch, boxes, visual_feat_dim] = {[b, n_box, info['num']]}"
                    )
                label = label.reshape(-1, info["num"])
            conf = _float_input(conf, f"{name}[1]", dt).reshape(-1)
            if not (conf.size == b * n_box or conf.size == 1 or b * n_box == 1):
                raise ValueError(f"{name}[1] has {conf.size} items; expected [batch, boxes] = {[b, n_box]}")
            vis[key] = (label, conf)
        t["obj_labels"] = vis
    return t
