"""LXMERT models: input checks, the forward pass as one function, and the thin public classes.

    inputs = check_inputs(config, dtype, input_ids=ids, visual_feats=f, visual_pos=p)   # .inputs
    out = lxmert_model(w, inputs, config)                     # LxmertModel as a pure function
    LxmertModel / LxmertForPreTraining / LxmertForQuestionAnswering

Every class runs the same steps in the same order as LiLT's: input checks (the only place that
validates the caller's arrays, `refimpl.lxmert.inputs`, so bad input fails with a
``ValueError`` naming the argument instead of a shape error deep inside; ``check_inputs``
returns the 0/1 keep masks ``attention_mask`` and ``visual_attention_mask``, 1 = attend,
broadcast to full size, as LiLT's does), embeddings, the additive attention masks, encoder,
heads, output record. ``w`` is the checkpoint nested once at load (``model.weights``).
Each class's ``_backward`` (what ``model.backward`` runs after the forward, see
`refimpl.gradients`) re-checks the inputs the same way and runs `refimpl.lxmert.modeling_backward`.

Trace names (``refimpl.trace``) are the oracle's ``named_modules()`` paths: unprefixed for
``LxmertModel`` (``embeddings.word_embeddings``, ``encoder.x_layers.0.visual_attention.att.query@lang``),
prefixed by ``lxmert.`` for the head models, whose heads are recorded as ``cls.predictions``,
``cls.predictions.transform.dense``, ``cls.seq_relationship``, ``obj_predict_head.decoder_dict.obj``,
``answer_head.logit_fc.0``, ``answer_head``. See `refimpl.lxmert.layers` for the ``@lang`` /
``@visn`` suffixes of the shared cross-attention and the inner attention steps, and
`refimpl.lxmert.heads` for the loss names.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from .. import bert, trace
from ..attention import extended_attention_mask
from ..backend import get_namespace
from ..config import LxmertConfig
from ..losses import cross_entropy
from ..modeling import PreTrainedModel
from ..ops import linear
from ..outputs import LxmertForPreTrainingOutput, LxmertForQuestionAnsweringOutput, LxmertModelOutput
from .heads import (
    accumulate_loss,
    answer_head,
    lm_prediction_head,
    visual_loss,
    visual_losses,
    visual_obj_head,
)
from .inputs import check_inputs, check_labels, check_targets
from .layers import lxmert_embeddings, lxmert_encoder
from .modeling_backward import (
    MODEL_INPUTS,
    lxmert_model_class_backward,
    pretraining_backward,
    question_answering_backward,
)

__all__ = [
    "LxmertModel",
    "LxmertForPreTraining",
    "LxmertForQuestionAnswering",
    "lxmert_model",
]

_EXTRA_ATTENTIONS = (
    "cross_encoder_vision_attentions",
    "cross_encoder_language_self_attentions",
    "cross_encoder_vision_self_attentions",
)


# ------------------------------------------------------------------------------------------
# expected checkpoint keys
# ------------------------------------------------------------------------------------------


def _linear(name: str, n_in: int, n_out: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def _norm(name: str, n: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (n,), f"{name}.bias": (n,)}


def _attention_layer_shapes(name: str, att: str, h: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for proj in ("query", "key", "value"):
        out.update(_linear(f"{name}.{att}.{proj}", h, h))
    out.update(_linear(f"{name}.output.dense", h, h))
    out.update(_norm(f"{name}.output.LayerNorm", h))
    return out


def _ffn_shapes(inter: str, output: str, h: int, i: int) -> dict[str, tuple[int, ...]]:
    return {
        **_linear(f"{inter}.dense", h, i),
        **_linear(f"{output}.dense", i, h),
        **_norm(f"{output}.LayerNorm", h),
    }


def _base_shapes(c: LxmertConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ``LxmertModel.state_dict()`` (unprefixed)."""
    h, i = c.hidden_size, c.intermediate_size
    out: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (c.vocab_size, h),
        "embeddings.position_embeddings.weight": (c.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (c.type_vocab_size, h),
        **_norm("embeddings.LayerNorm", h),
        **_linear("encoder.visn_fc.visn_fc", c.visual_feat_dim, h),
        **_norm("encoder.visn_fc.visn_layer_norm", h),
        **_linear("encoder.visn_fc.box_fc", c.visual_pos_dim, h),
        **_norm("encoder.visn_fc.box_layer_norm", h),
    }
    for stack, n in (("layer", c.l_layers), ("r_layers", c.r_layers)):
        for k in range(n):
            p = f"encoder.{stack}.{k}"
            out.update(_attention_layer_shapes(f"{p}.attention", "self", h))
            out.update(_ffn_shapes(f"{p}.intermediate", f"{p}.output", h, i))
    for k in range(c.x_layers):
        p = f"encoder.x_layers.{k}"
        out.update(_attention_layer_shapes(f"{p}.visual_attention", "att", h))
        out.update(_attention_layer_shapes(f"{p}.lang_self_att", "self", h))
        out.update(_attention_layer_shapes(f"{p}.visn_self_att", "self", h))
        out.update(_ffn_shapes(f"{p}.lang_inter", f"{p}.lang_output", h, i))
        out.update(_ffn_shapes(f"{p}.visn_inter", f"{p}.visn_output", h, i))
    out.update(_linear("pooler.dense", h, h))
    return out


