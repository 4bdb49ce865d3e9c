"""LiLT's encoder: bi-directional attention (BiACM) over a text and a layout stream, then a
feed-forward block per stream.

The text stream has ``hidden`` features in heads of ``d = hidden / heads``; the layout stream
has ``hidden / r`` features in heads of ``d / r`` (``r = channel_shrink_ratio``). Each stream
projects its own queries, keys and values; the two share one attention score (the paper's
BiACM):

    S = Q K^T / sqrt(d) + Q_l K_l^T / sqrt(d // r)                    [batch, heads, seq, seq]
    P = softmax(S + mask)
    context = P V,   layout_context = P V_l

Weights arrive as keyword sub-dicts named like the checkpoint's keys, so
``lilt_layer(h, l, mask, None, **w["encoder"]["layer"]["0"], config=config)`` receives
``attention``, ``intermediate``, ``output``, ``layout_intermediate`` and ``layout_output``.
Config values are read from ``config`` (a `refimpl.config.LiltConfig`) by name.
"""

from __future__ import annotations

from .. import bert, trace
from ..attention import (
    relative_position_embeddings,
    relative_position_scores_key,
    relative_position_scores_query,
    split_heads,
)
from ..bi_acm import bi_acm_attention
from ..config import LiltConfig
from ..ops import linear

__all__ = ["lilt_self_attention", "lilt_attention", "lilt_layer", "lilt_encoder"]


def lilt_self_attention(
    hidden_states,
    layout_inputs,
    attention_mask,
    head_mask,
    *,
    query,
    key,
    value,
    layout_query,
    layout_key,
    layout_value,
    distance_embedding=None,
    config: LiltConfig,
):
    """LiltSelfAttention: one shared score ``S``, separate values for the two streams.

    Args:
        hidden_states: text ``[batch, seq, hidden]``.
        layout_inputs: layout ``[batch, seq, hidden / r]``.
        attention_mask: additive ``[batch, 1, 1|seq, seq]`` from
            `refimpl.attention.extended_attention_mask`, or ``None``.
        head_mask: ``None`` or broadcastable to ``[batch, heads, seq, seq]``.
        query, key, value: ``{"weight": [hidden, hidden], "bias": [hidden]}``.
        layout_query, layout_key, layout_value: ``{"weight": [hidden/r, hidden/r], "bias": [hidden/r]}``.
        distance_embedding: ``{"weight": [2 * max_position_embeddings - 1, d]}`` for relative positions.
        config: uses ``num_attention_heads``, ``channel_shrink_ratio``,
            ``position_embedding_type``, ``max_position_embeddings``.

    Returns:
        ``(context [batch, seq, hidden], layout_context [batch, seq, hidden / r],
        attention_probs [batch, heads, seq, seq])``; both streams use the one ``attention_probs``.
    """
    n, r = config.num_attention_heads, config.channel_shrink_ratio
    # layout stream projections, split into heads: [b, s, h/r] -> [b, n, s, d/r]
    layout_value_layer = linear(layout_inputs, **layout_value)
    trace.record("layout_value", layout_value_layer)
    layout_key_layer = linear(layout_inputs, **layout_key)
    trace.record("layout_key", layout_key_layer)
    layout_query_layer = linear(layout_inputs, **layout_query)
    trace.record("layout_query", layout_query_layer)
    layout_value_layer = split_heads(layout_value_layer, n)
    layout_key_layer = split_heads(layout_key_layer, n)
    layout_query_layer = split_heads(layout_query_layer, n)

    # text stream projections, split into heads: [b, s, h] -> [b, n, s, d]
    query_layer = linear(hidden_states, **query)
    trace.record("query", query_layer)
    key_layer = linear(hidden_states, **key)
    trace.record("key", key_layer)
    value_layer = linear(hidden_states, **value)
    trace.record("value", value_layer)
    query_layer = split_heads(query_layer, n)
    key_layer = split_heads(key_layer, n)
    value_layer = split_heads(value_layer, n)

    # relative positions (relative_key / relative_key_query) add R to the text stream's Q K^T: [b, n, s, s]
    relative_scores = None
    if config.position_embedding_type in ("relative_key", "relative_key_query"):
        seq = hidden_states.shape[1]
        # [s, s, d] embeddings of the distances l - r
        positional = relative_position_embeddings(
            distance_embedding["weight"], seq, config.max_position_embeddings
        )
        trace.record("distance_embedding", positional)
        if config.position_embedding_type == "relative_key":
            relative_scores = relative_position_scores_query(query_layer, positional)
            trace.record("relative_position_scores", relative_scores)
        else:
            relative_query = relative_position_scores_query(query_layer, positional)
            trace.record("relative_position_scores_query", relative_query)
            relative_key = relative_position_scores_key(key_layer, positional)
            trace.record("relative_position_scores_key", relative_key)
            relative_scores = relative_query + relative_key

    # BiACM: S = Q K^T / sqrt(d) + Q_l K_l^T / sqrt(d // r) shared by both streams, P = softmax(S + mask),
    # then both streams' contexts P V and P V_l, heads merged: [b, s, h], [b, s, h/r], [b, n, s, s]
    context, layout_context, probs = bi_acm_attention(
        query_layer,
        key_layer,
        value_layer,
        layout_query_layer,
        layout_key_layer,
        layout_value_layer,
        r,
        attention_mask,
        head_mask,
        relative_scores,
    )
    return context, layout_context, probs


