"""The fine-tuning heads of the original LiLT repository (github.com/jpWang/LiLT, MIT,
``LiLTfinetune/models/LiLTRobertaLike/modeling_LiLTRobertaLike.py``), on refimpl's LiLT encoder.

Both heads read the two streams side by side: the text stream ``[batch, seq, hidden]`` and
the layout stream ``[batch, seq, hidden // r]`` joined into ``x = [text; layout]`` with
``D = hidden + hidden // r`` features (960 at base size), where transformers' heads read the
text stream alone:

* `LiLTRobertaLikeForTokenClassification`: ``logits = x W^T + b`` per token, and a loss only
  over the tokens with ``attention_mask == 1``;
* `LiLTRobertaLikeForRelationExtraction`: the decoder of `refimpl.lilt.original_re` (candidate
  (question, answer) entity pairs, biaffine scores, predicted relations).

The weights carry the original's state-dict keys (``lilt.*`` for the encoder, as the original
recipe renames ``roberta.*``; ``classifier.*``; ``extractor.*``), and the trace names its
intermediates after the original's modules (``dropout``, ``classifier``,
``extractor.ffnn_head.0@doc0``, ...), so a golden file reads like forward hooks on the
original. The encoder is the one transformers ported from the original (``lilt_model``).
"""

from __future__ import annotations

from typing import Any

from .. import trace
from ..backend import get_namespace
from ..bert import linear_grads
from ..config import LiltConfig
from ..losses import cross_entropy_backward
from ..ops import cross_entropy, linear, linear_backward
from ..outputs import ReOutput, TokenClassifierOutput
from ..tape import saved
from .inputs import check_token_labels
from .modeling import LiltPreTrainedModel, base_shapes, lilt_model, per_layer
from .modeling_backward import grad_of_loss, lilt_model_backward, record_inputs_embeds_grad
from .original_re import (
    ENTITY_LABELS,
    check_entities,
    check_relations,
    relation_extraction,
    relation_extraction_backward,
)

__all__ = [
    "LiLTRobertaLikeForTokenClassification",
    "LiLTRobertaLikeForRelationExtraction",
    "two_stream_width",
    "two_streams",
    "two_streams_backward",
    "active_token_loss",
    "active_token_loss_backward",
]


def two_stream_width(config: LiltConfig) -> int:
    """``D = hidden + hidden // channel_shrink_ratio``: the width of the joined streams."""
    return config.hidden_size + config.hidden_size // config.channel_shrink_ratio


def two_streams(out):
    """The original's ``torch.cat([sequence_output, layout_outputs], -1)``.

    Args:
        out: a `refimpl.outputs.LiltModelOutput` (``last_hidden_state [b, s, hidden]``,
            ``layout_last_hidden_state [b, s, hidden // r]``).

    Returns:
        ``[batch, seq, hidden + hidden // r]``; recorded as ``dropout`` (the module the original
        applies next, an identity at inference).
    """
    xp = get_namespace(out.last_hidden_state)
    # [b, s, h] + [b, s, h/r] -> [b, s, h + h/r]
    x = xp.concatenate([out.last_hidden_state, out.layout_last_hidden_state], axis=-1)
    trace.record("dropout", x)
    return x


def two_streams_backward(grad_output, w, inputs, config: LiltConfig, attention_mask) -> dict[str, Any]:
    """Backward of `two_streams` and of the encoder under it: ``dL/dx`` split at ``hidden`` into
    the text and layout streams' gradients, then `refimpl.lilt.modeling_backward.lilt_model_backward`.

    Args:
        grad_output: ``dL/dx``, ``[batch, seq, hidden + hidden // r]``.
        w: the head model's nested weights (``w["lilt"]`` is used).
        inputs: the checked inputs; attention_mask: the forward's additive mask.
        config: the model config.

    Returns:
        the encoder weights' gradients, keyed like ``w["lilt"]``.
    """
    trace.record("dropout", grad_output)
    h = config.hidden_size
    with trace.scope("lilt"):
        d, grads = lilt_model_backward(
            w["lilt"], inputs, config, attention_mask, grad_output[..., :h], grad_output[..., h:]
        )
    record_inputs_embeds_grad(d)
    return grads


