"""LXMERT models: input checks, the forward pass as one function, and the thin public classes.

    inputs = check_inputs(config, dtype, input_ids=ids, visual_feats=f, visual_pos=p)
    out = lxmert_model(w, inputs, config)                     # LxmertModel as a pure function
    LxmertModel / LxmertForPreTraining / LxmertForQuestionAnswering

Every class runs the same steps in the same order as LiLT's: input checks (so bad input fails
with a ``ValueError`` naming the argument instead of a shape error deep inside), embeddings,
encoder, heads, output record. ``w`` is the checkpoint nested once at load (``model.weights``).

Trace names (``refimpl.trace``) are the oracle's ``named_modules()`` paths: unprefixed for
``LxmertModel`` (``embeddings.word_embeddings``, ``encoder.x_layers.0.visual_attention.att.query@lang``),
prefixed by ``lxmert.`` for the head models, whose heads are recorded as ``cls.predictions``,
``cls.predictions.transform.dense``, ``cls.seq_relationship``, ``obj_predict_head.decoder_dict.obj``,
``answer_head.logit_fc.0``, ``answer_head``. See :mod:`refimpl.lxmert.layers` for the ``@lang`` /
``@visn`` suffixes of the shared cross-attention and the inner attention steps, and
:mod:`refimpl.lxmert.heads` for the loss names.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from .. import bert, trace
from ..attention import extended_attention_mask
from ..backend import get_namespace
from ..checks import broadcasts_to, check_index_range, first_bad
from ..config import LxmertConfig
from ..losses import cross_entropy
from ..modeling import PreTrainedModel
from ..ops import linear
from ..outputs import LxmertForPreTrainingOutput, LxmertForQuestionAnsweringOutput, LxmertModelOutput
from .heads import (
    accumulate_loss,
    answer_head,
    lm_prediction_head,
    visual_loss,
    visual_losses,
    visual_obj_head,
)
from .layers import lxmert_embeddings, lxmert_encoder

__all__ = [
    "LxmertModel",
    "LxmertForPreTraining",
    "LxmertForQuestionAnswering",
    "lxmert_model",
    "check_inputs",
    "check_targets",
]

_EXTRA_ATTENTIONS = (
    "cross_encoder_vision_attentions",
    "cross_encoder_language_self_attentions",
    "cross_encoder_vision_self_attentions",
)


# ------------------------------------------------------------------------------------------
# expected checkpoint keys
# ------------------------------------------------------------------------------------------


def _linear(name: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def _norm(name: str, n: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (n,), f"{name}.bias": (n,)}


def _attention_layer_shapes(name: str, att: str, h: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for proj in ("query", "key", "value"):
        out.update(_linear(f"{name}.{att}.{proj}", h, h))
    out.update(_linear(f"{name}.output.dense", h, h))
    out.update(_norm(f"{name}.output.LayerNorm", h))
    return out


def _ffn_shapes(inter: str, output: str, h: int, i: int) -> dict[str, tuple[int, ...]]:
    return {
        **_linear(f"{inter}.dense", h, i),
        **_linear(f"{output}.dense", i, h),
        **_norm(f"{output}.LayerNorm", h),
    }


def _base_shapes(c: LxmertConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ``LxmertModel.state_dict()`` (unprefixed)."""
    h, i = c.hidden_size, c.intermediate_size
    out: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (c.vocab_size, h),
        "embeddings.position_embeddings.weight": (c.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (c.type_vocab_size, h),
        **_norm("embeddings.LayerNorm", h),
        **_linear("encoder.visn_fc.visn_fc", c.visual_feat_dim, h),
        **_norm("encoder.visn_fc.visn_layer_norm", h),
        **_linear("encoder.visn_fc.box_fc", c.visual_pos_dim, h),
        **_norm("encoder.visn_fc.box_layer_norm", h),
    }
    for stack, n in (("layer", c.l_layers), ("r_layers", c.r_layers)):
        for k in range(n):
            p = f"encoder.{stack}.{k}"
            out.update(_attention_layer_shapes(f"{p}.attention", "self", h))
            out.update(_ffn_shapes(f"{p}.intermediate", f"{p}.output", h, i))
    for k in range(c.x_layers):
        p = f"encoder.x_layers.{k}"
        out.update(_attention_layer_shapes(f"{p}.visual_attention", "att", h))
        out.update(_attention_layer_shapes(f"{p}.lang_self_att", "self", h))
        out.update(_attention_layer_shapes(f"{p}.visn_self_att", "self", h))
        out.update(_ffn_shapes(f"{p}.lang_inter", f"{p}.lang_output", h, i))
        out.update(_ffn_shapes(f"{p}.visn_inter", f"{p}.visn_output", h, i))
    out.update(_linear("pooler.dense", h, h))
    return out


