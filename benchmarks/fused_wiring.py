"""Wire refimpl._fused into today's layer functions at run time, to measure (and parity-test)
what the fused kernels buy before the layer code calls them itself.

The layer files are being rewritten (issue 11), so this module swaps four layer functions by
monkeypatching instead of editing them; each replacement computes its block with the fused
kernel and falls back to the original when a trace is recording (the fused ops skip the
``dense`` intermediate the trace names) or the activation is not exact GELU:

* LiLT ``intermediate_act`` / LXMERT ``ffn_intermediate`` -> ``_fused.linear_gelu``
* LiLT ``add_and_norm`` / LXMERT ``attention_output`` -> ``_fused.linear_add_layer_norm``
* LXMERT ``attention_probs`` (``refimpl.attention``) -> ``_fused.masked_softmax``

(``_fused.attention_context`` replaces ``merge_heads(matmul(probs, v))`` inside ``mha``; it is
measured by ``bench_ops.py`` only, as it cannot be swapped in without editing the layer.)

Use::

    from fused_wiring import wired
    with wired():            # or wired(gelu=True, add_norm=False, softmax=False)
        model(**inputs)

As a pytest plugin (``-p fused_wiring`` with ``benchmarks/`` on the path) it wires everything
for the whole session, so the oracle parity tests run on the fused path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from refimpl import _fused, trace
from refimpl.lilt import layers as lilt_layers
from refimpl.lxmert import layers as lxmert_layers


def _lilt_intermediate(orig):
    def intermediate_act(hidden_states, dense, *, hidden_act: str):
        if hidden_act != "gelu" or trace.active() is not None:
            return orig(hidden_states, dense, hidden_act=hidden_act)
        return _fused.linear_gelu(hidden_states, dense["weight"], dense.get("bias"))

    return intermediate_act


def _lxmert_intermediate(orig):
    def ffn_intermediate(x, *, dense, act: str):
        if act != "gelu" or trace.active() is not None:
            return orig(x, dense=dense, act=act)
        return _fused.linear_gelu(x, dense["weight"], dense.get("bias"))

    return ffn_intermediate


def _lilt_add_and_norm(orig):
    def add_and_norm(hidden_states, input_tensor, dense, LayerNorm, *, eps: float):
        if trace.active() is not None:
            return orig(hidden_states, input_tensor, dense, LayerNorm, eps=eps)
        return _fused.linear_add_layer_norm(
            hidden_states, dense["weight"], dense.get("bias"), input_tensor, LayerNorm["weight"],
            LayerNorm["bias"], eps,
        )  # fmt: skip

    return add_and_norm


def _lxmert_attention_output(orig):
    def attention_output(hidden, input_tensor, *, dense, LayerNorm, sfx: str = ""):
        if trace.active() is not None:
            return orig(hidden, input_tensor, dense=dense, LayerNorm=LayerNorm, sfx=sfx)
        return _fused.linear_add_layer_norm(
            hidden, dense["weight"], dense.get("bias"), input_tensor, LayerNorm["weight"],
            LayerNorm["bias"], lxmert_layers.LN_EPS,
        )  # fmt: skip

    return attention_output


def _attention_probs(orig):
    def attention_probs(scores, additive_mask=None):
        if scores.ndim != 4 or not scores.flags.c_contiguous:
            return orig(scores, additive_mask)
        return _fused.masked_softmax(scores.copy() if trace.active() is not None else scores, additive_mask)

    return attention_probs


_TARGETS = {
    "gelu": [
        (lilt_layers, "intermediate_act", _lilt_intermediate),
        (lxmert_layers, "ffn_intermediate", _lxmert_intermediate),
    ],
    "add_norm": [
        (lilt_layers, "add_and_norm", _lilt_add_and_norm),
        (lxmert_layers, "attention_output", _lxmert_attention_output),
    ],
    "softmax": [(lxmert_layers, "attention_probs", _attention_probs)],
}


@contextlib.contextmanager
def wired(gelu: bool = True, add_norm: bool = True, softmax: bool = True) -> Iterator[None]:
    """Swap the chosen layer functions for their fused versions inside the block."""
    chosen = {"gelu": gelu, "add_norm": add_norm, "softmax": softmax}
    saved = []
    for key, targets in _TARGETS.items():
        if not chosen[key]:
            continue
        for module, name, make in targets:
            if not hasattr(module, name):
                continue  # the layer code moved on: nothing to wire
            orig = getattr(module, name)
            saved.append((module, name, orig))
            setattr(module, name, make(orig))
    try:
        yield
    finally:
        for module, name, orig in reversed(saved):
            setattr(module, name, orig)


_session = None


def pytest_configure(config):  # pragma: no cover - used with `pytest -p fused_wiring`
    global _session
    _session = wired()
    _session.__enter__()


def pytest_unconfigure(config):  # pragma: no cover
    if _session is not None:
        _session.__exit__(None, None, None)


__all__ = ["wired"]
