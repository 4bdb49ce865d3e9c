"""Golden gradients (``refimpl golden --grads``): the gradients of one scalar ``L`` written
beside the forward tensors of a golden file.

``L`` is the model's loss when the case carries labels; otherwise
``L = sum over the output record's array fields X of sum(X * G_X)`` with seeded
standard-normal ``G_X`` (`refimpl.gradients.upstream_gradients`). The file then holds, after
the forward tensors:

    upstream.outputs.<field>    G_X, one per array output field (only when L is not the loss)
    grad.<checkpoint key>       dL/dW for every parameter (tied keys each hold the full gradient)
    grad.<name>                 dL/d(tensor) for every floating forward tensor <name>: the traced
                                intermediates, outputs.<field>[.<i>], inputs.visual_feats,
                                inputs.visual_pos, inputs.inputs_embeds

A per-layer output (``outputs.hidden_states.<i>``, ``outputs.attentions.<i>``...) is not part
of ``L``; its gradient is that of the traced tensor it is (found by identity in a traced
forward). Equal forward values are not equal gradients: LiLT's ``attention_probs`` and
``layout_attention_probs`` are one array in the forward and get one gradient each. The writer
stores bit-identical gradients once (an alias in the manifest), as it does forward tensors.

Tolerance: each gradient entry's ``atol`` is ``GRADIENT_TOLERANCE[dtype] * max(1, max|g|)``
with ``rtol = 0`` (the project's parity rule for gradients), so ``refimpl compare`` judges
them with its ordinary ``|c - r| <= atol + rtol * |r|``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import gradients, trace
from ..tape import Tape
from .capture import _iter_outputs
from .format import _to_numpy

__all__ = [
    "GRAD_PREFIX",
    "UPSTREAM_PREFIX",
    "GRADIENT_TOLERANCE",
    "DEFAULT_SEED",
    "gradient_tolerance",
    "per_layer_sources",
    "record_gradients",
    "mark_gradient_entries",
]

#: name prefix of a gradient tensor: ``grad.<checkpoint key>`` or ``grad.<forward tensor name>``.
GRAD_PREFIX = "grad."
#: name prefix of the upstream ``G_X``: ``upstream.outputs.<field>``.
UPSTREAM_PREFIX = "upstream."
#: per dtype: a gradient ``g`` is matched within ``tol * max(1, max|g|)`` (``rtol = 0``).
GRADIENT_TOLERANCE = {"float64": 1e-10, "float32": 1e-4}
#: the seed of the ``G_X`` when none is given (``refimpl golden --grads --seed``).
DEFAULT_SEED = 0


def gradient_tolerance(dtype: Any, grad: Any) -> float:
    """The ``atol`` of one gradient tensor: ``GRADIENT_TOLERANCE[dtype] * max(1, max|grad|)``
    over its finite values (float16 and other dtypes use float32's ``1e-4``).

    Args:
        dtype: the golden file's dtype.
        grad: the gradient, any shape.
    """
    tol = GRADIENT_TOLERANCE.get(np.dtype(dtype).name, GRADIENT_TOLERANCE["float32"])
    a = np.abs(np.asarray(grad, dtype=np.float64))
    a = a[np.isfinite(a)]
    return float(tol * max(1.0, float(a.max()) if a.size else 0.0))


def _is_float(v: Any) -> bool:
    return hasattr(v, "dtype") and np.dtype(v.dtype).kind == "f"


def per_layer_sources(
    model: Any, kwargs: Mapping[str, Any], flags: Mapping[str, Any]
) -> tuple[list[str], dict[str, list[str]]]:
    """One traced forward (every tensor kept by reference) that says which traced tensor each
    per-layer output is.

    Args:
        model: a refimpl model.
        kwargs: the forward keywords (arrays, labels, documents).
        flags: ``output_attentions`` / ``output_hidden_states`` as the golden forward ran.

    Returns:
        ``(names, sources)``: the floating traced names in forward order, and for each
        floating output ``outputs.<field>[.<i>]`` the traced names recorded with the very same
        array (``[]`` when none: a field computed after the trace, such as the loss).
    """
    tape = Tape(skip=())
    with trace.tracing(recorder=tape):
        out = model(**kwargs, **flags)
    by_id: dict[int, list[str]] = {}
    names = []
    for n, v in tape.tensors.items():
        if _is_float(v):
            names.append(n)
            by_id.setdefault(id(v), []).append(n)
    sources = {name: list(by_id.get(id(v), [])) for name, v in _iter_outputs(out) if _is_float(v)}
    return names, sources


def _stream_of(name: str) -> bool:
    """Whether a name belongs to LiLT's layout stream (``layout_...`` in its last component)."""
    return "layout" in name.rsplit(".", 1)[-1].split("@", 1)[0]


def _source_gradient(name: str, candidates: list[str], grads: Mapping[str, Any]) -> Any:
    """The gradient of the per-layer output ``name`` from the traced tensors it is: of those,
    the ones of its own stream where the forward gave one array two names (``attentions`` ->
    ``attention_probs``, ``layout_attentions`` -> ``layout_attention_probs``), whose gradients
    must then be one (a module's output and its last step's are one tensor)."""
    field = name.split(".")[1]
    own = [c for c in candidates if c in grads]
    same_stream = [c for c in own if _stream_of(c) == ("layout" in field)]
    own = same_stream or own
    if not own:
        raise RuntimeError(
            f"no gradient for {name}: it is none of the traced tensors that have one ({candidates}); "
            "a per-layer output must be a recorded tensor"
        )
    g0 = _to_numpy(grads[own[0]])
    for c in own[1:]:
        if not np.array_equal(_to_numpy(grads[c]), g0, equal_nan=True):
            raise RuntimeError(f"{name} is {own[0]} and {c}, whose gradients differ: which one is ambiguous")
    return grads[own[0]]


def record_gradients(
    writer: Any, model: Any, kwargs: Mapping[str, Any], flags: Mapping[str, Any], seed: int = DEFAULT_SEED
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run the backward of ``L`` and add ``upstream.*`` and ``grad.*`` to ``writer``.

    Args:
        writer: a `refimpl.golden.writer.GoldenWriter` after the forward tensors (its
            selection decides which gradients it keeps: see `refimpl.golden.selection.is_selected`).
        model: a refimpl model whose class writes a backward.
        kwargs: the forward keywords (arrays, labels, documents; no output flags).
        flags: the golden forward's ``output_attentions`` / ``output_hidden_states``.
        seed: the seed of the ``G_X`` (used only without labels).

    Returns:
        ``(section, atols)``: the manifest's ``gradients`` object, and per gradient name its
        ``atol`` (`gradient_tolerance`).

    Raises:
        NotImplementedError: the model's class has no backward.
        RuntimeError: a floating forward tensor without a gradient (a bug, never dropped).
    """
    g = gradients.backward(model, seed=seed, tensor_grads=True, **kwargs)
    names, sources = per_layer_sources(model, kwargs, flags)
    dtype = np.dtype(model.dtype).name
    atols: dict[str, float] = {}

    def add(name: str, value: Any, gradient: bool = True) -> None:
        if writer.wants(name):
            writer.add(name, value)
            if gradient:
                atols[name] = gradient_tolerance(dtype, _to_numpy(value))

    for field, G in g.upstream.items():
        add(f"{UPSTREAM_PREFIX}outputs.{field}", G, gradient=False)
    for key, gp in g.params.items():
        add(GRAD_PREFIX + key, gp)
    n_params = len(atols)
    tensors = [n for n in g.tensors if n.startswith("inputs.")]  # the float inputs first, as the forward
    tensors += names
    missing = [n for n in names if n not in g.tensors]
    if missing:
        raise RuntimeError(f"{type(model).__name__}: traced tensors without a gradient: {missing[:5]}")
    clash = sorted(set(tensors) & set(g.params))
    if clash:
        raise RuntimeError(f"tensor names equal to checkpoint keys: {clash[:5]}")
    for n in tensors:
        add(GRAD_PREFIX + n, g.tensors[n])
    for name, candidates in sources.items():
        if name in g.tensors:  # an output field of L (outputs.logits...; outputs.loss: 1)
            value = g.tensors[name]
        else:
            value = _source_gradient(name, candidates, g.tensors)
        add(GRAD_PREFIX + name, value)
    section = {
        "L": "loss" if g.loss is not None else "sum over X in upstream of sum(X * G_X)",
        "seed": g.seed,
        "upstream": [f"outputs.{f}" for f in g.upstream],
        "parameters": [n[len(GRAD_PREFIX) :] for n in list(atols)[:n_params]],
        "tolerance": {
            "rule": "|candidate - reference| <= tol * max(1, max|reference|) per gradient tensor "
            "(the entry's atol; rtol 0)",
            "tol": GRADIENT_TOLERANCE.get(dtype, GRADIENT_TOLERANCE["float32"]),
        },
    }
    return section, atols


def mark_gradient_entries(entries: list[dict[str, Any]], atols: Mapping[str, float]) -> list[dict[str, Any]]:
    """Give the manifest entries of ``grad.*`` the role ``"gradient"`` and their ``atol``
    (``rtol`` 0), and those of ``upstream.*`` the role ``"upstream"``; in place, returned.
    (The manifest's ``gradients.parameters`` lists which gradients are of parameters.)"""
    for e in entries:
        if e["name"] in atols:
            e["role"], e["atol"], e["rtol"] = "gradient", atols[e["name"]], 0.0
        elif e["name"].startswith(UPSTREAM_PREFIX):
            e["role"] = "upstream"
    return entries
