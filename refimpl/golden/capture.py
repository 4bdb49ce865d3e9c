"""A traced forward pass as named tensors: ``inputs.<kw>``, the traced intermediates, then
``outputs.<field>[.<i>]``, in forward order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import backend, trace
from .format import _jsonable, _to_numpy

__all__ = [
    "prepare_inputs",
    "is_document",
    "document_inputs",
    "document_outputs",
    "flatten_outputs",
    "trace_forward",
    "OBJ_LABEL_KINDS",
    "forward_keywords",
]

#: LXMERT's visual pre-training targets: ``obj_labels.<kind>`` (ids or regression targets)
#: and ``obj_labels.<kind>.weights`` in a case and a golden file, the oracle's
#: ``obj_labels={kind: (targets, weights)}`` in the forward call.
OBJ_LABEL_KINDS = ("obj", "attr", "feat")


def _holds_mapping(v: Any) -> bool:
    """Whether ``v`` is a mapping, or a list or tuple with one somewhere inside."""
    if isinstance(v, Mapping):
        return True
    return isinstance(v, (list, tuple)) and any(_holds_mapping(x) for x in v)


def is_document(v: Any) -> bool:
    """Whether a forward keyword's value is a JSON document rather than an array: a dict, or
    a list holding dicts (the original LiLT relation extraction's ``entities`` and
    ``relations``, one ragged dict per document). A golden file keeps such values in its
    manifest (``inputs_json``), not as tensors."""
    return _holds_mapping(v)


def document_inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The document keywords of ``inputs`` (`is_document`) as JSON values (arrays inside them
    become lists), for the manifest's ``inputs_json``.

    Args:
        inputs: forward keywords -> values: arrays (``input_ids [batch, seq]``...), flags, and
            documents (``entities``: one ``{"start": [...], "end": [...], "label": [...]}`` per
            document of the batch).

    Returns:
        ``{keyword: JSON value}`` of the documents only (``{}`` when there is none).
    """
    return {k: _jsonable(v) for k, v in inputs.items() if is_document(v)}


def _is_document_field(v: Any) -> bool:
    """An output field that is not tensors: a list or tuple whose items are lists, tuples or
    dicts (``pred_relations``: a list of dicts per document; the decoded ``entities``)."""
    return isinstance(v, (list, tuple)) and any(
        isinstance(x, (list, tuple, Mapping)) for x in v if x is not None
    )


def document_outputs(out: Any) -> dict[str, Any]:
    """The output record's fields that are JSON documents, not tensors (the original LiLT
    relation extraction's ``pred_relations``, ``entities`` and ``relations``), as JSON values,
    for the manifest's ``outputs_json``."""
    items = out.items() if hasattr(out, "items") else dict(out).items()
    return {k: _jsonable(v) for k, v in items if v is not None and _is_document_field(v)}


