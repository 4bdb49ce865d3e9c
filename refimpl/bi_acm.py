"""LiLT's bi-directional attention (BiACM): one score shared by the text and layout streams.

The text stream's heads have ``d`` features, the layout stream's ``d // r``
(``r = channel_shrink_ratio``); each stream projects its own queries, keys and values, and
the two add their scores into one:

    S = Q K^T / sqrt(d) + Q_l K_l^T / sqrt(d // r)          [batch, heads, seq, seq]
    P = softmax(S + mask) * head_mask
    context = P V,   layout_context = P V_l

`bi_acm_attention` is that attention on split heads: `bi_acm_scores` computes ``S``,
`refimpl.attention.attention_probs` ``P`` and `bi_acm_contexts` both streams' contexts.
`bi_acm_backward` runs it in reverse: the one shared ``P`` sends ``dS`` into both streams,
``dQ, dK`` at the text scale and ``dQ_l, dK_l`` at the layout scale.

Every function here is its formula; those marked ``@replaceable`` have a fast kernel of the
same name in `refimpl.fast.attention`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from . import trace
from .attention import (
    apply_head_mask,
    attention_context,
    attention_probs,
    attention_scores,
    split_heads,
)
from .backend import get_namespace
from .ops import softmax_backward
from .switch import replaceable

__all__ = [
    "text_attention_scores",
    "layout_attention_scores",
    "bi_acm_scores",
    "bi_acm_contexts",
    "bi_acm_attention",
    "BiAcmGrads",
    "bi_acm_backward",
]


def text_attention_scores(query, key, relative_scores=None):
    """The text stream's share of the score: ``(Q K^T + R) / sqrt(d)``.

    Args:
        query, key: ``[batch, heads, s, d]``.
        relative_scores: ``None`` or ``[batch, heads, s, s]`` relative position scores ``R``.

    Returns:
        ``[batch, heads, s, s]`` (the oracle's ``tmp_attention_scores``).
    """
    scores = attention_scores(query, key)  # [b, n, s, s]
    if relative_scores is not None:
        scores = scores + relative_scores
    return scores / math.sqrt(query.shape[-1])


def layout_attention_scores(layout_query, layout_key, channel_shrink_ratio: int):
    """The layout stream's share of the score: ``Q_l K_l^T / sqrt(d // r)``.

    The scale is the square root of the *text* head size floor-divided by
    ``r = channel_shrink_ratio``, as the oracle computes it.

    Args:
        layout_query, layout_key: ``[batch, heads, s, d / r]``.
        channel_shrink_ratio: ``r``.

    Returns:
        ``[batch, heads, s, s]`` (the oracle's ``tmp_layout_attention_scores``).
    """
    head_size = layout_query.shape[-1] * channel_shrink_ratio  # d
    return attention_scores(layout_query, layout_key) / math.sqrt(head_size // channel_shrink_ratio)


@replaceable(records=("tmp_attention_scores", "tmp_layout_attention_scores"))
def bi_acm_scores(query, key, layout_query, layout_key, channel_shrink_ratio: int, relative_scores=None):
    """BiACM's shared score as the paper and the oracle write it, recording the oracle's two
    summands ``tmp_attention_scores`` and ``tmp_layout_attention_scores``:

        S = (Q K^T + R) / sqrt(d) + Q_l K_l^T / sqrt(d // r)

    Args:
        query, key: text ``[batch, heads, s, d]``.
        layout_query, layout_key: layout ``[batch, heads, s, d / r]``.
        channel_shrink_ratio: ``r``.
        relative_scores: ``None`` or ``[batch, heads, s, s]``.

    Returns:
        ``[batch, heads, s, s]``.
    """
    # the text stream's share: [b, n, s, s]
    text = text_attention_scores(query, key, relative_scores)
    trace.record("tmp_attention_scores", text)
    # the layout stream's share: [b, n, s, s]
    layout = layout_attention_scores(layout_query, layout_key, channel_shrink_ratio)
    trace.record("tmp_layout_attention_scores", layout)
    return text + layout


@replaceable
def bi_acm_contexts(probs, value, layout_value):
    """Both streams' contexts from the shared probabilities: ``merge_heads(P V)`` and
    ``merge_heads(P V_l)``.

    Args:
        probs: ``[batch, heads, s, s]``.
        value: text ``[batch, heads, s, d]``.
        layout_value: layout ``[batch, heads, s, d / r]``.

    Returns:
        ``(context [batch, s, heads * d], layout_context [batch, s, heads * d / r])``.
    """
    return attention_context(probs, value), attention_context(probs, layout_value)


@replaceable(
    records=(
        *bi_acm_scores.records,
        "attention_scores",
        "layout_attention_scores",
        "layout_attention_probs",
        "attention_probs",
        "layout_context",
        "context",
    )
)
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
    """LiLT's BiACM on split heads: one shared score, a context per stream.

        S = (Q K^T + R) / sqrt(d) + Q_l K_l^T / sqrt(d // r)
        P = softmax(S + mask) * head_mask
        context = P V,   layout_context = P V_l

    Records (the oracle computes each twice, once per stream, with equal values)
    ``attention_scores`` = ``layout_attention_scores`` (``S``), ``layout_attention_probs`` =
    ``attention_probs`` (``P``, after the head mask), ``layout_context`` and ``context``.
    Its fast kernel never forms ``S`` apart from ``P``, so it gives way to this formula while
    a recorder wants any of these names.

    Args:
        query, key, value: text ``[batch, heads, s, d]``.
        layout_query, layout_key, layout_value: layout ``[batch, heads, s, d / r]``.
        channel_shrink_ratio: ``r``.
        additive_mask: ``None`` or broadcastable to ``[batch, heads, s, s]``.
        layer_head_mask: ``None`` or one item of `head_masks`.
        relative_scores: ``None`` or ``[batch, heads, s, s]`` relative position scores ``R``.

    Returns:
        ``(context [batch, s, heads * d], layout_context [batch, s, heads * d / r],
        probs [batch, heads, s, s])``.
    """
    # S, shared by both streams: [b, n, s, s]
    scores = bi_acm_scores(query, key, layout_query, layout_key, channel_shrink_ratio, relative_scores)
    trace.record("attention_scores", scores, also="layout_attention_scores")
    # P = softmax(S + mask), then the head mask: [b, n, s, s]
    probs = apply_head_mask(attention_probs(scores, additive_mask), layer_head_mask)
    trace.record("layout_attention_probs", probs, also="attention_probs")
    # both streams' contexts from the shared P, heads merged: [b, s, n*d] and [b, s, n*d/r]
    context, layout_context = bi_acm_contexts(probs, value, layout_value)
    trace.record("layout_context", layout_context)
    trace.record("context", context)
    return context, layout_context, probs


class BiAcmGrads(NamedTuple):
    """The gradients `bi_acm_backward` returns, named as the trace names the forward tensors.

    Attributes:
        query, key, value: the text stream's ``dL/dQ``, ``dL/dK``, ``dL/dV``, ``[batch, heads, s, d]``.
        layout_query, layout_key, layout_value: the layout stream's, ``[batch, heads, s, d / r]``.
        relative_scores: ``dL/dR`` for the relative position scores ``R`` added to ``Q K^T``,
            ``[batch, heads, s, s]`` (the same for both of relative_key_query's summands).
        attention_scores: ``dL/dS`` through the text stream's softmax (the oracle's
            ``attention_scores`` before the mask), ``[batch, heads, s, s]``.
        layout_attention_scores: ``dL/dS`` through the layout stream's softmax.
        tmp_attention_scores: ``dL/dT`` for the text summand ``T = (Q K^T + R) / sqrt(d)``: the
            sum of both streams' ``dS``; ``tmp_layout_attention_scores`` (``T_l``) gets the same.
        attention_probs: ``dL/dP'`` of the text stream's probabilities (after the head mask).
        layout_attention_probs: ``dL/dP'`` of the layout stream's probabilities.
    """

    query: object
    key: object
    value: object
    layout_query: object
    layout_key: object
    layout_value: object
    relative_scores: object
    attention_scores: object
    layout_attention_scores: object
    tmp_attention_scores: object
    attention_probs: object
    layout_attention_probs: object


def bi_acm_backward(
    grad_context,
    grad_layout_context,
    query,
    key,
    value,
    layout_query,
    layout_key,
    layout_value,
    probs,
    channel_shrink_ratio: int,
    layer_head_mask=None,
    grad_probs=None,
):
    """Backward of LiLT's BiACM attention (`bi_acm_scores`, the softmax, `bi_acm_contexts`).

    The forward shares one score between the streams:

        T = (Q K^T + R) / sqrt(d)     T_l = Q_l K_l^T / sqrt(d // r)     S = T + T_l
        P = softmax(S + M)     P' = P * h     C = merge_heads(P' V)     C_l = merge_heads(P' V_l)

    The oracle computes ``P`` twice, once per stream, with equal values; each copy gets the
    gradient of its own stream's context, so the two ``dP'`` differ. Both softmax gradients
    flow into the one shared ``S``, and from there into both summands:

        dP'   = dC V^T (+ grad_probs)       dP'_l = dC_l V_l^T       dV = P'^T dC      dV_l = P'^T dC_l
        dS    = softmax_backward(dP' * h, P)        dS_l = softmax_backward(dP'_l * h, P)
        dT = dT_l = dS + dS_l
        dQ   = (dT / sqrt(d)) K           dK   = (dT / sqrt(d))^T Q          dR = dT / sqrt(d)
        dQ_l = (dT / sqrt(d // r)) K_l    dK_l = (dT / sqrt(d // r))^T Q_l

    The layout scale is the square root of the *text* head size floor-divided by ``r``, as in
    the forward (for ``d = 12, r = 4``: ``sqrt(3)``, not a power of two).

    Args:
        grad_context: ``dL/dC``, ``[batch, s, heads * d]``.
        grad_layout_context: ``dL/dC_l``, ``[batch, s, heads * d / r]``.
        query, key, value: text ``[batch, heads, s, d]``.
        layout_query, layout_key, layout_value: layout ``[batch, heads, s, d / r]``.
        probs: the shared ``P = softmax(S + M)`` *before* the head mask, ``[batch, heads, s, s]``
            (see `refimpl.attention.scaled_dot_product_attention_backward` for why).
        channel_shrink_ratio: ``r``.
        layer_head_mask: the forward's head mask or ``None``.
        grad_probs: an upstream gradient of the text stream's ``P'`` (returned as the
            attentions), ``[batch, heads, s, s]``, or ``None``.

    Returns:
        a `BiAcmGrads`.
    """
    xp = get_namespace(grad_context, grad_layout_context, query, key, layout_query, layout_key, probs)
    num_heads, head_size = query.shape[1], query.shape[-1]
    # heads split out of both context gradients: [b, s, n*d] -> [b, n, s, d], [b, n, s, d/r]
    d_context = split_heads(grad_context, num_heads)
    d_layout_context = split_heads(grad_layout_context, num_heads)
    # P' = P * h, shared by both streams: [b, n, s, s]
    masked_probs = apply_head_mask(probs, layer_head_mask)
    # C = P' V and C_l = P' V_l: each stream's dP' [b, n, s, s], and dV, dV_l
    d_masked_probs = xp.matmul(d_context, value.swapaxes(-1, -2))
    if grad_probs is not None:
        d_masked_probs = d_masked_probs + grad_probs
    d_layout_masked_probs = xp.matmul(d_layout_context, layout_value.swapaxes(-1, -2))
    d_value = xp.matmul(masked_probs.swapaxes(-1, -2), d_context)  # [b, n, s, d]
    d_layout_value = xp.matmul(masked_probs.swapaxes(-1, -2), d_layout_context)  # [b, n, s, d/r]
    # each stream's head mask and softmax: [b, n, s, s]
    d_scores = softmax_backward(apply_head_mask(d_masked_probs, layer_head_mask), probs)
    d_layout_scores = softmax_backward(apply_head_mask(d_layout_masked_probs, layer_head_mask), probs)
    # S = T + T_l in both streams: each summand gets both gradients: [b, n, s, s]
    d_summands = d_scores + d_layout_scores
    # T = (Q K^T + R) / sqrt(d): [b, n, s, d]
    d_text = d_summands / math.sqrt(head_size)
    d_query = xp.matmul(d_text, key)
    d_key = xp.matmul(d_text.swapaxes(-1, -2), query)
    # T_l = Q_l K_l^T / sqrt(d // r): [b, n, s, d/r]
    d_layout = d_summands / math.sqrt(head_size // channel_shrink_ratio)
    d_layout_query = xp.matmul(d_layout, layout_key)
    d_layout_key = xp.matmul(d_layout.swapaxes(-1, -2), layout_query)
    return BiAcmGrads(
        d_query,
        d_key,
        d_value,
        d_layout_query,
        d_layout_key,
        d_layout_value,
        d_text,
        d_scores,
        d_layout_scores,
        d_summands,
        d_masked_probs,
        d_layout_masked_probs,
    )