def active_token_loss(logits, labels, attention_mask=None):
    """The original token-classification loss: mean cross entropy over the tokens whose
    ``attention_mask`` is exactly 1, labels of -100 skipped too.

    Args:
        logits: ``[batch, seq, labels]``.
        labels: integer ``[batch, seq]``; at active tokens in ``[0, labels - 1]`` or -100.
        attention_mask: ``[batch, seq]`` or ``None`` (every token active).

    Returns:
        0-d array in the logits' dtype (NaN when no token counts, as torch).
    """
    xp = get_namespace(logits, labels)
    n = logits.shape[-1]
    labels = labels.reshape(-1)  # [b*s]
    if attention_mask is not None:
        # inactive tokens get the ignored label, whatever their label was
        active = attention_mask.reshape(-1) == 1  # [b*s]
        labels = xp.where(active, labels, -100)
    # [b*s, labels] vs [b*s]
    return cross_entropy(logits.reshape(-1, n), labels).astype(logits.dtype)


def active_token_loss_backward(grad_output, logits, labels, attention_mask=None):
    """Backward of `active_token_loss`: `refimpl.losses.cross_entropy_backward` on the same
    flattened labels (inactive tokens and -100 get no gradient).

    Args:
        grad_output: ``dL/dloss``, 0-d.
        logits, labels, attention_mask: as for `active_token_loss`.

    Returns:
        ``dL/dlogits``, ``[batch, seq, labels]``.
    """
    xp = get_namespace(logits, labels)
    n = logits.shape[-1]
    labels = labels.reshape(-1)  # [b*s]
    if attention_mask is not None:
        labels = xp.where(attention_mask.reshape(-1) == 1, labels, -100)
    return cross_entropy_backward(grad_output, logits.reshape(-1, n), labels).reshape(logits.shape)


class _OriginalHead(LiltPreTrainedModel):
    """The original's head models: ``lilt`` (no pooler) and a head on the joined streams."""

    config_class = LiltConfig
    base_model_prefix = "lilt"

    @classmethod
    def encoder_shapes(cls, config: LiltConfig) -> dict[str, tuple[int, ...]]:
        """The encoder's keys: ``lilt.*``, without a pooler (the original builds it with ``add_pooling_layer=False``)."""
        return base_shapes(config, prefix="lilt.", add_pooling_layer=False)

    def _encode(self, output_attentions, output_hidden_states, inputs: tuple) -> tuple[dict[str, Any], Any]:
        """Checked inputs (given in `LiltModel.forward`'s order, ``input_ids`` ... ``inputs_embeds``),
        and the encoder's output (traced under ``lilt``)."""
        inputs = self._check(*inputs)
        output_attentions, output_hidden_states = self._flags(output_attentions, output_hidden_states)
        with trace.scope("lilt"):
            out = lilt_model(
                self.weights["lilt"],
                inputs,
                self.config,
                self.dtype,
                add_pooling_layer=False,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
            )
        return inputs, out


