"""The BERT-style blocks both families share: multi-head attention, add-and-norm, intermediate, pooler.

LiLT's feed-forward and output blocks and LXMERT's language, relationship and cross layers
are all built from these, with the checkpoint's weight names as keyword sub-dicts:

    h = intermediate(x, **w["intermediate"], hidden_act="gelu")                 # [b, s, i]
    y = add_and_norm(h, x, **w["output"], layer_norm_eps=1e-12)                 # [b, s, h]

Each records its weight-owning submodules (``dense``, ``LayerNorm``, ``query``...) in the
current trace scope; the caller records the block's own output, since the oracle's modules
differ in which containers a forward hook sees. Masks, head splitting and the attention
arithmetic are in `refimpl.attention`.

Each block's backward sits right after it (``add_and_norm`` / ``add_and_norm_backward``), in
llm.c's style: it takes the upstream gradient and the block's inputs, reads what the block
recorded from the tape by the same names (`refimpl.tape.saved`), records the gradients of
those tensors under the same names, and returns the inputs' gradients and its weights'
gradients, keyed like the weights (``{"dense": {"weight", "bias"}, "LayerNorm": {...}}``).

``add_and_norm`` and ``intermediate`` are replaceable: their fast kernels
(`refimpl.fast.dense`) fuse the bias, the residual, the LayerNorm or the GELU into the
projection's own output, block by block, and so skip the ``dense`` tensor they record; while a
recorder wants it, these formulas run.
"""

from __future__ import annotations

from . import trace
from .activations import activation_backward, get_activation, tanh_backward
from .attention import (
    attention_probs,
    merge_heads,
    scaled_dot_product_attention,
    scaled_dot_product_attention_backward,
    split_heads,
)
from .backend import get_namespace
from .ops import layer_norm, layer_norm_backward, linear, linear_backward
from .switch import replaceable
from .tape import saved

__all__ = [
    "multi_head_attention",
    "multi_head_attention_backward",
    "add_and_norm",
    "add_and_norm_backward",
    "intermediate",
    "intermediate_backward",
    "pooler",
    "pooler_backward",
    "linear_grads",
]


def linear_grads(dweight, dbias) -> dict:
    """A Linear's parameter gradients keyed like its weights: ``{"weight": dW, "bias": db}``
    (no ``"bias"`` for a Linear without one)."""
    return {"weight": dweight} if dbias is None else {"weight": dweight, "bias": dbias}


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


def multi_head_attention_backward(
    grad_context,
    hidden_states,
    key_value_states,
    attention_mask,
    head_mask,
    *,
    query,
    key,
    value,
    num_attention_heads: int,
    grad_probs=None,
):
    """Backward of `multi_head_attention`, in the forward's scope: the steps in reverse.

    Reads ``query``, ``key``, ``value`` and ``attention_probs`` from the tape (with a head
    mask, the probabilities before it are recomputed from the recorded ``attention_scores``:
    the masked ones cannot give them back where the mask is 0), and records the gradients of
    ``context``, ``attention_probs``, ``attention_scores``, ``value``, ``key`` and ``query``.

    Args:
        grad_context: ``dL/dcontext``, ``[batch, q_len, hidden]``.
        hidden_states, key_value_states, attention_mask, head_mask: the forward's inputs.
        query, key, value: the Linear weights, as in the forward.
        num_attention_heads: ``config.num_attention_heads``.
        grad_probs: ``dL/d attention_probs`` from outside the block (returned attentions that
            feed the loss), ``[batch, heads, q_len, k_len]``, or ``None``.

    Returns:
        ``(d_hidden_states [batch, q_len, hidden], d_key_value_states [batch, k_len, hidden],
        {"query": ..., "key": ..., "value": ...})``; for self-attention the caller adds the two
        input gradients.
    """
    n = num_attention_heads
    trace.record("context", grad_context)
    # the probabilities before the head mask: [b, n, lq, lk]
    if head_mask is None:
        probs = saved("attention_probs")
    else:
        probs = attention_probs(saved("attention_scores"), attention_mask)
    # softmax(q k^T / sqrt(d) + mask) * head_mask @ v, in reverse: [b, n, l, d] each
    g = scaled_dot_product_attention_backward(
        grad_context,
        split_heads(saved("query"), n),
        split_heads(saved("key"), n),
        split_heads(saved("value"), n),
        probs,
        head_mask,
        grad_probs,
    )
    trace.record("attention_probs", g.attention_probs)
    trace.record("attention_scores", g.attention_scores)
    # heads merged back: [b, n, l, d] -> [b, l, h]
    d_query, d_key, d_value = merge_heads(g.query), merge_heads(g.key), merge_heads(g.value)
    trace.record("value", d_value)
    trace.record("key", d_key)
    trace.record("query", d_query)
    # the three projections: [b, l, h] -> [b, l, h]
    dx_v, dw_v, db_v = linear_backward(d_value, key_value_states, **value)
    dx_k, dw_k, db_k = linear_backward(d_key, key_value_states, **key)
    dx_q, dw_q, db_q = linear_backward(d_query, hidden_states, **query)
    grads = {
        "query": linear_grads(dw_q, db_q),
        "key": linear_grads(dw_k, db_k),
        "value": linear_grads(dw_v, db_v),
    }
    return dx_q, dx_k + dx_v, grads


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


