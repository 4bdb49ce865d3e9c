"""LiLT's two embedding streams: text (RoBERTa-style) and layout (2-D boxes).

Weights are splatted in with their checkpoint names, e.g. for the text stream
``text_embeddings(..., **w["embeddings"])`` where ``w["embeddings"]["word_embeddings"]`` is
``{"weight": [vocab, hidden]}``.
"""

from __future__ import annotations

from .. import trace
from ..backend import get_namespace
from ..config import LiltConfig
from ..ops import embedding, layer_norm, linear

__all__ = [
    "create_position_ids_from_input_ids",
    "create_position_ids_from_inputs_embeds",
    "text_embeddings",
    "layout_embeddings",
]


def create_position_ids_from_input_ids(input_ids, padding_idx: int):
    """RoBERTa position ids: non-pad tokens count up from ``padding_idx + 1``; pad tokens get ``padding_idx``.

    A pad token anywhere (not only at the end) keeps the pad position, and the tokens after
    it continue the count as if it were absent.

    Args:
        input_ids: integer ``[batch, seq]``.
        padding_idx: ``config.pad_token_id``.

    Returns:
        int64 ``[batch, seq]``.
    """
    xp = get_namespace(input_ids)
    # [b, s] 1 for real tokens, 0 for pad tokens
    mask = (input_ids != padding_idx).astype(xp.int64)
    # [b, s] running count of real tokens, zeroed on pad tokens, shifted past the pad id
    return xp.cumsum(mask, axis=1) * mask + padding_idx


def create_position_ids_from_inputs_embeds(batch: int, seq: int, padding_idx: int, xp):
    """Sequential position ids ``padding_idx + 1 ... padding_idx + seq`` (pads cannot be seen in embeddings).

    Args:
        batch, seq: the input shape.
        padding_idx: ``config.pad_token_id``.
        xp: the array namespace to build the ids in.

    Returns:
        int64 ``[batch, seq]``.
    """
    # [s] -> [b, s]
    ids = xp.arange(padding_idx + 1, seq + padding_idx + 1, dtype=xp.int64)
    return xp.broadcast_to(ids[None, :], (batch, seq))


def text_embeddings(
    input_ids,
    inputs_embeds,
    token_type_ids,
    position_ids,
    *,
    word_embeddings,
    position_embeddings,
    token_type_embeddings,
    LayerNorm,
    config: LiltConfig,
):
    """LiltTextEmbeddings: ``LayerNorm(word + token_type [+ position])``.

    With a relative ``position_embedding_type`` the absolute position embeddings are skipped
    (their weights still exist in the checkpoint, unused).

    Args:
        input_ids: integer ``[batch, seq]`` or ``None`` when ``inputs_embeds`` is given.
        inputs_embeds: ``[batch, seq, hidden]`` or ``None``.
        token_type_ids: integer ``[batch, seq]``.
        position_ids: integer ``[batch, seq]``.
        word_embeddings, position_embeddings, token_type_embeddings: ``{"weight": [n, hidden]}``.
        LayerNorm: ``{"weight": [hidden], "bias": [hidden]}``.
        config: uses ``position_embedding_type`` and ``layer_norm_eps``.

    Returns:
        ``[batch, seq, hidden]``.
    """
    # word vectors, unless the caller gave them: [b, s] -> [b, s, h]
    if inputs_embeds is None:
        inputs_embeds = embedding(input_ids, **word_embeddings)
        trace.record("word_embeddings", inputs_embeds)
    # segment vectors: [b, s] -> [b, s, h]
    token_type = embedding(token_type_ids, **token_type_embeddings)
    trace.record("token_type_embeddings", token_type)
    embeddings = inputs_embeds + token_type
    # absolute positions only: [b, s] -> [b, s, h]
    if config.position_embedding_type == "absolute":
        position = embedding(position_ids, **position_embeddings)
        trace.record("position_embeddings", position)
        embeddings = embeddings + position
    # normalise: [b, s, h]
    out = layer_norm(embeddings, **LayerNorm, eps=config.layer_norm_eps)
    trace.record("LayerNorm", out)
    return out


def layout_embeddings(
    bbox,
    position_ids,
    *,
    x_position_embeddings,
    y_position_embeddings,
    h_position_embeddings,
    w_position_embeddings,
    box_position_embeddings,
    box_linear_embeddings,
    LayerNorm,
    config: LiltConfig,
):
    """LiltLayoutEmbeddings: the layout stream's input.

    Six lookups of ``hidden // 6`` each (left, upper, right, lower, height, width) are
    concatenated, projected to ``hidden // channel_shrink_ratio``, added to the box position
    embeddings of ``position_ids`` and normalised. The x and y tables are each used twice.

    Args:
        bbox: integer ``[batch, seq, 4]`` boxes ``(x0, y0, x1, y1)`` with ``x0 <= x1``, ``y0 <= y1``.
        position_ids: integer ``[batch, seq]`` (the text stream's).
        x_position_embeddings, y_position_embeddings, h_position_embeddings, w_position_embeddings: ``{"weight": [max_2d, hidden // 6]}``.
        box_position_embeddings: ``{"weight": [max_positions, hidden // r]}``.
        box_linear_embeddings: ``{"weight": [hidden // r, hidden], "bias": [hidden // r]}``.
        LayerNorm: ``{"weight", "bias"}`` of ``[hidden // r]``.
        config: uses ``layer_norm_eps``.

    Returns:
        ``[batch, seq, hidden // channel_shrink_ratio]``.
    """
    xp = get_namespace(bbox)
    # corner coordinates: [b, s] each -> [b, s, h/6] each
    left = embedding(bbox[:, :, 0], **x_position_embeddings)
    trace.record("x_position_embeddings.left", left)
    upper = embedding(bbox[:, :, 1], **y_position_embeddings)
    trace.record("y_position_embeddings.upper", upper)
    right = embedding(bbox[:, :, 2], **x_position_embeddings)
    trace.record("x_position_embeddings.right", right)
    lower = embedding(bbox[:, :, 3], **y_position_embeddings)
    trace.record("y_position_embeddings.lower", lower)
    # box height y1 - y0 and width x1 - x0: [b, s] -> [b, s, h/6]
    height = embedding(bbox[:, :, 3] - bbox[:, :, 1], **h_position_embeddings)
    trace.record("h_position_embeddings", height)
    width = embedding(bbox[:, :, 2] - bbox[:, :, 0], **w_position_embeddings)
    trace.record("w_position_embeddings", width)
    # 6 x [b, s, h/6] -> [b, s, h] -> [b, s, h/r]
    spatial = linear(
        xp.concatenate([left, upper, right, lower, height, width], axis=-1), **box_linear_embeddings
    )
    trace.record("box_linear_embeddings", spatial)
    # sequence positions of the boxes: [b, s] -> [b, s, h/r]
    box_position = embedding(position_ids, **box_position_embeddings)
    trace.record("box_position_embeddings", box_position)
    # add and normalise: [b, s, h/r]
    out = layer_norm(spatial + box_position, **LayerNorm, eps=config.layer_norm_eps)
    trace.record("LayerNorm", out)
    return out