def _answer_head_shapes(c: LxmertConfig) -> dict[str, tuple[int, ...]]:
    h = c.hidden_size
    return {
        **_linear("answer_head.logit_fc.0", h, 2 * h),
        **_norm("answer_head.logit_fc.2", 2 * h),
        **_linear("answer_head.logit_fc.3", 2 * h, c.num_qa_labels),
    }


# ------------------------------------------------------------------------------------------
# input checks
# ------------------------------------------------------------------------------------------


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
    """A 0/1 keep-mask ``[batch|1, len|1]`` -> the additive ``[batch, 1, 1, len]`` mask."""
    mask = get_namespace(mask).asarray(mask)
    if mask.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be a numeric or bool array, got dtype {mask.dtype}")
    if mask.ndim != 2 or not broadcasts_to(_shape(mask), target):
        raise ValueError(
            f"{name} has shape {_shape(mask)}; expected [batch, len] = {list(target)} (size-1 axes broadcast)"
        )
    mask = _float_input(mask, name, dtype)
    return extended_attention_mask(mask, dtype)  # [b, 1, 1, len]


def _labels(labels, name: str, n_items: int, n_classes: int):
    """Class-id labels as the oracle's ``.view(-1)`` sees them: ``[n_items]`` ids in ``[0, n_classes)`` or -100."""
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
    """Validate LxmertModel's inputs and build the defaults and additive masks the oracle builds.

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
        additive masks ``lang_mask`` ``[batch, 1, 1, seq]`` and ``visn_mask``
        (``[batch, 1, 1, boxes]`` or ``None``), and the sizes ``batch, seq, boxes``.

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
    lang_mask = _mask(attention_mask, "attention_mask", (b, n_tok), dt)
    visn_mask = None
    if visual_attention_mask is not None:
        visn_mask = _mask(visual_attention_mask, "visual_attention_mask", (b, n_box), dt)
    return {
        "input_ids": input_ids,
        "inputs_embeds": inputs_embeds,
        "token_type_ids": token_type_ids,
        "visual_feats": visual_feats,
        "visual_pos": visual_pos,
        "lang_mask": lang_mask,
        "visn_mask": visn_mask,
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
        inputs: the result of :func:`check_inputs` (for ``batch``, ``seq``, ``boxes``).
        labels: ``[batch, seq]`` masked-LM ids; matched_label: ``[batch]``; ans: ``[batch]``;
            obj_labels: ``{key: (labels, confidence)}`` (see :meth:`LxmertForPreTraining.forward`).

    Returns:
        dict with ``any`` (whether any label was given) and the checked, flattened labels of
        the enabled tasks.
    """
    c, dt = config, dtype
    b, n_tok, n_box = inputs["batch"], inputs["seq"], inputs["boxes"]
    t: dict = {"any": not (labels is None and matched_label is None and obj_labels is None and ans is None)}
    if labels is not None and c.task_mask_lm:
        t["labels"] = _labels(labels, "labels", b * n_tok, c.vocab_size)
    if matched_label is not None and c.task_matched:
        t["matched_label"] = _labels(matched_label, "matched_label", b, 2)
    if ans is not None and c.task_qa:
        t["ans"] = _labels(ans, "ans", b, c.num_qa_labels)
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
                label = _labels(label, f"{name}[0]", b * n_box, info["num"])
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


# ------------------------------------------------------------------------------------------
# LxmertModel as one function
# ------------------------------------------------------------------------------------------


def lxmert_model(w: dict, inputs: dict, config: LxmertConfig) -> dict:
    """LxmertModel's forward pass on checked inputs (see :func:`check_inputs`).

    Args:
        w: nested weights of the base model (``w["embeddings"]``, ``w["encoder"]``, ``w["pooler"]``).
        inputs: the checked inputs and additive masks.
        config: the model config.

    Returns:
        dict with ``language_output`` ``[batch, seq, hidden]``, ``vision_output``
        ``[batch, boxes, hidden]``, ``pooled_output`` ``[batch, hidden]`` and the tuples of
        :func:`refimpl.lxmert.layers.lxmert_encoder`.
    """
    # word + position + token-type embeddings: [b, s, h]
    with trace.scope("embeddings"):
        embedding_output = lxmert_embeddings(
            inputs["input_ids"], inputs["token_type_ids"], inputs["inputs_embeds"], **w["embeddings"]
        )
        trace.output(embedding_output)
    # language, relationship and cross-modality layers
    with trace.scope("encoder"):
        enc = lxmert_encoder(
            embedding_output,
            inputs["lang_mask"],
            inputs["visual_feats"],
            inputs["visual_pos"],
            inputs["visn_mask"],
            **w["encoder"],
            config=config,
        )
    # last states of each stream (the oracle takes the hidden-state tuples' last items)
    language_output = enc["language_hidden_states"][-1]  # [b, s, h]
    vision_output = enc["vision_hidden_states"][-1]  # [b, n, h]
    # tanh pooler over the first word: [b, h]
    with trace.scope("pooler"):
        pooled_output = bert.pooler(language_output, **w["pooler"])
        trace.output(pooled_output, also="activation")
    return {
        "language_output": language_output,
        "vision_output": vision_output,
        "pooled_output": pooled_output,
        **enc,
    }


