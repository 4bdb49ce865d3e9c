"""Golden files: one ``.safetensors`` per case with the inputs, every traced intermediate and
the outputs of a forward pass, plus a JSON manifest; and :func:`compare` for checking a port.

A golden file is an ordinary safetensors file (see ``docs/golden-format.md``)::

    inputs.input_ids                                   int64   [batch, seq]
    lilt.embeddings.word_embeddings                    float64 [batch, seq, hidden]
    ...                                                (every intermediate, forward order)
    outputs.logits                                     float64 [batch, seq, num_labels]
    outputs.hidden_states.0 ... outputs.hidden_states.L

Its ``__metadata__`` holds one key, ``refimpl_manifest``: a JSON object with the versions, the
model's config, the sha256 of every weight file, dtype/device, where the inputs came from,
and per tensor (in forward order) its role, shape, dtype, recommended tolerance and which
mask positions a comparison should skip.

Typical use::

    model = refimpl.from_pretrained(ckpt, dtype="float64")
    golden.write_case("case.safetensors", model, {"input_ids": ids, "bbox": boxes}, checkpoint=ckpt)
    result = golden.compare("case.safetensors", "my_port.safetensors")
    print(result.table()); assert result.ok
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import backend, trace
from .files import read_json
from .weights import CheckpointError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_KEY",
    "Golden",
    "GoldenWriter",
    "PRESETS",
    "selection_spec",
    "is_selected",
    "validate_manifest",
    "weight_entries",
    "inputs_hash",
    "flatten_outputs",
    "trace_forward",
    "recommended_tolerance",
    "mask_specs_for",
    "build_manifest",
    "write",
    "write_case",
    "read",
    "compare",
    "sha256_file",
    "keep_mask",
]

FORMAT = "refimpl-golden"
FORMAT_VERSION = 2
MANIFEST_KEY = "refimpl_manifest"

#: forward keywords that are masks over a token stream: input name -> stream.
MASK_INPUTS = {"attention_mask": "language", "visual_attention_mask": "vision"}

#: base tolerances: float64 is flat; float32 grows with depth (see recommended_tolerance).
FLOAT64_ATOL = 1e-10
FLOAT64_RTOL = 1e-10
FLOAT32_ATOL = 1e-5
FLOAT32_RTOL = 1e-5

_LAYER_RE = re.compile(r"(?:^|\.)((?:layer|layers|r_layers|x_layers)\.\d+)(?=\.|$)")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (streamed; :func:`refimpl.weights.sha256_file`)."""
    from .weights import sha256_file as _sha

    return _sha(path)


def _to_numpy(x: Any) -> np.ndarray:
    """Host NumPy array (C-contiguous) of an array or scalar."""
    a = np.asarray(backend.to_numpy(x))
    return _contiguous(a)


