"""Multi-head attention, one step per function, shared by LiLT and LXMERT.

Each function is one step of transformers' BERT-family self-attention, in the oracle's order
of operations (so float64 results agree to the last few bits):

    q = split_heads(linear(x, **query), n)                          # [b, n, s, d]
    k = split_heads(linear(x, **key), n)                            # [b, n, s, d]
    v = split_heads(linear(x, **value), n)                          # [b, n, s, d]
    context, probs = scaled_dot_product_attention(q, k, v, mask)    # [b, s, n*d], [b, n, s, s]

where `scaled_dot_product_attention` is ``softmax(q k^T / sqrt(d) + mask) @ v``, written out
step by step with `attention_scores`, `attention_probs`, `apply_head_mask` and
`attention_context`. ``context`` is always the attention's output ``P V`` (heads merged).

Masks follow ``PreTrainedModel.get_extended_attention_mask`` / ``get_head_mask``:
`extended_attention_mask` makes the additive ``(1 - mask) * finfo(dtype).min`` mask,
`head_masks` one multiplicative head mask per layer. Relative position scores
(``position_embedding_type`` ``relative_key`` / ``relative_key_query``) come from
`relative_position_embeddings` + `relative_position_scores_query` /
`relative_position_scores_key`.

LiLT's bi-directional attention (BiACM), built from these steps, is in `refimpl.bi_acm`.
Each step's backward sits right after it (``scaled_dot_product_attention_backward``...).

Every function here is its formula. Those marked ``@replaceable`` have a fast kernel of the
same name in `refimpl.fast.attention` (fused products, blocks of heads on the host threads),
which runs instead unless ``refimpl.reference()`` is on.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from . import trace
from .backend import get_namespace
from .ops import embedding, embedding_backward, softmax, softmax_backward
from .switch import replaceable

__all__ = [
    "split_heads",
    "merge_heads",
    "extended_attention_mask",
    "head_masks",
    "attention_scores",
    "attention_probs",
    "apply_head_mask",
    "attention_context",
    "scaled_dot_product_attention",
    "AttentionGrads",
    "scaled_dot_product_attention_backward",
    "relative_position_embeddings",
    "relative_position_embeddings_backward",
    "relative_position_scores_query",
    "relative_position_scores_query_backward",
    "relative_position_scores_key",
    "relative_position_scores_key_backward",
]


def split_heads(x, num_heads: int):
    """Split the feature axis into heads (transformers' ``transpose_for_scores``).

    Args:
        x: ``[batch, seq, num_heads * head_size]``.
        num_heads: number of heads.

    Returns:
        ``[batch, num_heads, seq, head_size]`` (a view).
    """
    b, s, f = x.shape
    # [b, s, n*d] -> [b, s, n, d] -> [b, n, s, d]
    return x.reshape(b, s, num_heads, f // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """Inverse of `split_heads`.

    Args:
        x: ``[batch, num_heads, seq, head_size]``.

    Returns:
        ``[batch, seq, num_heads * head_size]`` (contiguous).
    """
    xp = get_namespace(x)
    b, n, s, d = x.shape
    # [b, n, s, d] -> [b, s, n, d] -> [b, s, n*d]
    return xp.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(b, s, n * d)


def extended_attention_mask(attention_mask, dtype):
    """The additive mask of ``PreTrainedModel.get_extended_attention_mask`` (encoder case).

    ``mask`` is cast to ``dtype`` first, then ``(1.0 - mask) * finfo(dtype).min``: 0 where a
    key is attended to, ``finfo.min`` where it is masked (values other than 0/1 are used as
    given, as in the oracle).

    Args:
        attention_mask: ``[batch, seq]`` (a padding mask over keys) or
            ``[batch, from_seq, to_seq]`` (a full mask per query), any numeric or bool dtype;
            a size-1 leading axis broadcasts over the batch.
        dtype: the float dtype of the attention scores.

    Returns:
        ``[batch, 1, 1, seq]`` or ``[batch, 1, from_seq, to_seq]`` in ``dtype``.
    """
    xp = get_namespace(attention_mask)
    if attention_mask.ndim == 2:
        m = attention_mask[:, None, None, :]  # [b, s] -> [b, 1, 1, s]
    else:
        m = attention_mask[:, None, :, :]  # [b, s_q, s_k] -> [b, 1, s_q, s_k]
    m = m.astype(dtype)
    # 0 where kept, finfo.min where masked
    return (1.0 - m) * xp.finfo(dtype).min


def head_masks(head_mask, num_layers: int, num_heads: int, dtype) -> list:
    """One multiplicative head mask per layer, as ``PreTrainedModel.get_head_mask``.

    Args:
        head_mask: ``None``; ``[num_heads]`` (the same for every layer);
            ``[num_layers, num_heads]``; or already 5-d ``[num_layers, batch|1, num_heads|1,
            seq|1, seq|1]`` (checked by `refimpl.checks.check_head_mask`). 1 keeps a head,
            0 drops it; fractions scale it. A size-1 head axis broadcasts over the heads, as
            in the oracle.
        num_layers: layers of the encoder the mask is for.
        num_heads: heads per layer.
        dtype: the model's float dtype (the oracle casts the mask to it).

    Returns:
        a list of ``num_layers`` items, each ``None`` (no mask) or an array that broadcasts
        against ``[batch, heads, seq, seq]`` probabilities: ``[1, heads, 1, 1]`` for 1-d and
        2-d masks.
    """
    if head_mask is None:
        return [None] * num_layers
    if head_mask.ndim == 1:
        per_layer = [head_mask[None, :, None, None]] * num_layers  # [n] -> [1, n, 1, 1]
    elif head_mask.ndim == 2:
        per_layer = [head_mask[i][None, :, None, None] for i in range(num_layers)]  # [L, n] -> [1, n, 1, 1]
    else:
        per_layer = [head_mask[i] for i in range(num_layers)]  # [L, b|1, n|1, s|1, s|1]
    return [m.astype(dtype) for m in per_layer]


def attention_scores(query, key):
    """Raw dot-product scores ``query @ key^T`` (not yet scaled).

    Args:
        query: ``[batch, heads, q_len, head_size]``.
        key: ``[batch, heads, k_len, head_size]``.

    Returns:
        ``[batch, heads, q_len, k_len]``.
    """
    xp = get_namespace(query, key)
    # [b, n, l, d] @ [b, n, d, r] -> [b, n, l, r]
    return xp.matmul(query, key.swapaxes(-1, -2))


@replaceable
def attention_probs(scores, additive_mask=None):
    """``softmax(scores + additive_mask)`` over the key axis.

    Args:
        scores: ``[batch, heads, q_len, k_len]`` (already scaled).
        additive_mask: ``None`` or broadcastable to ``scores`` (see `extended_attention_mask`).

    Returns:
        ``[batch, heads, q_len, k_len]``, rows summing to 1. A fully masked row is uniform,
        as in the oracle.
    """
    return softmax(scores if additive_mask is None else scores + additive_mask, axis=-1)


def apply_head_mask(probs, layer_head_mask=None):
    """``probs * layer_head_mask`` (no-op for ``None``).

    Args:
        probs: ``[batch, heads, q_len, k_len]``.
        layer_head_mask: one item of `head_masks`.

    Returns:
        ``[batch, heads, q_len, k_len]``.
    """
    if layer_head_mask is None:
        return probs
    return probs * layer_head_mask


@replaceable
def attention_context(probs, value):
    """The attention's output ``P V`` with the heads merged: ``merge_heads(probs @ value)``.

    Args:
        probs: ``[batch, heads, q_len, k_len]``.
        value: ``[batch, heads, k_len, head_size]``.

    Returns:
        ``[batch, q_len, heads * head_size]``.
    """
    xp = get_namespace(probs, value)
    # [b, n, l, r] @ [b, n, r, d] -> [b, n, l, d] -> [b, l, n*d]
    return merge_heads(xp.matmul(probs, value))


@replaceable(records=("attention_scores", "attention_probs", "context"))
def scaled_dot_product_attention(query, key, value, additive_mask=None, layer_head_mask=None):
    """BERT attention on split heads: ``softmax(q k^T / sqrt(d) + mask) * head_mask @ v``.

    The scale is a division by ``math.sqrt(head_size)``, as the oracle does. Records
    ``attention_scores`` (scaled, before the mask), ``attention_probs`` (after the head mask)
    and ``context`` (heads merged) in the current trace scope.

    Its fast kernel never forms the scores apart from the probabilities (the softmax runs in
    the scores' memory), so it gives way to this formula while a recorder wants any of the
    three names.

    Args:
        query: ``[batch, heads, q_len, head_size]``.
        key, value: ``[batch, heads, k_len, head_size]``.
        additive_mask: ``None`` or broadcastable to ``[batch, heads, q_len, k_len]``.
        layer_head_mask: ``None`` or one item of `head_masks`.

    Returns:
        ``(context, probs)``: ``[batch, q_len, heads * head_size]`` (heads merged) and the
        probabilities ``[batch, heads, q_len, k_len]`` after the head mask.
    """
    # scaled dot products: [b, n, l, d] @ [b, n, d, r] -> [b, n, l, r]
    scores = attention_scores(query, key) / math.sqrt(query.shape[-1])
    trace.record("attention_scores", scores)
    # masked keys get finfo.min, softmax over the keys, then the head mask: [b, n, l, r]
    probs = apply_head_mask(attention_probs(scores, additive_mask), layer_head_mask)
    trace.record("attention_probs", probs)
    # weighted sum of the values, heads merged back: [b, n, l, d] -> [b, l, n*d]
    context = attention_context(probs, value)
    trace.record("context", context)
    return context, probs


class AttentionGrads(NamedTuple):
    """The gradients `scaled_dot_product_attention_backward` returns, named as the trace names
    the forward tensors.

    Attributes:
        query: ``dL/dq``, ``[batch, heads, q_len, head_size]`` (split heads).
        key: ``dL/dk``, ``[batch, heads, k_len, head_size]``.
        value: ``dL/dv``, ``[batch, heads, k_len, head_size]``.
        attention_scores: ``dL/dS`` for the scaled scores ``S = q k^T / sqrt(d)`` before the
            additive mask (the trace's ``attention_scores``), ``[batch, heads, q_len, k_len]``.
        attention_probs: ``dL/dP'`` for the probabilities after the head mask (the trace's
            ``attention_probs``), ``[batch, heads, q_len, k_len]``.
    """

    query: object
    key: object
    value: object
    attention_scores: object
    attention_probs: object


def scaled_dot_product_attention_backward(
    grad_context, query, key, value, probs, layer_head_mask=None, grad_probs=None
):
    """Backward of `scaled_dot_product_attention`, step by step in reverse.

    The forward, with ``M`` the additive mask and ``h`` the head mask:

        S = q k^T / sqrt(d)      P = softmax(S + M)      P' = P * h      C = merge_heads(P' v)

    and its backward (``dC`` split into heads first):

        dP' = dC v^T (+ grad_probs)      dv = P'^T dC
        dP  = dP' * h                    dS = P * (dP - sum_k dP * P)     (softmax_backward)
        dq  = (dS / sqrt(d)) k           dk = (dS / sqrt(d))^T q

    The additive mask passes the gradient through unchanged. Where the head mask is 0, the
    head's ``P'`` is 0, so its values get no gradient and neither do its scores (``dP = 0``),
    although ``dP'`` itself is not 0 there. That is why this takes ``P`` from *before* the
    head mask: ``P'`` cannot give it back where ``h`` is 0 (nor where a 5-d head mask zeroes
    single keys).

    Args:
        grad_context: ``dL/dC``, ``[batch, q_len, heads * head_size]`` (heads merged, as the
            forward returns the context).
        query: ``[batch, heads, q_len, head_size]``.
        key, value: ``[batch, heads, k_len, head_size]``.
        probs: ``P = softmax(S + M)`` *before* the head mask, ``[batch, heads, q_len, k_len]``
            (the probabilities the forward returns when there is no head mask; with one,
            ``attention_probs(scores, additive_mask)`` from the recorded ``attention_scores``).
        layer_head_mask: the forward's head mask (one item of `head_masks`) or ``None``.
        grad_probs: an upstream gradient of ``P'`` itself (the returned attentions feed the
            loss), ``[batch, heads, q_len, k_len]``, or ``None``.

    Returns:
        an `AttentionGrads` ``(query, key, value, attention_scores, attention_probs)``.
    """
    xp = get_namespace(grad_context, query, key, value, probs)
    num_heads, head_size = query.shape[1], query.shape[-1]
    # heads split out of the context gradient: [b, l, n*d] -> [b, n, l, d]
    d_context = split_heads(grad_context, num_heads)
    # P' = P * h: [b, n, l, r]
    masked_probs = apply_head_mask(probs, layer_head_mask)
    # C = P' v: dP' = dC v^T [b, n, l, r] and dv = P'^T dC [b, n, r, d]
    d_masked_probs = xp.matmul(d_context, value.swapaxes(-1, -2))
    if grad_probs is not None:
        d_masked_probs = d_masked_probs + grad_probs
    d_value = xp.matmul(masked_probs.swapaxes(-1, -2), d_context)
    # P' = P * h: dP = dP' * h: [b, n, l, r]
    d_probs = apply_head_mask(d_masked_probs, layer_head_mask)
    # P = softmax(S + M): dS = P * (dP - sum(dP * P)); the mask is a constant: [b, n, l, r]
    d_scores = softmax_backward(d_probs, probs)
    # S = q k^T / sqrt(d): [b, n, l, r] @ [b, n, r, d] -> [b, n, l, d], and [b, n, r, l] @ [b, n, l, d]
    d_raw = d_scores / math.sqrt(head_size)
    d_query = xp.matmul(d_raw, key)
    d_key = xp.matmul(d_raw.swapaxes(-1, -2), query)
    return AttentionGrads(d_query, d_key, d_value, d_scores, d_masked_probs)


def relative_position_embeddings(distance_embedding_weight, seq_len: int, max_position_embeddings: int):
    """Distance embeddings for every (query, key) pair, as BERT's ``distance_embedding(l - r + P - 1)``.

    Args:
        distance_embedding_weight: ``[2 * max_position_embeddings - 1, head_size]``.
        seq_len: query and key length ``s``, at most ``max_position_embeddings`` (LiLT's
            ``check_inputs`` checks it).
        max_position_embeddings: ``P``.

    Returns:
        ``[s, s, head_size]``: entry ``[l, r]`` is row ``l - r + P - 1``.
    """
    xp = get_namespace(distance_embedding_weight)
    pos = xp.arange(seq_len)
    # [s, 1] - [1, s] -> [s, s] distances l - r, shifted to be >= 0
    distance = pos[:, None] - pos[None, :] + (max_position_embeddings - 1)
    # [s, s] -> [s, s, d]
    return embedding(distance, distance_embedding_weight)


def relative_position_embeddings_backward(grad_positional, max_position_embeddings: int):
    """Backward of `relative_position_embeddings`: scatter-add the ``[s, s]`` table's gradients
    into the distance embedding, row ``l - r + P - 1`` for entry ``[l, r]``.

    Each distance ``l - r`` occurs ``s - |l - r|`` times in the table, and its row collects all
    of them (`embedding_backward`, no padding row: ``distance_embedding`` has none).

    Args:
        grad_positional: ``dL/dE``, ``[s, s, head_size]``.
        max_position_embeddings: ``P``.

    Returns:
        ``dL/d distance_embedding.weight``, ``[2 * P - 1, head_size]``.
    """
    xp = get_namespace(grad_positional)
    s = grad_positional.shape[0]
    pos = xp.arange(s)
    # [s, 1] - [1, s] -> [s, s] table rows l - r + P - 1
    distance = pos[:, None] - pos[None, :] + (max_position_embeddings - 1)
    return embedding_backward(grad_positional, distance, 2 * max_position_embeddings - 1)


def relative_position_scores_query(query, positional_embedding):
    """``einsum("bhld,lrd->bhlr", query, positional_embedding)``: query-side relative scores.

    Args:
        query: ``[batch, heads, s, head_size]``.
        positional_embedding: ``[s, s, head_size]`` from `relative_position_embeddings`.

    Returns:
        ``[batch, heads, s, s]``.
    """
    xp = get_namespace(query, positional_embedding)
    b, n, s, d = query.shape
    # [b, n, l, d] -> [l, b*n, d]
    q = query.transpose(2, 0, 1, 3).reshape(s, b * n, d)
    # per query position l: [b*n, d] @ [d, r] -> [l, b*n, r]
    out = xp.matmul(q, positional_embedding.transpose(0, 2, 1))
    # [l, b*n, r] -> [b, n, l, r]
    return out.reshape(s, b, n, s).transpose(1, 2, 0, 3)


def relative_position_scores_query_backward(grad_scores, query, positional_embedding):
    """Backward of `relative_position_scores_query` (``R[b,h,l,r] = sum_d q[b,h,l,d] E[l,r,d]``).

    ``dq[b,h,l,d] = sum_r dR[b,h,l,r] E[l,r,d]`` and ``dE[l,r,d] = sum_{b,h} dR[b,h,l,r] q[b,h,l,d]``,
    each one product per query position ``l``.

    Args:
        grad_scores: ``dL/dR``, ``[batch, heads, s, s]``.
        query: ``[batch, heads, s, head_size]``.
        positional_embedding: ``E``, ``[s, s, head_size]``.

    Returns:
        ``(dquery [batch, heads, s, head_size], dpositional_embedding [s, s, head_size])``.
    """
    xp = get_namespace(grad_scores, query, positional_embedding)
    b, n, s, d = query.shape
    # [b, n, l, r] -> [l, b*n, r] and [b, n, l, d] -> [l, b*n, d]
    g = grad_scores.transpose(2, 0, 1, 3).reshape(s, b * n, s)
    q = query.transpose(2, 0, 1, 3).reshape(s, b * n, d)
    # per l: [b*n, r] @ [r, d] -> [l, b*n, d] -> [b, n, l, d]
    d_query = xp.matmul(g, positional_embedding).reshape(s, b, n, d).transpose(1, 2, 0, 3)
    # per l: [r, b*n] @ [b*n, d] -> [l, r, d]
    d_positional = xp.matmul(g.swapaxes(-1, -2), q)
    return d_query, d_positional


def relative_position_scores_key(key, positional_embedding):
    """``einsum("bhrd,lrd->bhlr", key, positional_embedding)``: key-side relative scores.

    Args:
        key: ``[batch, heads, s, head_size]``.
        positional_embedding: ``[s, s, head_size]`` from `relative_position_embeddings`.

    Returns:
        ``[batch, heads, s, s]``.
    """
    xp = get_namespace(key, positional_embedding)
    b, n, s, d = key.shape
    # [b, n, r, d] -> [r, b*n, d]
    k = key.transpose(2, 0, 1, 3).reshape(s, b * n, d)
    # per key position r: [b*n, d] @ [d, l] -> [r, b*n, l]
    out = xp.matmul(k, positional_embedding.transpose(1, 2, 0))
    # [r, b*n, l] -> [b, n, l, r]
    return out.reshape(s, b, n, s).transpose(1, 2, 3, 0)


def relative_position_scores_key_backward(grad_scores, key, positional_embedding):
    """Backward of `relative_position_scores_key` (``R[b,h,l,r] = sum_d k[b,h,r,d] E[l,r,d]``).

    ``dk[b,h,r,d] = sum_l dR[b,h,l,r] E[l,r,d]`` and ``dE[l,r,d] = sum_{b,h} dR[b,h,l,r] k[b,h,r,d]``,
    each one product per key position ``r``.

    Args:
        grad_scores: ``dL/dR``, ``[batch, heads, s, s]``.
        key: ``[batch, heads, s, head_size]``.
        positional_embedding: ``E``, ``[s, s, head_size]``.

    Returns:
        ``(dkey [batch, heads, s, head_size], dpositional_embedding [s, s, head_size])``.
    """
    xp = get_namespace(grad_scores, key, positional_embedding)
    b, n, s, d = key.shape
    # [b, n, l, r] -> [r, b*n, l] and [b, n, r, d] -> [r, b*n, d]
    g = grad_scores.transpose(3, 0, 1, 2).reshape(s, b * n, s)
    k = key.transpose(2, 0, 1, 3).reshape(s, b * n, d)
    # per r: [b*n, l] @ [l, d] -> [r, b*n, d] -> [b, n, r, d]
    d_key = xp.matmul(g, positional_embedding.transpose(1, 0, 2)).reshape(s, b, n, d).transpose(1, 2, 0, 3)
    # per r: [l, b*n] @ [b*n, d] -> [r, l, d] -> [l, r, d]
    d_positional = xp.matmul(g.swapaxes(-1, -2), k).transpose(1, 0, 2)
    return d_key, d_positional