_EXTRA_ATTENTIONS = (
    "cross_encoder_vision_attentions",
    "cross_encoder_language_self_attentions",
    "cross_encoder_vision_self_attentions",
)


def _stream_fields(enc: dict, output_attentions: bool, output_hidden_states: bool) -> dict:
    """The hidden-state / attention fields shared by all three output records."""
    out = {}
    for k in ("language_hidden_states", "vision_hidden_states"):
        out[k] = enc[k] if output_hidden_states else None
    for k in ("language_attentions", "vision_attentions", "cross_encoder_attentions", *_EXTRA_ATTENTIONS):
        out[k] = enc[k] if output_attentions else None
    return out


# ------------------------------------------------------------------------------------------
# classes
# ------------------------------------------------------------------------------------------


class _LxmertBase(PreTrainedModel):
    config_class = LxmertConfig
    base_model_prefix = "lxmert"

    def _check(self, **inputs) -> dict[str, Any]:
        """:func:`check_inputs` on the caller's arrays, moved to the model's device."""
        return check_inputs(self.config, self.dtype, **{k: self._array(v) for k, v in inputs.items()})


class LxmertModel(_LxmertBase):
    """transformers' ``LxmertModel``: the two-stream encoder and the pooler, without heads.

    Call with ``input_ids`` (or ``inputs_embeds``), ``visual_feats``, ``visual_pos`` and
    optional masks; returns :class:`refimpl.outputs.LxmertModelOutput`.
    """

    is_base_model = True

    @classmethod
    def expected_shapes(cls, config: LxmertConfig) -> dict[str, tuple[int, ...]]:
        """The keys ``LxmertModel.save_pretrained`` writes (unprefixed), with shapes."""
        return _base_shapes(config)

    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> LxmertModelOutput:
        """Run the model.

        Args:
            input_ids: ``[batch, seq]`` token ids (or ``inputs_embeds`` ``[batch, seq, hidden]``).
            visual_feats: ``[batch, boxes, visual_feat_dim]`` region features.
            visual_pos: ``[batch, boxes, visual_pos_dim]`` normalised boxes.
            attention_mask: ``[batch, seq]`` 1 keep / 0 pad (default all ones).
            visual_attention_mask: ``[batch, boxes]``; ``None`` masks nothing.
            token_type_ids: ``[batch, seq]`` (default zeros).
            output_attentions, output_hidden_states: return the per-layer tuples (default
                from the config, else False).

        Returns:
            ``LxmertModelOutput``: ``language_output [batch, seq, hidden]``,
            ``vision_output [batch, boxes, hidden]``, ``pooled_output [batch, hidden]``, and
            on request the hidden-state tuples (layer outputs only, no embeddings) and the
            attention tuples (``cross_encoder_attentions`` holds language->vision probs;
            ``cross_encoder_vision_attentions`` the vision->language ones the oracle hides).
        """
        oa, oh = self._flags(output_attentions, output_hidden_states)
        inputs = self._check(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        )
        base = lxmert_model(self.weights, inputs, self.config)
        return LxmertModelOutput(
            language_output=base["language_output"],
            vision_output=base["vision_output"],
            pooled_output=base["pooled_output"],
            **_stream_fields(base, oa, oh),
        )


