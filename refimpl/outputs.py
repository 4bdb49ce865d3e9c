"""Output records whose field names equal transformers' output classes.

A record behaves like transformers' ``ModelOutput``: attribute access (``out.logits``), key
access (``out["logits"]``), ``to_tuple()`` over the fields that are not ``None``, in
declaration order. Fields we add beyond transformers' (the LiLT layout stream, LXMERT's
vision-to-language cross-attention) come after theirs, so positional access agrees too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "ModelOutput",
    "BaseModelOutputWithPooling",
    "LiltModelOutput",
    "SequenceClassifierOutput",
    "TokenClassifierOutput",
    "QuestionAnsweringModelOutput",
    "ReOutput",
    "LxmertModelOutput",
    "LxmertForPreTrainingOutput",
    "LxmertForQuestionAnsweringOutput",
]


@dataclass
class ModelOutput:
    """Base record: dataclass fields, plus dict-like and tuple-like access."""

    def keys(self) -> list[str]:
        """Names of the fields that are not ``None``, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, Any]]:
        """``(name, value)`` for the fields that are not ``None``, in declaration order."""
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple:
        """The values of the fields that are not ``None``, in declaration order (transformers' tuple form)."""
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


@dataclass
class BaseModelOutputWithPooling(ModelOutput):
    """transformers.modeling_outputs.BaseModelOutputWithPooling."""

    last_hidden_state: Any = None
    pooler_output: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@dataclass
class LiltModelOutput(BaseModelOutputWithPooling):
    """LiltModel's output: transformers' fields plus the layout stream the oracle hides.

    Extra fields:
        layout_last_hidden_state: ``[batch, seq, hidden // channel_shrink_ratio]``.
        layout_hidden_states: layout embeddings plus every layer's layout output (with
            ``output_hidden_states``).
        layout_attentions: per layer ``[batch, heads, seq, seq]`` layout-stream
            probabilities (with ``output_attentions``).
    """

    layout_last_hidden_state: Any = None
    layout_hidden_states: tuple | None = None
    layout_attentions: tuple | None = None


@dataclass
class SequenceClassifierOutput(ModelOutput):
    """transformers.modeling_outputs.SequenceClassifierOutput (+ layout-stream fields)."""

    loss: Any = None
    logits: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    layout_hidden_states: tuple | None = None
    layout_attentions: tuple | None = None


@dataclass
class TokenClassifierOutput(ModelOutput):
    """transformers.modeling_outputs.TokenClassifierOutput (+ layout-stream fields)."""

    loss: Any = None
    logits: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    layout_hidden_states: tuple | None = None
    layout_attentions: tuple | None = None


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    """transformers.modeling_outputs.QuestionAnsweringModelOutput (+ layout-stream fields)."""

    loss: Any = None
    start_logits: Any = None
    end_logits: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    layout_hidden_states: tuple | None = None
    layout_attentions: tuple | None = None


@dataclass
class ReOutput(ModelOutput):
    """The original LiLT repository's ``ReOutput`` (``LiLTfinetune/utils.py``), the output of
    ``LiLTRobertaLikeForRelationExtraction``, with its fields in its order (+ layout-stream fields).

    Fields:
        loss: 0-d cross entropy over every candidate pair of the batch (``None`` without gold relations).
        logits: ``[pairs of the batch, 2]`` relation scores (the original declares the field
            but leaves it empty; refimpl fills it).
        entities: the entities as decoded, one dict per document (a document of two entities
            or fewer replaced by the original's stand-in).
        relations: the gold relations as given.
        pred_relations: one list per document of dicts ``head_id, head, head_type, tail_id,
            tail, tail_type, type``.
    """

    loss: Any = None
    logits: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    entities: list | None = None
    relations: list | None = None
    pred_relations: list | None = None
    layout_hidden_states: tuple | None = None
    layout_attentions: tuple | None = None


@dataclass
class LxmertModelOutput(ModelOutput):
    """transformers' LxmertModelOutput, plus what the oracle computes but does not return.

    Extra fields:
        cross_encoder_vision_attentions: per cross layer, the vision-to-language
            cross-attention probabilities ``[batch, heads, boxes, seq]``.
        cross_encoder_language_self_attentions / cross_encoder_vision_self_attentions:
            the cross layers' self-attention probabilities.
    """

    language_output: Any = None
    vision_output: Any = None
    pooled_output: Any = None
    language_hidden_states: tuple | None = None
    vision_hidden_states: tuple | None = None
    language_attentions: tuple | None = None
    vision_attentions: tuple | None = None
    cross_encoder_attentions: tuple | None = None
    cross_encoder_vision_attentions: tuple | None = None
    cross_encoder_language_self_attentions: tuple | None = None
    cross_encoder_vision_self_attentions: tuple | None = None


@dataclass
class LxmertForPreTrainingOutput(ModelOutput):
    """transformers' LxmertForPreTrainingOutput (+ the extra attention fields above)."""

    loss: Any = None
    prediction_logits: Any = None
    cross_relationship_score: Any = None
    question_answering_score: Any = None
    language_hidden_states: tuple | None = None
    vision_hidden_states: tuple | None = None
    language_attentions: tuple | None = None
    vision_attentions: tuple | None = None
    cross_encoder_attentions: tuple | None = None
    cross_encoder_vision_attentions: tuple | None = None
    cross_encoder_language_self_attentions: tuple | None = None
    cross_encoder_vision_self_attentions: tuple | None = None


@dataclass
class LxmertForQuestionAnsweringOutput(ModelOutput):
    """transformers' LxmertForQuestionAnsweringOutput (+ the extra attention fields above)."""

    loss: Any = None
    question_answering_score: Any = None
    language_hidden_states: tuple | None = None
    vision_hidden_states: tuple | None = None
    language_attentions: tuple | None = None
    vision_attentions: tuple | None = None
    cross_encoder_attentions: tuple | None = None
    cross_encoder_vision_attentions: tuple | None = None
    cross_encoder_language_self_attentions: tuple | None = None
    cross_encoder_vision_self_attentions: tuple | None = None
