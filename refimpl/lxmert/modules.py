"""LXMERT's module calls as a forward hook on every module of the oracle sees them, in hook
order (a module's hook fires after its children's), each output in golden names (see
`refimpl.modules`). The shared cross-attention ``visual_attention`` of each cross layer is
called twice: first with language queries (golden suffix ``@lang``), then with vision
queries (``@visn``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..modules import LOSS_INPUTS, ModuleCalls

__all__ = ["module_calls"]


def _attention(m: ModuleCalls, s: str, suffix: str, probs: bool) -> str:
    """``LxmertAttention`` at path ``s`` (``query`` from the first input, ``key``/``value``
    from the context): output ``(context, probs)``; returns the golden probabilities' name."""
    for name in ("query", "key", "value"):
        m.leaf(f"{s}.{name}", f"{s}.{name}{suffix}")
    m.dropout(f"{s}.dropout")
    p = f"{s}.attention_probs{suffix}"
    m.call(s, [f"{s}.context{suffix}"] + ([p] if probs else []))
    return p


def _self_attention_layer(m: ModuleCalls, p: str, probs: bool) -> list[str]:
    """``LxmertSelfAttentionLayer`` (``self``, ``output``): output ``(attention output, probs)``."""
    pr = _attention(m, f"{p}.self", "", probs)
    out = m.self_output(f"{p}.output")
    extra = [pr] if probs else []
    m.call(p, [out, *extra])
    return extra


def _layer(m: ModuleCalls, p: str, attentions: bool) -> None:
    """``LxmertLayer`` (language ``encoder.layer.<i>``, relationship ``encoder.r_layers.<i>``)."""
    probs = _self_attention_layer(m, f"{p}.attention", attentions)
    m.intermediate(f"{p}.intermediate")
    out = m.self_output(f"{p}.output")
    m.call(p, [out, *probs])


def _x_layer(m: ModuleCalls, p: str, attentions: bool) -> None:
    """``LxmertXLayer``: the shared cross-attention twice, self-attention and feed-forward per
    modality; output ``(lang, visn, cross probs)``."""
    va = f"{p}.visual_attention"
    probs: list[str] = []
    for call, with_probs in (("@lang", attentions), ("@visn", False)):
        pr = _attention(m, f"{va}.att", call, with_probs)
        out = m.self_output(f"{va}.output", call)
        m.call(va, [out] + ([pr] if with_probs else []))
        if with_probs:
            probs = [pr]
    for side in ("lang_self_att", "visn_self_att"):
        _self_attention_layer(m, f"{p}.{side}", False)
    m.intermediate(f"{p}.lang_inter")
    m.intermediate(f"{p}.visn_inter")
    lang = m.self_output(f"{p}.lang_output")
    visn = m.self_output(f"{p}.visn_output")
    m.call(p, [lang, visn, *probs])