def _contiguous(a: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (``np.ascontiguousarray`` would make them 1-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def flatten_outputs(out: Any, prefix: str = "outputs") -> dict[str, np.ndarray]:
    """Flatten an output record to ``{prefix.field: array}``; tuple fields become
    ``prefix.field.0``, ``prefix.field.1``, ...; ``None`` fields are left out.

    Args:
        out: a :class:`refimpl.outputs.ModelOutput` (or a plain mapping of field -> value).
    """
    return {name: _to_numpy(v) for name, v in _iter_outputs(out, prefix)}


def _prepare_inputs(model: Any, inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``inputs`` into arrays (floats cast to the model dtype, moved to its device) and
    plain keyword values (flags, ``None``)."""
    arrays, flags = {}, {}
    dtype = np.dtype(getattr(model, "dtype", np.float64))
    device = getattr(model, "device", "cpu")
    for k, v in inputs.items():
        if v is None or isinstance(v, (bool, str)):
            flags[k] = v
            continue
        a = np.asarray(backend.to_numpy(v))
        if a.dtype.kind == "f":
            a = a.astype(dtype)
        arrays[k] = backend.to_device(a, device) if device != "cpu" else a
    return arrays, flags


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
    arrays, flags = _prepare_inputs(model, inputs)
    kwargs = {**arrays, **flags}
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


def _depths(names: list[str]) -> dict[str, int]:
    """Per name: how many layer units (``...layer.N`` / ``r_layers.N`` / ``x_layers.N``) the
    forward pass has entered up to that tensor (forward order); outputs get the total."""
    seen: set[str] = set()
    out: dict[str, int] = {}
    for n in names:
        if n.startswith("outputs."):
            continue
        m = _LAYER_RE.search(n)
        if m:
            seen.add(n[: m.end()])
        out[n] = 0 if n.startswith("inputs.") else len(seen)
    for n in names:
        if n.startswith("outputs."):
            out[n] = len(seen)
    return out


def recommended_tolerance(dtype: Any, depth: int) -> tuple[float, float]:
    """Recommended ``(atol, rtol)`` for a tensor of ``dtype`` after ``depth`` layers.

    Integer and bool tensors: exact ``(0, 0)``. float64: ``(1e-10, 1e-10)`` at any depth.
    float32 (and lower): ``(1e-5 * (1 + depth / 4), 1e-5)``, so 4e-5 after 12 layers, within
    the project's 1e-4 base-size target. A comparison passes where
    ``|candidate - reference| <= atol + rtol * |reference|``.
    """
    dt = np.dtype(dtype)
    if dt.kind not in "fc":
        return 0.0, 0.0
    if dt.itemsize >= 8:
        return FLOAT64_ATOL, FLOAT64_RTOL
    return float(FLOAT32_ATOL * (1.0 + depth / 4.0)), FLOAT32_RTOL


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------
_VISION_MARKERS = (
    "visn",
    "vision",
    "visual_feats",
    "visual_pos",
    "r_layers",
    "box_fc",
    "box_layer_norm",
    "obj_predict",
    "visual_output",
)
_ATTENTION_MARKERS = ("probs", "scores", "attentions", "attention_mask")


def _streams(name: str) -> tuple[str | None, str | None]:
    """(row stream, key stream) of a tensor from its name: which token stream ("language" /
    "vision") its rows (query rows for attention) and its key columns belong to; ``None``
    where the name does not say. Only needed when both streams have the same length.

    LXMERT's cross-attention module runs twice per cross layer; its calls carry the suffix
    ``@lang`` (language queries, vision keys) and ``@visn`` (the reverse). Within a call the
    ``key``/``value`` projections run over the other stream.
    """
    n = name.lower()
    other = {"language": "vision", "vision": "language"}
    if "cross_encoder_vision_attentions" in n:
        return "vision", "language"
    if "cross_encoder_attentions" in n:
        return "language", "vision"
    for tag, q in (("@lang", "language"), ("@visn", "vision")):
        if tag in n:
            base = n.split("@", 1)[0]
            if base.endswith((".key", ".value")):
                return other[q], other[q]
            return q, other[q]
    if any(m in n for m in _VISION_MARKERS):
        return "vision", "vision"
    if any(
        m in n
        for m in ("lang", "language", "embeddings", "encoder.layer.", "cls.predictions", "hidden_states")
    ):
        return "language", "language"
    return None, None


def mask_specs_for(
    name: str, shape: tuple[int, ...], masks: Mapping[str, tuple[int, ...]]
) -> list[dict[str, Any]]:
    """Which mask positions a comparison of tensor ``name`` should skip.

    Rules (``masks`` maps a mask input, e.g. ``"inputs.attention_mask"`` ``[b, n]``, to its shape):

    * inputs and tensors with fewer than 3 dims are never masked (pooled vectors, losses,
      sequence-level logits);
    * a tensor ``[b, s, ...]`` is a token-row tensor: axis pair ``(0, 1)`` follows the mask of
      length ``s``;
    * a 4-D tensor whose name contains ``probs``/``scores``/``attentions`` is
      ``[b, heads, q, k]``: ``(0, 2)`` follows the query stream's mask and ``(0, 3)`` the key
      stream's; other 4-D tensors ``[b, heads, s, d]`` only mask ``(0, 2)``;
    * when two masks have the length of an axis (LXMERT with as many regions as tokens), the
      name decides the stream; if it cannot, that axis is not masked (stricter, never looser).

    Returns:
        a list of ``{"input": mask name, "axes": [batch_axis, token_axis]}``.
    """
    if name.startswith("inputs.") or len(shape) < 3 or not masks:
        return []
    by_len: dict[int, list[str]] = {}
    for m, mshape in masks.items():
        if len(mshape) == 2 and mshape[0] == shape[0]:
            by_len.setdefault(int(mshape[1]), []).append(m)

    def pick(axis: int, stream: str | None) -> str | None:
        cands = by_len.get(int(shape[axis]), [])
        if len(cands) == 1:
            return cands[0]
        if len(cands) > 1 and stream is not None:
            named = [c for c in cands if MASK_INPUTS.get(c.split(".", 1)[1]) == stream]
            if len(named) == 1:
                return named[0]
        return None

    specs: list[dict[str, Any]] = []
    q_stream, k_stream = _streams(name)
    is_att = len(shape) == 4 and any(m in name.lower() for m in _ATTENTION_MARKERS)
    row_axis = 2 if len(shape) == 4 else 1
    m = pick(row_axis, q_stream)
    if m is not None:
        specs.append({"input": m, "axes": [0, row_axis]})
    if is_att:
        m = pick(3, k_stream)
        if m is not None:
            specs.append({"input": m, "axes": [0, 3]})
    return specs


def keep_mask(
    shape: tuple[int, ...], specs: list[dict[str, Any]], tensors: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Boolean array of ``shape``: True where a comparison looks (every spec's mask is non-zero).

    Args:
        shape: the tensor's shape.
        specs: ``[{"input": name, "axes": [a0, a1]}, ...]`` (see :func:`mask_specs_for`).
        tensors: where to find the mask arrays (``[b, n]``) by name.
    """
    keep = np.ones(shape, dtype=bool)
    for spec in specs:
        mask = np.asarray(tensors[spec["input"]]) != 0  # [b, n]
        a0, a1 = spec["axes"]
        if mask.shape != (shape[a0], shape[a1]):
            raise ValueError(
                f"mask {spec['input']} has shape {mask.shape}, tensor axes {a0},{a1} have ({shape[a0]}, {shape[a1]})"
            )
        view = [1] * len(shape)
        view[a0], view[a1] = shape[a0], shape[a1]
        if a0 > a1:
            mask = mask.T
        keep &= mask.reshape(view)
    return keep


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------
_ATTENTION_SHAPED = (
    r"(.*\.)?[^.@]*(scores|probs)[^.@]*(@\w+)?",  # traced attention scores / probabilities
    r"outputs\.[^.]*attentions\..*",  # outputs.attentions.i, outputs.cross_encoder_attentions.i, ...
)
_BLOCKS = (
    r"(.*\.)?(embeddings|layout_embeddings)(\.LayerNorm)?",  # text and layout embedding outputs
    r"(.*\.)?embeddings\.position_ids",  # the position ids the embeddings computed
    r"(.*\.)?visn_fc",  # LXMERT's visual feature embedding
    r"(.*\.)?(layer|layers|r_layers)\.\d+(\.layout|\.output)?",  # each layer's output(s)
    r"(.*\.)?x_layers\.\d+\.(lang_output|visn_output)",  # LXMERT's cross layers, both streams
    r"(.*\.)?pooler",
    r"(classifier|qa_outputs|answer_head|cls\.predictions|cls\.seq_relationship|loss)(\..*)?",  # heads
    r"outputs\..*",
)

#: output fields that hold attention probabilities (``outputs.<field>.<i>``).
_ATTENTION_FIELDS = (
    "attentions",
    "layout_attentions",
    "language_attentions",
    "vision_attentions",
    "cross_encoder_attentions",
    "cross_encoder_vision_attentions",
    "cross_encoder_language_self_attentions",
    "cross_encoder_vision_self_attentions",
)

#: ``--select`` presets: (include, exclude) regular expressions over tensor names.
PRESETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "all": ((r".*",), ()),
    "modules": ((r".*",), _ATTENTION_SHAPED),
    "blocks": (_BLOCKS, _ATTENTION_SHAPED),
}


def selection_spec(select: str | Sequence[str] | None = None) -> dict[str, Any]:
    """The manifest's ``selection`` object for ``--select`` values.

    Args:
        select: preset names (``"all"``, ``"modules"``, ``"blocks"``) and/or glob patterns over
            tensor names (``"*.attention.self.query"``, ``fnmatch`` syntax: ``*`` also matches
            dots); ``None`` or empty means ``"all"``. A name is kept when any value selects it;
            inputs are always kept (they carry the masks).

    Returns:
        ``{"select": [values], "terms": [{"include": [regex], "exclude": [regex]}, ...]}``.

    Raises:
        ValueError: an empty value.
    """
    values = [select] if isinstance(select, str) else list(select or ["all"])
    terms = []
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"select[{i}]: expected a preset ({', '.join(PRESETS)}) or a glob, got {v!r}")
        if v in PRESETS:
            inc, exc = PRESETS[v]
            terms.append({"include": list(inc), "exclude": list(exc)})
        else:
            terms.append({"include": [fnmatch.translate(v)], "exclude": []})
    return {"select": values, "terms": terms}


@functools.lru_cache(maxsize=64)
def _compiled(spec_json: str) -> list[tuple[re.Pattern, re.Pattern | None]]:
    out = []
    for term in json.loads(spec_json)["terms"]:
        inc = re.compile("|".join(f"(?:{r})" for r in term["include"]) or "(?!)")
        exc = re.compile("|".join(f"(?:{r})" for r in term["exclude"])) if term["exclude"] else None
        out.append((inc, exc))
    return out


def wants_attentions(selection: Mapping[str, Any]) -> bool:
    """Whether a selection (:func:`selection_spec`) keeps any attention output
    (``outputs.attentions.<i>`` and LXMERT's kinds): if not, the forward runs without them."""
    return any(is_selected(selection, f"outputs.{f}.0") for f in _ATTENTION_FIELDS)


def is_selected(manifest: Mapping[str, Any], name: str) -> bool:
    """Whether ``name`` is inside a golden file's selection (so its absence would be a bug,
    not a choice). A manifest without ``selection`` (format version 1, or a plain file)
    selects everything; inputs are always selected.

    Args:
        manifest: a golden file's manifest (``Golden.manifest``) or a selection object
            (:func:`selection_spec`).
        name: a tensor name.
    """
    spec = manifest.get("selection", manifest if "terms" in manifest else None)
    if not spec or name.startswith("inputs."):
        return True
    for inc, exc in _compiled(json.dumps(spec, sort_keys=True)):
        if inc.fullmatch(name) and not (exc is not None and exc.fullmatch(name)):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# manifest, write, read
# ---------------------------------------------------------------------------------------------
def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    return x


_WEIGHT_HASHES: dict[tuple[str, int, int], str] = {}


def weight_entries(checkpoint: str | os.PathLike | None) -> list[dict[str, Any]]:
    """``[{"file", "bytes", "sha256"}]`` of a checkpoint's weight files (hashes cached per
    path, size and mtime, so a batch run hashes a 1 GB checkpoint once)."""
    if checkpoint is None:
        return []
    from .weights import weight_files

    out = []
    for p in weight_files(checkpoint):  # the files loading reads (shard index and shards)
        fn = os.path.basename(p)
        st = os.stat(p)
        key = (os.path.abspath(os.fspath(p)), st.st_size, st.st_mtime_ns)
        if key not in _WEIGHT_HASHES:
            _WEIGHT_HASHES[key] = sha256_file(p)
        out.append({"file": fn, "bytes": st.st_size, "sha256": _WEIGHT_HASHES[key]})
    return out


def inputs_hash(arrays: Mapping[str, Any], flags: Mapping[str, Any] | None = None) -> str:
    """sha256 over the forward inputs (names, dtypes, shapes, bytes; flags as JSON): the key a
    batch run uses to tell that an existing golden file was made from the same case."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = _to_numpy(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))
    h.update(json.dumps(_jsonable(dict(flags or {})), sort_keys=True).encode())
    return h.hexdigest()


def _entries(meta: Mapping[str, tuple[np.dtype, tuple[int, ...]]], masks: Mapping[str, tuple[int, ...]]):
    """Manifest ``tensors`` entries, forward order, from name -> (dtype, shape)."""
    depths = _depths(list(meta))
    entries = []
    for n, (dt, shape) in meta.items():
        role = (
            "input" if n.startswith("inputs.") else "output" if n.startswith("outputs.") else "intermediate"
        )
        atol, rtol = recommended_tolerance(dt, depths[n])
        entries.append(
            {
                "name": n,
                "role": role,
                "dtype": np.dtype(dt).name,
                "shape": [int(s) for s in shape],
                "depth": depths[n],
                "atol": atol,
                "rtol": rtol,
                "masks": mask_specs_for(n, tuple(shape), masks),
            }
        )
    return entries


def _padding_masks(tensors: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Mask inputs that mask something: ``inputs.<mask>`` -> shape."""
    return {
        f"inputs.{k}": tuple(np.shape(tensors[f"inputs.{k}"]))
        for k in MASK_INPUTS
        if f"inputs.{k}" in tensors and np.any(np.asarray(tensors[f"inputs.{k}"]) == 0)
    }


def _manifest(
    entries: list[dict[str, Any]],
    aliases: Mapping[str, str],
    selection: Mapping[str, Any],
    model: Any = None,
    checkpoint: str | os.PathLike | None = None,
    inputs_source: Mapping[str, Any] | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    dtype: str | None = None,
    device: str | None = None,
    weights: list[dict[str, Any]] | None = None,
    inputs_sha256: str | None = None,
) -> dict[str, Any]:
    import refimpl

    config = getattr(model, "config", None)
    cfg = config.to_dict() if config is not None and hasattr(config, "to_dict") else None
    model_dtype = dtype or (
        np.dtype(model.dtype).name if model is not None and hasattr(model, "dtype") else None
    )
    return _jsonable(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "refimpl_version": refimpl.__version__,
            "numpy_version": np.__version__,
            "model_type": getattr(config, "model_type", None) if config is not None else None,
            "architecture": type(model).__name__ if model is not None else None,
            "config": cfg,
            "checkpoint": os.path.basename(os.path.normpath(os.fspath(checkpoint))) if checkpoint else None,
            "weights": weights if weights is not None else weight_entries(checkpoint),
            "dtype": model_dtype,
            "device": device or getattr(model, "device", "cpu"),
            "inputs_source": dict(inputs_source or {"kind": "api"}),
            "inputs_sha256": inputs_sha256,
            "forward_kwargs": dict(forward_kwargs or {}),
            "mask_rule": "a position is compared iff every listed mask is non-zero there",
            "default_tolerance": dict(
                zip(("atol", "rtol"), recommended_tolerance(model_dtype or "float64", 0), strict=True)
            ),
            "selection": dict(selection),
            "aliases": dict(aliases),
            "tensors": entries,
        }
    )


