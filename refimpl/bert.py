"""The BERT-style blocks both families share: self-attention, add-and-norm, intermediate, pooler.

LiLT's feed-forward and output blocks and LXMERT's language, relationship and cross layers
are all built from these, with the checkpoint's weight names as keyword sub-dicts::

    h = intermediate(x, **w["intermediate"], hidden_act="gelu")                 # [b, s, i]
    y = add_and_norm(h, x, **w["output"], layer_norm_eps=1e-12)                 # [b, s, h]

Each records its weight-owning submodules (``dense``, ``LayerNorm``, ``query``...) in the
current trace scope; the caller records the block's own output, since the oracle's modules
differ in which containers a forward hook sees. Masks, head splitting and the attention
arithmetic are in :mod:`refimpl.attention`.
"""

from __future__ import annotations

from . import trace
from .attention import scaled_dot_product_attention, split_heads
from .backend import get_namespace
from .ops import add_layer_norm_, linear, linear_act

__all__ = ["self_attention", "add_and_norm", "intermediate", "pooler"]


def self_attention(
    hidden_states, context, attention_mask, head_mask, *, query, key, value, num_attention_heads: int
):
    """BERT's self-attention module (``BertSelfAttention``; LXMERT's ``LxmertAttention``):
    queries from ``hidden_states``, keys and values from ``context``.

    Args:
        hidden_states: ``[batch, q_len, hidden]``.
        context: ``[batch, k_len, hidden]`` (``hidden_states`` itself for self-attention).
        attention_mask: additive mask broadcastable to ``[batch, 1, 1, k_len]`` (see
            :func:`refimpl.attention.extended_attention_mask`), or ``None``.
        head_mask: ``None`` or one item of :func:`refimpl.attention.head_masks`.
        query, key, value: ``{"weight": [hidden, hidden], "bias": [hidden]}``.
        num_attention_heads: ``config.num_attention_heads``.

    Returns:
        ``(context [batch, q_len, hidden], attention_probs [batch, heads, q_len, k_len])``.
    """
    n = num_attention_heads
    # project: [b, lq, h] and [b, lk, h]
    query_layer = linear(hidden_states, **query)
    trace.record("query", query_layer)
    key_layer = linear(context, **key)
    trace.record("key", key_layer)
    value_layer = linear(context, **value)
    trace.record("value", value_layer)
    # softmax(q k^T / sqrt(d) + mask) v on split heads: [b, n, l, d] -> [b, lq, h]
    return scaled_dot_product_attention(
        split_heads(query_layer, n),
        split_heads(key_layer, n),
        split_heads(value_layer, n),
        attention_mask,
        head_mask,
    )


def add_and_norm(hidden_states, input_tensor, *, dense, LayerNorm, layer_norm_eps: float):
    """``LayerNorm(dense(hidden_states) + input_tensor)``: BERT's SelfOutput and Output blocks.

    Args:
        hidden_states: ``[batch, seq, in_features]``.
        input_tensor: the residual ``[batch, seq, features]``.
        dense: ``{"weight": [features, in_features], "bias": [features]}``.
        LayerNorm: ``{"weight", "bias"}`` of ``[features]``.
        layer_norm_eps: the LayerNorm's eps (``config.layer_norm_eps``; 1e-12 for LXMERT).

    Returns:
        ``[batch, seq, features]``.
    """
    # project: [b, s, in] -> [b, s, f]
    h = linear(hidden_states, **dense)
    trace.record("dense", h)
    # residual, then normalise (in the memory of the projection, not needed again): [b, s, f]
    out = add_layer_norm_(h, input_tensor, **LayerNorm, eps=layer_norm_eps)
    trace.record("LayerNorm", out)
    return out


def _dense_output(hidden_states, *args, dense, **kwargs):
    """The block's ``dense`` output, recorded while tracing (the fused op never forms it alone)."""
    return {"dense": linear(hidden_states, **dense)}


@trace.observed_by(_dense_output)
def intermediate(hidden_states, *, dense, hidden_act: str):
    """``act(dense(hidden_states))``: BERT's Intermediate block.

    Args:
        hidden_states: ``[batch, seq, features]``.
        dense: ``{"weight": [inner, features], "bias": [inner]}``.
        hidden_act: a name in :data:`refimpl.activations.ACT2FN` (``"gelu"``, the exact
            GELU, for every released LiLT and LXMERT).

    Returns:
        ``[batch, seq, inner]``.
    """
    # act(x W^T + b): [b, s, f] -> [b, s, inner] (one fused pass for the exact GELU, see ops.linear_act)
    return linear_act(hidden_states, **dense, hidden_act=hidden_act)


def pooler(hidden_states, *, dense):
    """BERT's pooler: ``tanh(dense(first token))``.

    Args:
        hidden_states: ``[batch, seq, hidden]``.
        dense: ``{"weight": [hidden, hidden], "bias": [hidden]}``.

    Returns:
        ``[batch, hidden]``.
    """
    xp = get_namespace(hidden_states)
    # first token of every row, projected: [b, s, h] -> [b, h]
    pooled = linear(hidden_states[:, 0], **dense)
    trace.record("dense", pooled)
    # squash: [b, h]
    return xp.tanh(pooled)
