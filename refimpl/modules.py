"""What a forward hook on every module of the oracle sees, in golden names.

A porter's natural dump puts a forward hook on every entry of their port's
``named_modules()`` and saves each module's output under its path: the first tensor as
``name``, further tensors of a tuple output as ``name.1``, ``name.2``... Each family lists its
oracle's module calls in the order their hooks fire (`refimpl.lilt.modules`,
`refimpl.lxmert.modules`): per call, the module path and the golden names of the tensors its
output holds, flattened in order. A golden file's manifest stores that list (``modules``), so
`refimpl.compare` can read such a dump with no renaming. This module holds what both families
share: the list builder and the BERT sub-blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ModuleCalls", "MODEL_OUTPUT_FIELDS", "LOSS_INPUTS"]

#: transformers' output class fields per architecture, in order; ``"name*"`` is a tuple field
#: (its tensors flattened as the hook sees them), ``"name"`` a single tensor.
MODEL_OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "LiltModel": ("last_hidden_state", "pooler_output", "hidden_states*", "attentions*"),
    "LiltForSequenceClassification": ("loss", "logits", "hidden_states*", "attentions*"),
    "LiltForTokenClassification": ("loss", "logits", "hidden_states*", "attentions*"),
    "LiltForQuestionAnswering": ("loss", "start_logits", "end_logits", "hidden_states*", "attentions*"),
    "LiLTRobertaLikeForTokenClassification": ("loss", "logits", "hidden_states*", "attentions*"),
    "LxmertModel": (
        "language_output",
        "vision_output",
        "pooled_output",
        "language_hidden_states*",
        "vision_hidden_states*",
        "language_attentions*",
        "vision_attentions*",
        "cross_encoder_attentions*",
    ),
    "LxmertForPreTraining": (
        "loss",
        "prediction_logits",
        "cross_relationship_score",
        "question_answering_score",
        "language_hidden_states*",
        "vision_hidden_states*",
        "language_attentions*",
        "vision_attentions*",
        "cross_encoder_attentions*",
    ),
    "LxmertForQuestionAnswering": (
        "loss",
        "question_answering_score",
        "language_hidden_states*",
        "vision_hidden_states*",
        "language_attentions*",
        "vision_attentions*",
        "cross_encoder_attentions*",
    ),
}

#: the forward inputs that make an architecture compute a loss.
LOSS_INPUTS = ("labels", "masked_lm_labels", "start_positions", "obj_labels", "matched_label", "ans")


class ModuleCalls:
    """The list of module calls, in hook order, being built.

    Each entry is ``{"module": path, "outputs": [golden names]}`` (the output's tensors,
    flattened in order) or ``{"module": path, "ignored": "dropout"}`` (identity at inference).

    Args:
        names: the golden file's tensor names (a leaf module whose own name is not among them
            but whose output another name holds is given that name, see `leaf`).
    """

    def __init__(self, names: Iterable[str]):
        self.names = set(names)
        self.calls: list[dict[str, Any]] = []

    def call(self, path: str, outputs: Iterable[str]) -> None:
        """One call of ``path`` whose output holds the tensors ``outputs`` (golden names)."""
        self.calls.append({"module": path, "outputs": list(outputs)})

    def leaf(self, path: str, golden: str | None = None) -> None:
        """A call of a one-tensor module: its output is golden ``golden`` (default ``path``)."""
        self.call(path, [golden or path])

    def dropout(self, path: str) -> None:
        """A call of a dropout module: the identity at inference, ignored."""
        self.calls.append({"module": path, "ignored": "dropout"})

    def own_or(self, path: str, fallback: str) -> str:
        """``path`` when the golden file records it under its own name, else ``fallback``."""
        return path if path in self.names else fallback

    def self_output(self, path: str, suffix: str = "") -> str:
        """BERT's add-and-norm block ``path`` (``dense``, ``dropout``, ``LayerNorm``); returns
        the golden name of its output (the block's own when recorded, else its LayerNorm's)."""
        self.leaf(f"{path}.dense", f"{path}.dense{suffix}")
        self.dropout(f"{path}.dropout")
        ln = f"{path}.LayerNorm{suffix}"
        self.leaf(f"{path}.LayerNorm", ln)
        out = self.own_or(path + suffix, ln)
        self.call(path, [out])
        return out

    def intermediate(self, path: str, act: str = "intermediate_act_fn") -> str:
        """BERT's feed-forward first half ``path`` (``dense``, then the activation module)."""
        self.leaf(f"{path}.dense")
        self.leaf(f"{path}.{act}", self.own_or(f"{path}.{act}", path))
        self.call(path, [path])
        return path

    def model_output(self, path: str, architecture: str, values: Mapping[str, Any]) -> None:
        """A model's output record: ``values`` maps each field of ``MODEL_OUTPUT_FIELDS`` to a
        golden name, a list of them (tuple fields) or ``None`` (not computed)."""
        out: list[str] = []
        for f in MODEL_OUTPUT_FIELDS[architecture]:
            v = values.get(f.rstrip("*"))
            if v is None:
                continue
            out.extend(v if isinstance(v, list) else [v])
        self.call(path, out)