def build_manifest(
    tensors: Mapping[str, np.ndarray],
    model: Any = None,
    checkpoint: str | os.PathLike | None = None,
    inputs_source: Mapping[str, Any] | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """The manifest (a JSON-able dict) of a case; see ``docs/golden-format.md`` for the schema.

    Args:
        tensors: name -> array in forward order (``trace_forward``'s first result).
        model: the refimpl model that produced them (config, architecture, dtype, device).
        checkpoint: its checkpoint directory (weight files are hashed).
        inputs_source: where the inputs came from, e.g. ``{"kind": "npz", "path": "x.npz"}``.
        forward_kwargs: non-array keywords of the forward call.

    The alias table is left empty: :func:`write` finds the aliases when it stores the tensors.
    """
    meta = {n: (np.asarray(a).dtype, tuple(np.shape(a))) for n, a in tensors.items()}
    return _manifest(
        _entries(meta, _padding_masks(tensors)),
        {},
        selection_spec(None),
        model,
        checkpoint,
        inputs_source,
        forward_kwargs,
        dtype,
        device,
    )


# safetensors dtype codes of the NumPy dtypes a golden file holds.
_CODE = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
}


class GoldenWriter(trace.Recorder):
    """A :class:`refimpl.trace.Recorder` that streams a golden file to disk.

    Each recorded tensor is checked against the selection, hashed (blake2b of its bytes, with
    its dtype and shape) and, unless a bit-identical tensor is already stored (confirmed by a
    byte compare), appended to a spill file next to ``path``; otherwise its name becomes an
    alias. Nothing is kept in memory but names, shapes and hashes. :meth:`finish` writes the
    safetensors header with the manifest, streams the spill files after it and renames the
    result to ``path`` atomically; :meth:`abort` removes the spill files.

    The data is grouped by element size (8-byte types first, then 4, 2, 1), so every tensor
    stays aligned for a zero-copy memory map; the manifest keeps the forward order.

    Args:
        path: the golden file to write.
        select: ``--select`` values (see :func:`selection_spec`).
        dedup: store bit-identical tensors once (default).
    """

    def __init__(
        self, path: str | os.PathLike, select: str | Sequence[str] | None = None, dedup: bool = True
    ):
        super().__init__(copy=False)
        self.path = os.fspath(path)
        self.parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(self.parent, exist_ok=True)
        self.selection = selection_spec(select)
        self.dedup = dedup
        self.meta: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}  # every kept name, forward order
        self.aliases: dict[str, str] = {}  # alias -> stored name
        self.masks: dict[str, tuple[int, ...]] = {}
        self.stored_bytes = 0
        self._stored: dict[str, tuple[str, tuple[int, ...], int, int, int]] = {}  # code, shape, size, off, n
        self._by_key: dict[tuple[str, tuple[int, ...], bytes], list[str]] = {}
        self._spill: dict[int, Any] = {}
        self._pos: dict[int, int] = {}
        self.in_forward = False

    def _spill_file(self, size: int):
        if size not in self._spill:
            self._spill[size] = tempfile.TemporaryFile(dir=self.parent, prefix=".golden-spill-")
            self._pos[size] = 0
        return self._spill[size]

    def _find_equal(self, a: np.ndarray, key: tuple) -> str | None:
        raw = a.reshape(-1).view(np.uint8)
        for cand in self._by_key.get(key, []):
            _, _, size, off, n = self._stored[cand]
            f = self._spill[size]
            f.flush()
            if np.array_equal(np.frombuffer(os.pread(f.fileno(), n, off), np.uint8), raw):
                return cand
        return None

    def wants(self, name: str) -> bool:
        """Whether the selection keeps ``name`` (a fast kernel that would skip it gives way to its formula)."""
        return is_selected(self.selection, name)

    def store(self, name: str, value: Any, aliases: tuple[str, ...] = ()) -> None:
        """Spill ``value`` (or alias it to an equal stored tensor) under the selected names.

        Args:
            name: the full name; ``aliases``: other full names of the same value.
            value: an array of any shape (or a scalar); stored with its dtype and shape.
        """
        if self.in_forward:
            for n in (name, *aliases):
                if n.startswith(("inputs.", "outputs.")):
                    raise ValueError(f"trace name {n!r} clashes with the golden naming scheme")
        names = [n for n in (name, *aliases) if is_selected(self.selection, n)]
        if not names or value is None:
            return
        a = _to_numpy(value)
        if a.dtype.name not in _CODE:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be stored (allowed: {sorted(_CODE)})")
        shape = tuple(int(s) for s in a.shape)
        if names[0].startswith("inputs.") and names[0][7:] in MASK_INPUTS and np.any(a == 0):
            self.masks[names[0]] = shape
        for n in names:
            self.meta[n] = (a.dtype, shape)
        key = None
        target = None
        if self.dedup:
            digest = hashlib.blake2b(memoryview(a.reshape(-1).view(np.uint8)), digest_size=16).digest()
            key = (a.dtype.str, shape, digest)
            target = self._find_equal(a, key)
        if target is None:
            target, rest = names[0], names[1:]
            size = a.dtype.itemsize
            f = self._spill_file(size)
            n = a.nbytes
            if n:
                f.write(memoryview(a.reshape(-1).view(np.uint8)))
            self._stored[target] = (_CODE[a.dtype.name], shape, size, self._pos[size], n)
            self._pos[size] += n
            self.stored_bytes += n
            if key is not None:
                self._by_key.setdefault(key, []).append(target)
        else:
            rest = names
        for n in rest:
            self.aliases[n] = target

    def manifest_entries(self) -> list[dict[str, Any]]:
        """The manifest's ``tensors`` list of what was recorded so far (forward order)."""
        return _entries(self.meta, self.masks)

    def finish(self, manifest: Mapping[str, Any]) -> str:
        """Write the file: 8-byte header length, the JSON header (tensor table and
        ``__metadata__`` manifest, padded to 8 bytes), then the spilled data; rename into place."""
        sizes = sorted(self._spill, reverse=True)
        base, at = {}, 0
        for s in sizes:
            base[s] = at
            at += self._pos[s]
        header: dict[str, Any] = {"__metadata__": {MANIFEST_KEY: json.dumps(manifest)}}
        for name, (code, shape, size, off, n) in self._stored.items():
            header[name] = {
                "dtype": code,
                "shape": list(shape),
                "data_offsets": [base[size] + off, base[size] + off + n],
            }
        hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
        hb += b" " * (-(8 + len(hb)) % 8)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as out:
                out.write(len(hb).to_bytes(8, "little"))
                out.write(hb)
                for s in sizes:
                    f = self._spill[s]
                    f.flush()
                    f.seek(0)
                    shutil.copyfileobj(f, out, 16 << 20)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
            self.abort()
        return self.path

    def abort(self) -> None:
        """Close and remove the spill files (nothing is written to ``path``)."""
        for f in self._spill.values():
            f.close()
        self._spill.clear()