def _answer_head_shapes(c: LxmertConfig) -> dict[str, tuple[int, ...]]:
    h = c.hidden_size
    return {
        **_linear("answer_head.logit_fc.0", h, 2 * h),
        **_norm("answer_head.logit_fc.2", 2 * h),
        **_linear("answer_head.logit_fc.3", 2 * h, c.num_qa_labels),
    }


# ------------------------------------------------------------------------------------------
# LxmertModel as one function
# ------------------------------------------------------------------------------------------


def lxmert_model(w: dict, inputs: dict, config: LxmertConfig) -> dict:
    """LxmertModel's forward pass on checked inputs (see `refimpl.lxmert.inputs.check_inputs`).

    Args:
        w: nested weights of the base model (``w["embeddings"]``, ``w["encoder"]``, ``w["pooler"]``).
        inputs: the checked inputs and 0/1 keep masks.
        config: the model config.

    Returns:
        dict with ``language_output`` ``[batch, seq, hidden]``, ``vision_output``
        ``[batch, boxes, hidden]``, ``pooled_output`` ``[batch, hidden]`` and the tuples of
        `refimpl.lxmert.layers.lxmert_encoder`.
    """
    # word + position + token-type embeddings: [b, s, h]
    with trace.scope("embeddings"):
        embedding_output = lxmert_embeddings(
            inputs["input_ids"], inputs["token_type_ids"], inputs["inputs_embeds"], **w["embeddings"]
        )
        trace.output(embedding_output)
    # additive masks over the keys: [b, 1, 1, s] and [b, 1, 1, boxes] (None: no region is masked)
    mask, visual_mask = inputs["attention_mask"], inputs["visual_attention_mask"]
    lang_mask = extended_attention_mask(mask, mask.dtype)
    visn_mask = None if visual_mask is None else extended_attention_mask(visual_mask, visual_mask.dtype)
    # language, relationship and cross-modality layers
    with trace.scope("encoder"):
        enc = lxmert_encoder(
            embedding_output,
            lang_mask,
            inputs["visual_feats"],
            inputs["visual_pos"],
            visn_mask,
            **w["encoder"],
            config=config,
        )
    # last states of each stream (the oracle takes the hidden-state tuples' last items)
    language_output = enc["language_hidden_states"][-1]  # [b, s, h]
    vision_output = enc["vision_hidden_states"][-1]  # [b, n, h]
    # tanh pooler over the first word: [b, h]
    with trace.scope("pooler"):
        pooled_output = bert.pooler(language_output, **w["pooler"])
        trace.output(pooled_output, also="activation")
    return {
        "language_output": language_output,
        "vision_output": vision_output,
        "pooled_output": pooled_output,
        **enc,
    }


