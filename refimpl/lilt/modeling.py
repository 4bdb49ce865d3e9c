"""LiLT models: the forward pass as one function, and the thin public classes.

    inputs = check_inputs(config, dtype, input_ids=ids, bbox=boxes)   # refimpl.lilt.inputs
    out = lilt_model(w, inputs, config, dtype)                        # LiltModel as a pure function
    LiltModel / LiltForSequenceClassification / LiltForTokenClassification / LiltForQuestionAnswering

Every class runs the same steps in the same order as LXMERT's: input checks (the only place
that validates the caller's arrays; ``check_inputs`` returns them checked, with the 0/1 keep
``attention_mask``, 1 = attend, broadcast to full size), embeddings, the additive attention
mask, encoder, heads, output record. ``w`` is the checkpoint nested once at load
(``model.weights["encoder"]["layer"]["0"]["attention"]["self"]["query"]["weight"]``), so
each layer function receives its sub-dict with the checkpoint's names.
"""

from __future__ import annotations

from typing import Any

from .. import backend, bert, trace
from ..attention import extended_attention_mask
from ..checks import require_integers
from ..config import LiltConfig
from ..modeling import PreTrainedModel
from ..ops import linear
from ..outputs import (
    LiltModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from .embeddings import layout_embeddings, text_embeddings
from .heads import (
    classification_head,
    question_answering_logits,
    question_answering_loss,
    sequence_classification_loss,
    token_classification_loss,
)
from .inputs import check_inputs, check_token_labels
from .layers import lilt_encoder
from .modeling_backward import (
    lilt_base_model_backward,
    question_answering_backward,
    sequence_classification_backward,
    token_classification_backward,
)

__all__ = [
    "LiltModel",
    "LiltForSequenceClassification",
    "LiltForTokenClassification",
    "LiltForQuestionAnswering",
    "LiltPreTrainedModel",
    "MODEL_INPUTS",
    "lilt_model",
    "lilt_attention_mask",
    "base_shapes",
    "per_layer",
]


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------


def base_shapes(
    config: LiltConfig, prefix: str = "", add_pooling_layer: bool = True
) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape for LiltModel's weights, in ``state_dict`` order.

    Args:
        config: the model config.
        prefix: ``""`` for LiltModel, ``"lilt."`` inside a head model.
        add_pooling_layer: LiltModel has a pooler; the head models build theirs without one.
    """
    h, r = config.hidden_size, config.channel_shrink_ratio
    hr, ir = h // r, config.intermediate_size // r
    head = h // config.num_attention_heads
    P, M = config.max_position_embeddings, config.max_2d_position_embeddings
    s: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (config.vocab_size, h),
        "embeddings.position_embeddings.weight": (P, h),
        "embeddings.token_type_embeddings.weight": (config.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
        "layout_embeddings.x_position_embeddings.weight": (M, h // 6),
        "layout_embeddings.y_position_embeddings.weight": (M, h // 6),
        "layout_embeddings.h_position_embeddings.weight": (M, h // 6),
        "layout_embeddings.w_position_embeddings.weight": (M, h // 6),
        "layout_embeddings.box_position_embeddings.weight": (P, hr),
        "layout_embeddings.box_linear_embeddings.weight": (hr, h),
        "layout_embeddings.box_linear_embeddings.bias": (hr,),
        "layout_embeddings.LayerNorm.weight": (hr,),
        "layout_embeddings.LayerNorm.bias": (hr,),
    }

    def linear_shapes(name: str, out_f: int, in_f: int) -> None:
        s[f"{name}.weight"] = (out_f, in_f)
        s[f"{name}.bias"] = (out_f,)

    def norm_shapes(name: str, d: int) -> None:
        s[f"{name}.weight"] = (d,)
        s[f"{name}.bias"] = (d,)

    for i in range(config.num_hidden_layers):
        L = f"encoder.layer.{i}"
        for n in ("query", "key", "value"):
            linear_shapes(f"{L}.attention.self.{n}", h, h)
        for n in ("layout_query", "layout_key", "layout_value"):
            linear_shapes(f"{L}.attention.self.{n}", hr, hr)
        if config.position_embedding_type in ("relative_key", "relative_key_query"):
            s[f"{L}.attention.self.distance_embedding.weight"] = (2 * P - 1, head)
        linear_shapes(f"{L}.attention.output.dense", h, h)
        norm_shapes(f"{L}.attention.output.LayerNorm", h)
        linear_shapes(f"{L}.attention.layout_output.dense", hr, hr)
        norm_shapes(f"{L}.attention.layout_output.LayerNorm", hr)
        linear_shapes(f"{L}.intermediate.dense", config.intermediate_size, h)
        linear_shapes(f"{L}.output.dense", h, config.intermediate_size)
        norm_shapes(f"{L}.output.LayerNorm", h)
        linear_shapes(f"{L}.layout_intermediate.dense", ir, hr)
        linear_shapes(f"{L}.layout_output.dense", hr, ir)
        norm_shapes(f"{L}.layout_output.LayerNorm", hr)
    if add_pooling_layer:
        linear_shapes("pooler.dense", h, h)
    return {prefix + k: v for k, v in s.items()}


# --------------------------------------------------------------------------------------------
# LiltModel as one function
# --------------------------------------------------------------------------------------------


def lilt_model(
    w: dict[str, Any],
    inputs: dict[str, Any],
    config: LiltConfig,
    dtype,
    add_pooling_layer: bool = True,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
) -> LiltModelOutput:
    """LiltModel's forward pass.

    Args:
        w: nested weights (``model.weights``, see `refimpl.modeling.nest`) with ``embeddings``, ``layout_embeddings``,
            ``encoder`` and, with ``add_pooling_layer``, ``pooler``.
        inputs: the checked inputs from `refimpl.lilt.inputs.check_inputs`.
        config: the model config.
        dtype: the model's float dtype.
        add_pooling_layer: compute ``pooler_output``.
        output_attentions, output_hidden_states: return the per-layer tuples.

    Returns:
        LiltModelOutput: ``last_hidden_state [b, s, hidden]``, ``pooler_output [b, hidden]``,
        ``hidden_states`` / ``attentions`` tuples as transformers, and the layout stream.
    """
    position_ids = inputs["position_ids"]
    trace.record("embeddings.position_ids", position_ids)
    # text stream input: [b, s] -> [b, s, h]
    with trace.scope("embeddings"):
        embedding_output = text_embeddings(
            inputs["input_ids"],
            inputs["inputs_embeds"],
            inputs["token_type_ids"],
            position_ids,
            **w["embeddings"],
            config=config,
        )
    # layout stream input: [b, s, 4] -> [b, s, h/r]
    with trace.scope("layout_embeddings"):
        layout_embedding_output = layout_embeddings(
            inputs["bbox"], position_ids, **w["layout_embeddings"], config=config
        )
    # additive mask over keys: [b, 1, 1|s, s]
    attention_mask = lilt_attention_mask(inputs["attention_mask"], config, dtype)
    # both streams through every layer
    with trace.scope("encoder"):
        enc = lilt_encoder(
            embedding_output,
            layout_embedding_output,
            attention_mask,
            inputs["head_masks"],
            **w["encoder"],
            config=config,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
    # first-token summary: [b, s, h] -> [b, h]
    pooled = None
    if add_pooling_layer:
        with trace.scope("pooler"):
            pooled = bert.pooler(enc["last_hidden_state"], **w["pooler"])
            trace.output(pooled)
    return LiltModelOutput(pooler_output=pooled, **enc)


def lilt_attention_mask(attention_mask, config: LiltConfig, dtype):
    """The additive mask every layer adds to its scores, as ``get_extended_attention_mask``.

    A decoder config (``is_decoder``) also hides later keys.

    Args:
        attention_mask: the keep-mask of `refimpl.lilt.inputs.check_inputs`, ``[batch, seq]``
            or ``[batch, seq, seq]``, 1 = attend.
        config: uses ``is_decoder``.
        dtype: the scores' float dtype.

    Returns:
        ``[batch, 1, 1|seq, seq]``: 0 keep, ``finfo(dtype).min`` drop.
    """
    mask = attention_mask
    if getattr(config, "is_decoder", False) and mask.ndim == 2:
        xp = backend.get_namespace(mask)
        pos = xp.arange(mask.shape[1])
        causal = (pos[None, :] <= pos[:, None]).astype(mask.dtype)  # [s, s]: key <= query
        mask = causal[None, :, :] * mask[:, None, :]  # [b, s, s]
    return extended_attention_mask(mask, dtype)


# --------------------------------------------------------------------------------------------
# classes
# --------------------------------------------------------------------------------------------


#: LiltModel's keyword inputs, which every class checks with `check_inputs`.
MODEL_INPUTS = (
    "input_ids",
    "bbox",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "head_mask",
    "inputs_embeds",
)


def per_layer(out: LiltModelOutput) -> dict[str, tuple | None]:
    """The encoder's four per-layer tuples (``hidden_states``, ``attentions`` and their
    ``layout_`` twins, ``None`` unless asked for), which every head's output carries on."""
    return {
        "hidden_states": out.hidden_states,
        "attentions": out.attentions,
        "layout_hidden_states": out.layout_hidden_states,
        "layout_attentions": out.layout_attentions,
    }