def write(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    manifest: Mapping[str, Any],
    select: str | Sequence[str] | None = None,
) -> str:
    """Write ``tensors`` and ``manifest`` to one golden file (parent dirs created).

    The manifest's ``tensors`` list must name exactly the keys of ``tensors``. Bit-identical
    tensors are stored once: the alias table is recomputed from the values (the manifest's own
    ``aliases`` is replaced), so a changed copy of a tensor is stored on its own. The selection
    is kept from the manifest unless ``select`` is given.
    """
    listed = [e["name"] for e in manifest["tensors"]]
    if set(listed) != set(tensors) or len(listed) != len(tensors):
        raise ValueError("manifest['tensors'] must list every tensor exactly once")
    sel = manifest.get("selection") or selection_spec(select)
    w = GoldenWriter(path, select=None)
    if select is not None:
        w.selection = selection_spec(select)
    try:
        for name in listed:
            w.store(name, tensors[name])
        kept = {e["name"]: e for e in manifest["tensors"] if e["name"] in w.meta}
        out = dict(manifest)
        out["format"], out["format_version"] = FORMAT, FORMAT_VERSION
        out["selection"] = sel if select is None else w.selection
        out["aliases"] = w.aliases
        out["tensors"] = list(kept.values())
        return w.finish(_jsonable(out))
    except BaseException:
        w.abort()
        raise


