"""LiLT's module calls as a forward hook on every module of the oracle sees them, in hook
order (a module's hook fires after its children's), each output in golden names (see
`refimpl.modules`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..modules import LOSS_INPUTS, ModuleCalls

__all__ = ["module_calls"]


def _self_attention(m: ModuleCalls, s: str, relative: bool, attentions: bool) -> None:
    """``LiltSelfAttention`` at path ``s``: layout then text projections, the score dropout
    (called once per stream), and its output ``((context, layout_context), probs)``."""
    for name in ("layout_value", "layout_key", "layout_query", "query", "key", "value"):
        m.leaf(f"{s}.{name}")
    if relative:
        m.leaf(f"{s}.distance_embedding")
    m.dropout(f"{s}.dropout")  # the layout stream's probabilities
    m.dropout(f"{s}.dropout")  # the text stream's
    m.call(s, [f"{s}.context", f"{s}.layout_context"] + ([f"{s}.attention_probs"] if attentions else []))


def _layer(m: ModuleCalls, p: str, relative: bool, attentions: bool) -> None:
    """``LiltLayer`` at path ``p``: its output is ``((text, layout), probs)``."""
    s = f"{p}.attention.self"
    probs = [f"{s}.attention_probs"] if attentions else []
    _self_attention(m, s, relative, attentions)
    text = m.self_output(f"{p}.attention.output")
    layout = m.self_output(f"{p}.attention.layout_output")
    m.call(f"{p}.attention", [text, layout, *probs])
    m.intermediate(f"{p}.intermediate")
    m.self_output(f"{p}.output")
    m.intermediate(f"{p}.layout_intermediate")
    m.self_output(f"{p}.layout_output")
    m.call(p, [p, f"{p}.layout", *probs])


_DOC = re.compile(r"@doc(\d+)(_head|_tail)?$")


def _documents(names: Iterable[str]) -> range:
    """The documents of a relation-extraction case: ``0 .. b`` for the largest ``@doc<b>``
    among the golden names (the decoder runs its modules once per document)."""
    docs = [int(m.group(1)) for n in names if (m := _DOC.search(n))]
    return range(max(docs) + 1 if docs else 0)


def _extractor_document(m: ModuleCalls, b: int) -> None:
    """The original's ``REDecoder`` on document ``b``, as its hooks fire: ``entity_emb`` on the
    heads' then the tails' labels, ``ffnn_head`` and ``ffnn_tail`` (``Sequential``: Linear 0,
    ReLU 1, Dropout 2, Linear 3, ReLU 4, Dropout 5, then the container), then
    ``rel_classifier`` (``bilinear``, ``linear``, then the container). Every output carries the
    per-document suffix ``@doc<b>``."""
    e = "extractor"
    m.leaf(f"{e}.entity_emb", f"{e}.entity_emb@doc{b}_head")
    m.leaf(f"{e}.entity_emb", f"{e}.entity_emb@doc{b}_tail")
    for side in ("ffnn_head", "ffnn_tail"):
        for i in range(6):  # the golden file names the dropouts' outputs too (equal to the ReLUs')
            m.leaf(f"{e}.{side}.{i}", f"{e}.{side}.{i}@doc{b}")
        m.leaf(f"{e}.{side}", f"{e}.{side}@doc{b}")
    for part in ("bilinear", "linear"):
        m.leaf(f"{e}.rel_classifier.{part}", f"{e}.rel_classifier.{part}@doc{b}")
    m.leaf(f"{e}.rel_classifier", f"{e}.rel_classifier@doc{b}")


def module_calls(
    config: Any,
    architecture: str,
    names: Iterable[str],
    forward_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """LiLT's module calls in hook order, outputs in golden names.

    Args:
        config: a LiLT config (``num_hidden_layers``, ``position_embedding_type``).
        architecture: ``LiltModel``, ``LiltForTokenClassification``,
            ``LiltForSequenceClassification``, ``LiltForQuestionAnswering``, or the original
            LiLT heads ``LiLTRobertaLikeForTokenClassification`` and
            ``LiLTRobertaLikeForRelationExtraction`` (`refimpl.lilt.original`; their encoder
            listed as transformers' ``LiltModel`` without a pooler, as the tests' torch
            reference builds it).
        names: the golden file's tensor names (inputs tell whether a loss was computed).
        forward_kwargs: the golden file's ``forward_kwargs`` (``output_attentions``,
            ``output_hidden_states``; both true when absent).

    Returns:
        ``[{"module": path, "outputs": [golden names]} | {"module": path, "ignored":
        "dropout"}]``, one entry per call (see `refimpl.modules.ModuleCalls`).
    """
    names = set(names)
    fw = dict(forward_kwargs or {})
    attentions = bool(fw.get("output_attentions", True))
    hidden = bool(fw.get("output_hidden_states", True))
    relative = getattr(config, "position_embedding_type", "absolute") in (
        "relative_key",
        "relative_key_query",
    )
    n = int(config.num_hidden_layers)
    m = ModuleCalls(names)
    p = "" if architecture == "LiltModel" else "lilt."
    e, le = f"{p}embeddings", f"{p}layout_embeddings"
    # text embeddings: (LayerNorm output, position ids)
    m.leaf(f"{e}.word_embeddings")
    m.leaf(f"{e}.token_type_embeddings")
    if not relative:
        m.leaf(f"{e}.position_embeddings")
    m.leaf(f"{e}.LayerNorm")
    m.dropout(f"{e}.dropout")
    m.call(e, [f"{e}.LayerNorm", f"{e}.position_ids"])
    # layout embeddings: the x and y tables are called twice each
    for table, corner in (("x", "left"), ("y", "upper"), ("x", "right"), ("y", "lower")):
        m.leaf(f"{le}.{table}_position_embeddings", f"{le}.{table}_position_embeddings.{corner}")
    for name in ("h_position_embeddings", "w_position_embeddings", "box_linear_embeddings"):
        m.leaf(f"{le}.{name}")
    m.leaf(f"{le}.box_position_embeddings")
    m.leaf(f"{le}.LayerNorm")
    m.dropout(f"{le}.dropout")
    m.call(le, [f"{le}.LayerNorm"])
    for i in range(n):
        _layer(m, f"{p}encoder.layer.{i}", relative, attentions)
    last = f"{p}encoder.layer.{n - 1}" if n else f"{e}.LayerNorm"
    states = [f"outputs.hidden_states.{i}" for i in range(n + 1)] if hidden else None
    probs = [f"outputs.attentions.{i}" for i in range(n)] if attentions else None
    m.model_output(
        f"{p}encoder", "LiltModel", {"last_hidden_state": last, "hidden_states": states, "attentions": probs}
    )
    pooled = None
    if architecture == "LiltModel":
        m.leaf("pooler.dense")
        m.leaf("pooler.activation", m.own_or("pooler.activation", "pooler"))
        m.leaf("pooler")
        pooled = "pooler"
    base = {"last_hidden_state": last, "pooler_output": pooled, "hidden_states": states, "attentions": probs}
    if architecture == "LiltModel":
        m.model_output("", "LiltModel", base)
        return m.calls
    m.model_output("lilt", "LiltModel", base)
    loss = "outputs.loss" if any(f"inputs.{k}" in names for k in LOSS_INPUTS) else None
    out = {"loss": loss, "hidden_states": states, "attentions": probs}
    if architecture == "LiltForTokenClassification":
        m.dropout("dropout")
        m.leaf("classifier")
        out["logits"] = "outputs.logits"
    elif architecture == "LiltForSequenceClassification":
        m.dropout("classifier.dropout")
        m.leaf("classifier.dense")
        m.dropout("classifier.dropout")
        m.leaf("classifier.out_proj")
        m.leaf("classifier", "classifier.out_proj")
        out["logits"] = "outputs.logits"
    elif architecture == "LiltForQuestionAnswering":
        m.leaf("qa_outputs")
        out["start_logits"], out["end_logits"] = "outputs.start_logits", "outputs.end_logits"
    elif architecture == "LiLTRobertaLikeForTokenClassification":
        m.leaf("dropout")  # applied to [text; layout]: its output is the golden `dropout`
        m.leaf("classifier")
        out["logits"] = "outputs.logits"
    elif architecture == "LiLTRobertaLikeForRelationExtraction":
        m.leaf("dropout")
        for b in _documents(names):
            _extractor_document(m, b)
        if "extractor.loss_fct" in names:
            m.leaf("extractor.loss_fct")
        # the decoder's and the model's own outputs hold documents (the predicted relations),
        # whose layout the original fixes only loosely: not listed
        return m.calls
    else:
        return m.calls
    m.model_output("", architecture, out)
    return m.calls
