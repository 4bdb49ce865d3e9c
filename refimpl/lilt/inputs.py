"""LiLT's input checks: the one place that validates what a caller passes to a LiLT model.

Each check names the argument, the first bad position and the allowed range; every id that
indexes an embedding table (``input_ids``, ``token_type_ids``, the positions, the boxes and
their widths and heights, the relative distances) is checked here, once, so the layers can
look rows up without checking again. ``check_inputs`` returns the 0/1 keep ``attention_mask``
(1 = attend), the same kind of mask LXMERT's ``check_inputs`` returns.
"""

from __future__ import annotations

from typing import Any

from .. import backend
from ..attention import head_masks
from ..checks import broadcasts_to, check_head_mask, check_index_range, first_bad, require_integers
from ..config import LiltConfig
from .embeddings import create_position_ids_from_input_ids, create_position_ids_from_inputs_embeds

__all__ = ["check_inputs", "check_token_labels"]


def _ids(xp, ids, name: str, shape: tuple[int, int], size: int):
    """``ids`` broadcast to ``shape`` = ``(batch, seq)``, each in ``[0, size - 1]``, or a
    ``ValueError`` naming ``name`` (and the first bad position)."""
    if not broadcasts_to(tuple(ids.shape), shape):
        raise ValueError(
            f"{name} must have shape [batch, seq] = [{shape[0]}, {shape[1]}], got {tuple(ids.shape)}"
        )
    require_integers(ids, name)
    ids = xp.broadcast_to(ids, shape)
    check_index_range(ids, size, name)
    return ids