def _stream_fields(enc: dict, output_attentions: bool, output_hidden_states: bool) -> dict:
    """The hidden-state / attention fields shared by all three output records."""
    out = {}
    for k in ("language_hidden_states", "vision_hidden_states"):
        out[k] = enc[k] if output_hidden_states else None
    for k in ("language_attentions", "vision_attentions", "cross_encoder_attentions", *_EXTRA_ATTENTIONS):
        out[k] = enc[k] if output_attentions else None
    return out


# ------------------------------------------------------------------------------------------
# classes
# ------------------------------------------------------------------------------------------


class _LxmertBase(PreTrainedModel):
    config_class = LxmertConfig
    base_model_prefix = "lxmert"

    def _check(self, **inputs) -> dict[str, Any]:
        """`refimpl.lxmert.inputs.check_inputs` on the caller's arrays, moved to the model's device."""
        return check_inputs(self.config, self.dtype, **{k: self._array(v) for k, v in inputs.items()})


class LxmertModel(_LxmertBase):
    """transformers' ``LxmertModel``: the two-stream encoder and the pooler, without heads.

    Call with ``input_ids`` (or ``inputs_embeds``), ``visual_feats``, ``visual_pos`` and
    optional masks; returns `refimpl.outputs.LxmertModelOutput`.
    """

    is_base_model = True

    @classmethod
    def expected_shapes(cls, config: LxmertConfig) -> dict[str, tuple[int, ...]]:
        """The keys ``LxmertModel.save_pretrained`` writes (unprefixed), with shapes."""
        return _base_shapes(config)

    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> LxmertModelOutput:
        """Run the model.

        Args:
            input_ids: ``[batch, seq]`` token ids (or ``inputs_embeds`` ``[batch, seq, hidden]``).
            visual_feats: ``[batch, boxes, visual_feat_dim]`` region features.
            visual_pos: ``[batch, boxes, visual_pos_dim]`` normalised boxes.
            attention_mask: ``[batch, seq]`` 1 keep / 0 pad (default all ones).
            visual_attention_mask: ``[batch, boxes]``; ``None`` masks nothing.
            token_type_ids: ``[batch, seq]`` (default zeros).
            output_attentions, output_hidden_states: return the per-layer tuples (default
                from the config, else False).

        Returns:
            ``LxmertModelOutput``: ``language_output [batch, seq, hidden]``,
            ``vision_output [batch, boxes, hidden]``, ``pooled_output [batch, hidden]``, and
            on request the hidden-state tuples (layer outputs only, no embeddings) and the
            attention tuples (``cross_encoder_attentions`` holds language->vision probs;
            ``cross_encoder_vision_attentions`` the vision->language ones the oracle hides).
        """
        oa, oh = self._flags(output_attentions, output_hidden_states)
        inputs = self._check(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        )
        base = lxmert_model(self.weights, inputs, self.config)
        return LxmertModelOutput(
            language_output=base["language_output"],
            vision_output=base["vision_output"],
            pooled_output=base["pooled_output"],
            **_stream_fields(base, oa, oh),
        )

    def _backward(self, inputs: dict, outputs, grad_outputs: dict) -> dict:
        """`forward` in reverse, for `refimpl.gradients.backward` (``L = sum_X sum(X * G_X)``):
        the inputs re-checked, then `refimpl.lxmert.modeling_backward.lxmert_model_class_backward`."""
        checked = self._check(**{k: inputs.get(k) for k in MODEL_INPUTS})
        return lxmert_model_class_backward(self.weights, checked, self.config, grad_outputs)


