"""The gradient oracle: transformers 4.56.2 differentiated by torch.autograd, under refimpl's names.

``oracle_gradients(model, inputs, upstream)`` runs one forward of an oracle model (built with
``_oracle.build``, float64 or float32) and one ``backward`` of a scalar ``L``:

* with ``upstream=None``, ``L`` is the model's ``loss`` (the inputs carry labels);
* otherwise ``L = sum over fields X of sum(X * G_X)`` for ``upstream = {field: G_X}``, the
  output record's array fields (``last_hidden_state``, ``pooler_output``, ``logits``, ...; not
  the per-layer tuples, not ``loss``). refimpl's extra fields (LiLT's
  ``layout_last_hidden_state``) have no torch field: pass their ``G`` through
  ``upstream_modules`` under the golden name of the module output they equal
  (``lilt.encoder.layer.<N-1>.layout``).

It returns (`OracleGradients`):

* ``params``: ``dL/dparam`` under every parameter key of the model's ``state_dict``. Tied
  weights appear under each of their keys with the full gradient of the shared tensor
  (LXMERT's ``cls.predictions.decoder.weight`` and ``lxmert.embeddings.word_embeddings.weight``:
  the decoder's gradient and the lookup's, summed, so even the lookup's padding row 0 is not 0
  there). The saved checkpoint leaves the tied decoder key out; the golden file keeps the
  checkpoint's keys. Parameters ``L`` does not reach get zeros and are listed in ``unused``.
* ``modules``: ``dL/d(output)`` of every module output a forward hook sees (dropout modules
  left out: in eval they return their input, and LiLT's self-attention calls its one dropout
  on both streams' probabilities before the head mask), named as refimpl's
  trace names it (``refimpl.trace``): the module path; for a module called more than once, the
  trace's per-call name (LiLT's ``x_position_embeddings.left`` / ``.right`` and
  ``y_position_embeddings.upper`` / ``.lower``; LXMERT's ``visual_attention`` and everything in
  it, ``...visual_attention.att.query@lang`` / ``@visn``); for a tuple output, one name per
  float tensor in it, ``<path>.<i>[.<j>]`` (``None`` entries keep their index), except where
  the trace has a name of its own (`TUPLE_NAMES`: LiLT's ``lilt.encoder.layer.3`` /
  ``lilt.encoder.layer.3.layout``, both families' ``attention.self.context``,
  ``...attention_probs`` with ``output_attentions``). ``activations`` holds the forward values
  under the same names (to check the naming against a golden file) and ``sources`` where each
  came from (module path, call number, position in the tuple), to perturb it.
* ``outputs``: ``dL/dX`` for every float tensor of the output record, ``outputs.<field>`` and
  ``outputs.<field>.<i>`` for tuples (``outputs.attentions.1`` is the gradient of layer 1's
  probabilities after the head mask). It differs from ``G_X`` where one output feeds another
  (``last_hidden_state`` feeds the pooler).
* ``inputs``: ``dL/d`` the float inputs (``inputs.visual_feats``, ``inputs.visual_pos``,
  ``inputs.inputs_embeds``).

Not covered: tensors that are not module outputs (the attention scores and the probabilities
of LiLT's layout stream, the ``tmp_*`` summands, relative-position scores). The returned
attentions give the text stream's probabilities; the rest are left to the op-level tests.

The float32 loss of ``LxmertForPreTraining``: its forward starts the total with
``total_loss = torch.tensor(0.0, device=device)`` (and ``total_visual_loss`` likewise). A Python
float makes a tensor of torch's *default* dtype, float32, whatever dtype the model was cast to;
``total_loss += masked_lm_loss`` is in place, so the sum stays float32, and every float64 part
is rounded into it. The backward of that add hands each part ``grad.to(part.dtype)``: the
float32 ``1.0`` of ``loss.backward()`` becomes float64 ``1.0`` exactly, so every gradient is the
exact float64 gradient of the sum of the parts; only the loss *value* is rounded (compare it
at float32 precision, the gradients at 1e-10). ``float64_loss=True`` makes the default dtype
float64 for the forward, so that the total is float64 too (finite differences of the loss need
it; the gradients are the same to the last bit).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["OracleGradients", "oracle_gradients", "CALL_NAMES", "TUPLE_NAMES", "FLOAT_INPUTS"]

#: Modules the oracle calls more than once, and the trace's suffix for each call, in call order.
#: A suffix starting with "@" applies to every name recorded inside the module as well.
CALL_NAMES: list[tuple[re.Pattern, tuple[str, ...]]] = [
    (re.compile(r"(^|\.)visual_attention(\.|$)"), ("@lang", "@visn")),  # LxmertXLayer.cross_att
    (
        re.compile(r"\.x_position_embeddings$"),
        (".left", ".right"),
    ),  # LiltLayoutEmbeddings: bbox[..., 0], [..., 2]
    (re.compile(r"\.y_position_embeddings$"), (".upper", ".lower")),  # bbox[..., 1], [..., 3]
]

#: Tuple elements the trace records under a name of its own (applied before a call's "@" suffix).
TUPLE_NAMES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^((?:.*\.)?encoder\.layer\.\d+)\.0\.0$"), r"\1"),  # LiltLayer: ((text, layout), ...)
    (re.compile(r"^((?:.*\.)?encoder\.layer\.\d+)\.0\.1$"), r"\1.layout"),
    (re.compile(r"^(.*\.attention\.self)\.0\.0$"), r"\1.context"),  # LiltSelfAttention
    (re.compile(r"^(.*\.attention\.self)\.0\.1$"), r"\1.layout_context"),
    (re.compile(r"^(.*\.(?:self|att))\.0$"), r"\1.context"),  # LxmertAttention / LxmertSelfAttention
    (re.compile(r"^(.*\.(?:self|att))\.1$"), r"\1.attention_probs"),  # with output_attentions
]

#: Float inputs whose gradient is returned (when given).
FLOAT_INPUTS = ("visual_feats", "visual_pos", "inputs_embeds")


@dataclass
class OracleGradients:
    """What `oracle_gradients` returns; every array is NumPy in the model's dtype.

    Attributes:
        loss: ``L`` as torch computed it (for ``LxmertForPreTraining``'s loss: float32).
        params: state_dict key -> ``dL/dparam``.
        modules: golden name -> ``dL/d(module output)``.
        activations: golden name -> the module output (forward value).
        sources: golden name -> ``(module path, call number, tuple position)``.
        outputs: ``outputs.<field>[.<i>]`` -> ``dL/dX``.
        output_values: the same names -> ``X``.
        inputs: ``inputs.<name>`` -> ``dL/d(input)``.
        unused: parameter keys ``L`` does not reach (their gradient is zeros).
    """

    loss: float
    params: dict[str, np.ndarray] = field(default_factory=dict)
    modules: dict[str, np.ndarray] = field(default_factory=dict)
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    sources: dict[str, tuple[str, int, tuple[int, ...]]] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    output_values: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)


def call_suffix(path: str, call: int) -> tuple[str, str]:
    """``(name suffix, per-call "@" suffix)`` for the ``call``-th call (0-based) of module ``path``.

    Raises:
        ValueError: for a module called more often than `CALL_NAMES` knows.
    """
    for pattern, names in CALL_NAMES:
        if pattern.search(path):
            if call >= len(names):
                raise ValueError(f"module {path!r} called {call + 1} times; CALL_NAMES knows {len(names)}")
            suffix = names[call]
            return ("", suffix) if suffix.startswith("@") else (suffix, "")
    if call:
        raise ValueError(f"module {path!r} called {call + 1} times: add its per-call names to CALL_NAMES")
    return "", ""


def golden_name(path: str, call: int, position: tuple[int, ...]) -> str:
    """The trace's name for element ``position`` of the ``call``-th output of module ``path``."""
    own, at = call_suffix(path, call)
    name = path + own + "".join(f".{i}" for i in position)
    for pattern, repl in TUPLE_NAMES:
        if position and pattern.match(name):
            name = pattern.sub(repl, name)
            break
    return name + at


def _leaves(value, position=()):
    """(position, tensor) for every float tensor in a (nested) tuple/list; ``None`` keeps its index."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield position, value
    elif isinstance(value, (tuple, list)) and not hasattr(value, "keys"):
        for i, v in enumerate(value):
            yield from _leaves(v, (*position, i))


def _to_torch(value, dtype, requires_grad=False):
    if isinstance(value, dict):
        return {k: _to_torch(v, dtype) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_to_torch(v, dtype) for v in value)
    if isinstance(value, np.ndarray) or np.isscalar(value):
        arr = np.asarray(value)
        t = (
            torch.tensor(arr.astype(np.float64 if dtype == torch.float64 else np.float32))
            if arr.dtype.kind == "f"
            else torch.tensor(arr)
        )
        return t.requires_grad_(requires_grad) if requires_grad else t
    return value


@contextlib.contextmanager
def _default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _numpy(t: torch.Tensor | None, like: torch.Tensor) -> np.ndarray:
    return (torch.zeros_like(like) if t is None else t).detach().cpu().numpy().copy()


def oracle_gradients(
    model: torch.nn.Module,
    inputs: dict,
    upstream: dict[str, np.ndarray] | None = None,
    *,
    upstream_modules: dict[str, np.ndarray] | None = None,
    float64_loss: bool = False,
    output_attentions: bool = True,
    output_hidden_states: bool = True,
) -> OracleGradients:
    """One forward and one backward of the oracle ``model``; see the module docstring.

    Args:
        model: a transformers model in eval mode (``_oracle.build``), float64 or float32.
        inputs: keyword inputs as NumPy arrays (``obj_labels`` as transformers takes it:
            ``{kind: (labels, weights)}``); float arrays are cast to the model's dtype.
        upstream: ``{field: G}`` for ``L = sum(X * G)``, or ``None`` for ``L = loss``.
        upstream_modules: ``{golden name: G}`` added to ``L`` as ``sum(module output * G)``
            (for refimpl's fields that torch's output record lacks).
        float64_loss: run the forward with float64 as torch's default dtype (see above).
        output_attentions, output_hidden_states: passed to the model (the returned tuples
            get gradients under ``outputs.*``).

    Returns:
        an `OracleGradients`.

    Raises:
        ValueError: no loss and no upstream; an upstream field the output record lacks, that
            is a tuple, or whose shape differs; a golden name in ``upstream_modules`` that no
            hook saw; a module output modified in place after its hook (its gradient would be
            a later tensor's).
    """
    dtype = next(model.parameters()).dtype
    kwargs = {}
    grads_of_inputs = {}
    for key, value in inputs.items():
        wants_grad = key in FLOAT_INPUTS
        kwargs[key] = _to_torch(value, dtype, requires_grad=wants_grad)
        if wants_grad:
            grads_of_inputs[key] = kwargs[key]

    calls: dict[str, int] = {}
    seen: dict[str, tuple[torch.Tensor, int]] = {}
    sources: dict[str, tuple[str, int, tuple[int, ...]]] = {}

    def hook(module, args, output, path):
        call = calls.get(path, 0)
        calls[path] = call + 1
        for position, tensor in _leaves(output):
            name = golden_name(path, call, position)
            if name in seen:
                raise ValueError(f"two module outputs named {name!r}")
            if tensor.requires_grad:
                tensor.retain_grad()
            seen[name] = (tensor, tensor._version)
            sources[name] = (path, call, position)

    handles = [
        mod.register_forward_hook(lambda m, a, o, path=path: hook(m, a, o, path))
        for path, mod in model.named_modules()
        if path and not isinstance(mod, torch.nn.Dropout)  # identity in eval (LiLT calls one twice)
    ]
    try:
        with _default_dtype(torch.float64) if float64_loss else contextlib.nullcontext():
            out = model(
                **kwargs, output_attentions=output_attentions, output_hidden_states=output_hidden_states
            )
    finally:
        for h in handles:
            h.remove()
    for name, (tensor, version) in seen.items():
        if tensor._version != version:
            raise ValueError(f"the output named {name!r} was modified in place after its hook")

    record = {}
    for fname, value in out.items():
        for position, tensor in _leaves(value):
            name = f"outputs.{fname}" + "".join(f".{i}" for i in position)
            if tensor.requires_grad:
                tensor.retain_grad()
            record[name] = tensor

    if upstream is None and not upstream_modules:
        if getattr(out, "loss", None) is None:
            raise ValueError("the model returned no loss: pass labels in inputs, or upstream gradients")
        total = out.loss
    else:
        total = torch.zeros((), dtype=dtype)
        for fname, g in (upstream or {}).items():
            value = out.get(fname) if hasattr(out, "get") else None
            if not isinstance(value, torch.Tensor):
                have = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
                raise ValueError(
                    f"upstream field {fname!r} is not an array field of the output record {have}"
                )
            if tuple(value.shape) != tuple(np.shape(g)):
                raise ValueError(
                    f"upstream {fname!r} has shape {np.shape(g)}, the output {tuple(value.shape)}"
                )
            total = total + (value * torch.tensor(np.asarray(g), dtype=value.dtype)).sum()
        for name, g in (upstream_modules or {}).items():
            if name not in seen:
                raise ValueError(f"upstream_modules names {name!r}, which no hook saw")
            value = seen[name][0]
            total = total + (value * torch.tensor(np.asarray(g), dtype=value.dtype)).sum()
    total.backward()

    result = OracleGradients(loss=float(total.detach()))
    for key, p in model.state_dict(keep_vars=True).items():
        if isinstance(p, torch.nn.Parameter):
            result.params[key] = _numpy(p.grad, p)
            if p.grad is None:
                result.unused.append(key)
    for name, (tensor, _) in seen.items():
        result.modules[name] = _numpy(tensor.grad, tensor)
        result.activations[name] = tensor.detach().cpu().numpy().copy()
    result.sources = sources
    for name, tensor in record.items():
        result.outputs[name] = _numpy(tensor.grad, tensor)
        result.output_values[name] = tensor.detach().cpu().numpy().copy()
    for key, tensor in grads_of_inputs.items():
        result.inputs[f"inputs.{key}"] = _numpy(tensor.grad, tensor)
    model.zero_grad(set_to_none=True)
    return result
