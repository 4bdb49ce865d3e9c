"""Gradients of one scalar ``L`` with respect to every weight and every named tensor.

    grads = model.backward(input_ids=ids, bbox=boxes, labels=labels)        # L = the loss
    grads = model.backward(input_ids=ids, bbox=boxes, seed=0)               # L = sum_X <X, G_X>
    grads.params["lilt.encoder.layer.0.attention.self.query.weight"]       # dL/dW, checkpoint key
    grads.tensors["lilt.encoder.layer.0.attention.self.query"]             # dL/d(tensor), trace name

What ``L`` is:

* with labels (the case makes the model return a ``loss``), ``L`` is that loss;
* otherwise ``L = sum over the output record's array fields X of sum(X * G_X)``: every
  field that is one array (refimpl's extra fields such as ``layout_last_hidden_state``
  included; not the per-layer tuples, not ``loss``), each ``G_X`` a standard-normal array
  drawn by [upstream_gradients][refimpl.gradients.upstream_gradients] from one seed (or the
  caller's own ``upstream``).

How: ONE forward runs under a [Tape][refimpl.tape.Tape], which keeps references to the
tensors the forward records. The model class's ``_backward`` then walks its layers in reverse,
inside the forward's trace scopes, under a recorder that collects the gradient of each named
tensor under the forward tensor's own name; each backward returns its weights' gradients
keyed like its weights, which are flattened here to checkpoint keys. Tied weights (LXMERT's
decoder and word embeddings) each get the full gradient of the shared tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import trace
from .backend import get_namespace, to_device
from .tape import TAPE_SKIPS, Tape, reading

__all__ = ["Gradients", "TensorGrads", "backward", "output_fields", "upstream_gradients", "flatten_grads"]


@dataclass
class Gradients:
    """What [backward][refimpl.gradients.backward] returns.

    Attributes:
        loss: the forward's loss (a 0-d array) when ``L`` is the loss, else ``None``.
        outputs: the forward's output record.
        params: checkpoint key -> ``dL/dW`` (same shape and dtype as the weight), for every
            weight of the model (zeros for a weight ``L`` does not reach).
        tensors: trace name -> ``dL/d(tensor)`` for every floating tensor the forward records
            (intermediates, ``outputs.<field>``, and the float inputs ``inputs.visual_feats``,
            ``inputs.visual_pos``, ``inputs.inputs_embeds``); empty unless asked for.
        upstream: output field -> ``G_X`` (empty when ``L`` is the loss).
        seed: the seed the ``G_X`` were drawn with (``None`` when given or unused).
    """

    loss: Any
    outputs: Any
    params: dict[str, Any]
    tensors: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


class TensorGrads(trace.Recorder):
    """The recorder the backward runs under: it names each tensor's gradient like the tensor.

    Args:
        keep: keep the gradients (``False``: only the scopes are used, to read the tape).
    """

    def __init__(self, keep: bool = True):
        super().__init__(copy=False)
        self.keep = keep

    def wants(self, name: str) -> bool:
        """Whether the gradient of ``name`` is kept."""
        return self.keep

    def store(self, name: str, value: Any, aliases: tuple[str, ...] = ()) -> None:
        """Keep ``value`` (a gradient of its tensor's shape ``[...]``) under ``name`` (gradients have
        no aliases: equal forward tensors may receive different gradients)."""
        if self.keep:
            for n in (name, *aliases):
                self.tensors[n] = value


def output_fields(outputs: Any) -> list[str]:
    """The fields of an output record that ``L`` sums over: those holding one array (no tuples,
    no ``loss``), in the record's order."""
    return [k for k, v in outputs.items() if k != "loss" and hasattr(v, "shape") and hasattr(v, "dtype")]


def upstream_gradients(outputs: Any, seed: int = 0) -> dict[str, Any]:
    """The seeded ``G_X``: for each of [output_fields][refimpl.gradients.output_fields] in order,
    ``numpy.random.default_rng(seed).standard_normal(X.shape)`` (one generator, drawn field
    after field, in float64), cast to ``X``'s dtype and moved to its device.

    Args:
        outputs: the forward's output record.
        seed: a non-negative integer.

    Returns:
        field -> ``G_X`` with ``X``'s shape and dtype.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    out = {}
    for k in output_fields(outputs):
        x = outputs[k]
        g = rng.standard_normal(tuple(x.shape)).astype(x.dtype)
        out[k] = g if isinstance(x, np.ndarray) else to_device(g, "cuda")
    return out


def flatten_grads(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested weight gradients (keyed like ``model.weights``) -> flat checkpoint keys.

    A key reached twice (a weight used in two places whose backwards each return a part) gets
    the sum of its parts.
    """
    flat: dict[str, Any] = {}
    for k, v in nested.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            parts = flatten_grads(v, key + ".")
        else:
            parts = {key: v}
        for kk, g in parts.items():
            flat[kk] = g if kk not in flat else flat[kk] + g
    return flat