class LxmertForPreTraining(_LxmertBase):
    """transformers' ``LxmertForPreTraining``: the base model, the masked-LM and matching heads
    (``cls``), the visual object head (when ``config.task_obj_predict``) and the answer head
    (when ``config.task_qa``), with the oracle's pre-training losses.
    """

    tied_keys = {"cls.predictions.decoder.weight": "lxmert.embeddings.word_embeddings.weight"}

    @classmethod
    def expected_shapes(cls, config: LxmertConfig) -> dict[str, tuple[int, ...]]:
        """The keys ``LxmertForPreTraining.save_pretrained`` writes in ``.bin`` form (safetensors
        leaves out the tied ``cls.predictions.decoder.weight``; it is filled from the word
        embeddings, which the oracle ties structurally, whatever ``tie_word_embeddings`` says)."""
        c = config
        h = c.hidden_size
        out = {f"lxmert.{k}": v for k, v in _base_shapes(c).items()}
        out.update(
            {
                "cls.predictions.bias": (c.vocab_size,),
                **_linear("cls.predictions.transform.dense", h, h),
                **_norm("cls.predictions.transform.LayerNorm", h),
                "cls.predictions.decoder.weight": (c.vocab_size, h),
                **_linear("cls.seq_relationship", h, 2),
            }
        )
        if c.task_obj_predict:
            out.update(_linear("obj_predict_head.transform.dense", h, h))
            out.update(_norm("obj_predict_head.transform.LayerNorm", h))
            for key, info in visual_losses(c).items():
                out.update(_linear(f"obj_predict_head.decoder_dict.{key}", h, info["num"]))
        if c.task_qa:
            out.update(_answer_head_shapes(c))
        return out

    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        labels=None,
        obj_labels=None,
        matched_label=None,
        ans=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        masked_lm_labels=None,
    ) -> LxmertForPreTrainingOutput:
        """Run the model and, when any label is given, the oracle's pre-training loss.

        Args:
            input_ids ... output_hidden_states: as `LxmertModel.forward`.
            labels: ``[batch, seq]`` masked-LM targets in ``[0, vocab)``, -100 ignored
                (used when ``config.task_mask_lm``). ``masked_lm_labels`` is its deprecated
                alias and, as in the oracle, wins over ``labels`` (with a FutureWarning).
            obj_labels: ``{"obj": (ids [batch, boxes], conf [batch, boxes]), "attr": (...),
                "feat": (targets [batch, boxes, visual_feat_dim], conf [batch, boxes])}``;
                every loss enabled by ``config.visual_*_loss`` must be present (used when
                ``config.task_obj_predict``).
            matched_label: ``[batch]`` 0 (mismatch) / 1 (match), -100 ignored (``task_matched``).
            ans: ``[batch]`` answer ids in ``[0, num_qa_labels)`` (class ids, not one-hot,
                whatever the oracle's docstring says; used when ``config.task_qa``).

        Returns:
            ``LxmertForPreTrainingOutput``. ``loss`` is ``None`` when no label is given, else
            a float32 0-d array (the oracle sums in a float32 ``torch.tensor(0.0)``, also for
            float64 models; a label whose task is switched off adds nothing).
            ``question_answering_score`` is ``[batch, num_qa_labels]`` with ``task_qa``, else
            the 0-d ``pooled_output[0, 0]``, as in the oracle.
        """
        c, w = self.config, self.weights
        if masked_lm_labels is not None:
            warnings.warn(
                "The `masked_lm_labels` argument is deprecated and will be removed in a future version, use `labels` instead.",
                FutureWarning,
                stacklevel=2,
            )
            labels = masked_lm_labels
        oa, oh = self._flags(output_attentions, output_hidden_states)
        inputs = self._check(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        )
        targets = check_targets(
            c,
            self.dtype,
            inputs,
            labels=self._array(labels),
            obj_labels=_to_arrays(self, obj_labels),
            matched_label=self._array(matched_label),
            ans=self._array(ans),
        )
        with trace.scope("lxmert"):
            base = lxmert_model(w["lxmert"], inputs, c)
        lang, visn, pooled = base["language_output"], base["vision_output"], base["pooled_output"]
        # masked-LM head, its decoder tied to the word embeddings: [b, s, V]
        with trace.scope("cls.predictions"):
            logits = lm_prediction_head(
                lang,
                transform=w["cls"]["predictions"]["transform"],
                decoder=w["lxmert"]["embeddings"]["word_embeddings"],
                bias=w["cls"]["predictions"]["bias"],
                hidden_act=c.hidden_act,
            )
            trace.output(logits)
        # image-text matching head: [b, 2]
        with trace.scope("cls.seq_relationship"):
            matched = linear(pooled, **w["cls"]["seq_relationship"])
            trace.output(matched)
        # answer head, or (oracle quirk) one scalar of the pooled output
        if c.task_qa:
            with trace.scope("answer_head"):
                answer = answer_head(pooled, **w["answer_head"])  # [b, num_qa]
                trace.output(answer)
        else:
            answer = pooled[0, 0, ...].copy()  # []
        loss = self._loss(visn, logits, matched, answer, targets)
        return LxmertForPreTrainingOutput(
            loss=loss,
            prediction_logits=logits,
            cross_relationship_score=matched,
            question_answering_score=answer,
            **_stream_fields(base, oa, oh),
        )

    def _backward(self, inputs: dict, outputs, grad_outputs: dict | None) -> dict:
        """`forward` in reverse, for `refimpl.gradients.backward`: the inputs and labels
        re-checked as the forward checks them, then
        `refimpl.lxmert.modeling_backward.pretraining_backward`."""
        labels = inputs.get("masked_lm_labels")  # the deprecated alias wins, as in the forward
        labels = inputs.get("labels") if labels is None else labels
        checked = self._check(**{k: inputs.get(k) for k in MODEL_INPUTS})
        targets = check_targets(
            self.config,
            self.dtype,
            checked,
            labels=self._array(labels),
            obj_labels=_to_arrays(self, inputs.get("obj_labels")),
            matched_label=self._array(inputs.get("matched_label")),
            ans=self._array(inputs.get("ans")),
        )
        return pretraining_backward(self.weights, checked, targets, self.config, outputs, grad_outputs)

    def _loss(self, visn, logits, matched, answer, t: dict):
        """The oracle's total loss: a float32 accumulator, each enabled task's loss added in turn."""
        c, w = self.config, self.weights
        xp = get_namespace(logits)
        if not t["any"]:
            return None
        total = xp.zeros((), dtype=xp.float32)
        # masked language modelling: mean cross-entropy over non-ignored tokens
        if "labels" in t:
            part = cross_entropy(logits.reshape(-1, c.vocab_size), t["labels"])
            trace.record("loss.masked_lm", part)
            total = accumulate_loss(total, part)
        # image-text matching
        if "matched_label" in t:
            part = cross_entropy(matched.reshape(-1, 2), t["matched_label"])
            trace.record("loss.matched", part)
            total = accumulate_loss(total, part)
        # visual object / attribute / feature regression, each weighted by its confidence
        if "obj_labels" in t:
            losses = visual_losses(c)
            with trace.scope("obj_predict_head"):
                scores = visual_obj_head(
                    visn, **w["obj_predict_head"], hidden_act=c.hidden_act, keys=list(losses)
                )
            visual_total = xp.zeros((), dtype=xp.float32)
            for key, info in losses.items():
                label, conf = t["obj_labels"][key]
                part = visual_loss(
                    scores[key], label, conf, kind=info["loss"], normalizer=c.visual_loss_normalizer
                )
                trace.record(f"loss.visual.{key}", part)
                visual_total = accumulate_loss(visual_total, part)
            trace.record("loss.visual", visual_total)
            total = accumulate_loss(total, visual_total)
        # visual question answering
        if "ans" in t:
            part = cross_entropy(answer.reshape(-1, c.num_qa_labels), t["ans"])
            trace.record("loss.answer", part)
            total = accumulate_loss(total, part)
        trace.record("loss", total)
        return total


