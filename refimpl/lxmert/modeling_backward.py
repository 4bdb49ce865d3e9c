"""LXMERT's models in reverse: the base model (`refimpl.lxmert.modeling.lxmert_model`), and each
class's backward (`refimpl.gradients` calls them through ``model._backward``): the losses, the
heads (`refimpl.lxmert.heads`), then the base model, whose layers run in reverse in
`refimpl.lxmert.backward`.

As there, each function reads the forward's tensors from the tape (`refimpl.tape.saved`) in
the forward's scopes and records each tensor's gradient under the tensor's name; the class
backwards also record, at the top scope, ``outputs.<field>`` (``dL/dX``, which differs from
``G_X`` where one output feeds another, as the language output feeds the pooler) and the float
inputs ``inputs.visual_feats``, ``inputs.visual_pos`` and ``inputs.inputs_embeds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import bert, trace
from ..attention import extended_attention_mask
from ..backend import get_namespace
from ..config import LxmertConfig
from ..losses import cross_entropy_backward
from ..ops import linear_backward
from ..tape import saved
from .backward import lxmert_embeddings_backward, lxmert_encoder_backward
from .heads import (
    answer_head_backward,
    lm_prediction_head_backward,
    visual_loss_backward,
    visual_losses,
    visual_obj_head_backward,
)

__all__ = [
    "MODEL_INPUTS",
    "FLOAT_INPUTS",
    "lxmert_model_backward",
    "lxmert_model_class_backward",
    "pretraining_backward",
    "question_answering_backward",
]

#: The keyword inputs of ``LxmertModel.forward`` that `refimpl.lxmert.inputs.check_inputs` checks.
MODEL_INPUTS = (
    "input_ids",
    "visual_feats",
    "visual_pos",
    "attention_mask",
    "visual_attention_mask",
    "token_type_ids",
    "inputs_embeds",
)

#: The float inputs that get a gradient, recorded as ``inputs.<name>`` (when given).
FLOAT_INPUTS = ("visual_feats", "visual_pos", "inputs_embeds")


def _stream_outputs(config: LxmertConfig) -> tuple[str, str]:
    """The trace names (relative to the base model) of the language and vision outputs: the
    last layer of each stream (the oracle takes the hidden-state tuples' last items)."""
    c = config
    if c.x_layers:
        last = f"encoder.x_layers.{c.x_layers - 1}"
        return f"{last}.lang_output", f"{last}.visn_output"
    lang = f"encoder.layer.{c.l_layers - 1}.output"
    return lang, (f"encoder.r_layers.{c.r_layers - 1}.output" if c.r_layers else "encoder.visn_fc")


def lxmert_model_backward(
    w: dict,
    inputs: dict,
    config: LxmertConfig,
    grad_language_output=None,
    grad_vision_output=None,
    grad_pooled_output=None,
) -> tuple[dict, dict, dict]:
    """Backward of `refimpl.lxmert.modeling.lxmert_model`: the pooler, the encoder and the
    embeddings, in reverse, in the base model's scope.

    Args:
        w: nested weights of the base model.
        inputs: the checked inputs (`refimpl.lxmert.inputs.check_inputs`), as the forward got them.
        config: the model config.
        grad_language_output: ``dL/d language_output`` from outside the base model,
            ``[batch, seq, hidden]``, or ``None`` (0).
        grad_vision_output: ``dL/d vision_output``, ``[batch, boxes, hidden]``, or ``None`` (0).
        grad_pooled_output: ``dL/d pooled_output``, ``[batch, hidden]``, or ``None`` (0).

    Returns:
        ``(outputs, inputs, grads)``: ``outputs`` maps ``language_output``, ``vision_output``,
        ``pooled_output`` to their whole ``dL/dX`` (the language output's includes the
        pooler's share); ``inputs`` maps ``visual_feats``, ``visual_pos`` and (when given)
        ``inputs_embeds`` to their gradients; ``grads`` is keyed like ``w``.
    """
    lang_name, visn_name = _stream_outputs(config)
    language_output, vision_output = saved(lang_name), saved(visn_name)  # [b, s, h], [b, n, h]
    xp = get_namespace(language_output)
    if grad_language_output is None:
        grad_language_output = xp.zeros_like(language_output)
    if grad_vision_output is None:
        grad_vision_output = xp.zeros_like(vision_output)
    if grad_pooled_output is None:
        grad_pooled_output = xp.zeros_like(saved("pooler"))
    # tanh pooler over the first word, in reverse: [b, h] -> [b, s, h]
    with trace.scope("pooler"):
        trace.output(grad_pooled_output, also="activation")
        d_lang, g_pooler = bert.pooler_backward(grad_pooled_output, language_output, **w["pooler"])
    d_lang = grad_language_output + d_lang
    # the additive masks, as the forward made them: [b, 1, 1, s] and [b, 1, 1, boxes] or None
    mask, visual_mask = inputs["attention_mask"], inputs["visual_attention_mask"]
    lang_mask = extended_attention_mask(mask, mask.dtype)
    visn_mask = None if visual_mask is None else extended_attention_mask(visual_mask, visual_mask.dtype)
    # cross, relationship and language layers, then the visual feature encoder
    embedding_output = saved("embeddings")  # [b, s, h]
    with trace.scope("encoder"):
        d_embeddings, d_feats, d_pos, g_encoder = lxmert_encoder_backward(
            d_lang, grad_vision_output, embedding_output, lang_mask,
            inputs["visual_feats"], inputs["visual_pos"], visn_mask, **w["encoder"], config=config,
        )  # fmt: skip
    # word + position + token-type embeddings, in reverse: [b, s, h]
    with trace.scope("embeddings"):
        trace.output(d_embeddings)
        d_inputs_embeds, g_embeddings = lxmert_embeddings_backward(
            d_embeddings,
            inputs["input_ids"],
            inputs["token_type_ids"],
            inputs["inputs_embeds"],
            **w["embeddings"],
        )
    outputs = {
        "language_output": d_lang,
        "vision_output": grad_vision_output,
        "pooled_output": grad_pooled_output,
    }
    d_inputs = {"visual_feats": d_feats, "visual_pos": d_pos}
    if d_inputs_embeds is not None:
        d_inputs["inputs_embeds"] = d_inputs_embeds
    return outputs, d_inputs, {"embeddings": g_embeddings, "encoder": g_encoder, "pooler": g_pooler}


def _record_top(outputs: Mapping[str, Any], d_inputs: Mapping[str, Any]) -> None:
    """Record ``outputs.<field>`` and ``inputs.<name>`` gradients (call at the top scope)."""
    for field, g in outputs.items():
        trace.record(f"outputs.{field}", g)
    for name in FLOAT_INPUTS:
        if name in d_inputs:
            trace.record(f"inputs.{name}", d_inputs[name])


def lxmert_model_class_backward(w: dict, inputs: dict, config: LxmertConfig, grad_outputs: dict) -> dict:
    """``LxmertModel``'s backward for ``L = sum_X sum(X * G_X)`` (the base model has no loss).

    Args:
        w: the model's nested weights (``model.weights``).
        inputs: the checked inputs (`refimpl.lxmert.inputs.check_inputs`).
        config: the model config.
        grad_outputs: ``G_X`` for ``language_output`` ``[batch, seq, hidden]``,
            ``vision_output`` ``[batch, boxes, hidden]`` and ``pooled_output`` ``[batch, hidden]``.

    Returns:
        the weights' gradients keyed like ``w``; records ``outputs.<field>`` (``dL/dX``: the
        language output's includes the pooler's share) and ``inputs.<name>``.
    """
    d_outputs, d_inputs, grads = lxmert_model_backward(
        w,
        inputs,
        config,
        grad_outputs["language_output"],
        grad_outputs["vision_output"],
        grad_outputs["pooled_output"],
    )
    _record_top(d_outputs, d_inputs)
    return grads


def _loss_part(name: str, value) -> Any:
    """Record ``dL/d`` one loss term, 1 (each term is added into ``L`` once), and return it (0-d, the term's dtype)."""
    one = get_namespace(value).ones((), dtype=value.dtype)
    trace.record(name, one)
    return one


def pretraining_backward(
    w: dict, inputs: dict, targets: dict, config: LxmertConfig, outputs: Any, grad_outputs: dict | None
) -> dict:
    """``LxmertForPreTraining``'s backward: the losses, the heads, then the base model, in reverse.

    With labels ``L`` is the loss, the float32 sum of each enabled task's loss: ``dL/d term = 1``
    for every term (the float32 rounding of the sum changes only its value), so each head gets
    its loss's gradient at the model's dtype. Without labels, ``L = sum_X sum(X * G_X)`` over
    ``prediction_logits``, ``cross_relationship_score`` and ``question_answering_score`` (the
    0-d ``pooled_output[0, 0]`` when ``config.task_qa`` is off, whose ``G`` goes to that one entry).

    Args:
        w: the model's nested weights (``model.weights``).
        inputs: the checked inputs (`refimpl.lxmert.inputs.check_inputs`).
        targets: the checked labels (`refimpl.lxmert.inputs.check_targets`).
        config: the model config.
        outputs: the forward's output record.
        grad_outputs: ``{field: G_X}``, or ``None`` when ``L`` is the loss.

    Returns:
        the weights' gradients keyed like ``w`` (the tied decoder's under
        ``cls.predictions.decoder.weight``); records every tensor's gradient, ``outputs.<field>``
        and ``inputs.<name>``.
    """
    c, t = config, targets
    logits = outputs.prediction_logits  # [b, s, V]
    matched = outputs.cross_relationship_score  # [b, 2]
    answer = outputs.question_answering_score  # [b, num_qa] (task_qa) or []
    xp = get_namespace(logits)
    lang_name, visn_name = _stream_outputs(c)
    with trace.scope("lxmert"):
        lang, visn, pooled = saved(lang_name), saved(visn_name), saved("pooler")
    g = grad_outputs or {}
    # each output field's G (0 when L is the loss): [b, s, V], [b, 2], [b, num_qa] or []
    d_logits = g.get("prediction_logits", xp.zeros_like(logits))
    d_matched = g.get("cross_relationship_score", xp.zeros_like(matched))
    d_answer = g.get("question_answering_score", xp.zeros_like(answer))
    d_visn, grads = None, {}
    if grad_outputs is None:  # L is the loss: each enabled task's term, in the forward's order
        _loss_part("loss", outputs.loss)
        _loss_part("outputs.loss", outputs.loss)
        # masked language modelling: [b*s, V] -> [b, s, V]
        if "labels" in t:
            one = _loss_part("loss.masked_lm", logits)
            flat = logits.reshape(-1, c.vocab_size)
            d_logits = d_logits + cross_entropy_backward(one, flat, t["labels"]).reshape(logits.shape)
        # image-text matching: [b, 2]
        if "matched_label" in t:
            one = _loss_part("loss.matched", matched)
            d_matched = d_matched + cross_entropy_backward(one, matched.reshape(-1, 2), t["matched_label"])
        # the visual losses through the object head: [b, n, num] -> [b, n, h]
        if "obj_labels" in t:
            d_visn, grads["obj_predict_head"] = _visual_losses_backward(w, t["obj_labels"], visn, c)
        # visual question answering: [b, num_qa]
        if "ans" in t:
            one = _loss_part("loss.answer", answer)
            flat = answer.reshape(-1, c.num_qa_labels)
            d_answer = d_answer + cross_entropy_backward(one, flat, t["ans"]).reshape(answer.shape)
    # the answer head, or the oracle's quirk (one scalar of the pooled output): [b, h]
    if c.task_qa:
        with trace.scope("answer_head"):
            trace.output(d_answer)
            d_pooled, grads["answer_head"] = answer_head_backward(d_answer, pooled, **w["answer_head"])
    else:
        d_pooled = xp.zeros_like(pooled)
        d_pooled[0, 0] = d_answer
    # image-text matching head: [b, 2] -> [b, h]
    with trace.scope("cls.seq_relationship"):
        trace.output(d_matched)
        d, d_weight, d_bias = linear_backward(d_matched, pooled, **w["cls"]["seq_relationship"])
    d_pooled = d_pooled + d
    # masked-LM head: [b, s, V] -> [b, s, h]
    with trace.scope("cls.predictions"):
        trace.output(d_logits)
        d_lang, g_predictions = lm_prediction_head_backward(
            d_logits,
            lang,
            transform=w["cls"]["predictions"]["transform"],
            decoder=w["lxmert"]["embeddings"]["word_embeddings"],
            bias=w["cls"]["predictions"]["bias"],
            hidden_act=c.hidden_act,
        )
    grads["cls"] = {"predictions": g_predictions, "seq_relationship": bert.linear_grads(d_weight, d_bias)}
    # the base model
    with trace.scope("lxmert"):
        _, d_inputs, grads["lxmert"] = lxmert_model_backward(w["lxmert"], inputs, c, d_lang, d_visn, d_pooled)
    fields = {"prediction_logits": d_logits, "cross_relationship_score": d_matched}
    _record_top({**fields, "question_answering_score": d_answer}, d_inputs)
    return grads


def _visual_losses_backward(w: dict, obj_labels: dict, visn, config: LxmertConfig):
    """The visual losses (each ``dL/d term = 1``, their float32 sum ``loss.visual`` too) and
    the object head, in reverse: ``(dL/d vision_output [batch, boxes, hidden], head grads)``."""
    c = config
    losses = visual_losses(c)
    xp = get_namespace(visn)
    _loss_part("loss.visual", xp.zeros((), dtype=xp.float32))  # the oracle's float32 sum
    d_scores = {}
    with trace.scope("obj_predict_head"):
        scores = {key: saved(f"decoder_dict.{key}") for key in losses}  # [b, n, num]
    for key, info in losses.items():
        label, conf = obj_labels[key]
        one = _loss_part(f"loss.visual.{key}", scores[key])
        d_scores[key] = visual_loss_backward(
            one, scores[key], label, conf, kind=info["loss"], normalizer=c.visual_loss_normalizer
        )
    with trace.scope("obj_predict_head"):
        return visual_obj_head_backward(
            d_scores, visn, **w["obj_predict_head"], hidden_act=c.hidden_act, keys=list(losses)
        )


def question_answering_backward(
    w: dict, inputs: dict, labels, config: LxmertConfig, outputs: Any, grad_outputs: dict | None
) -> dict:
    """``LxmertForQuestionAnswering``'s backward: the answer loss, the answer head, then the
    base model (whose language output reaches ``L`` only through the pooler, and whose vision
    output does not reach it).

    Args:
        w: the model's nested weights (``model.weights``).
        inputs: the checked inputs (`refimpl.lxmert.inputs.check_inputs`).
        labels: the checked ``[batch]`` answer ids (-100 ignored), or ``None``.
        config: the model config.
        outputs: the forward's output record.
        grad_outputs: ``{"question_answering_score": G}``, or ``None`` when ``L`` is the loss.

    Returns:
        the weights' gradients keyed like ``w``; records every tensor's gradient,
        ``outputs.<field>`` and ``inputs.<name>``.
    """
    answer = outputs.question_answering_score  # [b, num_qa]
    if grad_outputs is None:  # L is the mean cross-entropy
        one = _loss_part("loss.answer", answer)
        trace.record("loss", one)
        trace.record("outputs.loss", one)
        flat = answer.reshape(-1, config.num_qa_labels)
        d_answer = cross_entropy_backward(one, flat, labels).reshape(answer.shape)
    else:
        d_answer = grad_outputs["question_answering_score"]
    with trace.scope("lxmert"):
        pooled = saved("pooler")  # [b, h]
    # the answer head: [b, num_qa] -> [b, h]
    with trace.scope("answer_head"):
        trace.output(d_answer)
        d_pooled, g_answer = answer_head_backward(d_answer, pooled, **w["answer_head"])
    # the base model
    with trace.scope("lxmert"):
        _, d_inputs, g_base = lxmert_model_backward(w["lxmert"], inputs, config, None, None, d_pooled)
    _record_top({"question_answering_score": d_answer}, d_inputs)
    return {"lxmert": g_base, "answer_head": g_answer}