def lilt_attention(
    hidden_states,
    layout_inputs,
    attention_mask,
    head_mask,
    *,
    self,
    output,
    layout_output,
    config: LiltConfig,
):
    """LiltAttention: self-attention, then an add-and-norm output block per stream.

    Args:
        hidden_states, layout_inputs, attention_mask, head_mask: as in `lilt_self_attention`.
        self: the ``attention.self`` weights (``query``, ..., ``layout_value``[, ``distance_embedding``]).
        output, layout_output: ``{"dense", "LayerNorm"}`` weights of the two streams.
        config: uses ``layer_norm_eps`` and what `lilt_self_attention` uses.

    Returns:
        ``(attention_output [batch, seq, hidden], layout_attention_output [batch, seq, hidden/r],
        attention_probs [batch, heads, seq, seq])``.
    """
    with trace.scope("self"):
        context, layout_context, probs = lilt_self_attention(
            hidden_states, layout_inputs, attention_mask, head_mask, **self, config=config
        )
    # text: LayerNorm(dense(context) + hidden_states): [b, s, h]
    with trace.scope("output"):
        attention_output = bert.add_and_norm(
            context, hidden_states, **output, layer_norm_eps=config.layer_norm_eps
        )
    # layout: the same with its own weights: [b, s, h/r]
    with trace.scope("layout_output"):
        layout_attention_output = bert.add_and_norm(
            layout_context, layout_inputs, **layout_output, layer_norm_eps=config.layer_norm_eps
        )
    return attention_output, layout_attention_output, probs


def lilt_layer(
    hidden_states,
    layout_inputs,
    attention_mask,
    head_mask,
    *,
    attention,
    intermediate,
    output,
    layout_intermediate,
    layout_output,
    config: LiltConfig,
):
    """LiltLayer: attention, then a feed-forward block per stream (the layout one ``r`` times narrower).

    Args:
        hidden_states: ``[batch, seq, hidden]``.
        layout_inputs: ``[batch, seq, hidden / r]``.
        attention_mask, head_mask: as in `lilt_self_attention`.
        attention: ``{"self", "output", "layout_output"}`` weights.
        intermediate, output: the text feed-forward weights (``hidden -> intermediate -> hidden``).
        layout_intermediate, layout_output: the layout ones (``hidden/r -> intermediate/r -> hidden/r``).
        config: uses ``hidden_act``, ``layer_norm_eps`` and what `lilt_attention` uses.

    Returns:
        ``(layer_output [batch, seq, hidden], layout_layer_output [batch, seq, hidden/r],
        attention_probs [batch, heads, seq, seq])``.
    """
    act, eps = config.hidden_act, config.layer_norm_eps
    with trace.scope("attention"):
        attention_output, layout_attention_output, probs = lilt_attention(
            hidden_states, layout_inputs, attention_mask, head_mask, **attention, config=config
        )
    # text feed-forward: [b, s, h] -> [b, s, i] -> [b, s, h]
    with trace.scope("intermediate"):
        inner = bert.intermediate(attention_output, **intermediate, hidden_act=act)
        trace.output(inner)
    with trace.scope("output"):
        layer_output = bert.add_and_norm(inner, attention_output, **output, layer_norm_eps=eps)
    # layout feed-forward: [b, s, h/r] -> [b, s, i/r] -> [b, s, h/r]
    with trace.scope("layout_intermediate"):
        layout_inner = bert.intermediate(layout_attention_output, **layout_intermediate, hidden_act=act)
        trace.output(layout_inner)
    with trace.scope("layout_output"):
        layout_layer_output = bert.add_and_norm(
            layout_inner, layout_attention_output, **layout_output, layer_norm_eps=eps
        )
    return layer_output, layout_layer_output, probs


def lilt_encoder(
    hidden_states,
    layout_inputs,
    attention_mask,
    head_masks,
    *,
    layer,
    config: LiltConfig,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
):
    """LiltEncoder: the layers in order, collecting per-layer states and probabilities on request.

    Args:
        hidden_states: text embeddings ``[batch, seq, hidden]``.
        layout_inputs: layout embeddings ``[batch, seq, hidden / r]``.
        attention_mask: additive mask (see `refimpl.attention.extended_attention_mask`) or ``None``.
        head_masks: one item per layer from `refimpl.attention.head_masks`.
        layer: ``{"0": layer weights, "1": ...}``.
        config: the model config (see `lilt_layer`).
        output_hidden_states, output_attentions: collect the tuples below.

    Returns:
        dict with ``last_hidden_state``, ``layout_last_hidden_state`` and, on request,
        ``hidden_states`` / ``layout_hidden_states`` (embeddings + every layer's output) and
        ``attentions`` / ``layout_attentions`` (every layer's probabilities), as tuples.
    """
    # the per-layer tuples are kept only on request: every layer's probabilities are
    # [b, n, s, s] each, which would otherwise stay alive for the whole forward
    all_hidden, all_layout_hidden, all_probs = [hidden_states], [layout_inputs], []
    for i in range(config.num_hidden_layers):
        with trace.scope(f"layer.{i}"):
            hidden_states, layout_inputs, probs = lilt_layer(
                hidden_states, layout_inputs, attention_mask, head_masks[i], **layer[str(i)], config=config
            )
            # the layer's outputs, as a hook on it sees the pair: [b, s, h], [b, s, h/r]
            trace.output(hidden_states)
            trace.record("layout", layout_inputs)
        if output_hidden_states:
            all_hidden.append(hidden_states)
            all_layout_hidden.append(layout_inputs)
        if output_attentions:
            all_probs.append(probs)
    return {
        "last_hidden_state": hidden_states,
        "layout_last_hidden_state": layout_inputs,
        "hidden_states": tuple(all_hidden) if output_hidden_states else None,
        "layout_hidden_states": tuple(all_layout_hidden) if output_hidden_states else None,
        "attentions": tuple(all_probs) if output_attentions else None,
        "layout_attentions": tuple(all_probs) if output_attentions else None,
    }