def check_inputs(
    config: LiltConfig,
    dtype,
    input_ids=None,
    bbox=None,
    attention_mask=None,
    token_type_ids=None,
    position_ids=None,
    head_mask=None,
    inputs_embeds=None,
) -> dict[str, Any]:
    """Validate LiltModel's inputs and fill in the oracle's defaults.

    Every array must broadcast to ``[batch, seq]`` (``[batch, seq, 4]`` for ``bbox``,
    ``[batch, seq, seq]`` for a 3-d ``attention_mask``), as the oracle's broadcasting
    allows; the result is broadcast to full size.

    Defaults: ``bbox`` all zeros, ``attention_mask`` all ones, ``token_type_ids`` zeros,
    ``position_ids`` RoBERTa-style from ``input_ids`` (or sequential from ``pad + 1`` with
    ``inputs_embeds``).

    Returns:
        dict of ``input_ids, inputs_embeds, bbox, attention_mask`` (the 0/1 keep-mask, 1 =
        attend: ``[batch, seq]`` or ``[batch, seq, seq]``; `refimpl.lilt.modeling.lilt_model`
        makes it additive), ``token_type_ids, position_ids, head_masks`` (one per layer), ready
        for `refimpl.lilt.modeling.lilt_model`.

    Raises:
        ValueError: naming the argument, the first bad position and the allowed range.
    """
    if input_ids is not None and inputs_embeds is not None:
        raise ValueError("pass either input_ids or inputs_embeds, not both")
    if input_ids is None and inputs_embeds is None:
        raise ValueError("pass input_ids or inputs_embeds")
    xp = backend.get_namespace(
        input_ids, inputs_embeds, bbox, attention_mask, token_type_ids, position_ids, head_mask
    )
    h = config.hidden_size
    if input_ids is not None:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape [batch, seq], got {tuple(input_ids.shape)}")
        require_integers(input_ids, "input_ids")
        check_index_range(input_ids, config.vocab_size, "input_ids")
        b, s = input_ids.shape
    else:
        if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != h:
            raise ValueError(
                f"inputs_embeds must have shape [batch, seq, {h}], got {tuple(inputs_embeds.shape)}"
            )
        if inputs_embeds.dtype.kind not in "fiu":
            raise ValueError(f"inputs_embeds must be a float array, got dtype {inputs_embeds.dtype}")
        inputs_embeds = inputs_embeds.astype(dtype, copy=False)
        b, s = inputs_embeds.shape[:2]
    if s == 0:
        raise ValueError("the sequence is empty (seq = 0): LiLT needs at least one token")

    # boxes: integers in [0, max_2d - 1] with x0 <= x1 and y0 <= y1
    M = config.max_2d_position_embeddings
    if bbox is None:
        bbox = xp.zeros((b, s, 4), dtype=xp.int64)
    else:
        if bbox.ndim != 3 or bbox.shape[-1] != 4 or not broadcasts_to(tuple(bbox.shape), (b, s, 4)):
            raise ValueError(f"bbox must have shape [batch, seq, 4] = [{b}, {s}, 4], got {tuple(bbox.shape)}")
        require_integers(bbox, "bbox")
        check_index_range(bbox, M, "bbox")
        bbox = xp.broadcast_to(bbox, (b, s, 4))
        for lo, hi, what, table in ((0, 2, "width x1 - x0", "w"), (1, 3, "height y1 - y0", "h")):
            bad = bbox[:, :, hi] < bbox[:, :, lo]
            if bool(bad.any()):
                i, j = first_bad(bad)
                raise ValueError(
                    f"bbox[{i}, {j}] = {[int(v) for v in bbox[i, j]]}: the {what} is negative; it indexes "
                    f"{table}_position_embeddings, allowed range [0, {M - 1}] (boxes are (x0, y0, x1, y1))"
                )

    # attention mask: [b, s] or [b, s, s], default all ones
    if attention_mask is None:
        attention_mask = xp.ones((b, s), dtype=dtype)
    else:
        target = (b, s) if attention_mask.ndim <= 2 else (b, s, s)
        if attention_mask.ndim not in (2, 3) or not broadcasts_to(tuple(attention_mask.shape), target):
            raise ValueError(
                f"attention_mask must have shape [batch, seq] = [{b}, {s}] or [batch, seq, seq] = [{b}, {s}, {s}], "
                f"got {tuple(attention_mask.shape)}"
            )
        attention_mask = xp.broadcast_to(attention_mask, target)

    # segment ids in [0, type_vocab_size - 1], default zeros
    if token_type_ids is None:
        token_type_ids = xp.zeros((b, s), dtype=xp.int64)
    else:
        token_type_ids = _ids(xp, token_type_ids, "token_type_ids", (b, s), config.type_vocab_size)

    # positions: explicit, or RoBERTa's; both index tables of max_position_embeddings rows
    P = config.max_position_embeddings
    if position_ids is None:
        if input_ids is not None:
            position_ids = create_position_ids_from_input_ids(input_ids, config.pad_token_id)
        else:
            position_ids = create_position_ids_from_inputs_embeds(b, s, config.pad_token_id, xp)
        bad = position_ids >= P
        if bool(bad.any()):
            i, j = first_bad(bad)
            raise ValueError(
                f"the sequence is too long: token [{i}, {j}] gets position id {int(position_ids[i, j])} "
                f"(positions start at pad_token_id + 1 = {config.pad_token_id + 1}), outside the allowed range "
                f"[0, {P - 1}] of max_position_embeddings = {P}; at most {P - config.pad_token_id - 1} "
                f"non-pad tokens fit"
            )
    else:
        position_ids = _ids(xp, position_ids, "position_ids", (b, s), P)
    if config.position_embedding_type != "absolute" and s > P:
        raise ValueError(
            f"input_ids: sequence length {s} exceeds max_position_embeddings = {P}, the longest distance "
            f"relative position embeddings ({config.position_embedding_type}) can represent"
        )

    # head mask: [heads], [layers, heads] or 5-d
    if head_mask is not None:
        check_head_mask(head_mask, config.num_hidden_layers, config.num_attention_heads, b, s)
    masks = head_masks(head_mask, config.num_hidden_layers, config.num_attention_heads, dtype)
    return {
        "input_ids": input_ids,
        "inputs_embeds": inputs_embeds,
        "bbox": bbox,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
        "position_ids": position_ids,
        "head_masks": masks,
    }


def check_token_labels(labels, batch: int, seq: int):
    """Per-token ``labels``: integers, ``batch * seq`` of them (``[batch, seq]``), or a ``ValueError``.

    The values are checked by the loss (``[0, num_labels - 1]`` or ``-100``), which knows the range.

    Args:
        labels: integer ``[batch, seq]``.
        batch, seq: the checked inputs' batch and sequence sizes.

    Returns:
        ``labels`` unchanged.
    """
    require_integers(labels, "labels")
    if labels.size != batch * seq:
        raise ValueError(f"labels has shape {tuple(labels.shape)}; expected [batch, seq] = {[batch, seq]}")
    return labels
