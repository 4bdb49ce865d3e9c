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

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import backend, trace

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_KEY",
    "Golden",
    "CompareRow",
    "CompareResult",
    "flatten_outputs",
    "trace_forward",
    "recommended_tolerance",
    "mask_specs_for",
    "build_manifest",
    "write",
    "write_case",
    "read",
    "compare",
    "weight_files",
    "sha256_file",
    "keep_mask",
]

FORMAT = "refimpl-golden"
FORMAT_VERSION = 1
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


def weight_files(checkpoint: str | os.PathLike) -> list[str]:
    """File names (sorted) of a checkpoint directory that hold weights: ``*.safetensors``,
    ``*.bin``, ``*.pt``/``*.pth`` and shard indexes ``*.index.json``."""
    d = os.fspath(checkpoint)
    if os.path.isfile(d):
        return [os.path.basename(d)]
    names = []
    for n in sorted(os.listdir(d)):
        if n.endswith((".safetensors", ".bin", ".pt", ".pth", ".index.json")) and os.path.isfile(
            os.path.join(d, n)
        ):
            names.append(n)
    return names


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
    items = out.items() if hasattr(out, "items") else dict(out).items()
    flat: dict[str, np.ndarray] = {}
    for k, v in items:
        if v is None:
            continue
        if isinstance(v, (tuple, list)):
            for i, t in enumerate(v):
                if t is not None:
                    flat[f"{prefix}.{k}.{i}"] = _to_numpy(t)
        elif isinstance(v, Mapping):
            for kk, t in v.items():
                if t is not None:
                    flat[f"{prefix}.{k}.{kk}"] = _to_numpy(t)
        else:
            flat[f"{prefix}.{k}"] = _to_numpy(v)
    return flat


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
    """
    import refimpl

    masks = {
        f"inputs.{k}": tuple(tensors[f"inputs.{k}"].shape)
        for k in MASK_INPUTS
        if f"inputs.{k}" in tensors and np.any(np.asarray(tensors[f"inputs.{k}"]) == 0)
    }
    names = list(tensors)
    depths = _depths(names)
    entries = []
    for n in names:
        a = tensors[n]
        role = (
            "input" if n.startswith("inputs.") else "output" if n.startswith("outputs.") else "intermediate"
        )
        atol, rtol = recommended_tolerance(a.dtype, depths[n])
        entries.append(
            {
                "name": n,
                "role": role,
                "dtype": np.dtype(a.dtype).name,
                "shape": [int(s) for s in a.shape],
                "depth": depths[n],
                "atol": atol,
                "rtol": rtol,
                "masks": mask_specs_for(n, tuple(a.shape), masks),
            }
        )
    config = getattr(model, "config", None)
    cfg = config.to_dict() if config is not None and hasattr(config, "to_dict") else None
    weights = []
    if checkpoint is not None:
        for fn in weight_files(checkpoint):
            p = (
                os.path.join(os.fspath(checkpoint), fn)
                if os.path.isdir(os.fspath(checkpoint))
                else checkpoint
            )
            weights.append({"file": fn, "bytes": os.path.getsize(p), "sha256": sha256_file(p)})
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
            "weights": weights,
            "dtype": model_dtype,
            "device": device or getattr(model, "device", "cpu"),
            "inputs_source": dict(inputs_source or {"kind": "api"}),
            "forward_kwargs": dict(forward_kwargs or {}),
            "mask_rule": "a position is compared iff every listed mask is non-zero there",
            "default_tolerance": dict(
                zip(("atol", "rtol"), recommended_tolerance(model_dtype or "float64", 0), strict=True)
            ),
            "tensors": entries,
        }
    )


def write(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], manifest: Mapping[str, Any]) -> str:
    """Write ``tensors`` and ``manifest`` to one safetensors file (parent dirs created).

    The manifest's ``tensors`` list must name exactly the keys of ``tensors``.
    """
    from safetensors.numpy import save_file

    listed = [e["name"] for e in manifest["tensors"]]
    if set(listed) != set(tensors) or len(listed) != len(tensors):
        raise ValueError("manifest['tensors'] must list every tensor exactly once")
    p = os.fspath(path)
    parent = os.path.dirname(p)
    if parent:
        os.makedirs(parent, exist_ok=True)
    arrays = {k: _contiguous(np.asarray(v)) for k, v in tensors.items()}
    save_file(arrays, p, metadata={MANIFEST_KEY: json.dumps(manifest, sort_keys=False)})
    return p


def write_case(
    path: str | os.PathLike,
    model: Any,
    inputs: Mapping[str, Any],
    checkpoint: str | os.PathLike | None = None,
    inputs_source: Mapping[str, Any] | None = None,
) -> Golden:
    """Trace one forward pass of ``model`` on ``inputs`` and write it as a golden file.

    Args:
        path: output ``.safetensors`` file.
        model: a refimpl model.
        inputs: forward keywords -> arrays, e.g. ``input_ids [batch, seq]``, ``bbox
            [batch, seq, 4]``, ``visual_feats [batch, boxes, feat_dim]`` (see :func:`trace_forward`).
        checkpoint: the model's checkpoint directory, for the weight hashes.
        inputs_source: provenance of the inputs, stored in the manifest.

    Returns:
        the written case as a :class:`Golden`.
    """
    tensors, _ = trace_forward(model, inputs)
    flags = {k: v for k, v in inputs.items() if v is None or isinstance(v, (bool, str))}
    flags.setdefault("output_attentions", True)
    flags.setdefault("output_hidden_states", True)
    manifest = build_manifest(
        tensors, model=model, checkpoint=checkpoint, inputs_source=inputs_source, forward_kwargs=flags
    )
    write(path, tensors, manifest)
    return Golden(os.fspath(path), manifest, tensors)


@dataclass
class Golden:
    """A golden case: ``tensors`` (name -> array, forward order) and its ``manifest``."""

    path: str | None
    manifest: dict[str, Any]
    tensors: dict[str, np.ndarray]

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """Forward keywords -> arrays (the ``inputs.`` prefix removed)."""
        return {k[7:]: v for k, v in self.tensors.items() if k.startswith("inputs.")}

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        """``outputs.<field>[.<i>]`` with the ``outputs.`` prefix removed."""
        return {k[8:]: v for k, v in self.tensors.items() if k.startswith("outputs.")}

    @property
    def intermediates(self) -> dict[str, np.ndarray]:
        """Traced tensors (neither inputs nor outputs), forward order."""
        return {k: v for k, v in self.tensors.items() if not k.startswith(("inputs.", "outputs."))}

    def entry(self, name: str) -> dict[str, Any]:
        """The manifest entry of tensor ``name``."""
        for e in self.manifest.get("tensors", []):
            if e["name"] == name:
                return e
        raise KeyError(name)


def read(path: str | os.PathLike) -> Golden:
    """Read a golden file: tensors in the manifest's (forward) order, plus the manifest.

    A plain safetensors file without a manifest is read too (tensors in file order, empty
    manifest): handy for a port's candidate output.

    Raises:
        FileNotFoundError: no such file. ValueError: not a safetensors file, or a bad manifest.
    """
    from safetensors import safe_open

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"no such file: {p}")
    try:
        with safe_open(p, framework="np") as f:
            meta = f.metadata() or {}
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{p} is not a readable safetensors file: {e}") from None
    manifest: dict[str, Any] = {}
    if MANIFEST_KEY in meta:
        try:
            manifest = json.loads(meta[MANIFEST_KEY])
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: metadata {MANIFEST_KEY!r} is not valid JSON: {e}") from None
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{p}: manifest format is {manifest.get('format')!r}, expected {FORMAT!r}")
        if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{p}: golden format version {manifest['format_version']} is newer than this refimpl "
                f"reads ({FORMAT_VERSION})"
            )
    order = [e["name"] for e in manifest.get("tensors", []) if e["name"] in raw]
    order += [k for k in raw if k not in set(order)]
    return Golden(p, manifest, {k: raw[k] for k in order})


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------
@dataclass
class CompareRow:
    """One reference tensor compared with the candidate's tensor of the same name.

    ``status``: "ok", "FAIL" (out of tolerance), "shape" (shapes differ), "missing" (not in
    the candidate). ``max_abs``/``max_rel`` are over the compared (unmasked) positions;
    ``max_rel`` divides by ``|reference|`` where it is non-zero. ``compared`` counts them.
    """

    name: str
    shape: tuple[int, ...]
    status: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    atol: float = 0.0
    rtol: float = 0.0
    compared: int = 0
    skipped: int = 0
    first_divergent: bool = False
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class CompareResult:
    """All rows in the reference's forward order, and the verdict."""

    rows: list[CompareRow]
    extra: list[str] = field(default_factory=list)
    strict: bool = False

    @property
    def failed(self) -> list[CompareRow]:
        """Rows out of tolerance or misshaped (and missing ones when ``strict``)."""
        bad = ("FAIL", "shape", "missing") if self.strict else ("FAIL", "shape")
        return [r for r in self.rows if r.status in bad]

    @property
    def missing(self) -> list[CompareRow]:
        return [r for r in self.rows if r.status == "missing"]

    @property
    def first_divergent(self) -> CompareRow | None:
        """The first tensor in forward order that is out of tolerance (or misshaped)."""
        for r in self.rows:
            if r.first_divergent:
                return r
        return None

    @property
    def ok(self) -> bool:
        return not self.failed

    def table(self, only_failed: bool = False) -> str:
        """The per-tensor table, forward order, the first divergent tensor marked."""
        w = max([len(r.name) for r in self.rows] + [6])
        head = (
            f"{'tensor':<{w}}  {'shape':<18} {'max_abs':>10} {'max_rel':>10} {'atol':>8} {'rtol':>8}  status"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            if only_failed and r.ok:
                continue
            shape = "x".join(str(s) for s in r.shape) or "scalar"
            if r.status == "missing":
                nums = f"{'-':>10} {'-':>10}"
            else:
                nums = f"{r.max_abs:>10.3e} {r.max_rel:>10.3e}"
            mark = "  <== first divergence" if r.first_divergent else ""
            extra = f" ({r.detail})" if r.detail else ""
            lines.append(
                f"{r.name:<{w}}  {shape:<18} {nums} {r.atol:>8.1e} {r.rtol:>8.1e}  {r.status}{extra}{mark}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: counts and the first divergent tensor."""
        n = len(self.rows)
        n_ok = sum(r.ok for r in self.rows)
        parts = [f"{n_ok}/{n} tensors within tolerance"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing in candidate")
        if self.extra:
            parts.append(f"{len(self.extra)} extra in candidate")
        fd = self.first_divergent
        if fd is not None:
            parts.append(f"first divergence: {fd.name} (max_abs {fd.max_abs:.3e}, {fd.status})")
        return "; ".join(parts) + ("" if self.ok else "  => NOT OK")


def _as_golden(x: Any, what: str) -> Golden:
    if isinstance(x, Golden):
        return x
    if isinstance(x, (str, os.PathLike)):
        return read(x)
    if isinstance(x, Mapping):
        return Golden(None, {}, {k: np.asarray(backend.to_numpy(v)) for k, v in x.items()})
    raise TypeError(f"{what} must be a path, a Golden or a mapping of name -> array, got {type(x).__name__}")


def _compare_one(
    name: str, ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float, keep: np.ndarray | None
) -> CompareRow:
    shape = tuple(ref.shape)
    if tuple(cand.shape) != shape:
        return CompareRow(
            name, shape, "shape", float("inf"), float("inf"), atol, rtol, detail=f"candidate {cand.shape}"
        )
    r = ref.astype(np.float64) if ref.dtype.kind in "biuf" else ref
    c = cand.astype(np.float64) if cand.dtype.kind in "biuf" else cand
    if keep is None:
        keep = np.ones(shape, dtype=bool)
    r, c = r[keep], c[keep]
    compared, skipped = int(r.size), int(keep.size - r.size)
    if r.size == 0:
        return CompareRow(name, shape, "ok", 0.0, 0.0, atol, rtol, compared, skipped)
    both_nan = np.isnan(r) & np.isnan(c)
    diff = np.abs(r - c)
    diff = np.where(both_nan, 0.0, np.where(np.isnan(diff), np.inf, diff))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(r != 0, diff / np.abs(r), np.where(diff == 0, 0.0, np.inf))
    rel = np.where(both_nan | np.isnan(rel), np.where(both_nan, 0.0, np.inf), rel)
    bound = atol + rtol * np.abs(np.where(np.isfinite(r), r, 0.0))
    ok = bool(np.all(diff <= bound))
    row = CompareRow(
        name,
        shape,
        "ok" if ok else "FAIL",
        float(diff.max()),
        float(rel.max()),
        atol,
        rtol,
        compared,
        skipped,
    )
    if not ok:
        row.detail = f"{int(np.sum(~(diff <= bound)))} of {compared} positions out"
    return row


def compare(
    reference: Any,
    candidate: Any,
    atol: float | None = None,
    rtol: float | None = None,
    strict: bool = False,
) -> CompareResult:
    """Compare a candidate (a port's output) with a reference golden case, tensor by tensor.

    Args:
        reference: a golden file path or :class:`Golden`: its manifest gives the order,
            tolerances and masks.
        candidate: a safetensors path, :class:`Golden` or mapping name -> array with the same
            names (missing names are reported, extra ones listed).
        atol, rtol: override the manifest's per-tensor tolerance for every float tensor
            (integer tensors are always compared exactly). Without them, a candidate tensor
            of a coarser float dtype than the reference (a float32 port against a float64
            golden file) gets the larger of the manifest's tolerance and
            :func:`recommended_tolerance` of its own dtype at the tensor's depth.
        strict: count tensors missing in the candidate as failures.

    Returns:
        :class:`CompareResult` with one row per reference tensor, forward order; the first
        tensor out of tolerance has ``first_divergent=True``. Masked positions (padded token
        rows; padded query rows and key columns of attention probabilities; see
        :func:`mask_specs_for`) are not compared.
    """
    ref = _as_golden(reference, "reference")
    cand = _as_golden(candidate, "candidate")
    entries = {e["name"]: e for e in ref.manifest.get("tensors", [])}
    default = ref.manifest.get("default_tolerance") or {}
    rows: list[CompareRow] = []
    first_marked = False
    for name, r in ref.tensors.items():
        e = entries.get(name, {})
        c = cand.tensors.get(name)
        if r.dtype.kind in "fc":
            if e:
                a, t = float(e["atol"]), float(e["rtol"])
            else:
                a, t = recommended_tolerance(r.dtype, 0)
                a, t = float(default.get("atol", a)), float(default.get("rtol", t))
            c_dtype = np.asarray(c).dtype if c is not None else r.dtype
            if c_dtype.kind in "fc" and c_dtype.itemsize < r.dtype.itemsize:
                # a float32 port against a float64 reference: the coarser dtype's tolerance
                ca, ct = recommended_tolerance(c_dtype, int(e.get("depth", 0)))
                a, t = max(a, ca), max(t, ct)
            a = a if atol is None else float(atol)
            t = t if rtol is None else float(rtol)
        else:
            a, t = 0.0, 0.0
        if name not in cand.tensors:
            rows.append(CompareRow(name, tuple(r.shape), "missing", atol=a, rtol=t))
            continue
        specs = e.get("masks") or []
        keep = keep_mask(tuple(r.shape), specs, ref.tensors) if specs else None
        row = _compare_one(name, r, np.asarray(cand.tensors[name]), a, t, keep)
        if not row.ok and not first_marked:
            row.first_divergent = True
            first_marked = True
        rows.append(row)
    extra = [k for k in cand.tensors if k not in ref.tensors]
    return CompareResult(rows, extra, strict)
