"""The BERT-style blocks both families share: multi-head attention, add-and-norm, intermediate, pooler.

LiLT's feed-forward and output blocks and LXMERT's language, relationship and cross layers
are all built from these, with the checkpoint's weight names as keyword sub-dicts::

    h = intermediate(x, **w["intermediate"], hidden_act="gelu")                 # [b, s, i]
    y = add_and_norm(h, x, **w["output"], layer_norm_eps=1e-12)                 # [b, s, h]

Each records its weight-owning submodules (``dense``, ``LayerNorm``, ``query``...) in the
current trace scope; the caller records the block's own output, since the oracle's modules
differ in which containers a forward hook sees. Masks, head splitting and the attention
arithmetic are in `refimpl.attention`.

``add_and_norm`` and ``intermediate`` are replaceable: their fast kernels
(`refimpl.fast.dense`) fuse the bias, the residual, the LayerNorm or the GELU into the
projection's own output, block by block, and so skip the ``dense`` tensor they record; while a
recorder wants it, these formulas run.
"""

from __future__ import annotations

from . import trace
from .activations import get_activation
from .attention import scaled_dot_product_attention, split_heads
from .backend import get_namespace
from .ops import layer_norm, linear
from .switch import replaceable

__all__ = ["multi_head_attention", "add_and_norm", "intermediate", "pooler"]


def multi_head_attention(
    hidden_states,
    key_value_states,
    attention_mask,
    head_mask,
    *,
    query,
    key,
    value,
    num_attention_heads: int,
):
    """BERT's attention module (``BertSelfAttention``; LXMERT's ``LxmertAttention``): queries
    from ``hidden_states``, keys and values from ``key_value_states``.

    Self-attention passes ``hidden_states`` twice; cross-attention passes the other
    modality's states as ``key_value_states``.

    Args:
        hidden_states: ``[batch, q_len, hidden]``.
        key_value_states: ``[batch, k_len, hidden]``.
        attention_mask: additive mask broadcastable to ``[batch, 1, 1, k_len]`` (see
            `refimpl.attention.extended_attention_mask`), or ``None``.
        head_mask: ``None`` or one item of `refimpl.attention.head_masks`.
        query, key, value: ``{"weight": [hidden, hidden], "bias": [hidden]}``.
        num_attention_heads: ``config.num_attention_heads``.

    Returns:
        ``(context [batch, q_len, hidden], attention_probs [batch, heads, q_len, k_len])``.
    """
    n = num_attention_heads
    # project: [b, lq, h] and [b, lk, h]
    query_layer = linear(hidden_states, **query)
    trace.record("query", query_layer)
    key_layer = linear(key_value_states, **key)
    trace.record("key", key_layer)
    value_layer = linear(key_value_states, **value)
    trace.record("value", value_layer)
    # softmax(q k^T / sqrt(d) + mask) v on split heads: [b, n, l, d] -> [b, lq, h]
    return scaled_dot_product_attention(
        split_heads(query_layer, n),
        split_heads(key_layer, n),
        split_heads(value_layer, n),
        attention_mask,
        head_mask,
    )


@replaceable(records=("dense", "LayerNorm"))
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
    # residual, then normalise: [b, s, f]
    out = layer_norm(h + input_tensor, **LayerNorm, eps=layer_norm_eps)
    trace.record("LayerNorm", out)
    return out


@replaceable(records=("dense",))
def intermediate(hidden_states, *, dense, hidden_act: str):
    """``act(dense(hidden_states))``: BERT's Intermediate block.

    Records the projection (the activation's input) as ``dense``; the caller records the
    block's output.

    Args:
        hidden_states: ``[batch, seq, features]``.
        dense: ``{"weight": [inner, features], "bias": [inner]}``.
        hidden_act: a name in `refimpl.activations.ACT2FN` (``"gelu"``, the exact GELU, for
            every released LiLT and LXMERT).

    Returns:
        ``[batch, seq, inner]``.
    """
    # project: [b, s, f] -> [b, s, inner]
    h = linear(hidden_states, **dense)
    trace.record("dense", h)
    # activation: [b, s, inner]
    return get_activation(hidden_act)(h)


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
