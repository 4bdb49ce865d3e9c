"""Reading the reference (a golden file, nothing else) and the candidate (a port's dump, its
format detected by content)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import backend
from ..checkpoints import read_safetensors
from ..checkpoints.raw import bf16_to_f32
from ..files import read_npy, read_npz
from ..golden.format import FORMAT, MANIFEST_KEY
from ..golden.reader import Golden
from ..golden.reader import read as read_golden
from .errors import CompareError

__all__ = ["Candidate", "read_reference", "read_candidate"]

_SAFETENSORS_MAX_HEADER = 100_000_000


@dataclass
class Candidate:
    """A port's dump: ``tensors`` (name -> array; bfloat16 upcast to float32 exactly), the
    stored ``dtypes`` (name -> ``"float16"``, ``"bfloat16"``, ``"float32"``, ``"int64"``...),
    its ``manifest`` (``{}`` when it has none) and the detected ``format``."""

    path: str | None
    format: str
    tensors: dict[str, np.ndarray]
    dtypes: dict[str, str]
    manifest: dict[str, Any] = field(default_factory=dict)


def read_reference(path: str | os.PathLike | Golden) -> Golden:
    """Read the reference: it must be a golden file (safetensors with a ``refimpl_manifest``).

    Raises:
        CompareError: no such file, not a safetensors file, or no golden manifest (a weights
            file, a port's own dump) or a manifest of another format.
    """
    if isinstance(path, Golden):
        g = path
    else:
        p = os.fspath(path)
        if not os.path.exists(p):
            raise CompareError(f"reference not found: {p}")
        if os.path.isdir(p):
            raise CompareError(f"reference {p} is a directory; it must be a golden .safetensors file")
        try:
            g = read_golden(p)
        except (ValueError, OSError) as e:
            raise CompareError(f"reference {e}") from None
    if not g.manifest:
        raise CompareError(
            f"reference {g.path} is not a golden file: its safetensors metadata has no {MANIFEST_KEY!r} "
            "(a weights file or a port's dump?); write one with `refimpl golden` or `refimpl demo`"
        )
    if g.manifest.get("format") != FORMAT:
        raise CompareError(
            f"reference {g.path}: manifest format {g.manifest.get('format')!r}, expected {FORMAT!r}"
        )
    return g


def _sniff(path: str) -> str:
    """``"npy-dir"``, ``"npz"``, ``"safetensors"``; raises CompareError for anything else."""
    if os.path.isdir(path):
        return "npy-dir"
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if head[:6] == b"\x93NUMPY":
        raise CompareError(
            f"candidate {path} is a single .npy array; put one .npy per tensor in a directory "
            "(file name = tensor name + .npy) and pass the directory"
        )
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 2 <= n <= min(_SAFETENSORS_MAX_HEADER, os.path.getsize(path) - 8):
            return "safetensors"
    raise CompareError(
        f"candidate {path} is not a safetensors file, an .npz or a directory of .npy files "
        f"(first bytes {head[:8]!r})"
    )


def _dtype_name(a: np.ndarray) -> str:
    return str(a.dtype)


def read_candidate(path: str | os.PathLike | Golden | Mapping[str, Any]) -> Candidate:
    """Read a port's dump, the format detected by content (not by extension).

    Args:
        path: a safetensors file (with or without a manifest; BF16 tensors are upcast to
            float32 exactly and keep ``"bfloat16"`` as their dtype), an ``.npz`` (zip of
            ``.npy`` members), a directory of ``.npy`` files (``lilt.encoder.layer.0.npy`` is
            tensor ``lilt.encoder.layer.0``), a `Golden` or a mapping
            name -> array.

    Returns:
        `Candidate`.

    Raises:
        CompareError: missing path, unknown format, or an unreadable member (named).
    """
    if isinstance(path, Golden):
        t = dict(path.tensors)
        return Candidate(path.path, "golden", t, {k: _dtype_name(v) for k, v in t.items()}, path.manifest)
    if isinstance(path, Mapping):
        t = {k: np.asarray(backend.to_numpy(v)) for k, v in path.items()}
        return Candidate(None, "mapping", t, {k: _dtype_name(v) for k, v in t.items()})
    p = os.fspath(path)
    if not os.path.exists(p):
        raise CompareError(f"candidate not found: {p}")
    kind = _sniff(p)
    if kind == "safetensors":
        try:
            meta, raw = read_safetensors(p)
        except Exception as e:  # CheckpointError and friends: one line naming the file
            raise CompareError(f"candidate {e}") from None
        tensors, dtypes = {}, {}
        for k, r in raw.items():
            if r.dtype == "BF16":
                tensors[k], dtypes[k] = bf16_to_f32(np.asarray(r.array)), "bfloat16"
            else:
                tensors[k], dtypes[k] = np.asarray(r.array), _dtype_name(r.array)
        manifest: dict[str, Any] = {}
        if MANIFEST_KEY in meta:
            try:  # a golden file (another refimpl run, say): validated, its aliases resolved
                g = read_golden(p)
            except (ValueError, OSError) as e:
                raise CompareError(f"candidate {e}") from None
            manifest = g.manifest
            for alias, stored in (manifest.get("aliases") or {}).items():
                if stored in tensors:
                    tensors[alias], dtypes[alias] = tensors[stored], dtypes[stored]
        return Candidate(p, "safetensors", tensors, dtypes, manifest)
    if kind == "npz":
        try:
            tensors = read_npz(p, "candidate")
        except (ValueError, OSError) as e:  # CheckpointError is a ValueError
            raise CompareError(f"candidate {e}") from None
        return Candidate(p, "npz", tensors, {k: _dtype_name(v) for k, v in tensors.items()})
    files = sorted(f for f in os.listdir(p) if f.endswith(".npy") and os.path.isfile(os.path.join(p, f)))
    if not files:
        raise CompareError(f"candidate directory {p} holds no .npy files (expected <tensor name>.npy)")
    tensors = {}
    for f in files:
        try:
            tensors[f[:-4]] = read_npy(os.path.join(p, f), "candidate")
        except (ValueError, OSError) as e:
            raise CompareError(f"{e}") from None
    return Candidate(p, "npy-dir", tensors, {k: _dtype_name(v) for k, v in tensors.items()})
