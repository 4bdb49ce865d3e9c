"""Reading the reference (a golden file, nothing else) and the candidate (a port's dump, its
format detected by content, its precision detected from its values or stated)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import backend
from ..checkpoints import read_safetensors
from ..checkpoints.raw import bf16_to_f32
from ..files import CheckpointError, open_regular, read_npy, read_npz, regular_file
from ..golden.format import FORMAT, MANIFEST_KEY
from ..golden.reader import Golden
from ..golden.reader import read as read_golden
from .errors import CompareError
from .precision import REDUCED, exact_dtype, exact_in

__all__ = ["Candidate", "CANDIDATE_DTYPES", "read_reference", "read_candidate", "looks_golden"]

_SAFETENSORS_MAX_HEADER = 100_000_000

#: the dtypes ``--candidate-dtype`` may state.
CANDIDATE_DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclass
class Candidate:
    """A port's dump.

    Attributes:
        path: the file or directory (``None`` for a mapping).
        format: ``"safetensors"``, ``"npz"``, ``"npy-dir"``, ``"golden"`` or ``"mapping"``.
        tensors: name -> array (bfloat16 upcast to float32 exactly).
        dtypes: name -> the dtype each tensor is judged as: its stored dtype, or the coarser
            one its values are exactly in (``"bfloat16"`` for a float32 array of bfloat16
            values), or the one stated with ``--candidate-dtype``.
        manifest: its golden manifest (``{}`` when it has none).
        stored: name -> the dtype it is stored as (``"float32"`` for upcast bfloat16).
        notes: lines saying how the precision was found.
        origin: name -> the name it has in the dump, for names the name options changed.
    """

    path: str | None
    format: str
    tensors: dict[str, np.ndarray]
    dtypes: dict[str, str]
    manifest: dict[str, Any] = field(default_factory=dict)
    stored: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)


def looks_golden(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular safetensors file whose metadata holds a golden manifest
    (the header is read, nothing else)."""
    try:
        p = regular_file(path, "file")
        with open_regular(p, "file") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            if not 2 <= n <= min(_SAFETENSORS_MAX_HEADER, os.path.getsize(p) - 8):
                return False
            return MANIFEST_KEY.encode() in f.read(n)
    except (OSError, ValueError):
        return False


def _regular(path: str, what: str, other: str | None = None) -> str:
    """``path`` checked to be a regular file (or, for a candidate, a directory) before anything
    opens it: a FIFO, device or socket is refused at once, naming the path."""
    if not os.path.lexists(path):
        raise CompareError(f"{what} not found: {path}")
    if what == "candidate" and os.path.isdir(path):
        return path
    try:
        regular_file(path, what)
    except FileNotFoundError:
        raise CompareError(f"{what} not found: {path}") from None
    except CheckpointError as e:
        raise CompareError(str(e)) from None
    return path


def _not_golden(p: str, why: str, candidate: str | None) -> CompareError:
    swapped = (
        f"; the candidate {candidate} looks like one: swapped arguments? (refimpl compare GOLDEN CANDIDATE)"
        if candidate is not None and looks_golden(candidate)
        else ""
    )
    return CompareError(f"reference {p} {why}; the reference must be a golden file (refimpl golden){swapped}")


