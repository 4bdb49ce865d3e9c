"""LiLT's backward: `refimpl.lilt.layers` step by step in reverse, under the same names.

Each function here is the backward of the forward function of the same name, without the
``_backward`` suffix (``lilt_layer_backward`` of ``lilt_layer``). It runs in the forward's trace
scope and:

* takes the upstream gradient(s) and the forward's inputs;
* reads what its forward recorded from the tape by the same relative names
  (`refimpl.tape.saved`; no second forward);
* records the gradient of every tensor its forward recorded, under that tensor's name (the
  caller records the block's own output, as the forward's caller records the output);
* returns the inputs' gradients and its weights' gradients keyed like the weights, so that
  ``lilt_layer_backward(..., **w["encoder"]["layer"]["0"])`` returns
  ``{"attention": {"self": {"query": {"weight", "bias"}, ...}, ...}, "intermediate": ...}``.

BiACM's one shared probability matrix ``P`` receives a different gradient from each stream
(``attention_probs`` from the text context, ``layout_attention_probs`` from the layout context),
and both streams' score gradients flow back into the one shared score (`refimpl.bi_acm.bi_acm_backward`):

    dP' = dC V^T,   dP'_l = dC_l V_l^T                       each stream's own
    dS  = softmax'(dP' * h),   dS_l = softmax'(dP'_l * h)    each stream's own
    dT  = dT_l = dS + dS_l                                   both summands get both
    dQ, dK, dR at 1/sqrt(d);   dQ_l, dK_l at 1/sqrt(d // r)

The model-level backward (``lilt_model_backward`` and one function per head class, which the
classes' ``_backward`` call) is in `refimpl.lilt.modeling_backward`, as the forward's model is
in `refimpl.lilt.modeling`.
"""

from __future__ import annotations

from typing import Any

from .. import bert, trace
from ..attention import (
    attention_probs,
    merge_heads,
    relative_position_embeddings_backward,
    relative_position_scores_key_backward,
    relative_position_scores_query_backward,
    split_heads,
)
from ..bi_acm import bi_acm_backward
from ..config import LiltConfig
from ..ops import linear_backward
from ..tape import release, saved

__all__ = [
    "lilt_self_attention_backward",
    "lilt_attention_backward",
    "lilt_layer_backward",
    "lilt_encoder_backward",
]


# --------------------------------------------------------------------------------------------
# layers (refimpl.lilt.layers in reverse)
# --------------------------------------------------------------------------------------------


