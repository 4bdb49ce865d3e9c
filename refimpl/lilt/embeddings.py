"""LiLT's two embedding streams: text (RoBERTa-style) and layout (2-D boxes).

Weights are splatted in with their checkpoint names, e.g. for the text stream
``text_embeddings(..., **w["embeddings"])`` where ``w["embeddings"]["word_embeddings"]`` is
``{"weight": [vocab, hidden]}``.

Each stream's backward sits right after it (``text_embeddings_backward``): it reads the
lookups its forward recorded from the tape (`refimpl.tape.saved`), records their gradients
under the same names and scatter-adds them into the tables. As ``torch.nn.Embedding(padding_idx=...)``
in the oracle, the rows ``config.pad_token_id`` of ``word_embeddings``, ``position_embeddings``
and ``box_position_embeddings`` get no gradient; ``token_type_embeddings`` and the x/y/h/w
tables have no padding row.
"""

from __future__ import annotations

from .. import trace
from ..backend import get_namespace
from ..config import LiltConfig
from ..ops import embedding, embedding_backward, layer_norm, layer_norm_backward, linear, linear_backward
from ..tape import saved

__all__ = [
    "create_position_ids_from_input_ids",
    "create_position_ids_from_inputs_embeds",
    "text_embeddings",
    "text_embeddings_backward",
    "layout_embeddings",
    "layout_embeddings_backward",
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


def text_embeddings_backward(
    grad_output,
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
    """Backward of `text_embeddings`: ``LayerNorm(word + token_type [+ position])`` in reverse.

    Reads the recorded lookups from the tape (the LayerNorm's input is their sum, added in the
    forward's order; `refimpl.ops.layer_norm_backward` recomputes its statistics), and records
    the gradients of ``LayerNorm`` (the upstream one) and of each lookup: the sum passes one
    gradient ``d_sum`` to every summand.

    Args:
        grad_output: ``dL/d LayerNorm``, the stream's output gradient, ``[batch, seq, hidden]``.
        input_ids, inputs_embeds, token_type_ids, position_ids: the forward's inputs (one of
            ``input_ids`` / ``inputs_embeds`` is ``None``).
        word_embeddings, position_embeddings, token_type_embeddings, LayerNorm, config: as in
            the forward (``config.pad_token_id`` is the padding row of the word and position tables).

    Returns:
        ``(d_inputs_embeds [batch, seq, hidden] or None, grads)``: ``d_inputs_embeds`` when the
        caller gave ``inputs_embeds``; ``grads`` keyed like the weights (the word table only
        when it was looked up, the position table only for absolute positions).
    """
    pad = config.pad_token_id
    trace.record("LayerNorm", grad_output)
    # the LayerNorm's input, as the forward summed it: [b, s, h]
    words = saved("word_embeddings") if inputs_embeds is None else inputs_embeds
    embeddings = words + saved("token_type_embeddings")
    if config.position_embedding_type == "absolute":
        embeddings = embeddings + saved("position_embeddings")
    # normalise: [b, s, h] -> d_sum [b, s, h]
    d_sum, d_ln_weight, d_ln_bias = layer_norm_backward(
        grad_output, embeddings, **LayerNorm, eps=config.layer_norm_eps
    )
    grads = {"LayerNorm": {"weight": d_ln_weight, "bias": d_ln_bias}}
    # absolute positions: [b, s, h] -> [P, h], the padding row gets nothing
    if config.position_embedding_type == "absolute":
        trace.record("position_embeddings", d_sum)
        table = position_embeddings["weight"]
        grads["position_embeddings"] = {
            "weight": embedding_backward(d_sum, position_ids, table.shape[0], padding_idx=pad)
        }
    # segments: [b, s, h] -> [type_vocab, h]
    trace.record("token_type_embeddings", d_sum)
    table = token_type_embeddings["weight"]
    grads["token_type_embeddings"] = {"weight": embedding_backward(d_sum, token_type_ids, table.shape[0])}
    # words: [b, s, h] -> [vocab, h] (the padding row gets nothing), or the caller's vectors
    if inputs_embeds is not None:
        return d_sum, grads
    trace.record("word_embeddings", d_sum)
    table = word_embeddings["weight"]
    grads["word_embeddings"] = {
        "weight": embedding_backward(d_sum, input_ids, table.shape[0], padding_idx=pad)
    }
    return None, grads


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


#: The six box lookups of `layout_embeddings`, in their concatenation order: (trace name, table, bbox column
#: or ``(hi, lo)`` columns of a difference).
_BOX_LOOKUPS = (
    ("x_position_embeddings.left", "x_position_embeddings", 0),
    ("y_position_embeddings.upper", "y_position_embeddings", 1),
    ("x_position_embeddings.right", "x_position_embeddings", 2),
    ("y_position_embeddings.lower", "y_position_embeddings", 3),
    ("h_position_embeddings", "h_position_embeddings", (3, 1)),
    ("w_position_embeddings", "w_position_embeddings", (2, 0)),
)


def layout_embeddings_backward(
    grad_output,
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
    """Backward of `layout_embeddings`: ``LayerNorm(box_linear(concat(6 lookups)) + box_position)`` in reverse.

    Reads the six lookups, ``box_linear_embeddings`` and ``box_position_embeddings`` from the
    tape and records the gradient of each under its name. The projection's input gradient
    ``[b, s, h]`` splits back into six ``[b, s, h/6]`` parts; the x and y tables are each used
    twice (left and right, upper and lower), so each receives the scatter-add of both parts.

    Args:
        grad_output: ``dL/d LayerNorm``, the stream's output gradient, ``[batch, seq, hidden // r]``.
        bbox: the forward's integer ``[batch, seq, 4]`` boxes.
        position_ids: the forward's integer ``[batch, seq]`` (the padding row ``config.pad_token_id``
            of ``box_position_embeddings`` gets no gradient).
        x_position_embeddings, ..., LayerNorm, config: as in the forward.

    Returns:
        the weights' gradients keyed like the weights.
    """
    xp = get_namespace(grad_output, bbox)
    trace.record("LayerNorm", grad_output)
    # add and normalise: [b, s, h/r]
    spatial, box_position = saved("box_linear_embeddings"), saved("box_position_embeddings")
    d_sum, d_ln_weight, d_ln_bias = layer_norm_backward(
        grad_output, spatial + box_position, **LayerNorm, eps=config.layer_norm_eps
    )
    # sequence positions of the boxes: [b, s, h/r] -> [P, h/r], the padding row gets nothing
    trace.record("box_position_embeddings", d_sum)
    table = box_position_embeddings["weight"]
    d_box_position = embedding_backward(d_sum, position_ids, table.shape[0], padding_idx=config.pad_token_id)
    # the projection of the six lookups: [b, s, h/r] -> [b, s, h]
    trace.record("box_linear_embeddings", d_sum)
    parts = [saved(name) for name, _, _ in _BOX_LOOKUPS]
    d_concat, d_lin_weight, d_lin_bias = linear_backward(
        d_sum, xp.concatenate(parts, axis=-1), **box_linear_embeddings
    )
    # the concatenation split back, and each part scatter-added into its table: [b, s, h/6] -> [M, h/6]
    tables = {
        "x_position_embeddings": x_position_embeddings,
        "y_position_embeddings": y_position_embeddings,
        "h_position_embeddings": h_position_embeddings,
        "w_position_embeddings": w_position_embeddings,
    }
    d_tables: dict = {}
    k = parts[0].shape[-1]
    for i in reversed(range(len(_BOX_LOOKUPS))):
        name, table, column = _BOX_LOOKUPS[i]
        d_part = d_concat[..., i * k : (i + 1) * k]
        trace.record(name, d_part)
        ids = bbox[:, :, column] if isinstance(column, int) else bbox[:, :, column[0]] - bbox[:, :, column[1]]
        rows = tables[table]["weight"].shape[0]
        d_tables[table] = embedding_backward(d_part, ids, rows, dweight=d_tables.get(table))
    grads = {table: {"weight": d_tables[table]} for table in tables}
    grads["box_position_embeddings"] = {"weight": d_box_position}
    grads["box_linear_embeddings"] = {"weight": d_lin_weight, "bias": d_lin_bias}
    grads["LayerNorm"] = {"weight": d_ln_weight, "bias": d_ln_bias}
    return grads
