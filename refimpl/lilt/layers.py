"""LiLT's encoder: bi-directional attention over a text and a layout stream, feed-forward blocks, pooler.

Both streams share one set of attention probabilities: each stream's scores are scaled by
its own head size, the two are summed, masked and normalised. The oracle computes the
softmax twice, once per stream, on bit-identical sums; we compute it once, and the
``attentions`` and ``layout_attentions`` outputs are the same arrays. The text stream has ``hidden``
features with heads of ``d = hidden / heads``; the layout stream has ``hidden / r``
features with heads of ``d / r`` (``r = channel_shrink_ratio``).

Weight arguments carry checkpoint names: ``lilt_layer(..., **w["encoder"]["layer"]["0"])``
receives ``attention``, ``intermediate``, ``output``, ``layout_intermediate`` and
``layout_output`` sub-dicts.
"""

from __future__ import annotations

import math

from .. import trace
from ..attention import (
    apply_head_mask,
    attention_scores,
    merge_heads,
    relative_position_embeddings,
    relative_position_scores_key,
    relative_position_scores_query,
    split_heads,
)
from ..backend import get_namespace
from ..ops import gelu, get_activation, layer_norm, linear, softmax

__all__ = [
    "lilt_self_attention",
    "add_and_norm",
    "intermediate_act",
    "lilt_attention",
    "lilt_layer",
    "lilt_encoder",
    "pooler",
]