class LiLTRobertaLikeForTokenClassification(_OriginalHead):
    """The original ``LiLTRobertaLikeForTokenClassification``: a linear classifier on both streams.

    ``classifier`` is ``Linear(hidden + hidden // r, num_labels)``; the loss counts only the
    tokens with ``attention_mask == 1``. Returns a `refimpl.outputs.TokenClassifierOutput`.
    """

    @classmethod
    def expected_shapes(cls, config: LiltConfig) -> dict[str, tuple[int, ...]]:
        """``lilt.*`` and ``classifier.weight [num_labels, D]``, ``classifier.bias [num_labels]``."""
        s = cls.encoder_shapes(config)
        s["classifier.weight"] = (config.num_labels, two_stream_width(config))
        s["classifier.bias"] = (config.num_labels,)
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
        """LiltModel's inputs (``input_ids`` ... ``output_hidden_states``, as
        `refimpl.lilt.LiltModel` takes them) plus ``labels``.

        Args:
            labels: integer ``[batch, seq]``: at tokens with ``attention_mask == 1``, in
                ``[0, num_labels - 1]`` or -100 (ignored); elsewhere anything (not counted).
                With labels, ``attention_mask`` must be ``[batch, seq]``.

        Returns:
            ``loss`` (0-d), ``logits [batch, seq, num_labels]``, and the encoder's tuples.
        """
        inputs, out = self._encode(
            output_attentions,
            output_hidden_states,
            (input_ids, bbox, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds),
        )
        b, s = inputs["bbox"].shape[:2]
        mask = None
        if labels is not None:
            labels = check_token_labels(self._array(labels), b, s)
            if attention_mask is not None:
                mask = inputs["attention_mask"]
                if mask.ndim != 2:
                    raise ValueError(
                        f"attention_mask has shape {tuple(mask.shape)}: with labels it must be [batch, seq] = "
                        f"{[b, s]} (the loss keeps the tokens where it is 1)"
                    )
        # both streams: [b, s, h] + [b, s, h/r] -> [b, s, D]
        x = two_streams(out)
        # [b, s, D] -> [b, s, labels]
        with trace.scope("classifier"):
            logits = linear(x, **self.weights["classifier"])
            trace.output(logits)
        loss = None
        if labels is not None:
            loss = active_token_loss(logits, labels, mask)
            trace.record("loss", loss)
        return TokenClassifierOutput(
            loss=loss,
            logits=logits,
            **per_layer(out),
        )

    def _backward(self, inputs, outputs, grad_outputs):
        """The backward of `forward` (see `refimpl.gradients`): the loss (`active_token_loss_backward`)
        or ``G`` of ``logits``, ``classifier``, then both streams (`two_streams_backward`)."""
        checked, mask = self._backward_inputs(inputs)
        if grad_outputs is None:
            labels = self._array(inputs["labels"])
            keep = checked["attention_mask"] if inputs.get("attention_mask") is not None else None
            d_logits = active_token_loss_backward(grad_of_loss(outputs.loss), outputs.logits, labels, keep)
        else:
            d_logits = grad_outputs["logits"]
        trace.record("outputs.logits", d_logits)
        x = saved("dropout")  # the joined streams, [b, s, D]
        # [b, s, labels] -> [b, s, D]
        with trace.scope("classifier"):
            trace.output(d_logits)
            d_x, d_weight, d_bias = linear_backward(d_logits, x, **self.weights["classifier"])
        return {
            "lilt": two_streams_backward(d_x, self.weights, checked, self.config, mask),
            "classifier": linear_grads(d_weight, d_bias),
        }