def _check_upstream(upstream: Mapping[str, Any], outputs: Any) -> dict[str, Any]:
    fields_ = output_fields(outputs)
    unknown = sorted(set(upstream) - set(fields_))
    if unknown:
        raise ValueError(
            f"upstream has fields {unknown} that are not array outputs; the outputs are {fields_}"
        )
    out = {}
    for k in fields_:
        if k not in upstream:
            raise ValueError(f"upstream lacks field {k!r}; give one array per output field {fields_}")
        g, x = upstream[k], outputs[k]
        if tuple(g.shape) != tuple(x.shape):
            raise ValueError(f"upstream[{k!r}] has shape {tuple(g.shape)}; the output has {tuple(x.shape)}")
        out[k] = g.astype(x.dtype, copy=False)
    return out


def backward(
    model: Any,
    upstream: Mapping[str, Any] | None = None,
    seed: int = 0,
    tensor_grads: bool = False,
    **inputs: Any,
) -> Gradients:
    """One forward and its backward: the gradients of ``L`` (see the module docstring).

    Args:
        model: a loaded model (``refimpl.from_pretrained``) whose class writes ``_backward``.
        upstream: ``{field: G_X}`` for every array output field (without labels only);
            ``None`` draws them from ``seed``.
        seed: the seed of the drawn ``G_X``.
        tensor_grads: also return the gradient of every named forward tensor (``tensors``).
        **inputs: the forward's keyword inputs, labels included (``output_attentions`` /
            ``output_hidden_states`` are not accepted: the per-layer tuples are not part of ``L``).

    Returns:
        a [Gradients][refimpl.gradients.Gradients] record.
    """
    if not hasattr(model, "_backward"):
        raise NotImplementedError(f"{type(model).__name__} has no backward written")
    for flag in ("output_attentions", "output_hidden_states"):
        if inputs.get(flag):
            raise ValueError(f"{flag}: the per-layer tuples are not part of L; leave it out of backward()")
        inputs.pop(flag, None)
    # with a head mask the backward recomputes the probabilities before it from the scores
    tape = Tape(skip=() if inputs.get("head_mask") is not None else TAPE_SKIPS)
    with trace.tracing(recorder=tape):
        outputs = model(**inputs, output_attentions=False, output_hidden_states=False)
    loss = getattr(outputs, "loss", None)
    used_seed = None
    if loss is not None:
        if upstream is not None:
            raise ValueError("upstream is for cases without labels; with labels L is the loss")
        grad_outputs = None
    elif upstream is not None:
        grad_outputs = _check_upstream(upstream, outputs)
    else:
        grad_outputs, used_seed = upstream_gradients(outputs, seed), int(seed)
    recorder = TensorGrads(keep=tensor_grads)
    with reading(tape), trace.tracing(recorder=recorder):
        nested = model._backward(inputs, outputs, grad_outputs)
    params = flatten_grads(nested)
    unknown = sorted(set(params) - set(model.params))
    if unknown:  # a backward that names a weight the model lacks is a bug, never dropped
        raise RuntimeError(
            f"{type(model).__name__}._backward returned gradients of unknown weights: {unknown}"
        )
    for key, source in model.tied_keys_for(model.config).items():
        if key in model.params and source in model.params:
            total = _zero_if_none(params.get(key), model.params[key]) + _zero_if_none(
                params.get(source), model.params[source]
            )
            params[key], params[source] = total, total
    for key, w in model.params.items():
        if key not in params:
            params[key] = get_namespace(w).zeros_like(w)
    params = {k: params[k] for k in model.params}  # the checkpoint's order
    return Gradients(
        loss=loss,
        outputs=outputs,
        params=params,
        tensors=dict(recorder.tensors),
        upstream=dict(grad_outputs or {}),
        seed=used_seed,
    )


def _zero_if_none(g, like):
    return get_namespace(like).zeros_like(like) if g is None else g