def read_reference(path: str | os.PathLike | Golden, candidate: Any = None) -> Golden:
    """Read the reference: it must be a golden file (safetensors with a ``refimpl_manifest``).

    Args:
        path: the golden file (or a `Golden`).
        candidate: the candidate's path, when known: a reference that is not a golden file
            while the candidate is one is reported as swapped arguments.

    Raises:
        CompareError: no such file, not a regular file (a FIFO, a directory), an ``.npz`` or
            anything else that is not a golden file (a weights file, a port's own dump), or a
            manifest of another format.
    """
    if isinstance(path, Golden):
        g = path
    else:
        p = os.fspath(path)
        cand = os.fspath(candidate) if isinstance(candidate, (str, os.PathLike)) else None
        if os.path.isdir(p):
            raise _not_golden(p, "is a directory", cand)
        _regular(p, "reference")
        with open_regular(p, "reference") as f:
            head = f.read(9)
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            raise _not_golden(p, "is an .npz (a zip archive), not a golden .safetensors file", cand)
        if head[:6] == b"\x93NUMPY":
            raise _not_golden(p, "is a .npy array, not a golden .safetensors file", cand)
        try:
            g = read_golden(p)
        except (ValueError, OSError) as e:
            if not looks_golden(p):
                raise _not_golden(p, f"is not a golden file ({e})", cand) from None
            raise CompareError(f"reference {e}") from None
    if not g.manifest:
        raise _not_golden(
            g.path,
            f"is not a golden file: its safetensors metadata has no {MANIFEST_KEY!r} (a weights file or a "
            "port's dump?); write one with `refimpl golden` or `refimpl demo`",
            candidate if isinstance(candidate, (str, os.PathLike)) else None,
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
    with open_regular(path, "candidate") as f:
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


def _refuse_complex(path: str | None, tensors: Mapping[str, np.ndarray]) -> None:
    for k, v in tensors.items():
        if np.asarray(v).dtype.kind == "c":
            where = f"candidate {path}" if path else "candidate"
            raise CompareError(
                f"{where}: tensor {k!r} is {np.asarray(v).dtype}; complex tensors are not supported "
                "(every golden tensor is real)"
            )


def _judge_dtypes(c: Candidate, stated: str | None) -> Candidate:
    """Set ``c.dtypes`` (the dtype each tensor is judged as) and ``c.notes``."""
    floats = [k for k, v in c.tensors.items() if np.asarray(v).dtype.kind == "f"]
    if stated is not None:
        if stated not in CANDIDATE_DTYPES:
            raise CompareError(
                f"--candidate-dtype must be one of {', '.join(CANDIDATE_DTYPES)}, got {stated!r}"
            )
        for k in floats:
            c.dtypes[k] = stated
        c.notes.append(
            f"candidate precision stated: every float tensor is judged as {stated} (--candidate-dtype)"
        )
        return c
    # float32 only: NumPy has no bfloat16, so a bfloat16 (or float16) port saving .npz stores
    # float32; a float64 tensor is a float64 port's (state anything else with --candidate-dtype)
    wide = [k for k in floats if c.stored.get(k) == "float32"]
    found = {k: exact_dtype(np.asarray(c.tensors[k])) for k in wide}
    for store in sorted({c.stored[k] for k in wide}):
        of_store = [k for k in wide if c.stored[k] == store]
        informative = [
            k for k in of_store if found[k] is not None or exact_dtype(np.asarray(c.tensors[k]), 16, True)
        ]
        dts = {found[k] for k in of_store if found[k] is not None}
        # a coarse dtype only when it holds for most of the dump: a float64 port's embedding
        # lookups of float32-exact weights are float32 values too, and say nothing
        dts = {d for d in dts if 2 * sum(found[k] == d for k in of_store) > len(informative)}
        for k in of_store:
            if found[k] not in dts:
                found[k] = None
        if len(dts) == 1:  # one coarse dtype across the dump: small tensors on its grid get it too
            (dt,) = dts
            for k in of_store:
                if found[k] is None and exact_in(np.asarray(c.tensors[k]), dt):
                    found[k] = dt
        for dt in sorted(dts, key=REDUCED.index):
            n = sum(found[k] == dt for k in of_store)
            c.notes.append(
                f"candidate values are {dt} stored as {store} ({n} of {len(of_store)} {store} tensors): "
                f"judged as {dt} (state it with --candidate-dtype)"
            )
    for k, dt in found.items():
        if dt is not None:
            c.dtypes[k] = dt
    return c


def _candidate(
    path: str | None, fmt: str, tensors: dict, stored: dict, manifest=None, stated=None
) -> Candidate:
    _refuse_complex(path, tensors)
    c = Candidate(path, fmt, tensors, dict(stored), dict(manifest or {}), dict(stored))
    return _judge_dtypes(c, stated)


def read_candidate(
    path: str | os.PathLike | Golden | Mapping[str, Any], dtype: str | None = None
) -> Candidate:
    """Read a port's dump, the format detected by content (not by extension).

    Args:
        path: a safetensors file (with or without a manifest; BF16 tensors are upcast to
            float32 exactly and keep ``"bfloat16"`` as their dtype), an ``.npz`` (zip of
            ``.npy`` members), a directory of ``.npy`` files (``lilt.encoder.layer.0.npy`` is
            tensor ``lilt.encoder.layer.0``), a `Golden` or a mapping name -> array.
        dtype: the precision the port computed in (``--candidate-dtype``): every float tensor
            is judged as that dtype. Without it, a float32 tensor whose values are all exactly
            bfloat16 (or float16) values is judged as that dtype, when most of the dump's
            float32 tensors are.

    Returns:
        `Candidate`.

    Raises:
        CompareError: missing path, not a regular file or directory (a FIFO is refused before
            it is opened), unknown format, an unreadable member (named), a complex tensor.
    """
    if isinstance(path, Golden):
        t = dict(path.tensors)
        return _candidate(
            path.path, "golden", t, {k: v.dtype.name for k, v in t.items()}, path.manifest, dtype
        )
    if isinstance(path, Mapping):
        t = {k: np.asarray(backend.to_numpy(v)) for k, v in path.items()}
        return _candidate(None, "mapping", t, {k: v.dtype.name for k, v in t.items()}, None, dtype)
    p = _regular(os.fspath(path), "candidate")
    kind = _sniff(p)
    if kind == "safetensors":
        try:
            meta, raw = read_safetensors(p)
        except (ValueError, OSError) as e:  # CheckpointError and friends: one line naming the file
            raise CompareError(f"candidate {e}") from None
        tensors, stored = {}, {}
        for k, r in raw.items():
            if r.dtype == "BF16":
                tensors[k], stored[k] = bf16_to_f32(np.asarray(r.array)), "bfloat16"
            else:
                tensors[k], stored[k] = np.asarray(r.array), r.array.dtype.name
        manifest: dict[str, Any] = {}
        if MANIFEST_KEY in meta:
            try:  # a golden file (another refimpl run, say): validated, its aliases resolved
                g = read_golden(p)
            except (ValueError, OSError) as e:
                raise CompareError(f"candidate {e}") from None
            manifest = g.manifest
            for alias, target in (manifest.get("aliases") or {}).items():
                if target in tensors:
                    tensors[alias], stored[alias] = tensors[target], stored[target]
        return _candidate(p, "safetensors", tensors, stored, manifest, dtype)
    if kind == "npz":
        try:
            tensors = read_npz(p, "candidate")
        except (ValueError, OSError) as e:  # CheckpointError is a ValueError
            raise CompareError(f"candidate {e}") from None
        return _candidate(p, "npz", tensors, {k: v.dtype.name for k, v in tensors.items()}, None, dtype)
    files = sorted(f for f in os.listdir(p) if f.endswith(".npy"))
    if not files:
        raise CompareError(f"candidate directory {p} holds no .npy files (expected <tensor name>.npy)")
    tensors = {}
    for f in files:
        fp = os.path.join(p, f)
        try:
            regular_file(fp, "candidate file")
            tensors[f[:-4]] = read_npy(fp, "candidate")
        except (ValueError, OSError) as e:
            raise CompareError(f"{e}") from None
    return _candidate(p, "npy-dir", tensors, {k: v.dtype.name for k, v in tensors.items()}, None, dtype)