def lilt_self_attention_backward(
    grad_context,
    grad_layout_context,
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
    """Backward of `refimpl.lilt.layers.lilt_self_attention`, in its scope (``attention.self``).

    Reads the six projections (and, for relative positions, the ``[s, s, d]`` distance table)
    from the tape, and ``P`` before the head mask: the recorded ``attention_probs`` without a
    head mask; with one, recomputed from the recorded ``attention_scores`` (a zero in the head
    mask erases ``P`` from ``P'``). Records the gradients of ``context``, ``layout_context``,
    both streams' probabilities and scores, both summands ``tmp_attention_scores`` and
    ``tmp_layout_attention_scores``, the relative scores and the distance table, and the six
    projections.

    Args:
        grad_context: ``dL/d context``, ``[batch, seq, hidden]``.
        grad_layout_context: ``dL/d layout_context``, ``[batch, seq, hidden / r]``.
        hidden_states, layout_inputs, attention_mask, head_mask: the forward's inputs.
        query, ..., layout_value, config: as in the forward.
        distance_embedding: as in the forward; its gradient needs only the tape's ``[s, s, d]`` table.

    Returns:
        ``(d_hidden_states [batch, seq, hidden], d_layout_inputs [batch, seq, hidden / r], grads)``
        with ``grads`` keyed like the weights (``distance_embedding`` for relative positions).
    """
    n, r = config.num_attention_heads, config.channel_shrink_ratio
    relative = config.position_embedding_type in ("relative_key", "relative_key_query")
    trace.record("context", grad_context)
    trace.record("layout_context", grad_layout_context)
    # the shared P before the head mask: [b, n, s, s]
    if head_mask is None:
        probs = saved("attention_probs")
    else:
        probs = attention_probs(saved("attention_scores"), attention_mask)
    # the forward's projections, split into heads: [b, n, s, d] and [b, n, s, d/r]
    query_layer = split_heads(saved("query"), n)
    key_layer = split_heads(saved("key"), n)
    layout_query_layer = split_heads(saved("layout_query"), n)
    layout_key_layer = split_heads(saved("layout_key"), n)

    # BiACM in reverse: each stream's context -> its P' and its S; both S into T and T_l: [b, n, s, *]
    g = bi_acm_backward(
        grad_context,
        grad_layout_context,
        query_layer,
        key_layer,
        split_heads(saved("value"), n),
        layout_query_layer,
        layout_key_layer,
        split_heads(saved("layout_value"), n),
        probs,
        r,
        head_mask,
    )
    trace.record("layout_attention_probs", g.layout_attention_probs)
    trace.record("attention_probs", g.attention_probs)
    trace.record("layout_attention_scores", g.layout_attention_scores)
    trace.record("attention_scores", g.attention_scores)
    trace.record("tmp_layout_attention_scores", g.tmp_attention_scores)
    trace.record("tmp_attention_scores", g.tmp_attention_scores)
    d_query, d_key = g.query, g.key  # [b, n, s, d]
    grads: dict[str, Any] = {}

    # relative positions: R = Q . E (+ K . E) added to Q K^T; E's rows scatter-added into the table
    if relative:
        positional = saved("distance_embedding")  # [s, s, d]
        if config.position_embedding_type == "relative_key":
            trace.record("relative_position_scores", g.relative_scores)
            d_query_rel, d_positional = relative_position_scores_query_backward(
                g.relative_scores, query_layer, positional
            )
            d_query = d_query + d_query_rel
        else:
            # both summands of R get dR: [b, n, s, s]
            trace.record("relative_position_scores_key", g.relative_scores)
            trace.record("relative_position_scores_query", g.relative_scores)
            d_key_rel, d_positional_key = relative_position_scores_key_backward(
                g.relative_scores, key_layer, positional
            )
            d_query_rel, d_positional = relative_position_scores_query_backward(
                g.relative_scores, query_layer, positional
            )
            d_key = d_key + d_key_rel
            d_query = d_query + d_query_rel
            d_positional = d_positional + d_positional_key
        # [s, s, d] -> [2 P - 1, d]
        trace.record("distance_embedding", d_positional)
        grads["distance_embedding"] = {
            "weight": relative_position_embeddings_backward(d_positional, config.max_position_embeddings)
        }

    # heads merged back: [b, n, s, d] -> [b, s, h] and [b, n, s, d/r] -> [b, s, h/r]
    d_value, d_key, d_query = merge_heads(g.value), merge_heads(d_key), merge_heads(d_query)
    d_layout_query, d_layout_key = merge_heads(g.layout_query), merge_heads(g.layout_key)
    d_layout_value = merge_heads(g.layout_value)
    trace.record("value", d_value)
    trace.record("key", d_key)
    trace.record("query", d_query)
    trace.record("layout_query", d_layout_query)
    trace.record("layout_key", d_layout_key)
    trace.record("layout_value", d_layout_value)

    # the text stream's projections: [b, s, h] -> [b, s, h] each
    dx_v, dw_v, db_v = linear_backward(d_value, hidden_states, **value)
    dx_k, dw_k, db_k = linear_backward(d_key, hidden_states, **key)
    dx_q, dw_q, db_q = linear_backward(d_query, hidden_states, **query)
    # the layout stream's: [b, s, h/r] -> [b, s, h/r] each
    dl_q, dw_lq, db_lq = linear_backward(d_layout_query, layout_inputs, **layout_query)
    dl_k, dw_lk, db_lk = linear_backward(d_layout_key, layout_inputs, **layout_key)
    dl_v, dw_lv, db_lv = linear_backward(d_layout_value, layout_inputs, **layout_value)
    grads.update(
        query=bert.linear_grads(dw_q, db_q),
        key=bert.linear_grads(dw_k, db_k),
        value=bert.linear_grads(dw_v, db_v),
        layout_query=bert.linear_grads(dw_lq, db_lq),
        layout_key=bert.linear_grads(dw_lk, db_lk),
        layout_value=bert.linear_grads(dw_lv, db_lv),
    )
    # each stream's input feeds its three projections: their gradients add up
    return dx_q + dx_k + dx_v, dl_q + dl_k + dl_v, grads


def lilt_attention_backward(
    grad_attention_output,
    grad_layout_attention_output,
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
    """Backward of `refimpl.lilt.layers.lilt_attention`, in its scope (``attention``).

    Each stream's add-and-norm in reverse (its input, the context, read from the tape), then
    the self-attention; the residuals add their gradients to the inputs'.

    Args:
        grad_attention_output: ``dL/d output.LayerNorm``, ``[batch, seq, hidden]``.
        grad_layout_attention_output: ``dL/d layout_output.LayerNorm``, ``[batch, seq, hidden/r]``.
        hidden_states, layout_inputs, attention_mask, head_mask: the forward's inputs.
        self, output, layout_output, config: as in the forward.

    Returns:
        ``(d_hidden_states [batch, seq, hidden], d_layout_inputs [batch, seq, hidden/r], grads)``.
    """
    eps = config.layer_norm_eps
    context, layout_context = saved("self.context"), saved("self.layout_context")  # [b, s, h], [b, s, h/r]
    # layout: LayerNorm(dense(layout_context) + layout_inputs): [b, s, h/r]
    with trace.scope("layout_output"):
        d_layout_context, d_layout_residual, layout_output_grads = bert.add_and_norm_backward(
            grad_layout_attention_output,
            layout_context,
            layout_inputs,
            **layout_output,
            layer_norm_eps=eps,
        )
    # text: LayerNorm(dense(context) + hidden_states): [b, s, h]
    with trace.scope("output"):
        d_context, d_residual, output_grads = bert.add_and_norm_backward(
            grad_attention_output, context, hidden_states, **output, layer_norm_eps=eps
        )
    # both streams' contexts back through BiACM and the six projections
    with trace.scope("self"):
        d_hidden, d_layout, self_grads = lilt_self_attention_backward(
            d_context,
            d_layout_context,
            hidden_states,
            layout_inputs,
            attention_mask,
            head_mask,
            **self,
            config=config,
        )
    grads = {"self": self_grads, "output": output_grads, "layout_output": layout_output_grads}
    return d_hidden + d_residual, d_layout + d_layout_residual, grads


def lilt_layer_backward(
    grad_layer_output,
    grad_layout_layer_output,
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
    """Backward of `refimpl.lilt.layers.lilt_layer`, in its scope (``encoder.layer.<i>``).

    Each stream's feed-forward block in reverse (``output`` then ``intermediate``, reading the
    attention outputs and the intermediate activations from the tape), then the attention.
    Records the gradients of ``intermediate`` and ``layout_intermediate`` (the blocks' outputs).

    Args:
        grad_layer_output: ``dL/d`` the layer's text output, ``[batch, seq, hidden]``.
        grad_layout_layer_output: ``dL/d`` its layout output, ``[batch, seq, hidden/r]``.
        hidden_states, layout_inputs, attention_mask, head_mask: the forward's inputs.
        attention, intermediate, output, layout_intermediate, layout_output, config: as in the forward.

    Returns:
        ``(d_hidden_states [batch, seq, hidden], d_layout_inputs [batch, seq, hidden/r], grads)``.
    """
    act, eps = config.hidden_act, config.layer_norm_eps
    # the forward's block inputs: [b, s, h], [b, s, h/r], [b, s, i], [b, s, i/r]
    attention_output = saved("attention.output.LayerNorm")
    layout_attention_output = saved("attention.layout_output.LayerNorm")
    inner, layout_inner = saved("intermediate"), saved("layout_intermediate")
    # layout feed-forward: [b, s, h/r] <- [b, s, i/r] <- [b, s, h/r]
    with trace.scope("layout_output"):
        d_layout_inner, d_layout_residual, layout_output_grads = bert.add_and_norm_backward(
            grad_layout_layer_output,
            layout_inner,
            layout_attention_output,
            **layout_output,
            layer_norm_eps=eps,
        )
    with trace.scope("layout_intermediate"):
        trace.output(d_layout_inner)
        d_layout_attention_output, layout_intermediate_grads = bert.intermediate_backward(
            d_layout_inner, layout_attention_output, **layout_intermediate, hidden_act=act
        )
    # text feed-forward: [b, s, h] <- [b, s, i] <- [b, s, h]
    with trace.scope("output"):
        d_inner, d_residual, output_grads = bert.add_and_norm_backward(
            grad_layer_output, inner, attention_output, **output, layer_norm_eps=eps
        )
    with trace.scope("intermediate"):
        trace.output(d_inner)
        d_attention_output, intermediate_grads = bert.intermediate_backward(
            d_inner, attention_output, **intermediate, hidden_act=act
        )
    # the attention, with both residual gradients added: [b, s, h], [b, s, h/r]
    with trace.scope("attention"):
        d_hidden, d_layout, attention_grads = lilt_attention_backward(
            d_attention_output + d_residual,
            d_layout_attention_output + d_layout_residual,
            hidden_states,
            layout_inputs,
            attention_mask,
            head_mask,
            **attention,
            config=config,
        )
    grads = {
        "attention": attention_grads,
        "intermediate": intermediate_grads,
        "output": output_grads,
        "layout_intermediate": layout_intermediate_grads,
        "layout_output": layout_output_grads,
    }
    return d_hidden, d_layout, grads


def lilt_encoder_backward(
    grad_last_hidden_state,
    grad_layout_last_hidden_state,
    hidden_states,
    layout_inputs,
    attention_mask,
    head_masks,
    *,
    layer,
    config: LiltConfig,
):
    """Backward of `refimpl.lilt.layers.lilt_encoder`, in its scope (``encoder``): the layers in
    reverse order, each layer's inputs read from the tape (the previous layer's recorded outputs).

    Records each layer's output gradients (``layer.<i>`` and ``layer.<i>.layout``).

    Args:
        grad_last_hidden_state: ``dL/d`` the last layer's text output, ``[batch, seq, hidden]``.
        grad_layout_last_hidden_state: ``dL/d`` its layout output, ``[batch, seq, hidden/r]``.
        hidden_states, layout_inputs: the encoder's inputs (the two embedding streams).
        attention_mask, head_masks: as in the forward.
        layer, config: as in the forward.

    Returns:
        ``(d_hidden_states [batch, seq, hidden], d_layout_inputs [batch, seq, hidden/r],
        {"layer": {"0": ..., "1": ...}})``.
    """
    d_hidden, d_layout = grad_last_hidden_state, grad_layout_last_hidden_state
    layer_grads = {}
    for i in reversed(range(config.num_hidden_layers)):
        # layer i's inputs: the embeddings, or layer i - 1's outputs: [b, s, h], [b, s, h/r]
        x, x_layout = (
            (hidden_states, layout_inputs)
            if i == 0
            else (saved(f"layer.{i - 1}"), saved(f"layer.{i - 1}.layout"))
        )
        with trace.scope(f"layer.{i}"):
            trace.output(d_hidden)
            trace.record("layout", d_layout)
            d_hidden, d_layout, layer_grads[str(i)] = lilt_layer_backward(
                d_hidden, d_layout, x, x_layout, attention_mask, head_masks[i], **layer[str(i)], config=config
            )
        release(f"layer.{i}")  # layer i's saved activations: no later backward reads them
    return d_hidden, d_layout, {"layer": layer_grads}