def module_calls(
    config: Any,
    architecture: str,
    names: Iterable[str],
    forward_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """LXMERT's module calls in hook order, outputs in golden names.

    Args:
        config: an LXMERT config (``l_layers``, ``r_layers``, ``x_layers``, ``task_qa``).
        architecture: ``LxmertModel``, ``LxmertForPreTraining`` or ``LxmertForQuestionAnswering``.
        names: the golden file's tensor names (inputs tell whether a loss was computed).
        forward_kwargs: the golden file's ``forward_kwargs`` (``output_attentions``,
            ``output_hidden_states``; both true when absent).

    Returns:
        ``[{"module": path, "outputs": [golden names]} | {"module": path, "ignored":
        "dropout"}]``, one entry per call (see `refimpl.modules.ModuleCalls`).
    """
    names = set(names)
    fw = dict(forward_kwargs or {})
    att = bool(fw.get("output_attentions", True))
    hidden = bool(fw.get("output_hidden_states", True))
    nl, nr, nx = int(config.l_layers), int(config.r_layers), int(config.x_layers)
    m = ModuleCalls(names)
    p = "" if architecture == "LxmertModel" else "lxmert."
    e, enc = f"{p}embeddings", f"{p}encoder"
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        m.leaf(f"{e}.{name}")
    m.dropout(f"{e}.dropout")
    m.leaf(e, m.own_or(e, f"{e}.LayerNorm"))
    v = f"{enc}.visn_fc"
    for name in ("visn_fc", "visn_layer_norm", "box_fc", "box_layer_norm"):
        m.leaf(f"{v}.{name}")
    m.dropout(f"{v}.dropout")
    m.leaf(v)
    for i in range(nl):
        _layer(m, f"{enc}.layer.{i}", att)
    for i in range(nr):
        _layer(m, f"{enc}.r_layers.{i}", att)
    for i in range(nx):
        _x_layer(m, f"{enc}.x_layers.{i}", att)

    def tup(field: str, n: int, on: bool) -> list[str] | None:
        return [f"outputs.{field}.{i}" for i in range(n)] if on else None

    states = {
        "language_hidden_states": tup("language_hidden_states", nl + nx, hidden),
        "vision_hidden_states": tup("vision_hidden_states", nr + nx, hidden),
        "language_attentions": tup("language_attentions", nl, att),
        "vision_attentions": tup("vision_attentions", nr, att),
        "cross_encoder_attentions": tup("cross_encoder_attentions", nx, att),
    }
    # LxmertEncoder returns ((vision states, vision attentions), (language states, language
    # attentions), cross attentions)
    m.call(
        enc,
        [
            n
            for k in (
                "vision_hidden_states",
                "vision_attentions",
                "language_hidden_states",
                "language_attentions",
                "cross_encoder_attentions",
            )
            for n in (states[k] or [])
        ],
    )
    m.leaf(f"{p}pooler.dense")
    m.leaf(f"{p}pooler.activation", m.own_or(f"{p}pooler.activation", f"{p}pooler"))
    m.leaf(f"{p}pooler")
    lang = f"{enc}.x_layers.{nx - 1}.lang_output" if nx else f"{e}"
    visn = f"{enc}.x_layers.{nx - 1}.visn_output" if nx else f"{v}"
    base = {"language_output": lang, "vision_output": visn, "pooled_output": f"{p}pooler", **states}
    if architecture == "LxmertModel":
        m.model_output("", "LxmertModel", base)
        return m.calls
    m.model_output("lxmert", "LxmertModel", base)
    loss = "outputs.loss" if any(f"inputs.{k}" in names for k in LOSS_INPUTS) else None
    out: dict[str, Any] = {"loss": loss, **states}
    if architecture == "LxmertForPreTraining":
        t = "cls.predictions.transform"
        m.leaf(f"{t}.dense")
        m.leaf(f"{t}.transform_act_fn")
        m.leaf(f"{t}.LayerNorm")
        m.leaf(t, m.own_or(t, f"{t}.LayerNorm"))
        m.leaf("cls.predictions.decoder")
        m.leaf("cls.predictions")
        m.leaf("cls.seq_relationship")
        m.call("cls", ["cls.predictions", "cls.seq_relationship"])
        out["prediction_logits"] = "outputs.prediction_logits"
        out["cross_relationship_score"] = "outputs.cross_relationship_score"
    if architecture == "LxmertForQuestionAnswering" or getattr(config, "task_qa", True):
        for i in range(4):
            m.leaf(f"answer_head.logit_fc.{i}")
        m.leaf("answer_head.logit_fc")
        m.leaf("answer_head")
        out["question_answering_score"] = "outputs.question_answering_score"
    if architecture == "LxmertForPreTraining" and any(n.startswith("obj_predict_head.") for n in names):
        t = "obj_predict_head.transform"
        m.leaf(f"{t}.dense")
        m.leaf(f"{t}.transform_act_fn")
        m.leaf(f"{t}.LayerNorm")
        m.leaf(t, m.own_or(t, f"{t}.LayerNorm"))
        heads = [f"obj_predict_head.decoder_dict.{k}" for k in ("obj", "attr", "feat")]
        heads = [h for h in heads if h in names]
        for h in heads:
            m.leaf(h)
        m.call("obj_predict_head", heads)
    if architecture == "LxmertForQuestionAnswering" and loss:
        m.leaf("loss")
    m.model_output("", architecture, out)
    return m.calls