class LiLTRobertaLikeForRelationExtraction(_OriginalHead):
    """The original ``LiLTRobertaLikeForRelationExtraction``: ``REDecoder`` on both streams.

    Entities and gold relations come in the original's format, one dict per document:

        out = model(input_ids=ids, bbox=boxes, attention_mask=mask,
                    entities=[{"start": [1, 4, 7], "end": [3, 6, 9], "label": [1, 2, 2]}],
                    relations=[{"head": [0], "tail": [1]}])
        out.pred_relations[0]   # [{"head_id": 0, "head": (1, 3), "head_type": 1, "tail_id": 1, ...}]

    Returns a `refimpl.outputs.ReOutput`. See `refimpl.lilt.original_re` for the equations.
    """

    @classmethod
    def expected_shapes(cls, config: LiltConfig) -> dict[str, tuple[int, ...]]:
        """``lilt.*`` and ``extractor.*`` as ``REDecoder(config, D)`` builds them (``h`` = hidden):
        ``entity_emb [3, D]``, ``ffnn_head/ffnn_tail``: ``0 [h, 2D]``, ``3 [h // 2, h]``;
        ``rel_classifier``: ``bilinear [2, h // 2, h // 2]`` (no bias), ``linear [2, 2 * (h // 2)]``."""
        h, d = config.hidden_size, two_stream_width(config)
        s = cls.encoder_shapes(config)
        s["extractor.entity_emb.weight"] = (ENTITY_LABELS, d)
        for side in ("ffnn_head", "ffnn_tail"):
            s[f"extractor.{side}.0.weight"] = (h, 2 * d)
            s[f"extractor.{side}.0.bias"] = (h,)
            s[f"extractor.{side}.3.weight"] = (h // 2, h)
            s[f"extractor.{side}.3.bias"] = (h // 2,)
        s["extractor.rel_classifier.bilinear.weight"] = (2, h // 2, h // 2)
        s["extractor.rel_classifier.linear.weight"] = (2, 2 * (h // 2))
        s["extractor.rel_classifier.linear.bias"] = (2,)
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
        entities=None,
        relations=None,
    ) -> ReOutput:
        """LiltModel's inputs (``input_ids`` ... ``output_hidden_states``, as
        `refimpl.lilt.LiltModel` takes them) plus the original's ``entities`` and ``relations``.

        Args:
            labels: accepted and ignored, as the original ignores it (its data collator passes
                the token labels to every head).
            entities: one dict per document, ``{"start": [...], "end": [...], "label": [...]}``
                (see `refimpl.lilt.original_re.check_entities`). Required.
            relations: one dict per document, ``{"head": [...], "tail": [...]}``, the gold
                relations (entity indices); ``None``: no gold, no loss.

        Returns:
            ``loss`` (0-d, or ``None`` without ``relations``), ``logits [pairs of the batch, 2]``
            (the documents' candidate pairs one after the other), ``entities`` (as decoded: a
            document of two entities or fewer replaced by the original's stand-in),
            ``relations`` (the caller's), ``pred_relations`` (one list of dicts per document),
            and the encoder's tuples.
        """
        inputs, out = self._encode(
            output_attentions,
            output_hidden_states,
            (input_ids, bbox, attention_mask, token_type_ids, position_ids, head_mask, inputs_embeds),
        )
        b, s = inputs["bbox"].shape[:2]
        docs = check_entities(entities, b, s)
        gold = check_relations(relations, docs)
        # both streams: [b, s, h] + [b, s, h/r] -> [b, s, D]
        x = two_streams(out)
        # pairs, scores, loss and predictions: [b, s, D] -> [P, 2]
        with trace.scope("extractor"):
            loss, logits, pred_relations, decoded = relation_extraction(
                x, docs, gold, **self.weights["extractor"]
            )
        if loss is not None:
            trace.record("loss", loss)
        return ReOutput(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            entities=decoded,
            relations=relations,
            pred_relations=pred_relations,
            layout_hidden_states=out.layout_hidden_states,
            layout_attentions=out.layout_attentions,
        )

    def _backward(self, inputs, outputs, grad_outputs):
        """The backward of `forward` (see `refimpl.gradients`): the loss (or ``G`` of ``logits``)
        through the decoder (`refimpl.lilt.original_re.relation_extraction_backward`), then both
        streams (`two_streams_backward`)."""
        checked, mask = self._backward_inputs(inputs)
        b, s = checked["bbox"].shape[:2]
        docs = check_entities(inputs.get("entities"), b, s)
        gold = check_relations(inputs.get("relations"), docs)
        grad_loss = grad_of_loss(outputs.loss) if grad_outputs is None else None
        grad_logits = None if grad_outputs is None else grad_outputs["logits"]
        x = saved("dropout")  # the joined streams, [b, s, D]
        # [P, 2] -> [b, s, D]
        with trace.scope("extractor"):
            d_logits, d_x, extractor = relation_extraction_backward(
                grad_loss,
                grad_logits,
                x,
                outputs.logits,
                docs,
                gold,
                **self.weights["extractor"],
            )
        trace.record("outputs.logits", d_logits)
        return {
            "lilt": two_streams_backward(d_x, self.weights, checked, self.config, mask),
            "extractor": extractor,
        }