class LxmertForPreTraining(_LxmertBase):
    """transformers' ``LxmertForPreTraining``: the base model, the masked-LM and matching heads
    (``cls``), the visual object head (when ``config.task_obj_predict``) and the answer head
    (when ``config.task_qa``), with the oracle's pre-training losses.
    """

    tied_keys = {"cls.predictions.decoder.weight": "lxmert.embeddings.word_embeddings.weight"}

    @classmethod
    def expected_shapes(cls, config: LxmertConfig) -> dict[str, tuple[int, ...]]:
        """The keys ``LxmertForPreTraining.save_pretrained`` writes in ``.bin`` form (safetensors
        leaves out the tied ``cls.predictions.decoder.weight``; it is filled from the word
        embeddings, which the oracle ties structurally, whatever ``tie_word_embeddings`` says)."""
        c = config
        h = c.hidden_size
        out = {f"lxmert.{k}": v for k, v in _base_shapes(c).items()}
        out.update(
            {
                "cls.predictions.bias": (c.vocab_size,),
                **_linear("cls.predictions.transform.dense", h, h),
                **_norm("cls.predictions.transform.LayerNorm", h),
                "cls.predictions.decoder.weight": (c.vocab_size, h),
                **_linear("cls.seq_relationship", h, 2),
            }
        )
        if c.task_obj_predict:
            out.update(_linear("obj_predict_head.transform.dense", h, h))
            out.update(_norm("obj_predict_head.transform.LayerNorm", h))
            for key, info in visual_losses(c).items():
                out.update(_linear(f"obj_predict_head.decoder_dict.{key}", h, info["num"]))
        if c.task_qa:
            out.update(_answer_head_shapes(c))
        return out

    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        labels=None,
        obj_labels=None,
        matched_label=None,
        ans=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        masked_lm_labels=None,
    ) -> LxmertForPreTrainingOutput:
        """Run the model and, when any label is given, the oracle's pre-training loss.

        Args:
            input_ids ... output_hidden_states: as :meth:`LxmertModel.forward`.
            labels: ``[batch, seq]`` masked-LM targets in ``[0, vocab)``, -100 ignored
                (used when ``config.task_mask_lm``). ``masked_lm_labels`` is its deprecated
                alias and, as in the oracle, wins over ``labels`` (with a FutureWarning).
            obj_labels: ``{"obj": (ids [batch, boxes], conf [batch, boxes]), "attr": (...),
                "feat": (targets [batch, boxes, visual_feat_dim], conf [batch, boxes])}``;
                every loss enabled by ``config.visual_*_loss`` must be present (used when
                ``config.task_obj_predict``).
            matched_label: ``[batch]`` 0 (mismatch) / 1 (match), -100 ignored (``task_matched``).
            ans: ``[batch]`` answer ids in ``[0, num_qa_labels)`` (class ids, not one-hot,
                whatever the oracle's docstring says; used when ``config.task_qa``).

        Returns:
            ``LxmertForPreTrainingOutput``. ``loss`` is ``None`` when no label is given, else
            a float32 0-d array (the oracle sums in a float32 ``torch.tensor(0.0)``, also for
            float64 models; a label whose task is switched off adds nothing).
            ``question_answering_score`` is ``[batch, num_qa_labels]`` with ``task_qa``, else
            the 0-d ``pooled_output[0, 0]``, as in the oracle.
        """
        c, w = self.config, self.weights
        if masked_lm_labels is not None:
            warnings.warn(
                "The `masked_lm_labels` argument is deprecated and will be removed in a future version, use `labels` instead.",
                FutureWarning,
                stacklevel=2,
            )
            labels = masked_lm_labels
        oa, oh = self._flags(output_attentions, output_hidden_states)
        inputs = self._check(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        )
        targets = check_targets(
            c,
            self.dtype,
            inputs,
            labels=self._array(labels),
            obj_labels=_to_arrays(self, obj_labels),
            matched_label=self._array(matched_label),
            ans=self._array(ans),
        )
        with trace.scope("lxmert"):
            base = lxmert_model(w["lxmert"], inputs, c)
        lang, visn, pooled = base["language_output"], base["vision_output"], base["pooled_output"]
        # masked-LM head, its decoder tied to the word embeddings: [b, s, V]
        with trace.scope("cls.predictions"):
            logits = lm_prediction_head(
                lang,
                transform=w["cls"]["predictions"]["transform"],
                decoder=w["lxmert"]["embeddings"]["word_embeddings"],
                bias=w["cls"]["predictions"]["bias"],
                hidden_act=c.hidden_act,
            )
            trace.output(logits)
        # image-text matching head: [b, 2]
        with trace.scope("cls.seq_relationship"):
            matched = linear(pooled, **w["cls"]["seq_relationship"])
            trace.output(matched)
        # answer head, or (oracle quirk) one scalar of the pooled output
        if c.task_qa:
            with trace.scope("answer_head"):
                answer = answer_head(pooled, **w["answer_head"])  # [b, num_qa]
                trace.output(answer)
        else:
            answer = pooled[0, 0, ...].copy()  # []
        loss = self._loss(visn, logits, matched, answer, targets)
        return LxmertForPreTrainingOutput(
            loss=loss,
            prediction_logits=logits,
            cross_relationship_score=matched,
            question_answering_score=answer,
            **_stream_fields(base, oa, oh),
        )

    def _loss(self, visn, logits, matched, answer, t: dict):
        """The oracle's total loss: a float32 accumulator, each enabled task's loss added in turn."""
        c, w = self.config, self.weights
        xp = get_namespace(logits)
        if not t["any"]:
            return None
        total = xp.zeros((), dtype=xp.float32)
        # masked language modelling: mean cross-entropy over non-ignored tokens
        if "labels" in t:
            part = cross_entropy(logits.reshape(-1, c.vocab_size), t["labels"])
            trace.record("loss.masked_lm", part)
            total = accumulate_loss(total, part)
        # image-text matching
        if "matched_label" in t:
            part = cross_entropy(matched.reshape(-1, 2), t["matched_label"])
            trace.record("loss.matched", part)
            total = accumulate_loss(total, part)
        # visual object / attribute / feature regression, each weighted by its confidence
        if "obj_labels" in t:
            losses = visual_losses(c)
            with trace.scope("obj_predict_head"):
                scores = visual_obj_head(
                    visn, **w["obj_predict_head"], hidden_act=c.hidden_act, keys=list(losses)
                )
            visual_total = xp.zeros((), dtype=xp.float32)
            for key, info in losses.items():
                label, conf = t["obj_labels"][key]
                part = visual_loss(
                    scores[key], label, conf, kind=info["loss"], normalizer=c.visual_loss_normalizer
                )
                trace.record(f"loss.visual.{key}", part)
                visual_total = accumulate_loss(visual_total, part)
            trace.record("loss.visual", visual_total)
            total = accumulate_loss(total, visual_total)
        # visual question answering
        if "ans" in t:
            part = cross_entropy(answer.reshape(-1, c.num_qa_labels), t["ans"])
            trace.record("loss.answer", part)
            total = accumulate_loss(total, part)
        trace.record("loss", total)
        return total