class LiltPreTrainedModel(PreTrainedModel):
    """What every LiLT class shares (transformers' ``LiltPreTrainedModel``): the input checks,
    the encoder call, and the inputs the backward re-checks. Not a model on its own."""

    config_class = LiltConfig
    base_model_prefix = "lilt"

    def _check(self, *inputs) -> dict[str, Any]:
        """`refimpl.lilt.inputs.check_inputs` on the caller's arrays (in `LiltModel.forward`'s
        order, ``input_ids`` ... ``inputs_embeds``), moved to the model's device."""
        return check_inputs(self.config, self.dtype, *(self._array(v) for v in inputs))

    def _backward_inputs(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """For ``_backward``: the forward's inputs checked again (`check_inputs`, cheap; no second
        forward) and the additive mask every layer added, ``[batch, 1, 1|seq, seq]``."""
        checked = self._check(*(inputs.get(k) for k in MODEL_INPUTS))
        return checked, lilt_attention_mask(checked["attention_mask"], self.config, self.dtype)

    def _lilt(self, w, inputs, add_pooling_layer: bool, output_attentions, output_hidden_states):
        """`lilt_model` with the output flags defaulting to the config's, as the oracle."""
        output_attentions, output_hidden_states = self._flags(output_attentions, output_hidden_states)
        return lilt_model(
            w,
            inputs,
            self.config,
            self.dtype,
            add_pooling_layer=add_pooling_layer,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )


class LiltModel(LiltPreTrainedModel):
    """transformers.LiltModel: text + layout encoder with a pooler.

    ``model(input_ids=ids, bbox=boxes, attention_mask=mask)`` returns a
    `refimpl.outputs.LiltModelOutput`.
    """

    is_base_model = True

    @classmethod
    def expected_shapes(cls, config: LiltConfig) -> dict[str, tuple[int, ...]]:
        return base_shapes(config, add_pooling_layer=True)

    def forward(
        self,
        input_ids=None,
        bbox=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> LiltModelOutput:
        """Run the encoder.

        Args:
            input_ids: integer ``[batch, seq]`` in ``[0, vocab_size - 1]`` (or ``inputs_embeds``).
            bbox: integer ``[batch, seq, 4]`` boxes ``(x0, y0, x1, y1)`` in ``[0, max_2d - 1]``.
            attention_mask: ``[batch, seq]`` (or ``[batch, seq, seq]``), 1 = attend.
            token_type_ids: integer ``[batch, seq]``.
            position_ids: integer ``[batch, seq]`` (default: RoBERTa's, from ``pad_token_id + 1``).
            head_mask: ``[heads]`` or ``[layers, heads]``, 1 = keep.
            inputs_embeds: ``[batch, seq, hidden]`` instead of ``input_ids``.
            output_attentions, output_hidden_states: add the per-layer tuples (``None``: the config's value).
        """
        inputs = self._check(
            input_ids, bbox, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds
        )
        return self._lilt(self.weights, inputs, True, output_attentions, output_hidden_states)

    def _backward(self, inputs, outputs, grad_outputs):
        """The backward of `forward` (see `refimpl.gradients`): `refimpl.lilt.modeling_backward.lilt_base_model_backward`."""
        checked, mask = self._backward_inputs(inputs)
        return lilt_base_model_backward(self.weights, checked, self.config, mask, outputs, grad_outputs)


class LiltForSequenceClassification(LiltPreTrainedModel):
    """transformers.LiltForSequenceClassification: RoBERTa head on the first token (no pooler)."""

    @classmethod
    def expected_shapes(cls, config: LiltConfig) -> dict[str, tuple[int, ...]]:
        s = base_shapes(config, prefix="lilt.", add_pooling_layer=False)
        h, n = config.hidden_size, config.num_labels
        s.update(
            {
                "classifier.dense.weight": (h, h),
                "classifier.dense.bias": (h,),
                "classifier.out_proj.weight": (n, h),
                "classifier.out_proj.bias": (n,),
            }
        )
        return s

    def forward(
        self,
        input_ids=None,
        bbox=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SequenceClassifierOutput:
        """LiltModel's inputs plus ``labels``: ``[batch]`` of int64/int32 class ids
        (single-label), float ``[batch, num_labels]`` (multi-label) or float ``[batch]``
        (regression, ``num_labels == 1``). The loss follows ``config.problem_type``, chosen as
        the oracle does when it is ``None`` (single-label only for int64/int32 labels)."""
        inputs = self._check(
            input_ids, bbox, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds
        )
        b = inputs["bbox"].shape[0]
        if labels is not None:
            labels = self._array(labels)
            if labels.ndim == 0 or labels.shape[0] != b:
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)}; its first axis must be the batch ({b})"
                )
        with trace.scope("lilt"):
            out = self._lilt(self.weights["lilt"], inputs, False, output_attentions, output_hidden_states)
        # [b, s, h] -> [b, labels]
        with trace.scope("classifier"):
            logits = classification_head(out.last_hidden_state, **self.weights["classifier"])
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(
                logits, labels, num_labels=self.config.num_labels, problem_type=self.config.problem_type
            )
            trace.record("loss", loss)
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            **per_layer(out),
        )

    def _backward(self, inputs, outputs, grad_outputs):
        """The backward of `forward`: `refimpl.lilt.modeling_backward.sequence_classification_backward`."""
        checked, mask = self._backward_inputs(inputs)
        labels = self._array(inputs.get("labels"))
        return sequence_classification_backward(
            self.weights, checked, labels, self.config, mask, outputs, grad_outputs
        )


