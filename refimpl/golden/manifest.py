"""The manifest of a golden file: building it (versions, config, weight hashes, inputs, per
tensor role, shape, dtype, tolerance and masks) and validating one read from a file."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import __version__, switch
from ..checkpoints import weight_files
from ..files import CheckpointError, sha256_file
from ..lilt.modules import module_calls as _lilt_module_calls
from ..lxmert.modules import module_calls as _lxmert_module_calls
from .format import (
    _CODE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_KEY,
    MASK_INPUTS,
    _depths,
    _jsonable,
    _to_numpy,
    recommended_tolerance,
)
from .masks import mask_specs_for
from .selection import selection_spec

__all__ = ["weight_entries", "inputs_hash", "module_calls", "build_manifest", "validate_manifest"]

_WEIGHT_HASHES: dict[tuple[str, int, int], str] = {}
#: the values of `refimpl.switch.mode` a manifest's ``mode`` may hold.
_MODE = re.compile(r"fast|reference|fast without [\w., ]+")


def weight_entries(checkpoint: str | os.PathLike | None) -> list[dict[str, Any]]:
    """``[{"file", "bytes", "sha256"}]`` of a checkpoint's weight files (hashes cached per
    path, size and mtime, so a batch run hashes a 1 GB checkpoint once)."""
    if checkpoint is None:
        return []
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


class _Config:
    """A config read from a manifest (a JSON object) with attribute access."""

    def __init__(self, d: Mapping[str, Any]):
        self.__dict__.update(d)


def module_calls(
    model_type: str | None,
    architecture: str | None,
    config: Any,
    names: Any,
    forward_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]] | None:
    """The oracle's module calls in hook order, each output in golden names (see
    `refimpl.modules`): what a forward hook on every module sees.

    Args:
        model_type: ``"lilt"`` or ``"lxmert"``.
        architecture: the class name (``LiltForTokenClassification``...).
        config: the model config (an object or the manifest's JSON object).
        names: the golden file's tensor names.
        forward_kwargs: the forward call's flags (``output_attentions``...).

    Returns:
        ``[{"module": path, "outputs": [golden names]} | {"module": path, "ignored":
        "dropout"}]``, or ``None`` for a model this refimpl does not know.
    """
    if config is None or architecture is None:
        return None
    cfg = _Config(config) if isinstance(config, Mapping) else config
    try:
        if model_type == "lilt":
            return _lilt_module_calls(cfg, architecture, names, forward_kwargs)
        if model_type == "lxmert":
            return _lxmert_module_calls(cfg, architecture, names, forward_kwargs)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    return None


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
    inputs_json: Mapping[str, Any] | None = None,
    outputs_json: Mapping[str, Any] | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    config = getattr(model, "config", None)
    cfg = config.to_dict() if config is not None and hasattr(config, "to_dict") else None
    model_dtype = dtype or (
        np.dtype(model.dtype).name if model is not None and hasattr(model, "dtype") else None
    )
    architecture = type(model).__name__ if model is not None else None
    model_type = getattr(config, "model_type", None) if config is not None else None
    names = [e["name"] for e in entries]
    calls = module_calls(model_type, architecture, config, names, forward_kwargs)
    return _jsonable(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "refimpl_version": __version__,
            "numpy_version": np.__version__,
            "model_type": getattr(config, "model_type", None) if config is not None else None,
            "architecture": type(model).__name__ if model is not None else None,
            "config": cfg,
            "checkpoint": os.path.basename(os.path.normpath(os.fspath(checkpoint))) if checkpoint else None,
            "weights": weights if weights is not None else weight_entries(checkpoint),
            "dtype": model_dtype,
            "device": device or getattr(model, "device", "cpu"),
            "mode": mode or switch.mode(),
            "inputs_source": dict(inputs_source or {"kind": "api"}),
            "inputs_sha256": inputs_sha256,
            "forward_kwargs": dict(forward_kwargs or {}),
            "inputs_json": dict(inputs_json or {}),
            "outputs_json": dict(outputs_json or {}),
            "mask_rule": "a position is compared iff every listed mask is non-zero there",
            "default_tolerance": dict(
                zip(("atol", "rtol"), recommended_tolerance(model_dtype or "float64", 0), strict=True)
            ),
            "selection": dict(selection),
            "aliases": dict(aliases),
            "tensors": entries,
            "modules": calls or [],
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
    inputs_json: Mapping[str, Any] | None = None,
    outputs_json: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest (a JSON-able dict) of a case; see ``docs/golden-format.md`` for the schema.

    Args:
        tensors: name -> array in forward order (``trace_forward``'s first result).
        model: the refimpl model that produced them (config, architecture, dtype, device).
        checkpoint: its checkpoint directory (weight files are hashed).
        inputs_source: where the inputs came from, e.g. ``{"kind": "npz", "path": "x.npz"}``.
        forward_kwargs: flags of the forward call (``output_attentions``...).
        inputs_json: the forward keywords that are documents, not arrays
            (`refimpl.golden.capture.document_inputs`: ``entities``, ``relations``).
        outputs_json: the output fields that are documents
            (`refimpl.golden.capture.document_outputs`: ``pred_relations``...).

    The alias table is left empty: `write` finds the aliases when it stores the tensors. The
    manifest's ``mode`` is `refimpl.switch.mode` at the time of the call.
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
        inputs_json=inputs_json,
        outputs_json=outputs_json,
    )


def _bad(path: str, field_: str, want: str, got: Any) -> CheckpointError:
    g = repr(got)
    return CheckpointError(f"{path}: golden manifest field {field_} must be {want}, got {g[:80]}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or v in ("inf", "nan", "-inf")


def _file_dtype(code: str) -> str:
    return "bfloat16" if code == "BF16" else {v: k for k, v in _CODE.items()}.get(code, code)


def _validate_modules(path: str, modules: Any) -> None:
    """``modules`` (optional): a list of ``{"module": str, "outputs": [str]}`` or
    ``{"module": str, "ignored": str}``. Output names need not be stored (a selection may
    leave them out)."""
    if modules is None:
        return
    if not isinstance(modules, list):
        raise _bad(path, "modules", "a list", modules)
    for i, m in enumerate(modules):
        at = f"modules[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("module"), str):
            raise _bad(path, at, 'an object with a "module" path', m)
        outs = m.get("outputs")
        if "ignored" in m:
            if not isinstance(m["ignored"], str):
                raise _bad(path, f"{at}.ignored", "a string", m["ignored"])
        elif not isinstance(outs, list) or not all(isinstance(o, str) for o in outs):
            raise _bad(path, f"{at}.outputs", "a list of tensor names", outs)


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
        ("mode", str, "a string"),
        ("inputs_json", dict, "an object"),
        ("outputs_json", dict, "an object"),
        ("gradients", dict, "an object"),
    ):
        if key in manifest and not isinstance(manifest[key], kind):
            raise _bad(path, key, want, manifest[key])
    mode = manifest.get("mode")  # optional: files written before it was recorded lack it
    if mode is not None and not _MODE.fullmatch(mode):
        raise _bad(path, "mode", '"fast", "reference" or "fast without <ops>"', mode)
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
    _validate_modules(path, manifest.get("modules"))
    extra = [n for n in stored if n not in names]
    if extra:
        raise _bad(
            path,
            "tensors",
            "a list naming every tensor of the file",
            f"{len(extra)} unlisted, e.g. {extra[0]!r}",
        )
    return manifest
