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
and both streams' score gradients flow back into the one shared score (`refimpl.bi_acm.bi_acm_backward`)::

    dP' = dC V^T,   dP'_l = dC_l V_l^T                       each stream's own
    dS  = softmax'(dP' * h),   dS_l = softmax'(dP'_l * h)    each stream's own
    dT  = dT_l = dS + dS_l                                   both summands get both
    dQ, dK, dR at 1/sqrt(d);   dQ_l, dK_l at 1/sqrt(d // r)

The model-level backward (``lilt_model_backward``, and one function per head class, which the
classes' ``_backward`` call; see `refimpl.gradients`) walks the model in reverse: head, pooler,
encoder (last layer first), both embedding streams (their backwards sit beside their forwards in
`refimpl.lilt.embeddings`, the heads' in `refimpl.lilt.heads`).
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
from ..backend import get_namespace
from ..bi_acm import bi_acm_backward
from ..config import LiltConfig
from ..ops import linear_backward
from ..tape import saved
from .embeddings import layout_embeddings_backward, text_embeddings_backward
from .heads import (
    classification_head_backward,
    question_answering_logits_backward,
    question_answering_loss_backward,
    sequence_classification_loss_backward,
    token_classification_loss_backward,
)

__all__ = [
    "lilt_self_attention_backward",
    "lilt_attention_backward",
    "lilt_layer_backward",
    "lilt_encoder_backward",
    "lilt_model_backward",
    "lilt_base_model_backward",
    "sequence_classification_backward",
    "token_classification_backward",
    "question_answering_backward",
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
    return d_hidden, d_layout, {"layer": layer_grads}


# --------------------------------------------------------------------------------------------
# the model (refimpl.lilt.modeling.lilt_model in reverse) and the heads
# --------------------------------------------------------------------------------------------


def lilt_model_backward(
    w: dict[str, Any],
    inputs: dict[str, Any],
    config: LiltConfig,
    attention_mask,
    grad_last_hidden_state,
    grad_layout_last_hidden_state=None,
    grad_pooler_output=None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Backward of `refimpl.lilt.modeling.lilt_model`, in its scope (``""`` for LiltModel,
    ``lilt`` in a head model): pooler, encoder, both embedding streams.

    Args:
        w: the nested weights the forward used.
        inputs: the checked inputs (`refimpl.lilt.inputs.check_inputs`).
        config: the model config.
        attention_mask: the forward's additive mask (`refimpl.lilt.modeling.lilt_attention_mask`).
        grad_last_hidden_state: ``dL/d`` the encoder's text output from outside the model,
            ``[batch, seq, hidden]`` (a head's, or ``G`` of ``outputs.last_hidden_state``), or ``None``.
        grad_layout_last_hidden_state: the same for the layout stream, ``[batch, seq, hidden/r]``,
            or ``None`` (the heads read the text stream only).
        grad_pooler_output: ``dL/d pooler_output``, ``[batch, hidden]``, or ``None`` (no pooler).

    Returns:
        ``(d, grads)``: ``d["last_hidden_state"]`` is ``dL/d`` the encoder's text output with the
        pooler's share added (``[batch, seq, hidden]``), ``d["inputs_embeds"]`` the gradient of
        the caller's ``inputs_embeds`` or ``None``; ``grads`` keyed like ``w``.
    """
    n = config.num_hidden_layers
    last = saved(f"encoder.layer.{n - 1}")  # [b, s, h]
    xp = get_namespace(last)
    grads: dict[str, Any] = {}
    d_last = xp.zeros_like(last) if grad_last_hidden_state is None else grad_last_hidden_state
    if grad_layout_last_hidden_state is None:
        grad_layout_last_hidden_state = xp.zeros_like(saved(f"encoder.layer.{n - 1}.layout"))
    # first-token summary: [b, h] -> [b, s, h], added to the encoder output's gradient
    if grad_pooler_output is not None:
        with trace.scope("pooler"):
            trace.output(grad_pooler_output)
            d_pooled_input, grads["pooler"] = bert.pooler_backward(grad_pooler_output, last, **w["pooler"])
        d_last = d_last + d_pooled_input
    # both streams through every layer, last first
    embedding_output, layout_embedding_output = (
        saved("embeddings.LayerNorm"),
        saved("layout_embeddings.LayerNorm"),
    )
    with trace.scope("encoder"):
        d_embedding, d_layout_embedding, grads["encoder"] = lilt_encoder_backward(
            d_last,
            grad_layout_last_hidden_state,
            embedding_output,
            layout_embedding_output,
            attention_mask,
            inputs["head_masks"],
            **w["encoder"],
            config=config,
        )
    # layout stream input: [b, s, h/r] -> the box tables
    with trace.scope("layout_embeddings"):
        grads["layout_embeddings"] = layout_embeddings_backward(
            d_layout_embedding,
            inputs["bbox"],
            inputs["position_ids"],
            **w["layout_embeddings"],
            config=config,
        )
    # text stream input: [b, s, h] -> the word, position and segment tables (or inputs_embeds)
    with trace.scope("embeddings"):
        d_inputs_embeds, grads["embeddings"] = text_embeddings_backward(
            d_embedding,
            inputs["input_ids"],
            inputs["inputs_embeds"],
            inputs["token_type_ids"],
            inputs["position_ids"],
            **w["embeddings"],
            config=config,
        )
    return {"last_hidden_state": d_last, "inputs_embeds": d_inputs_embeds}, grads


def _record_inputs_embeds(d: dict[str, Any]) -> None:
    """The gradient of the caller's ``inputs_embeds``, under the golden file's input name."""
    if d["inputs_embeds"] is not None:
        trace.record("inputs.inputs_embeds", d["inputs_embeds"])


def _grad_loss(loss):
    """``dL/dloss = 1`` when ``L`` is the loss, recorded as the trace names the loss (``loss``,
    ``outputs.loss``); a 0-d array in the loss's dtype."""
    xp = get_namespace(loss)
    one = xp.ones((), dtype=loss.dtype)
    trace.record("loss", one)
    trace.record("outputs.loss", one)
    return one


def lilt_base_model_backward(
    w: dict[str, Any], inputs: dict[str, Any], config: LiltConfig, attention_mask, outputs, grad_outputs
) -> dict[str, Any]:
    """LiltModel's backward (``L = sum_X <X, G_X>``: LiltModel has no loss).

    Records ``outputs.pooler_output``, ``outputs.layout_last_hidden_state`` (their ``G``) and
    ``outputs.last_hidden_state`` (``G`` plus the pooler's share), and ``inputs.inputs_embeds``.

    Args:
        w, inputs, config, attention_mask: as for `lilt_model_backward`.
        outputs: the forward's `refimpl.outputs.LiltModelOutput`.
        grad_outputs: ``{field: G_X}`` for its array fields: ``last_hidden_state [batch, seq, hidden]``,
            ``pooler_output [batch, hidden]``, ``layout_last_hidden_state [batch, seq, hidden / r]``.

    Returns:
        the weights' gradients keyed like ``w``.
    """
    if grad_outputs is None:
        raise ValueError("LiltModel has no loss: L needs the upstream gradients of its outputs")
    trace.record("outputs.pooler_output", grad_outputs["pooler_output"])
    trace.record("outputs.layout_last_hidden_state", grad_outputs["layout_last_hidden_state"])
    d, grads = lilt_model_backward(
        w,
        inputs,
        config,
        attention_mask,
        grad_outputs["last_hidden_state"],
        grad_outputs["layout_last_hidden_state"],
        grad_outputs["pooler_output"],
    )
    trace.record("outputs.last_hidden_state", d["last_hidden_state"])
    _record_inputs_embeds(d)
    return grads


def sequence_classification_backward(
    w: dict[str, Any],
    inputs: dict[str, Any],
    labels,
    config: LiltConfig,
    attention_mask,
    outputs,
    grad_outputs,
) -> dict[str, Any]:
    """LiltForSequenceClassification's backward: loss (every problem type), head, ``lilt``.

    Args:
        w: the head model's nested weights (``lilt``, ``classifier``).
        inputs, config, attention_mask: as for `lilt_model_backward`.
        labels: the forward's labels (``L`` is their loss: ``[batch]`` or ``[batch, labels]``) or ``None``.
        outputs: the forward's `refimpl.outputs.SequenceClassifierOutput`.
        grad_outputs: ``{"logits": G [batch, labels]}`` without labels, else ``None``.

    Returns:
        the weights' gradients keyed like ``w``.
    """
    logits = outputs.logits  # [b, labels]
    if grad_outputs is None:
        d_logits = sequence_classification_loss_backward(
            _grad_loss(outputs.loss),
            logits,
            labels,
            num_labels=config.num_labels,
            problem_type=config.problem_type,
        )
    else:
        d_logits = grad_outputs["logits"]
    trace.record("outputs.logits", d_logits)
    # [b, labels] -> [b, s, h]
    with trace.scope("lilt"):
        last = saved(f"encoder.layer.{config.num_hidden_layers - 1}")
    with trace.scope("classifier"):
        d_last, head_grads = classification_head_backward(d_logits, last, **w["classifier"])
    with trace.scope("lilt"):
        d, lilt_grads = lilt_model_backward(w["lilt"], inputs, config, attention_mask, d_last)
    _record_inputs_embeds(d)
    return {"lilt": lilt_grads, "classifier": head_grads}


def token_classification_backward(
    w: dict[str, Any],
    inputs: dict[str, Any],
    labels,
    config: LiltConfig,
    attention_mask,
    outputs,
    grad_outputs,
) -> dict[str, Any]:
    """LiltForTokenClassification's backward: loss (``-100`` ignored), classifier, ``lilt``.

    Args:
        w: the head model's nested weights (``lilt``, ``classifier``).
        inputs, config, attention_mask: as for `lilt_model_backward`.
        labels: the forward's integer ``[batch, seq]`` labels or ``None``.
        outputs: the forward's `refimpl.outputs.TokenClassifierOutput`.
        grad_outputs: ``{"logits": G [batch, seq, labels]}`` without labels, else ``None``.

    Returns:
        the weights' gradients keyed like ``w``.
    """
    logits = outputs.logits  # [b, s, labels]
    if grad_outputs is None:
        d_logits = token_classification_loss_backward(_grad_loss(outputs.loss), logits, labels)
    else:
        d_logits = grad_outputs["logits"]
    trace.record("outputs.logits", d_logits)
    # [b, s, labels] -> [b, s, h]
    with trace.scope("lilt"):
        last = saved(f"encoder.layer.{config.num_hidden_layers - 1}")
    with trace.scope("classifier"):
        trace.output(d_logits)
        d_last, d_weight, d_bias = linear_backward(d_logits, last, **w["classifier"])
    with trace.scope("lilt"):
        d, lilt_grads = lilt_model_backward(w["lilt"], inputs, config, attention_mask, d_last)
    _record_inputs_embeds(d)
    return {"lilt": lilt_grads, "classifier": bert.linear_grads(d_weight, d_bias)}


def question_answering_backward(
    w: dict[str, Any],
    inputs: dict[str, Any],
    positions,
    config: LiltConfig,
    attention_mask,
    outputs,
    grad_outputs,
) -> dict[str, Any]:
    """LiltForQuestionAnswering's backward: loss (positions clamped, ``seq`` ignored), ``qa_outputs``, ``lilt``.

    Args:
        w: the head model's nested weights (``lilt``, ``qa_outputs``).
        inputs, config, attention_mask: as for `lilt_model_backward`.
        positions: the forward's ``(start_positions, end_positions)``, integer ``[batch]`` each, or ``None``.
        outputs: the forward's `refimpl.outputs.QuestionAnsweringModelOutput`.
        grad_outputs: ``{"start_logits": G, "end_logits": G}`` (``[batch, seq]`` each) without
            labels, else ``None``.

    Returns:
        the weights' gradients keyed like ``w``.
    """
    if grad_outputs is None:
        d_start, d_end = question_answering_loss_backward(
            _grad_loss(outputs.loss), outputs.start_logits, outputs.end_logits, *positions
        )
    else:
        d_start, d_end = grad_outputs["start_logits"], grad_outputs["end_logits"]
    trace.record("outputs.start_logits", d_start)
    trace.record("outputs.end_logits", d_end)
    # 2 x [b, s] -> [b, s, h]
    with trace.scope("lilt"):
        last = saved(f"encoder.layer.{config.num_hidden_layers - 1}")
    with trace.scope("qa_outputs"):
        d_last, head_grads = question_answering_logits_backward(d_start, d_end, last, **w["qa_outputs"])
    with trace.scope("lilt"):
        d, lilt_grads = lilt_model_backward(w["lilt"], inputs, config, attention_mask, d_last)
    _record_inputs_embeds(d)
    return {"lilt": lilt_grads, "qa_outputs": head_grads}