def _to_arrays(model: PreTrainedModel, obj_labels):
    """``obj_labels`` with every array moved to the model's device (other values kept for the checks)."""
    if not isinstance(obj_labels, Mapping):
        return obj_labels
    out = {}
    for key, pair in obj_labels.items():
        if isinstance(pair, (tuple, list)):
            out[key] = type(pair)(model._array(x) for x in pair)
        else:
            out[key] = pair
    return out


class LxmertForQuestionAnswering(_LxmertBase):
    """transformers' ``LxmertForQuestionAnswering``: the base model and the answer head.

    It also loads an ``LxmertForPreTraining`` checkpoint that has an answer head (``task_qa``),
    leaving out its other pre-training heads, as the oracle does (with a warning there).
    """

    ignored_unexpected = (r"^cls\.", r"^obj_predict_head\.")

    @classmethod
    def expected_shapes(cls, config: LxmertConfig) -> dict[str, tuple[int, ...]]:
        """The keys ``LxmertForQuestionAnswering.save_pretrained`` writes, with shapes."""
        out = {f"lxmert.{k}": v for k, v in _base_shapes(config).items()}
        out.update(_answer_head_shapes(config))
        return out

    def forward(
        self,
        input_ids=None,
        visual_feats=None,
        visual_pos=None,
        attention_mask=None,
        visual_attention_mask=None,
        token_type_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> LxmertForQuestionAnsweringOutput:
        """Run the model and the answer head.

        Args:
            input_ids ... output_hidden_states: as `LxmertModel.forward`.
            labels: ``[batch]`` answer ids in ``[0, num_qa_labels)``, -100 ignored (class ids,
                not the one-hot vectors the oracle's docstring mentions).

        Returns:
            ``LxmertForQuestionAnsweringOutput``: ``question_answering_score
            [batch, num_qa_labels]`` and, with ``labels``, the mean cross-entropy ``loss``
            (model dtype).
        """
        c, w = self.config, self.weights
        oa, oh = self._flags(output_attentions, output_hidden_states)
        inputs = self._check(
            input_ids=input_ids,
            visual_feats=visual_feats,
            visual_pos=visual_pos,
            attention_mask=attention_mask,
            visual_attention_mask=visual_attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
        )
        if labels is not None:
            labels = check_labels(self._array(labels), "labels", inputs["batch"], c.num_qa_labels)
        with trace.scope("lxmert"):
            base = lxmert_model(w["lxmert"], inputs, c)
        # answer head over the pooled output: [b, num_qa]
        with trace.scope("answer_head"):
            answer = answer_head(base["pooled_output"], **w["answer_head"])
            trace.output(answer)
        loss = None
        if labels is not None:
            loss = cross_entropy(answer.reshape(-1, c.num_qa_labels), labels)
            trace.record("loss.answer", loss, also="loss")
        return LxmertForQuestionAnsweringOutput(
            loss=loss, question_answering_score=answer, **_stream_fields(base, oa, oh)
        )

    def _backward(self, inputs: dict, outputs, grad_outputs: dict | None) -> dict:
        """`forward` in reverse, for `refimpl.gradients.backward`: the inputs and labels
        re-checked, then `refimpl.lxmert.modeling_backward.question_answering_backward`."""
        checked = self._check(**{k: inputs.get(k) for k in MODEL_INPUTS})
        labels = inputs.get("labels")
        if labels is not None:
            labels = check_labels(self._array(labels), "labels", checked["batch"], self.config.num_qa_labels)
        return question_answering_backward(self.weights, checked, labels, self.config, outputs, grad_outputs)