def _iter_outputs(out: Any, prefix: str = "outputs"):
    """``(name, value)`` of an output record's non-``None`` fields, as :func:`flatten_outputs`
    names them, without converting anything yet."""
    items = out.items() if hasattr(out, "items") else dict(out).items()
    for k, v in items:
        if v is None:
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


def write_case(
    path: str | os.PathLike,
    model: Any,
    inputs: Mapping[str, Any],
    checkpoint: str | os.PathLike | None = None,
    inputs_source: Mapping[str, Any] | None = None,
    select: str | Sequence[str] | None = None,
    weights: list[dict[str, Any]] | None = None,
) -> Golden:
    """Trace one forward pass of ``model`` on ``inputs`` and stream it to a golden file.

    Tensors go to disk as they are recorded (:class:`GoldenWriter`), so memory stays at the
    model's weights plus one forward pass's working set.

    Args:
        path: output ``.safetensors`` file.
        model: a refimpl model.
        inputs: forward keywords -> arrays, e.g. ``input_ids [batch, seq]``, ``bbox
            [batch, seq, 4]``, ``visual_feats [batch, boxes, feat_dim]`` (see :func:`trace_forward`).
        checkpoint: the model's checkpoint directory, for the weight hashes.
        inputs_source: provenance of the inputs, stored in the manifest.
        select: which tensors to keep (:func:`selection_spec`; default all).
        weights: precomputed :func:`weight_entries` of ``checkpoint`` (batch runs).

    Returns:
        the written case as a :class:`Golden` (read back lazily from ``path``).
    """
    arrays, flags = _prepare_inputs(model, inputs)
    w = GoldenWriter(path, select=select)
    fwd = {k: v for k, v in inputs.items() if v is None or isinstance(v, (bool, str))}
    # a selection without attention outputs need not hold every layer's probabilities until
    # the forward returns (12 x [1, 12, 512, 512] float64 for LiLT base: 300 MB per stream)
    fwd.setdefault("output_attentions", wants_attentions(w.selection))
    fwd.setdefault("output_hidden_states", True)
    kwargs = {**arrays, **fwd}
    digest = inputs_hash(arrays, fwd)
    try:
        for k, v in arrays.items():
            w.add(f"inputs.{k}", v)
        w.in_forward = True
        with trace.tracing(recorder=w):
            out = model(**kwargs)
        w.in_forward = False
        for name, v in _iter_outputs(out):
            w.add(name, v)
        del out
        manifest = _manifest(
            w.manifest_entries(),
            w.aliases,
            w.selection,
            model=model,
            checkpoint=checkpoint,
            inputs_source=inputs_source,
            forward_kwargs=fwd,
            weights=weights,
            inputs_sha256=digest,
        )
        w.finish(manifest)
    except BaseException:
        w.abort()
        raise
    return read(path)