def prepare_inputs(model: Any, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``inputs`` into arrays (floats cast to the model dtype, moved to its device) and
    plain keyword values (flags, ``None``, and documents such as ``entities``: `is_document`).

    Args:
        model: a refimpl model (its ``dtype`` and ``device``).
        inputs: forward keywords -> arrays of any shape (``input_ids [b, s]``...), flags,
            ``None`` or documents (one dict per document).

    Returns:
        ``(arrays, flags)``: the array keywords, same shapes, and the rest (unchanged).
    """
    arrays, flags = {}, {}
    dtype = np.dtype(getattr(model, "dtype", np.float64))
    device = getattr(model, "device", "cpu")
    for k, v in inputs.items():
        if v is None or isinstance(v, (bool, str)) or is_document(v):
            flags[k] = v
            continue
        a = np.asarray(backend.to_numpy(v))
        if a.dtype.kind == "f":
            a = a.astype(dtype)
        arrays[k] = backend.to_device(a, device) if device != "cpu" else a
    return arrays, flags


def forward_keywords(arrays: Mapping[str, Any]) -> dict[str, Any]:
    """The forward call's keywords of a case's flat arrays: ``obj_labels.<kind>`` and
    ``obj_labels.<kind>.weights`` (kind in `OBJ_LABEL_KINDS`) become the oracle's
    ``obj_labels={kind: (targets, weights)}``; every other keyword is passed as it is.

    Args:
        arrays: keyword -> array, e.g. ``obj_labels.obj [batch, boxes]`` (ids),
            ``obj_labels.obj.weights [batch, boxes]``, ``obj_labels.feat [batch, boxes, feat_dim]``.

    Raises:
        ValueError: naming the member, when a kind has targets without weights (or the reverse).
    """
    out: dict[str, Any] = {}
    obj: dict[str, list] = {}
    for k, v in arrays.items():
        parts = k.split(".")
        if parts[0] == "obj_labels" and len(parts) in (2, 3) and parts[1] in OBJ_LABEL_KINDS:
            if len(parts) == 3 and parts[2] != "weights":
                out[k] = v
                continue
            obj.setdefault(parts[1], [None, None])[len(parts) - 2] = v
        else:
            out[k] = v
    for kind, (targets, weights) in obj.items():
        if targets is None or weights is None:
            name = f"obj_labels.{kind}"
            have, lacks = (name, name + ".weights") if weights is None else (name + ".weights", name)
            raise ValueError(f"{have} is given without {lacks}: give both (targets and their weights)")
    if obj:
        out["obj_labels"] = {k: (t, w) for k, (t, w) in obj.items()}
    return out


def _iter_outputs(out: Any, prefix: str = "outputs"):
    """``(name, value)`` of an output record's non-``None`` fields, as `flatten_outputs`
    names them, without converting anything yet."""
    items = out.items() if hasattr(out, "items") else dict(out).items()
    for k, v in items:
        if v is None or _is_document_field(v):  # documents go to the manifest (`document_outputs`)
            continue
        if isinstance(v, (tuple, list)):
            for i, t in enumerate(v):
                if t is not None:
                    yield f"{prefix}.{k}.{i}", t
        elif isinstance(v, Mapping):
            for kk, t in v.items():
                if t is not None:
                    yield f"{prefix}.{k}.{kk}", t
        else:
            yield f"{prefix}.{k}", v


def flatten_outputs(out: Any, prefix: str = "outputs") -> dict[str, np.ndarray]:
    """Flatten an output record to ``{prefix.field: array}``; tuple fields become
    ``prefix.field.0``, ``prefix.field.1``, ...; ``None`` fields and documents
    (`document_outputs`) are left out.

    Args:
        out: a `refimpl.outputs.ModelOutput` (or a plain mapping of field -> value).
    """
    return {name: _to_numpy(v) for name, v in _iter_outputs(out, prefix)}


def trace_forward(
    model: Any,
    inputs: Mapping[str, Any],
    output_attentions: bool = True,
    output_hidden_states: bool = True,
) -> tuple[dict[str, np.ndarray], Any]:
    """Run ``model(**inputs)`` with tracing on and collect every tensor of the case.

    Args:
        model: a refimpl model (``refimpl.from_pretrained(...)``).
        inputs: forward keywords -> arrays (``input_ids [b, s]``, ``bbox [b, s, 4]``,
            ``visual_feats [b, o, f]``, ...). Float arrays are cast to the model's dtype.
        output_attentions, output_hidden_states: passed to the forward call.

    Returns:
        (tensors, output record): ``tensors`` is name -> NumPy array in forward order:
        ``inputs.<kw>``, then the traced intermediates, then ``outputs.<field>[.<i>]``.
    """
    arrays, flags = prepare_inputs(model, inputs)
    kwargs = {**forward_keywords(arrays), **flags}
    kwargs.setdefault("output_attentions", output_attentions)
    kwargs.setdefault("output_hidden_states", output_hidden_states)
    with trace.tracing() as rec:
        out = model(**kwargs)
    tensors: dict[str, np.ndarray] = {f"inputs.{k}": _to_numpy(v) for k, v in arrays.items()}
    for k, v in rec.tensors.items():
        if v is None:
            continue
        if k in tensors or k.startswith(("inputs.", "outputs.")):
            raise ValueError(f"trace name {k!r} clashes with the golden naming scheme")
        tensors[k] = _to_numpy(v)
    tensors.update(flatten_outputs(out))
    return tensors, out