class LiltForTokenClassification(LiltPreTrainedModel):
    """transformers.LiltForTokenClassification: a linear classifier on every token (no pooler)."""

    @classmethod
    def expected_shapes(cls, config: LiltConfig) -> dict[str, tuple[int, ...]]:
        s = base_shapes(config, prefix="lilt.", add_pooling_layer=False)
        s.update(
            {
                "classifier.weight": (config.num_labels, config.hidden_size),
                "classifier.bias": (config.num_labels,),
            }
        )
        return s

    def forward(
        self,
        input_ids=None,
        bbox=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> TokenClassifierOutput:
        """LiltModel's inputs plus ``labels``: integer ``[batch, seq]`` in ``[0, num_labels - 1]``
        or -100 (ignored). The loss is the mean cross entropy over the non-ignored tokens."""
        inputs = self._check(
            input_ids, bbox, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds
        )
        b, s = inputs["bbox"].shape[:2]
        if labels is not None:
            labels = check_token_labels(self._array(labels), b, s)
        with trace.scope("lilt"):
            out = self._lilt(self.weights["lilt"], inputs, False, output_attentions, output_hidden_states)
        # [b, s, h] -> [b, s, labels]
        with trace.scope("classifier"):
            logits = linear(out.last_hidden_state, **self.weights["classifier"])
            trace.output(logits)
        loss = None
        if labels is not None:
            loss = token_classification_loss(logits, labels)
            trace.record("loss", loss)
        return TokenClassifierOutput(
            loss=loss,
            logits=logits,
            **per_layer(out),
        )

    def _backward(self, inputs, outputs, grad_outputs):
        """The backward of `forward`: `refimpl.lilt.modeling_backward.token_classification_backward`."""
        checked, mask = self._backward_inputs(inputs)
        labels = self._array(inputs.get("labels"))
        return token_classification_backward(
            self.weights, checked, labels, self.config, mask, outputs, grad_outputs
        )


class LiltForQuestionAnswering(LiltPreTrainedModel):
    """transformers.LiltForQuestionAnswering: start/end logits per token (no pooler; needs ``num_labels == 2``)."""

    @classmethod
    def expected_shapes(cls, config: LiltConfig) -> dict[str, tuple[int, ...]]:
        if config.num_labels != 2:
            raise ValueError(
                f"LiltForQuestionAnswering needs config.num_labels == 2 (start and end logits), got {config.num_labels}"
            )
        s = base_shapes(config, prefix="lilt.", add_pooling_layer=False)
        s.update({"qa_outputs.weight": (2, config.hidden_size), "qa_outputs.bias": (2,)})
        return s

    def forward(
        self,
        input_ids=None,
        bbox=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        head_mask=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> QuestionAnsweringModelOutput:
        """LiltModel's inputs plus ``start_positions`` / ``end_positions``: integer ``[batch]``.
        Positions outside ``[0, seq - 1]`` are ignored in the loss (clamped to ``seq``, as the oracle)."""
        inputs = self._check(
            input_ids, bbox, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds
        )
        b = inputs["bbox"].shape[0]
        positions = None
        if start_positions is not None and end_positions is not None:
            positions = []
            for name, p in (("start_positions", start_positions), ("end_positions", end_positions)):
                p = self._array(p)
                require_integers(p, name)
                if p.size != b or p.ndim > 2:
                    raise ValueError(f"{name} has shape {tuple(p.shape)}; expected [batch] = [{b}]")
                positions.append(p.reshape(b))
        with trace.scope("lilt"):
            out = self._lilt(self.weights["lilt"], inputs, False, output_attentions, output_hidden_states)
        # [b, s, h] -> 2 x [b, s]
        with trace.scope("qa_outputs"):
            start_logits, end_logits = question_answering_logits(
                out.last_hidden_state, **self.weights["qa_outputs"]
            )
        loss = None
        if positions is not None:
            loss = question_answering_loss(start_logits, end_logits, *positions)
            trace.record("loss", loss)
        return QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            **per_layer(out),
        )

    def _backward(self, inputs, outputs, grad_outputs):
        """The backward of `forward`: `refimpl.lilt.modeling_backward.question_answering_backward`."""
        checked, mask = self._backward_inputs(inputs)
        b = checked["bbox"].shape[0]
        positions = None
        if grad_outputs is None:  # L is the loss: the forward had both positions
            positions = [self._array(inputs[k]).reshape(b) for k in ("start_positions", "end_positions")]
        return question_answering_backward(
            self.weights, checked, positions, self.config, mask, outputs, grad_outputs
        )
