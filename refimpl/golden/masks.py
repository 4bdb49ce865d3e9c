"""Which positions of a tensor a comparison skips: the mask specs a manifest records per
tensor (from its name and shape) and the boolean keep-mask they give."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .format import MASK_INPUTS

__all__ = ["mask_specs_for", "keep_mask"]


_VISION_MARKERS = (
    "visn",
    "vision",
    "visual_feats",
    "visual_pos",
    "r_layers",
    "box_fc",
    "box_layer_norm",
    "obj_predict",
    "visual_output",
)
_ATTENTION_MARKERS = ("probs", "scores", "attentions", "attention_mask")


def _streams(name: str) -> tuple[str | None, str | None]:
    """(row stream, key stream) of a tensor from its name: which token stream ("language" /
    "vision") its rows (query rows for attention) and its key columns belong to; ``None``
    where the name does not say. Only needed when both streams have the same length.

    LXMERT's cross-attention module runs twice per cross layer; its calls carry the suffix
    ``@lang`` (language queries, vision keys) and ``@visn`` (the reverse). Within a call the
    ``key``/``value`` projections run over the other stream.
    """
    n = name.lower()
    other = {"language": "vision", "vision": "language"}
    if "cross_encoder_vision_attentions" in n:
        return "vision", "language"
    if "cross_encoder_attentions" in n:
        return "language", "vision"
    for tag, q in (("@lang", "language"), ("@visn", "vision")):
        if tag in n:
            base = n.split("@", 1)[0]
            if base.endswith((".key", ".value")):
                return other[q], other[q]
            return q, other[q]
    if any(m in n for m in _VISION_MARKERS):
        return "vision", "vision"
    if any(
        m in n
        for m in ("lang", "language", "embeddings", "encoder.layer.", "cls.predictions", "hidden_states")
    ):
        return "language", "language"
    return None, None


def mask_specs_for(
    name: str, shape: tuple[int, ...], masks: Mapping[str, tuple[int, ...]]
) -> list[dict[str, Any]]:
    """Which mask positions a comparison of tensor ``name`` should skip.

    Rules (``masks`` maps a mask input, e.g. ``"inputs.attention_mask"`` ``[b, n]``, to its shape):

    * inputs and tensors with fewer than 3 dims are never masked (pooled vectors, losses,
      sequence-level logits);
    * a tensor ``[b, s, ...]`` is a token-row tensor: axis pair ``(0, 1)`` follows the mask of
      length ``s``;
    * a 4-D tensor whose name contains ``probs``/``scores``/``attentions`` is
      ``[b, heads, q, k]``: ``(0, 2)`` follows the query stream's mask and ``(0, 3)`` the key
      stream's; other 4-D tensors ``[b, heads, s, d]`` only mask ``(0, 2)``;
    * when two masks have the length of an axis (LXMERT with as many regions as tokens), the
      name decides the stream; if it cannot, that axis is not masked (stricter, never looser).

    Returns:
        a list of ``{"input": mask name, "axes": [batch_axis, token_axis]}``.
    """
    if name.startswith("inputs.") or len(shape) < 3 or not masks:
        return []
    by_len: dict[int, list[str]] = {}
    for m, mshape in masks.items():
        if len(mshape) == 2 and mshape[0] == shape[0]:
            by_len.setdefault(int(mshape[1]), []).append(m)

    def pick(axis: int, stream: str | None) -> str | None:
        cands = by_len.get(int(shape[axis]), [])
        if len(cands) == 1:
            return cands[0]
        if len(cands) > 1 and stream is not None:
            named = [c for c in cands if MASK_INPUTS.get(c.split(".", 1)[1]) == stream]
            if len(named) == 1:
                return named[0]
        return None

    specs: list[dict[str, Any]] = []
    q_stream, k_stream = _streams(name)
    is_att = len(shape) == 4 and any(m in name.lower() for m in _ATTENTION_MARKERS)
    row_axis = 2 if len(shape) == 4 else 1
    m = pick(row_axis, q_stream)
    if m is not None:
        specs.append({"input": m, "axes": [0, row_axis]})
    if is_att:
        m = pick(3, k_stream)
        if m is not None:
            specs.append({"input": m, "axes": [0, 3]})
    return specs


def keep_mask(
    shape: tuple[int, ...], specs: list[dict[str, Any]], tensors: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Boolean array of ``shape``: True where a comparison looks (every spec's mask is non-zero).

    Args:
        shape: the tensor's shape.
        specs: ``[{"input": name, "axes": [a0, a1]}, ...]`` (see `mask_specs_for`).
        tensors: where to find the mask arrays (``[b, n]``) by name.
    """
    keep = np.ones(shape, dtype=bool)
    for spec in specs:
        mask = np.asarray(tensors[spec["input"]]) != 0  # [b, n]
        a0, a1 = spec["axes"]
        if mask.shape != (shape[a0], shape[a1]):
            raise ValueError(
                f"mask {spec['input']} has shape {mask.shape}, tensor axes {a0},{a1} have ({shape[a0]}, {shape[a1]})"
            )
        view = [1] * len(shape)
        view[a0], view[a1] = shape[a0], shape[a1]
        if a0 > a1:
            mask = mask.T
        keep &= mask.reshape(view)
    return keep
