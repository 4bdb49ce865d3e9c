"""Fast kernels for attention: the softmax over blocks of heads, and fused BERT and BiACM attention.

* [softmax][refimpl.fast.attention.softmax] replaces `refimpl.ops.softmax` (last axis): the
  formula per block of rows on the host threads. Bit-identical.
* [attention_probs][refimpl.fast.attention.attention_probs] replaces
  `refimpl.attention.attention_probs`: the mask is added and the formula's softmax taken per
  block of ``[batch, heads]`` slabs while they are in cache, and an all-zero mask (every key
  kept) is skipped. Bit-identical (``-0.0 + 0.0`` only changes a zero's sign, which the
  softmax ignores).
* [attention_context][refimpl.fast.attention.attention_context] replaces
  `refimpl.attention.attention_context`: the batched product writes straight into the merged
  ``[batch, q_len, heads * head_size]`` layout (no transpose copy). Bit-identical.
* [bi_acm_scores][refimpl.fast.attention.bi_acm_scores] replaces
  `refimpl.bi_acm.bi_acm_scores` a block of heads at a time: the text share in the
  result's memory, the layout share in a block-sized scratch array, so the oracle's two
  ``[batch, heads, s, s]`` summands (``tmp_attention_scores``, ``tmp_layout_attention_scores``)
  are never held whole. Bit-identical: the same products and sum per head, and a scale that
  is a power of two (both at base size) divides the queries before the product, which is
  exact, instead of the scores after it.
* [bi_acm_contexts][refimpl.fast.attention.bi_acm_contexts] replaces
  `refimpl.bi_acm.bi_acm_contexts` with one product ``P [V | V_l]``: every output element is
  the same dot product (equal up to BLAS's summation order).
* [softmax_backward][refimpl.fast.attention.softmax_backward] replaces
  `refimpl.ops.softmax_backward` (last axis): the formula per block of rows on the host
  threads. Bit-identical (the inner sum is over one row).
* [scaled_dot_product_attention][refimpl.fast.attention.scaled_dot_product_attention] and
  [bi_acm_attention][refimpl.fast.attention.bi_acm_attention] replace their namesakes in
  `refimpl.attention` and `refimpl.bi_acm`: the scores are computed into a fresh array, and the masked softmax
  and the head mask run in that array's memory, so the scores and the probabilities are
  never held at once (a ``[batch, heads, s, s]`` array less: 25 MB per layer for LiLT base
  at 512 tokens in float64). Bit-identical to their formulas evaluated with these kernels.

On CuPy arrays the blocked kernels run their formulas (one GPU kernel per op).
"""

from __future__ import annotations

import math

from .. import attention, bi_acm, ops
from ..backend import get_namespace, is_device_array
from ..switch import kernel_for
from .blocks import BLOCK_BYTES, for_blocks

__all__ = [
    "softmax",
    "attention_probs",
    "attention_context",
    "bi_acm_scores",
    "bi_acm_contexts",
    "scaled_dot_product_attention",
    "bi_acm_attention",
    "softmax_backward",
]


@kernel_for(ops.softmax)
def softmax(x, axis: int = -1):
    """`refimpl.ops.softmax` over the last axis, per block of rows on the host threads (a
    small array, or another axis, in one go).

    Args:
        x: float array of any shape.
        axis: the axis to normalize over.

    Returns:
        same shape as ``x``.
    """
    formula = ops.softmax.formula
    if is_device_array(x) or axis not in (-1, x.ndim - 1) or x.nbytes <= 2 * BLOCK_BYTES or x.ndim < 2:
        return formula(x, axis)
    xp = get_namespace(x)
    rows = x.reshape(-1, x.shape[-1])  # [r, n]
    out = xp.empty(rows.shape, dtype=x.dtype)

    def block(start, stop):
        out[start:stop] = formula(rows[start:stop], -1)

    for_blocks(block, rows.shape[0], rows.shape[1] * rows.itemsize)
    return out.reshape(x.shape)