def lilt_self_attention(
    hidden_states,
    layout_inputs,
    additive_mask,
    layer_head_mask,
    query,
    key,
    value,
    layout_query,
    layout_key,
    layout_value,
    distance_embedding=None,
    *,
    num_heads: int,
    channel_shrink_ratio: int,
    position_embedding_type: str,
    max_position_embeddings: int,
):
    """LiltSelfAttention: shared probabilities, separate values for the two streams.

    Args:
        hidden_states: text ``[batch, seq, hidden]``.
        layout_inputs: layout ``[batch, seq, hidden / r]``.
        additive_mask: ``[batch, 1, 1|seq, seq]`` from ``extended_attention_mask`` (or ``None``).
        layer_head_mask: ``None`` or broadcastable to ``[batch, heads, seq, seq]``.
        query, key, value: ``{"weight": [hidden, hidden], "bias": [hidden]}``.
        layout_query, layout_key, layout_value: ``{"weight": [hidden/r, hidden/r], "bias": [hidden/r]}``.
        distance_embedding: ``{"weight": [2 * max_positions - 1, d]}`` for relative position types.
        num_heads, channel_shrink_ratio, position_embedding_type, max_position_embeddings: config values.

    Returns:
        ``(context, layout_context, attention_probs, layout_attention_probs)``:
        ``[batch, seq, hidden]``, ``[batch, seq, hidden / r]`` and two ``[batch, heads, seq, seq]``.
    """
    xp = get_namespace(hidden_states, layout_inputs)
    record = trace.record
    # layout projections split into heads: [b, s, h/r] -> [b, n, s, d/r]
    layout_value_layer = split_heads(record("layout_value", linear(layout_inputs, **layout_value)), num_heads)
    layout_key_layer = split_heads(record("layout_key", linear(layout_inputs, **layout_key)), num_heads)
    layout_query_layer = split_heads(record("layout_query", linear(layout_inputs, **layout_query)), num_heads)
    # text projections split into heads: [b, s, h] -> [b, n, s, d]
    query_layer = split_heads(record("query", linear(hidden_states, **query)), num_heads)
    key_layer = split_heads(record("key", linear(hidden_states, **key)), num_heads)
    value_layer = split_heads(record("value", linear(hidden_states, **value)), num_heads)

    head_size = query_layer.shape[-1]  # d
    text_scale = math.sqrt(head_size)
    layout_scale = math.sqrt(head_size // channel_shrink_ratio)  # the oracle's sqrt(d // r)

    # relative positions add to the text scores only, before scaling: [b, n, s, s]
    rel = None
    if position_embedding_type in ("relative_key", "relative_key_query"):
        # [s, s, d] embeddings of the distances l - r
        positional = record(
            "distance_embedding",
            relative_position_embeddings(
                distance_embedding["weight"], hidden_states.shape[1], max_position_embeddings
            ),
        )
        if position_embedding_type == "relative_key":
            rel = record("relative_position_scores", relative_position_scores_query(query_layer, positional))
        else:
            rel_q = record(
                "relative_position_scores_query", relative_position_scores_query(query_layer, positional)
            )
            rel_k = record(
                "relative_position_scores_key", relative_position_scores_key(key_layer, positional)
            )
            rel = rel_q + rel_k

    # The shared scores, tmp_attention_scores + tmp_layout_attention_scores in the oracle,
    # come from one product per head, since
    #     [q / sqrt(d) | lq / sqrt(d/r)] @ [k | lk]^T = q k^T / sqrt(d) + lq lk^T / sqrt(d/r).
    # It differs from the oracle's sum by rounding only (the oracle scales the [s, s] scores;
    # scaling the [s, d] queries is exact when the square roots are powers of two, as at
    # base size: 8 and 4). [b, n, s, d + d/r] each:
    queries = xp.concatenate([query_layer / text_scale, layout_query_layer / layout_scale], axis=-1)
    keys = xp.concatenate([key_layer, layout_key_layer], axis=-1)
    scores = attention_scores(queries, keys)  # [b, n, s, s]
    del queries, keys
    if rel is not None:
        scores += rel / text_scale
    if trace.active() is not None:  # golden files also get the oracle's two summands
        text_scores = attention_scores(query_layer, key_layer)  # [b, n, s, s]
        if rel is not None:
            text_scores += rel
        record("tmp_attention_scores", text_scores / text_scale)
        record(
            "tmp_layout_attention_scores",
            attention_scores(layout_query_layer, layout_key_layer) / layout_scale,
        )
    # the oracle's tmp + tmp_layout and tmp_layout + tmp are the same numbers
    record("attention_scores", scores)
    record("layout_attention_scores", scores)

    # mask, softmax and head mask once for both streams: the oracle normalises the two
    # identical sums separately and gets identical probabilities: [b, n, s, s]
    if additive_mask is not None:
        scores += additive_mask  # broadcast over heads (and queries for a 2-d mask)
    probs = apply_head_mask(softmax(scores, axis=-1, out=scores), layer_head_mask)

    # both streams' values weighted by the shared probabilities in one product per head:
    # [b, n, s, s] @ [b, n, s, d + d/r] -> [b, n, s, d + d/r]
    contexts = xp.matmul(probs, xp.concatenate([value_layer, layout_value_layer], axis=-1))
    # split the streams and merge the heads: [b, s, h/r] and [b, s, h] (recorded in the
    # oracle's order: the layout stream first)
    record("layout_attention_probs", probs)
    layout_context = record("layout_context", merge_heads(contexts[..., head_size:]))
    record("attention_probs", probs)
    context = record("context", merge_heads(contexts[..., :head_size]))
    layout_probs = probs
    return context, layout_context, probs, layout_probs


def add_and_norm(hidden_states, input_tensor, dense, LayerNorm, *, eps: float):
    """``LayerNorm(dense(hidden_states) + input_tensor)`` (BERT's SelfOutput and Output blocks).

    Args:
        hidden_states: ``[batch, seq, in_features]``.
        input_tensor: the residual ``[batch, seq, features]``.
        dense: ``{"weight": [features, in_features], "bias": [features]}``.
        LayerNorm: ``{"weight", "bias"}`` of ``[features]``.
        eps: ``config.layer_norm_eps``.

    Returns:
        ``[batch, seq, features]``.
    """
    # [b, s, in] -> [b, s, f]
    h = trace.record("dense", linear(hidden_states, **dense))
    # residual, then normalise, both in place on the fresh dense output: [b, s, f]
    h += input_tensor
    return trace.record("LayerNorm", layer_norm(h, **LayerNorm, eps=eps, out=h))


def intermediate_act(hidden_states, dense, *, hidden_act: str):
    """``act(dense(hidden_states))`` (BERT's Intermediate block).

    Args:
        hidden_states: ``[batch, seq, features]``.
        dense: ``{"weight": [inner, features], "bias": [inner]}``.
        hidden_act: a name in ``refimpl.ops.ACT2FN``.

    Returns:
        ``[batch, seq, inner]``.
    """
    # [b, s, f] -> [b, s, inner]
    h = trace.record("dense", linear(hidden_states, **dense))
    # the activation; exact GELU (every released LiLT) in place on the fresh dense output.
    # Recorded under the block's own name, as a hook on the module sees it.
    act = get_activation(hidden_act)
    return trace.record("", act(h, out=h) if act is gelu else act(h))


def lilt_attention(
    hidden_states,
    layout_inputs,
    additive_mask,
    layer_head_mask,
    self,  # noqa: N805 - the checkpoint's ``attention.self`` weights, not an instance
    output,
    layout_output,
    *,
    eps: float,
    **self_attention_config,
):
    """LiltAttention: self-attention, then an add-and-norm output block per stream.

    Args:
        hidden_states, layout_inputs, additive_mask, layer_head_mask: as in :func:`lilt_self_attention`.
        self: the ``attention.self`` weights (``query``, ..., ``layout_value``[, ``distance_embedding``]).
        output, layout_output: ``{"dense", "LayerNorm"}`` weights of the two streams.
        eps, **self_attention_config: config values.

    Returns:
        ``(attention_output [b, s, hidden], layout_attention_output [b, s, hidden/r], probs, layout_probs)``.
    """
    with trace.scope("self"):
        context, layout_context, probs, layout_probs = lilt_self_attention(
            hidden_states, layout_inputs, additive_mask, layer_head_mask, **self, **self_attention_config
        )
    # text: dense + residual + LayerNorm: [b, s, h]
    with trace.scope("output"):
        attention_output = add_and_norm(context, hidden_states, **output, eps=eps)
    # layout: the same with its own weights: [b, s, h/r]
    with trace.scope("layout_output"):
        layout_attention_output = add_and_norm(layout_context, layout_inputs, **layout_output, eps=eps)
    return attention_output, layout_attention_output, probs, layout_probs


def lilt_layer(
    hidden_states,
    layout_inputs,
    additive_mask,
    layer_head_mask,
    attention,
    intermediate,
    output,
    layout_intermediate,
    layout_output,
    *,
    hidden_act: str,
    eps: float,
    **attention_config,
):
    """LiltLayer: attention, then a feed-forward block per stream (the layout one is ``r`` times narrower).

    Args:
        hidden_states: ``[batch, seq, hidden]``.
        layout_inputs: ``[batch, seq, hidden / r]``.
        additive_mask, layer_head_mask: as in :func:`lilt_self_attention`.
        attention: ``{"self", "output", "layout_output"}`` weights.
        intermediate, output: the text feed-forward weights (``hidden -> intermediate -> hidden``).
        layout_intermediate, layout_output: the layout ones (``hidden/r -> intermediate/r -> hidden/r``).
        hidden_act, eps, **attention_config: config values.

    Returns:
        ``(layer_output [b, s, hidden], layout_layer_output [b, s, hidden/r], probs, layout_probs)``.
    """
    with trace.scope("attention"):
        attn_out, layout_attn_out, probs, layout_probs = lilt_attention(
            hidden_states,
            layout_inputs,
            additive_mask,
            layer_head_mask,
            **attention,
            eps=eps,
            **attention_config,
        )
    # text feed-forward: [b, s, h] -> [b, s, i] -> [b, s, h]
    with trace.scope("intermediate"):
        inner = intermediate_act(attn_out, **intermediate, hidden_act=hidden_act)
    with trace.scope("output"):
        layer_output = add_and_norm(inner, attn_out, **output, eps=eps)
    # layout feed-forward: [b, s, h/r] -> [b, s, i/r] -> [b, s, h/r]
    with trace.scope("layout_intermediate"):
        layout_inner = intermediate_act(layout_attn_out, **layout_intermediate, hidden_act=hidden_act)
    with trace.scope("layout_output"):
        layout_layer_output = add_and_norm(layout_inner, layout_attn_out, **layout_output, eps=eps)
    return layer_output, layout_layer_output, probs, layout_probs


def lilt_encoder(
    hidden_states,
    layout_inputs,
    additive_mask,
    head_masks,
    layer,
    *,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    **layer_config,
):
    """LiltEncoder: the layers in order, collecting per-layer states and probabilities on request.

    Args:
        hidden_states: text embeddings ``[batch, seq, hidden]``.
        layout_inputs: layout embeddings ``[batch, seq, hidden / r]``.
        additive_mask: see :func:`refimpl.attention.extended_attention_mask`.
        head_masks: one item per layer from :func:`refimpl.attention.head_masks`.
        layer: ``{"0": layer weights, "1": ...}``.
        output_hidden_states, output_attentions: collect the tuples below.
        **layer_config: config values for :func:`lilt_layer`.

    Returns:
        dict with ``last_hidden_state``, ``layout_last_hidden_state`` and, on request,
        ``hidden_states`` / ``layout_hidden_states`` (embeddings + every layer's output) and
        ``attentions`` / ``layout_attentions`` (every layer's probabilities), as tuples.
    """
    all_hidden, all_layout_hidden, all_probs, all_layout_probs = [], [], [], []
    for i in range(len(layer)):
        if output_hidden_states:
            all_hidden.append(hidden_states)
            all_layout_hidden.append(layout_inputs)
        with trace.scope(f"layer.{i}"):
            hidden_states, layout_inputs, probs, layout_probs = lilt_layer(
                hidden_states, layout_inputs, additive_mask, head_masks[i], **layer[str(i)], **layer_config
            )
            # the layer's outputs, under the layer's own name (a hook on it sees the pair)
            trace.record("", hidden_states)
            trace.record("layout", layout_inputs)
        if output_attentions:
            all_probs.append(probs)
            all_layout_probs.append(layout_probs)
    if output_hidden_states:
        all_hidden.append(hidden_states)
        all_layout_hidden.append(layout_inputs)
    return {
        "last_hidden_state": hidden_states,
        "layout_last_hidden_state": layout_inputs,
        "hidden_states": tuple(all_hidden) if output_hidden_states else None,
        "layout_hidden_states": tuple(all_layout_hidden) if output_hidden_states else None,
        "attentions": tuple(all_probs) if output_attentions else None,
        "layout_attentions": tuple(all_layout_probs) if output_attentions else None,
    }


def pooler(hidden_states, dense):
    """BERT pooler: ``tanh(dense(first token))``.

    Args:
        hidden_states: ``[batch, seq, hidden]``.
        dense: ``{"weight": [hidden, hidden], "bias": [hidden]}``.

    Returns:
        ``[batch, hidden]``.
    """
    xp = get_namespace(hidden_states)
    # [b, s, h] -> [b, h] -> [b, h]
    pooled = trace.record("dense", linear(hidden_states[:, 0], **dense))
    return trace.record("", xp.tanh(pooled))