def add_and_norm_backward(
    grad_output, hidden_states, input_tensor, *, dense, LayerNorm, layer_norm_eps: float
):
    """Backward of `add_and_norm`: ``y = LayerNorm(dense(x) + r)`` in reverse.

    Reads the projection ``dense`` from the tape (the LayerNorm's input is ``dense + r``, its
    statistics recomputed by `refimpl.ops.layer_norm_backward`), and records the gradients
    of ``LayerNorm`` (the upstream one) and ``dense``.

    Args:
        grad_output: ``dL/dy``, the block output's whole gradient, ``[batch, seq, features]``.
        hidden_states: the forward's ``x``, ``[batch, seq, in_features]``.
        input_tensor: the residual ``r``, ``[batch, seq, features]``.
        dense, LayerNorm, layer_norm_eps: as in the forward.

    Returns:
        ``(d_hidden_states [batch, seq, in_features], d_input_tensor [batch, seq, features],
        {"dense": {...}, "LayerNorm": {...}})``.
    """
    trace.record("LayerNorm", grad_output)
    # through the LayerNorm of dense + residual: [b, s, f]
    h = saved("dense")
    d_sum, d_ln_weight, d_ln_bias = layer_norm_backward(
        grad_output, h + input_tensor, **LayerNorm, eps=layer_norm_eps
    )
    trace.record("dense", d_sum)
    # the residual passes d_sum on unchanged; the projection: [b, s, f] -> [b, s, in]
    dx, dweight, dbias = linear_backward(d_sum, hidden_states, **dense)
    grads = {"dense": linear_grads(dweight, dbias), "LayerNorm": {"weight": d_ln_weight, "bias": d_ln_bias}}
    return dx, d_sum, grads


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


def intermediate_backward(grad_output, hidden_states, *, dense, hidden_act: str):
    """Backward of `intermediate`: ``act(dense(x))`` in reverse.

    Reads the activation's input ``dense`` (and output, the scope's own) from the tape and
    records the gradient of ``dense``; the caller records the block output's gradient.

    Args:
        grad_output: ``dL/d act(...)``, ``[batch, seq, inner]``.
        hidden_states: the forward's input, ``[batch, seq, features]``.
        dense, hidden_act: as in the forward.

    Returns:
        ``(d_hidden_states [batch, seq, features], {"dense": {"weight", "bias"}})``.
    """
    h = saved("dense")
    # through the activation: [b, s, inner]
    d_h = activation_backward(hidden_act, grad_output, h, saved(""))
    trace.record("dense", d_h)
    # the projection: [b, s, inner] -> [b, s, f]
    dx, dweight, dbias = linear_backward(d_h, hidden_states, **dense)
    return dx, {"dense": linear_grads(dweight, dbias)}


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


def pooler_backward(grad_output, hidden_states, *, dense):
    """Backward of `pooler`: ``tanh(dense(x[:, 0]))`` in reverse.

    Reads the pooler's output (the scope's own) from the tape and records the gradient of
    ``dense``; only the first token of each row gets a gradient.

    Args:
        grad_output: ``dL/d pooler_output``, ``[batch, hidden]``.
        hidden_states: the forward's input, ``[batch, seq, hidden]``.
        dense: as in the forward.

    Returns:
        ``(d_hidden_states [batch, seq, hidden], {"dense": {"weight", "bias"}})``.
    """
    xp = get_namespace(grad_output, hidden_states)
    # through the tanh, from its output: [b, h]
    d_pooled = tanh_backward(grad_output, saved(""))
    trace.record("dense", d_pooled)
    # the projection of the first token: [b, h] -> [b, h]
    dx_first, dweight, dbias = linear_backward(d_pooled, hidden_states[:, 0], **dense)
    d_hidden = xp.zeros_like(hidden_states)  # [b, s, h]: no other token feeds the pooler
    d_hidden[:, 0] = dx_first
    return d_hidden, {"dense": linear_grads(dweight, dbias)}