class _Tensors(MutableMapping):
    """A golden file's tensors by name (aliases resolved), read from disk one at a time.

    Each lookup reads that tensor's bytes from the file into a fresh array (nothing is cached,
    so a comparison's memory is one tensor pair at a time). Assigning a name keeps the new
    value in memory (for building a perturbed copy in tests and tools).
    """

    def __init__(
        self, path: str, table: dict[str, tuple[np.dtype, tuple[int, ...], int, int]], order, aliases
    ):
        self._path, self._table, self._aliases = path, table, dict(aliases)
        self._order = list(order)
        self._set: dict[str, np.ndarray] = {}
        self._deleted: set[str] = set()

    def info(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """(dtype, shape) of ``name`` without reading its data."""
        if name in self._set:
            return self._set[name].dtype, tuple(self._set[name].shape)
        if name in self._deleted:
            raise KeyError(name)
        dt, shape, _, _ = self._table[self._aliases.get(name, name)]
        return dt, shape

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._set:
            return self._set[name]
        if name in self._deleted or name not in self._order_set():
            raise KeyError(name)
        dt, shape, begin, end = self._table[self._aliases.get(name, name)]
        a = np.empty(shape, dtype=dt)
        if end > begin:
            fd = os.open(self._path, os.O_RDONLY)
            try:
                view, done = memoryview(a.reshape(-1).view(np.uint8)), 0
                while done < end - begin:
                    got = os.preadv(fd, [view[done:]], begin + done)
                    if got <= 0:
                        raise OSError(f"{self._path}: short read of tensor {name!r}")
                    done += got
            finally:
                os.close(fd)
        return a

    def _order_set(self) -> set[str]:
        if not hasattr(self, "_names"):
            self._names = set(self._order)
        return self._names

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in self._order_set() and name not in self._set:
            self._order.append(name)
            self._names.add(name)
        self._deleted.discard(name)
        self._set[name] = np.asarray(value)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._set.pop(name, None)
        self._deleted.add(name)

    def __contains__(self, name: object) -> bool:
        return (
            isinstance(name, str)
            and name not in self._deleted
            and (name in self._set or name in self._order_set())
        )

    def __iter__(self):
        return (n for n in self._order if n not in self._deleted)

    def __len__(self) -> int:
        return len(self._order) - len(self._deleted)


class _View(Mapping):
    """Part of a tensor mapping under shortened keys (``Golden.inputs`` and friends)."""

    def __init__(self, base: Mapping[str, Any], keys: dict[str, str]):
        self._base, self._keys = base, keys

    def __getitem__(self, k: str) -> Any:
        return self._base[self._keys[k]]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass
class Golden:
    """A golden case: ``tensors`` (name -> array, forward order, aliases resolved; read lazily
    from the file) and its ``manifest``."""

    path: str | None
    manifest: dict[str, Any]
    tensors: Mapping[str, np.ndarray]

    @property
    def inputs(self) -> Mapping[str, np.ndarray]:
        """Forward keywords -> arrays (the ``inputs.`` prefix removed)."""
        return _View(self.tensors, {k[7:]: k for k in self.tensors if k.startswith("inputs.")})

    @property
    def outputs(self) -> Mapping[str, np.ndarray]:
        """``outputs.<field>[.<i>]`` with the ``outputs.`` prefix removed."""
        return _View(self.tensors, {k[8:]: k for k in self.tensors if k.startswith("outputs.")})

    @property
    def intermediates(self) -> Mapping[str, np.ndarray]:
        """Traced tensors (neither inputs nor outputs), forward order."""
        return _View(self.tensors, {k: k for k in self.tensors if not k.startswith(("inputs.", "outputs."))})

    @property
    def aliases(self) -> dict[str, str]:
        """alias name -> stored name (empty for format version 1)."""
        return dict(self.manifest.get("aliases") or {})

    @property
    def selection(self) -> dict[str, Any]:
        """What the writer kept (``{"select": [...], "terms": [...]}``); all for version 1."""
        return dict(self.manifest.get("selection") or selection_spec(None))

    def is_selected(self, name: str) -> bool:
        """Whether ``name`` is inside this file's selection (see :func:`is_selected`)."""
        return is_selected(self.manifest, name)

    def get(self, name: str, default: Any = None) -> Any:
        """The array of ``name`` (an alias resolves to its stored tensor), or ``default``."""
        return self.tensors[name] if name in self.tensors else default

    def info(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """(dtype, shape) of ``name`` without reading its data."""
        if isinstance(self.tensors, _Tensors):
            return self.tensors.info(name)
        a = np.asarray(self.tensors[name])
        return a.dtype, tuple(a.shape)

    def entry(self, name: str) -> dict[str, Any]:
        """The manifest entry of tensor ``name``."""
        for e in self.manifest.get("tensors", []):
            if e["name"] == name:
                return e
        raise KeyError(name)


def _bad(path: str, field_: str, want: str, got: Any) -> CheckpointError:
    g = repr(got)
    return CheckpointError(f"{path}: golden manifest field {field_} must be {want}, got {g[:80]}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or v in ("inf", "nan", "-inf")


def _file_dtype(code: str) -> str:
    return "bfloat16" if code == "BF16" else {v: k for k, v in _CODE.items()}.get(code, code)


def validate_manifest(
    path: str, manifest: Any, stored: Mapping[str, tuple[str, tuple[int, ...]]]
) -> dict[str, Any]:
    """Check a golden file's manifest against its tensor table; return it.

    Args:
        path: the file (for messages).
        manifest: the parsed ``refimpl_manifest`` JSON.
        stored: the file's tensors: name -> (safetensors dtype code, shape).

    Raises:
        CheckpointError: naming the file and the field: not an object, unknown format or
            version, a field of the wrong type, a name listed twice, a tensor in the file but
            not in the manifest (or the reverse), an alias of a missing tensor, or a shape or
            dtype that differs between the manifest and the file.
    """
    if not isinstance(manifest, dict):
        raise _bad(path, MANIFEST_KEY, "a JSON object", type(manifest).__name__)
    if manifest.get("format") != FORMAT:
        raise _bad(path, "format", repr(FORMAT), manifest.get("format"))
    ver = manifest.get("format_version")
    if not _is_int(ver) or not 1 <= ver <= FORMAT_VERSION:
        raise _bad(
            path,
            "format_version",
            f"an integer in 1..{FORMAT_VERSION} (this refimpl reads up to {FORMAT_VERSION})",
            ver,
        )
    for key, kind, want in (
        ("config", (dict, type(None)), "an object or null"),
        ("weights", list, "a list"),
        ("forward_kwargs", dict, "an object"),
        ("inputs_source", dict, "an object"),
        ("default_tolerance", dict, "an object"),
        ("selection", dict, "an object"),
        ("aliases", dict, "an object"),
    ):
        if key in manifest and not isinstance(manifest[key], kind):
            raise _bad(path, key, want, manifest[key])
    tol = manifest.get("default_tolerance") or {}
    for k in ("atol", "rtol"):
        if k in tol and not _is_num(tol[k]):
            raise _bad(path, f"default_tolerance.{k}", "a number", tol[k])
    sel = manifest.get("selection")
    if sel is not None:
        terms = sel.get("terms")
        if not isinstance(terms, list) or not terms:
            raise _bad(path, "selection.terms", "a non-empty list", terms)
        for i, t in enumerate(terms):
            if not isinstance(t, dict):
                raise _bad(path, f"selection.terms[{i}]", "an object", t)
            for k in ("include", "exclude"):
                rx = t.get(k)
                if not isinstance(rx, list) or not all(isinstance(r, str) for r in rx):
                    raise _bad(path, f"selection.terms[{i}].{k}", "a list of strings", rx)
                for r in rx:
                    try:
                        re.compile(r)
                    except re.error as e:
                        raise _bad(
                            path, f"selection.terms[{i}].{k}", f"regular expressions ({e})", r
                        ) from None
    tensors = manifest.get("tensors")
    if not isinstance(tensors, list):
        raise _bad(path, "tensors", "a list", tensors)
    aliases = manifest.get("aliases") or {}
    for a, t in aliases.items():
        if not isinstance(t, str):
            raise _bad(path, f"aliases[{a!r}]", "a tensor name (string)", t)
        if t not in stored:
            raise _bad(path, f"aliases[{a!r}]", "the name of a tensor stored in the file", t)
        if a in stored:
            raise _bad(path, f"aliases[{a!r}]", "a name not also stored in the file", a)
    names: dict[str, tuple[int, ...]] = {}
    for i, e in enumerate(tensors):
        at = f"tensors[{i}]"
        if not isinstance(e, dict):
            raise _bad(path, at, "an object", e)
        name = e.get("name")
        if not isinstance(name, str):
            raise _bad(path, f"{at}.name", "a string", name)
        at = f"tensors[{i}] ({name!r})"
        if name in names:
            raise _bad(path, f"{at}.name", "unique", name)
        shape = e.get("shape")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise _bad(path, f"{at}.shape", "a list of non-negative integers", shape)
        if not isinstance(e.get("dtype"), str):
            raise _bad(path, f"{at}.dtype", "a string", e.get("dtype"))
        for k in ("atol", "rtol"):
            if k in e and not _is_num(e[k]):
                raise _bad(path, f"{at}.{k}", "a number", e[k])
        if "depth" in e and not _is_int(e["depth"]):
            raise _bad(path, f"{at}.depth", "an integer", e["depth"])
        target = aliases.get(name, name)
        if target not in stored:
            raise _bad(path, f"{at}.name", "a tensor stored in the file or an alias of one", name)
        code, fshape = stored[target]
        if list(fshape) != shape:
            raise _bad(path, f"{at}.shape", f"the file's shape {list(fshape)}", shape)
        if _file_dtype(code) != e["dtype"]:
            raise _bad(path, f"{at}.dtype", f"the file's dtype {_file_dtype(code)!r}", e["dtype"])
        names[name] = tuple(shape)
    for i, e in enumerate(tensors):
        masks = e.get("masks", [])
        at = f"tensors[{i}] ({e['name']!r}).masks"
        if not isinstance(masks, list):
            raise _bad(path, at, "a list", masks)
        for j, m in enumerate(masks):
            ok = (
                isinstance(m, dict)
                and isinstance(m.get("input"), str)
                and isinstance(m.get("axes"), list)
                and len(m["axes"]) == 2
                and all(_is_int(x) and 0 <= x < len(e["shape"]) for x in m["axes"])
            )
            if not ok:
                raise _bad(
                    path,
                    f"{at}[{j}]",
                    f"{{'input': name, 'axes': [a, b]}} with axes in 0..{len(e['shape']) - 1}",
                    m,
                )
            if m["input"] not in names or len(names[m["input"]]) != 2:
                raise _bad(path, f"{at}[{j}].input", "a 2-d mask tensor of the file", m["input"])
    for a in aliases:
        if a not in names:
            raise _bad(path, f"aliases[{a!r}]", "a name listed in tensors", a)
    extra = [n for n in stored if n not in names]
    if extra:
        raise _bad(
            path,
            "tensors",
            "a list naming every tensor of the file",
            f"{len(extra)} unlisted, e.g. {extra[0]!r}",
        )
    return manifest


def read(path: str | os.PathLike) -> Golden:
    """Read a golden file (version 1 or 2): manifest now, tensors lazily in forward order.

    The file is parsed and validated by :func:`refimpl.weights.read_safetensors`; the
    manifest is checked against it (:func:`validate_manifest`). ``tensors`` resolves aliases
    and reads one tensor at a time from disk. A plain safetensors file without a manifest is
    read too (tensors in file order, empty manifest): handy for a port's candidate output.

    Raises:
        FileNotFoundError: no such file. CheckpointError (a ValueError): not a safetensors
            file, or a manifest that is not valid JSON or does not fit the file.
    """
    from .weights import read_safetensors

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"no such file: {p}")
    meta, raw = read_safetensors(p)
    with open(p, "rb") as f:  # the header again, for the data offsets (already validated)
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n).decode("utf-8"))
    table = {}
    for name, t in raw.items():
        b, e = header[name]["data_offsets"]
        table[name] = (t.array.dtype, tuple(t.array.shape), 8 + n + b, 8 + n + e)
    manifest: dict[str, Any] = {}
    if MANIFEST_KEY in meta:
        try:
            manifest = read_json(
                meta[MANIFEST_KEY].encode("utf-8"), f"{p}: metadata {MANIFEST_KEY!r}", allow_nonfinite=True
            )
        except CheckpointError as e:
            raise CheckpointError(f"{e} (not a valid manifest)") from None
        validate_manifest(p, manifest, {k: (t.dtype, tuple(t.array.shape)) for k, t in raw.items()})
    order = [e["name"] for e in manifest.get("tensors", [])]
    seen = set(order)
    order += [k for k in raw if k not in seen]
    return Golden(p, manifest, _Tensors(p, table, order, manifest.get("aliases") or {}))


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------
def compare(reference: Any, candidate: Any, **options: Any):
    """Compare a candidate with a reference golden case: :func:`refimpl.compare.compare`.

    Args:
        reference: a golden file path or :class:`Golden`.
        candidate: a path (safetensors, ``.npz``, a directory of ``.npy``), a :class:`Golden`
            or a mapping name -> array (any shapes).
        options: ``atol``, ``rtol``, ``strict``, ``rule``, ``names`` (see there).

    Returns:
        :class:`refimpl.compare.CompareResult`.
    """
    from .compare import compare as _compare

    return _compare(reference, candidate, **options)