def _pieces(start: int, stop: int, heads: int):
    """``(i, h0, h1)``: the slabs ``[start, stop)`` of a ``[batch, heads]`` grid in row-major
    order, as runs of heads ``h0:h1`` of batch item ``i``."""
    pos = start
    while pos < stop:
        i, h0 = divmod(pos, heads)
        h1 = min(stop - i * heads, heads)
        yield i, h0, h1
        pos = i * heads + h1


def _masked_softmax(scores, additive_mask, out) -> None:
    """``out = softmax(scores + additive_mask)`` over the last axis, per block of
    ``[batch, heads]`` slabs; ``scores`` and ``out`` are C-contiguous ``[b, h, q, k]`` host
    arrays (``out`` may be ``scores``), the mask broadcasts to them with ``[1 or q, k]`` last."""
    xp = get_namespace(scores, additive_mask)
    formula = ops.softmax.formula
    if additive_mask is not None and not bool(additive_mask.any()):
        additive_mask = None  # nothing masked (every key kept): skip the add
    b, h, q, k = scores.shape
    slabs_in = scores.reshape(b * h, q, k)
    slabs = out.reshape(b * h, q, k)  # [b * h, q, k], a view
    mask = None
    if additive_mask is not None:
        mask = additive_mask.reshape((1,) * (4 - additive_mask.ndim) + additive_mask.shape)  # 4-D

    def add_mask(start, stop):  # slabs [start, stop) = (batch, head) pairs in row-major order
        for i, h0, h1 in _pieces(start, stop, h):
            m = mask[i if mask.shape[0] > 1 else 0]  # [1 or h, 1 or q, k]
            xp.add(scores[i, h0:h1], m[h0:h1] if m.shape[0] > 1 else m, out=out[i, h0:h1])

    rows_per_block = max(1, BLOCK_BYTES // (k * scores.itemsize))

    def block(start, stop):
        if mask is not None:
            add_mask(start, stop)  # out = scores + mask, slab by slab
        src = (slabs if mask is not None else slabs_in)[start:stop].reshape(-1, k)  # [r, k]
        dst = slabs[start:stop].reshape(-1, k)
        for a in range(0, dst.shape[0], rows_per_block):  # the formula's temporaries stay block-sized
            dst[a : a + rows_per_block] = formula(src[a : a + rows_per_block], -1)

    for_blocks(block, b * h, q * k * scores.itemsize)


def _blocked(*arrays) -> bool:
    """Whether the blocked masked softmax applies: 4-D, non-empty, C-contiguous host arrays."""
    x = arrays[0]
    return not is_device_array(x) and x.ndim == 4 and x.size > 0 and all(a.flags.c_contiguous for a in arrays)


@kernel_for(attention.attention_probs)
def attention_probs(scores, additive_mask=None):
    """`refimpl.attention.attention_probs` per block of ``[batch, heads]`` slabs, into a new array.

    Args:
        scores: ``[batch, heads, q_len, k_len]``.
        additive_mask: ``None`` or broadcastable to ``scores`` with its last two axes
            ``[1 or q_len, k_len]``.

    Returns:
        ``[batch, heads, q_len, k_len]``.
    """
    if not _blocked(scores):
        return attention.attention_probs.formula(scores, additive_mask)
    xp = get_namespace(scores, additive_mask)
    out = xp.empty(scores.shape, dtype=scores.dtype)
    _masked_softmax(scores, additive_mask, out)
    return out


@kernel_for(attention.attention_context)
def attention_context(probs, value):
    """`refimpl.attention.attention_context` with the batched product written into a
    ``[b, n, q, d]`` view of the merged ``[b, q, n * d]`` result.

    Args:
        probs: ``[batch, heads, q_len, k_len]``.
        value: ``[batch, heads, k_len, head_size]``.

    Returns:
        ``[batch, q_len, heads * head_size]``.
    """
    if is_device_array(probs):
        return attention.attention_context.formula(probs, value)
    xp = get_namespace(probs, value)
    b, n, q, _ = probs.shape
    d = value.shape[-1]
    out = xp.empty((b, q, n * d), dtype=xp.result_type(probs, value))
    xp.matmul(probs, value, out=out.reshape(b, q, n, d).transpose(0, 2, 1, 3))  # [b, n, q, d] view
    return out


@kernel_for(bi_acm.bi_acm_scores)
def bi_acm_scores(query, key, layout_query, layout_key, channel_shrink_ratio: int, relative_scores=None):
    """`refimpl.bi_acm.bi_acm_scores` a block of heads at a time: the text share is computed
    in the result's memory and the layout share in a block-sized scratch array, so neither
    ``[batch, heads, s, s]`` summand is ever held whole.

    Args:
        query, key: text ``[batch, heads, s, d]``.
        layout_query, layout_key: layout ``[batch, heads, s, d / r]``.
        channel_shrink_ratio: ``r``.
        relative_scores: ``None`` or ``[batch, heads, s, s]`` (added to the text share).

    Returns:
        ``[batch, heads, s, s]``, a fresh array.
    """
    if is_device_array(query):
        return bi_acm.bi_acm_scores.formula(
            query, key, layout_query, layout_key, channel_shrink_ratio, relative_scores
        )
    xp = get_namespace(query, key, layout_query, layout_key, relative_scores)
    text_scale = math.sqrt(query.shape[-1])
    layout_scale = math.sqrt(query.shape[-1] // channel_shrink_ratio)
    # dividing by a power of two is exact, so it may come before the product (on the small
    # queries) instead of after it (on the large scores), to the same bits: at base size both
    # scales are (sqrt(64) = 8, sqrt(16) = 4)
    text_first, layout_first = _power_of_two(text_scale), _power_of_two(layout_scale)
    if text_first:
        query = query / text_scale
    if layout_first:
        layout_query = layout_query / layout_scale
    b, h, s, _ = query.shape
    out = xp.empty((b, h, s, key.shape[2]), dtype=xp.result_type(query, key, layout_query, layout_key))
    per_block = max(1, BLOCK_BYTES // (out[0, 0].nbytes or 1))  # slabs per block
    # one block after another (each product is BLAS's, threaded by BLAS itself)
    for start in range(0, b * h, per_block):
        for i, h0, h1 in _pieces(start, min(start + per_block, b * h), h):
            text = out[i, h0:h1]  # [heads, s, s], a view
            xp.matmul(query[i, h0:h1], key[i, h0:h1].swapaxes(-1, -2), out=text)  # Q K^T
            if relative_scores is not None:  # + R
                text += relative_scores[i, h0:h1] / text_scale if text_first else relative_scores[i, h0:h1]
            if not text_first:
                text /= text_scale
            layout = xp.matmul(layout_query[i, h0:h1], layout_key[i, h0:h1].swapaxes(-1, -2))
            if not layout_first:
                layout /= layout_scale
            text += layout  # S = text + layout, as the formula adds them
    return out


def _power_of_two(x: float) -> bool:
    """Whether ``x`` is an exact power of two (so dividing by it never rounds)."""
    return x > 0 and math.frexp(x)[0] == 0.5


@kernel_for(bi_acm.bi_acm_contexts)
def bi_acm_contexts(probs, value, layout_value):
    """`refimpl.bi_acm.bi_acm_contexts` in one product per head, ``P [V | V_l]``, split back
    into the two streams.

    Args:
        probs: ``[batch, heads, s, s]``.
        value: text ``[batch, heads, s, d]``.
        layout_value: layout ``[batch, heads, s, d / r]``.

    Returns:
        ``(context [batch, s, heads * d], layout_context [batch, s, heads * d / r])``.
    """
    xp = get_namespace(probs, value, layout_value)
    d = value.shape[-1]
    # [b, n, s, s] @ [b, n, s, d + d/r] -> [b, n, s, d + d/r]
    both = xp.matmul(probs, xp.concatenate([value, layout_value], axis=-1))
    return attention.merge_heads(both[..., :d]), attention.merge_heads(both[..., d:])


def _probs_in_place(scores, additive_mask, layer_head_mask):
    """The scores' own memory becomes ``softmax(scores + mask) * head_mask``."""
    if _blocked(scores):
        _masked_softmax(scores, additive_mask, scores)
    else:
        scores[...] = attention.attention_probs.formula(scores, additive_mask)
    if layer_head_mask is not None:
        scores *= layer_head_mask
    return scores


@kernel_for(attention.scaled_dot_product_attention)
def scaled_dot_product_attention(query, key, value, additive_mask=None, layer_head_mask=None):
    """`refimpl.attention.scaled_dot_product_attention` with the softmax and the head mask in
    the scores' own memory.

    Args:
        query: ``[batch, heads, q_len, head_size]``.
        key, value: ``[batch, heads, k_len, head_size]``.
        additive_mask: ``None`` or broadcastable to ``[batch, heads, q_len, k_len]``.
        layer_head_mask: ``None`` or one item of `refimpl.attention.head_masks`.

    Returns:
        ``(context [batch, q_len, heads * head_size], probs [batch, heads, q_len, k_len])``.
    """
    if is_device_array(query):
        return attention.scaled_dot_product_attention.formula(
            query, key, value, additive_mask, layer_head_mask
        )
    xp = get_namespace(query, key)
    scale = math.sqrt(query.shape[-1])
    if _power_of_two(scale):  # exact either way: divide the queries, not the scores
        scores = xp.matmul(query / scale, key.swapaxes(-1, -2))  # [b, n, l, r], fresh
    else:
        scores = xp.matmul(query, key.swapaxes(-1, -2))
        scores /= scale
    probs = _probs_in_place(scores, additive_mask, layer_head_mask)
    return attention_context(probs, value), probs


@kernel_for(bi_acm.bi_acm_attention)
def bi_acm_attention(
    query,
    key,
    value,
    layout_query,
    layout_key,
    layout_value,
    channel_shrink_ratio: int,
    additive_mask=None,
    layer_head_mask=None,
    relative_scores=None,
):
    """`refimpl.bi_acm.bi_acm_attention` with `bi_acm_scores`' single product, and the
    softmax and the head mask in the scores' own memory.

    Args:
        query, key, value: text ``[batch, heads, s, d]``.
        layout_query, layout_key, layout_value: layout ``[batch, heads, s, d / r]``.
        channel_shrink_ratio: ``r``.
        additive_mask: ``None`` or broadcastable to ``[batch, heads, s, s]``.
        layer_head_mask: ``None`` or one item of `refimpl.attention.head_masks`.
        relative_scores: ``None`` or ``[batch, heads, s, s]``.

    Returns:
        ``(context [batch, s, heads * d], layout_context [batch, s, heads * d / r],
        probs [batch, heads, s, s])``.
    """
    if is_device_array(query):
        return bi_acm.bi_acm_attention.formula(
            query, key, value, layout_query, layout_key, layout_value, channel_shrink_ratio,
            additive_mask, layer_head_mask, relative_scores,
        )  # fmt: skip
    scores = bi_acm_scores(query, key, layout_query, layout_key, channel_shrink_ratio, relative_scores)
    probs = _probs_in_place(scores, additive_mask, layer_head_mask)
    context, layout_context = bi_acm_contexts(probs, value, layout_value)
    return context, layout_context, probs


@kernel_for(ops.softmax_backward)
def softmax_backward(grad_output, probs, axis: int = -1):
    """`refimpl.ops.softmax_backward` over the last axis, per block of rows on the host threads
    (a small array, another axis or a non-contiguous one in one go).

    Args:
        grad_output: ``dL/dP``, same shape as ``probs``.
        probs: the forward's output ``P``.
        axis: the axis the forward normalised over.

    Returns:
        ``dL/dS``, same shape as ``probs``.
    """
    formula = ops.softmax_backward.formula
    if (
        is_device_array(probs)
        or axis not in (-1, probs.ndim - 1)
        or probs.ndim < 2
        or probs.nbytes <= 2 * BLOCK_BYTES
        or grad_output.shape != probs.shape
        or not (grad_output.flags.c_contiguous and probs.flags.c_contiguous)
    ):
        return formula(grad_output, probs, axis)
    xp = get_namespace(grad_output, probs)
    k = probs.shape[-1]
    dp, p = grad_output.reshape(-1, k), probs.reshape(-1, k)  # [r, k] views
    out = xp.empty(p.shape, dtype=xp.result_type(grad_output, probs))

    def block(start, stop):
        out[start:stop] = formula(dp[start:stop], p[start:stop], -1)

    for_blocks(block, p.shape[0], k * out.itemsize)
    return out.reshape(probs.shape)