def _to_arrays(model: PreTrainedModel, obj_labels):
    """``obj_labels`` with every array moved to the model's device (other values kept for the checks)."""
    if not isinstance(obj_labels, Mapping):
        return obj_labels
    out = {}
    for key, pair in obj_labels.items():
        if isinstance(pair, (tuple, list)):
            out[key] = type(pair)(model._array(x) for x in pair)
        else:
            out[key] = pair
    return out


class LxmertForQuestionAnswering(_LxmertBase):
    """transformers' ``LxmertForQuestionAnswering``: the base model and the answer head.

    It also loads an ``LxmertForPreTraining`` checkpoint that has an answer head (``task_qa``),
    leaving out its other pre-training heads, as the oracle does (with a warning there).
    """

    ignored_unexpected = (r"^cls\.", r"^obj_predict_head\.")

    @classmethod
    def expected_shapes(cls, config: LxmertConfig) -> dict[str, tuple[int, ...]]:
        """The keys ``LxmertForQuestionAnswering.save_pretrained`` writes, with shapes."""
        out = {f"lxmert.{k}": v for k, v in _base_shapes(config).items()}
        out.update(_answer_head_shapes(config))
        return out

    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> LxmertForQuestionAnsweringOutput:
        """Run the model and the answer head.

        Args:
            input_ids ... output_hidden_states: as :meth:`LxmertModel.forward`.
            labels: ``[batch]`` answer ids in ``[0, num_qa_labels)``, -100 ignored (class ids,
                not the one-hot vectors the oracle's docstring mentions).

        Returns:
            ``LxmertForQuestionAnsweringOutput``: ``question_answering_score
            [batch, num_qa_labels]`` and, with ``labels``, the mean cross-entropy ``loss``
            (model dtype).
        """
        c, w = self.config, self.weights
        oa, oh = self._flags(output_attentions, output_hidden_states)
        inputs = self._check(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        )
        if labels is not None:
            labels = _labels(self._array(labels), "labels", inputs["batch"], c.num_qa_labels)
        with trace.scope("lxmert"):
            base = lxmert_model(w["lxmert"], inputs, c)
        # answer head over the pooled output: [b, num_qa]
        with trace.scope("answer_head"):
            answer = answer_head(base["pooled_output"], **w["answer_head"])
            trace.output(answer)
        loss = None
        if labels is not None:
            loss = cross_entropy(answer.reshape(-1, c.num_qa_labels), labels)
            trace.record("loss.answer", loss, also="loss")
        return LxmertForQuestionAnsweringOutput(
            loss=loss, question_answering_score=answer, **_stream_fields(base, oa, oh)
        )
