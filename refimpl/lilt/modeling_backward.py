"""LiLT's model-level backward: `refimpl.lilt.modeling`'s forward in reverse, per class.

``lilt_model_backward`` walks `refimpl.lilt.modeling.lilt_model` backwards: the pooler, the
encoder (last layer first, `refimpl.lilt.backward`), both embedding streams (their backwards sit
beside their forwards in `refimpl.lilt.embeddings`). One function per class then adds its head
(the heads' backwards sit beside their forwards in `refimpl.lilt.heads`): the classes'
``_backward`` call them (see `refimpl.gradients`). Each records the gradients of the output
fields (``outputs.<field>``, ``dL/dX``) at the top scope.
"""

from __future__ import annotations

from typing import Any

from .. import bert, trace
from ..backend import get_namespace
from ..config import LiltConfig
from ..ops import linear_backward
from ..tape import saved
from .backward import lilt_encoder_backward
from .embeddings import layout_embeddings_backward, text_embeddings_backward
from .heads import (
    classification_head_backward,
    question_answering_logits_backward,
    question_answering_loss_backward,
    sequence_classification_loss_backward,
    token_classification_loss_backward,
)

__all__ = [
    "lilt_model_backward",
    "lilt_base_model_backward",
    "sequence_classification_backward",
    "token_classification_backward",
    "question_answering_backward",
]


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


def record_inputs_embeds_grad(d: dict[str, Any]) -> None:
    """The gradient of the caller's ``inputs_embeds``, under the golden file's input name."""
    if d["inputs_embeds"] is not None:
        trace.record("inputs.inputs_embeds", d["inputs_embeds"])


def grad_of_loss(loss):
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
    record_inputs_embeds_grad(d)
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
            grad_of_loss(outputs.loss),
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
    record_inputs_embeds_grad(d)
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
        d_logits = token_classification_loss_backward(grad_of_loss(outputs.loss), logits, labels)
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
    record_inputs_embeds_grad(d)
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
            grad_of_loss(outputs.loss), outputs.start_logits, outputs.end_logits, *positions
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
    record_inputs_embeds_grad(d)
    return {"lilt": lilt_grads, "qa_outputs": head_grads}
