"""Checking a port against a golden file: ``refimpl compare GOLDEN CANDIDATE``.

What a porter gets:

- **Never a pass on nothing.** The reference must be a golden file (manifest and ``format``
  checked); a candidate that shares no tensor with it fails; coverage is always reported.
- **Name help.** A systematic naming difference (a missing or extra prefix, ``/`` for ``.``,
  a suffix) is detected and reported with the option that fixes it; :class:`NameMap`
  renames candidate tensors without rewriting the dump.
- **Candidate formats, detected by content:** safetensors (with or without a manifest),
  ``.npz``, or a directory of ``.npy`` files (file name = tensor name + ``.npy``).
- **Dtype-aware tolerances** (:func:`dtype_tolerance`) from the candidate tensor's own
  precision, and four pass rules (:data:`RULES`): max-abs, relative, NMSE and cosine.
- **Isolation** (:func:`isolate`): every block whose inputs and output the candidate holds is
  recomputed in float64 from the candidate's own inputs, so a block's local error is told
  apart from the error it inherited; the verdict is ``culprit: <block>`` or accumulated drift.

Typical use::

    res = compare.compare("case.safetensors", "my_port.npz")
    print(res.report()); assert res.ok
    iso = compare.isolate("case.safetensors", "my_port.npz", checkpoint="path/to/ckpt")
    print(iso.report())
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import backend
from .golden.format import FLOAT32_ATOL, FLOAT64_ATOL, FLOAT64_RTOL, FORMAT, MANIFEST_KEY
from .golden.masks import keep_mask
from .golden.reader import Golden

__all__ = [
    "RULES",
    "UNIT_ROUNDOFF",
    "CompareError",
    "Candidate",
    "NameMap",
    "CompareRow",
    "CompareResult",
    "BlockRow",
    "IsolationResult",
    "read_reference",
    "read_candidate",
    "dtype_tolerance",
    "name_hint",
    "models_differ",
    "compare",
    "isolate",
]

#: the pass rules a comparison can use (see :func:`_compare_one`).
RULES = ("max_abs", "rel", "nmse", "cosine")

#: unit roundoff ``u = 2**-p`` (``p`` = significand bits, the implicit one included) per dtype.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}

#: tolerance = ``TOLERANCE_ULPS * u`` (16 unit roundoffs), never below the float32 parity target.
TOLERANCE_ULPS = 16.0

#: the floor: the project's measured float32 parity target (atol and rtol at depth 0).
TOLERANCE_FLOOR = FLOAT32_ATOL

_SAFETENSORS_MAX_HEADER = 100_000_000


class CompareError(ValueError):
    """A usage or file error of a comparison (the CLI prints it as one line, exit code 2)."""


# ---------------------------------------------------------------------------------------------
# reading the reference and the candidate
# ---------------------------------------------------------------------------------------------
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
    from . import golden

    if isinstance(path, Golden):
        g = path
    else:
        p = os.fspath(path)
        if not os.path.exists(p):
            raise CompareError(f"reference not found: {p}")
        if os.path.isdir(p):
            raise CompareError(f"reference {p} is a directory; it must be a golden .safetensors file")
        try:
            g = golden.read(p)
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
            tensor ``lilt.encoder.layer.0``), a :class:`~refimpl.golden.Golden` or a mapping
            name -> array.

    Returns:
        :class:`Candidate`.

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
        from .checkpoints import read_safetensors
        from .checkpoints.raw import bf16_to_f32 as _bf16_to_f32

        try:
            meta, raw = read_safetensors(p)
        except Exception as e:  # CheckpointError and friends: one line naming the file
            raise CompareError(f"candidate {e}") from None
        tensors, dtypes = {}, {}
        for k, r in raw.items():
            if r.dtype == "BF16":
                tensors[k], dtypes[k] = _bf16_to_f32(np.asarray(r.array)), "bfloat16"
            else:
                tensors[k], dtypes[k] = np.asarray(r.array), _dtype_name(r.array)
        manifest: dict[str, Any] = {}
        if MANIFEST_KEY in meta:
            from . import golden

            try:  # a golden file (another refimpl run, say): validated, its aliases resolved
                g = golden.read(p)
            except (ValueError, OSError) as e:
                raise CompareError(f"candidate {e}") from None
            manifest = g.manifest
            for alias, stored in (manifest.get("aliases") or {}).items():
                if stored in tensors:
                    tensors[alias], dtypes[alias] = tensors[stored], dtypes[stored]
        return Candidate(p, "safetensors", tensors, dtypes, manifest)
    if kind == "npz":
        from .files import read_npz

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
        from .files import read_npy

        try:
            tensors[f[:-4]] = read_npy(os.path.join(p, f), "candidate")
        except (ValueError, OSError) as e:
            raise CompareError(f"{e}") from None
    return Candidate(p, "npy-dir", tensors, {k: _dtype_name(v) for k, v in tensors.items()})


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------
@dataclass
class NameMap:
    """Renames candidate tensors to reference names, without rewriting the dump.

    Applied in this order: an explicit ``mapping`` (candidate name -> reference name, e.g. from
    a JSON file) wins; otherwise ``/`` becomes ``.`` (``slash_to_dot``), then ``strip_prefix``
    and ``strip_suffix`` are removed, then ``add_prefix`` and ``add_suffix`` are added.
    """

    add_prefix: str = ""
    strip_prefix: str = ""
    add_suffix: str = ""
    strip_suffix: str = ""
    slash_to_dot: bool = False
    mapping: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: str | os.PathLike, **kw: Any) -> NameMap:
        """A map read from a JSON object ``{"candidate name": "reference name", ...}``."""
        p = os.fspath(path)
        if not os.path.isfile(p):
            raise CompareError(f"name map file not found: {p}")
        try:
            with open(p, encoding="utf-8") as f:
                m = json.load(f)
        except json.JSONDecodeError as e:
            raise CompareError(f"name map {p} is not valid JSON: {e}") from None
        if not isinstance(m, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in m.items()
        ):
            raise CompareError(
                f"name map {p} must be a JSON object of strings (candidate name -> reference name)"
            )
        return cls(mapping=m, **kw)

    def __bool__(self) -> bool:
        return bool(
            self.add_prefix
            or self.strip_prefix
            or self.add_suffix
            or self.strip_suffix
            or self.slash_to_dot
            or self.mapping
        )

    def __call__(self, name: str) -> str:
        if name in self.mapping:
            return self.mapping[name]
        if self.slash_to_dot:
            name = name.replace("/", ".")
        if self.strip_prefix and name.startswith(self.strip_prefix):
            name = name[len(self.strip_prefix) :]
        if self.strip_suffix and name.endswith(self.strip_suffix):
            name = name[: -len(self.strip_suffix)]
        return self.add_prefix + name + self.add_suffix

    def apply(self, cand: Candidate, keep: set[str] | frozenset[str] = frozenset()) -> Candidate:
        """``cand`` with every tensor renamed; two tensors mapped to one name is an error.

        Names in ``keep`` (the reference's names) that are not in ``mapping`` stay as they are,
        so ``--add-prefix lilt.`` leaves ``inputs.*``, ``outputs.*`` and head names alone.
        """
        if not self:
            return cand
        tensors: dict[str, np.ndarray] = {}
        dtypes: dict[str, str] = {}
        origin: dict[str, str] = {}
        for k, v in cand.tensors.items():
            n = k if (k in keep and k not in self.mapping) else self(k)
            if n in tensors:
                raise CompareError(f"name map sends both {origin[n]!r} and {k!r} to {n!r}")
            tensors[n], dtypes[n], origin[n] = v, cand.dtypes[k], k
        return Candidate(cand.path, cand.format, tensors, dtypes, cand.manifest)


def _best_affix(unmatched: list[str], ref: set[str]) -> tuple[int, str, str] | None:
    """The affix edit that maps the most unmatched candidate names onto reference names:
    ``(count, kind, affix)`` with kind one of add_prefix/strip_prefix/add_suffix/strip_suffix."""
    guesses: Counter[tuple[str, str]] = Counter()
    refs = list(ref)
    for c in unmatched[:24]:
        for r in refs:
            if len(r) > len(c):
                if r.endswith(c):
                    guesses[("add_prefix", r[: len(r) - len(c)])] += 1
                if r.startswith(c):
                    guesses[("add_suffix", r[len(c) :])] += 1
            elif len(c) > len(r):
                if c.endswith(r):
                    guesses[("strip_prefix", c[: len(c) - len(r)])] += 1
                if c.startswith(r):
                    guesses[("strip_suffix", c[len(r) :])] += 1
    best = None
    for kind, affix in [g for g, _ in guesses.most_common(16)]:
        nm = NameMap(**{kind: affix})
        n = sum(nm(c) in ref for c in unmatched)
        if best is None or n > best[0]:
            best = (n, kind, affix)
    return best


_AFFIX_WORDS = {
    "add_prefix": ("without the prefix", "--add-prefix"),
    "strip_prefix": ("with an extra prefix", "--strip-prefix"),
    "add_suffix": ("without the suffix", "--add-suffix"),
    "strip_suffix": ("with an extra suffix", "--strip-suffix"),
}


def name_hint(reference: list[str] | set[str], candidate: list[str]) -> str | None:
    """One line describing a systematic naming difference, with the option that fixes it.

    Looks at the candidate names that are not reference names for ``/`` used for ``.``, a
    missing or extra prefix, or a missing or extra suffix (and ``/`` plus an affix). Returns
    ``None`` when nothing explains at least half of them.
    """
    ref = set(reference)
    unmatched = [c for c in candidate if c not in ref]
    if not unmatched:
        return None
    need = max(1, (len(unmatched) + 1) // 2)
    slashed = [c.replace("/", ".") for c in unmatched]
    n_slash = sum(s in ref for s in slashed)
    best = _best_affix(unmatched, ref)
    if "/" in "".join(unmatched):
        best_s = _best_affix([s for s in slashed if s not in ref], ref)
        if best_s and best_s[0] > 0 and n_slash + best_s[0] >= need and (not best or best[0] < need):
            words, opt = _AFFIX_WORDS[best_s[1]]
            return (
                f"candidate names use '/' where the reference uses '.', and look like reference names "
                f"{words} {best_s[2]!r}: use --slash-to-dot {opt} {best_s[2]}"
            )
    if n_slash >= need and (not best or n_slash >= best[0]):
        return "candidate names use '/' where the reference uses '.': use --slash-to-dot"
    if best and best[0] >= need:
        words, opt = _AFFIX_WORDS[best[1]]
        return (
            f"candidate names look like reference names {words} {best[2]!r} ({best[0]} of "
            f"{len(unmatched)} unmatched names fit): use {opt} {best[2]}"
        )
    return None


def models_differ(ref_manifest: Mapping[str, Any], cand_manifest: Mapping[str, Any]) -> str | None:
    """One line when two manifests describe different models (architecture or config), else ``None``."""
    if not cand_manifest or not ref_manifest:
        return None
    ra, ca = ref_manifest.get("architecture"), cand_manifest.get("architecture")
    rc, cc = ref_manifest.get("config") or {}, cand_manifest.get("config") or {}
    diffs = []
    if ra != ca:
        diffs.append(f"architecture {ra} vs {ca}")
    keys = sorted(
        k for k in set(rc) | set(cc) if k not in ("transformers_version", "_name_or_path", "torch_dtype")
    )
    changed = [k for k in keys if rc.get(k) != cc.get(k)]
    for k in changed[:4]:
        diffs.append(f"{k} {rc.get(k)!r} vs {cc.get(k)!r}")
    if len(changed) > 4:
        diffs.append(f"... {len(changed) - 4} more config keys")
    if not diffs:
        return None
    return "DIFFERENT MODELS: reference and candidate manifests differ: " + ", ".join(diffs)


# ---------------------------------------------------------------------------------------------
# tolerances and the per-tensor comparison
# ---------------------------------------------------------------------------------------------
def dtype_tolerance(dtype: str, depth: int) -> tuple[float, float]:
    """``(atol, rtol)`` for a candidate tensor stored in ``dtype`` after ``depth`` layers.

    With the dtype's unit roundoff ``u = 2**-p`` (float16 ``2**-11``, bfloat16 ``2**-8``,
    float32 ``2**-24``)::

        tol  = max(16 * u, 1e-5)
        rtol = tol
        atol = tol * (1 + depth / 4)

    so float16 gets ``7.8e-3`` and bfloat16 ``6.25e-2`` (times ``1 + depth/4`` for atol), and
    float32 keeps the measured float32 parity target ``1e-5`` (16 u would be 9.5e-7, tighter
    than float32 arithmetic achieves over a model). float64 is flat ``(1e-10, 1e-10)``;
    integer and bool tensors are exact ``(0, 0)``. Rounding the reference to ``dtype`` moves
    a value by at most ``u * |x|`` (or half the smallest subnormal), well inside this bound.

    Args:
        dtype: the candidate tensor's stored dtype name (``"float16"``, ``"bfloat16"``...).
        depth: layer units the forward pass has entered before the tensor (manifest ``depth``).

    Returns:
        ``(atol, rtol)``.
    """
    if dtype == "float64":
        return FLOAT64_ATOL, FLOAT64_RTOL
    u = UNIT_ROUNDOFF.get(dtype)
    if u is None:
        if np.dtype(dtype).kind in "fc":  # other floats: by their machine epsilon
            u = float(np.finfo(np.dtype(dtype)).eps) / 2
        else:
            return 0.0, 0.0
    tol = max(TOLERANCE_ULPS * u, TOLERANCE_FLOOR)
    return float(tol * (1.0 + depth / 4.0)), float(tol)


@dataclass
class CompareRow:
    """One reference tensor compared with the candidate's tensor of the same name.

    ``status``: "ok", "FAIL" (out of tolerance under ``rule``), "shape" (shapes differ),
    "missing" (not in the candidate). Over the compared (unmasked) positions: ``max_abs``,
    ``max_rel`` (``|c - r| / |r|`` where ``r != 0``), ``nmse`` (``sum (c-r)^2 / sum r^2``) and
    ``cosine`` (of the flattened tensors). ``dtype`` is the candidate's stored dtype.
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
    nmse: float = 0.0
    cosine: float = 1.0
    dtype: str = ""
    rule: str = "max_abs"

    @property
    def ok(self) -> bool:
        """True when the row passed."""
        return self.status == "ok"


def _overflow_ok(r: np.ndarray, c: np.ndarray, dtype: str) -> np.ndarray:
    """Where ``|r|`` exceeds ``dtype``'s largest finite value (an additive mask's ``finfo.min``,
    say), a candidate at that dtype's extreme (or infinity) of the same sign is exact."""
    if dtype not in ("float16", "bfloat16", "float32"):
        return np.zeros(r.shape, dtype=bool)
    big = 65504.0 if dtype == "float16" else float(np.finfo(np.float32).max)
    over = np.isfinite(r) & (np.abs(r) > big) | np.isinf(r)
    return over & (np.sign(c) == np.sign(r)) & (np.abs(c) >= big * (1 - 2 * UNIT_ROUNDOFF[dtype]))


def _compare_one(
    name: str,
    ref: np.ndarray,
    cand: np.ndarray,
    atol: float,
    rtol: float,
    keep: np.ndarray | None,
    rule: str = "max_abs",
    dtype: str = "",
) -> CompareRow:
    """Compare one tensor. Integers compare exactly whatever ``rule``. Rules for floats:

    - ``max_abs``: every position ``|c - r| <= atol + rtol * |r|``;
    - ``rel``: every position ``|c - r| / max(|r|, atol) <= rtol``;
    - ``nmse``: ``sum (c - r)^2 / sum r^2 <= rtol^2`` (RMS relative error within ``rtol``);
    - ``cosine``: ``1 - cos(c, r) <= rtol^2 / 2``.

    NaN equals NaN; a NaN or infinity against a number is infinitely far.
    """
    shape = tuple(ref.shape)
    dtype = dtype or str(cand.dtype)
    if tuple(cand.shape) != shape:
        return CompareRow(
            name,
            shape,
            "shape",
            float("inf"),
            float("inf"),
            atol,
            rtol,
            detail=f"candidate {cand.shape}",
            dtype=dtype,
        )
    r = ref.astype(np.float64) if ref.dtype.kind in "biuf" else ref
    c = cand.astype(np.float64) if cand.dtype.kind in "biuf" else cand
    if keep is None:
        keep = np.ones(shape, dtype=bool)
    r, c = r[keep], c[keep]
    compared, skipped = int(r.size), int(keep.size - r.size)
    row = CompareRow(name, shape, "ok", 0.0, 0.0, atol, rtol, compared, skipped, dtype=dtype, rule=rule)
    if r.size == 0:
        return row
    exact = (np.isnan(r) & np.isnan(c)) | _overflow_ok(r, c, dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(r - c)
    diff = np.where(exact, 0.0, np.where(np.isnan(diff), np.inf, diff))
    rf = np.where(np.isfinite(r) & ~exact, r, 0.0)
    absr = np.abs(rf)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(absr != 0, diff / absr, np.where(diff == 0, 0.0, np.inf))
        sr = float(np.sum(rf * rf))
        finite = bool(np.all(np.isfinite(diff)))
        nmse = float(np.sum(diff * diff)) / sr if sr > 0 else (0.0 if not diff.any() else math.inf)
        cf = np.where(exact, rf, np.where(np.isfinite(c), c, 0.0))
        nc = float(np.sqrt(np.sum(cf * cf)))
        cos = (
            float(np.sum(rf * cf) / (math.sqrt(sr) * nc)) if sr > 0 and nc > 0 else float(sr == 0 and nc == 0)
        )
    if not finite:
        nmse, cos = math.inf, -1.0
    row.max_abs, row.max_rel, row.nmse, row.cosine = float(diff.max()), float(rel.max()), nmse, cos
    integer = ref.dtype.kind in "biu" and cand.dtype.kind in "biu"
    if integer or rule == "max_abs":
        bad = ~(diff <= atol + rtol * absr)
        ok = not bad.any()
        detail = f"{int(bad.sum())} of {compared} positions out"
    elif rule == "rel":
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(diff == 0, 0.0, diff / np.maximum(absr, atol if atol > 0 else np.finfo(float).tiny))
        bad = ~(q <= rtol)
        ok = not bad.any()
        detail = f"{int(bad.sum())} of {compared} positions out (max rel {float(q.max()):.3e})"
    elif rule == "nmse":
        ok = finite and (nmse <= rtol * rtol if sr > 0 else bool(np.all(diff <= atol)))
        detail = f"nmse {nmse:.3e} > {rtol * rtol:.3e}"
    elif rule == "cosine":
        ok = finite and (1.0 - cos <= rtol * rtol / 2 if sr > 0 else bool(np.all(diff <= atol)))
        detail = f"1 - cos {1.0 - cos:.3e} > {rtol * rtol / 2:.3e}"
    else:
        raise CompareError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if not ok:
        row.status, row.detail = "FAIL", detail
    return row


# ---------------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------------
@dataclass
class CompareResult:
    """All rows in the reference's forward order, the coverage and the verdict.

    ``notes`` are lines to print before the table (a model mismatch, a naming hint).
    ``ok`` is False when a tensor fails, when nothing was compared at all, and (``strict``)
    when a reference tensor is missing in the candidate.
    """

    rows: list[CompareRow]
    extra: list[str] = field(default_factory=list)
    strict: bool = False
    notes: list[str] = field(default_factory=list)
    rule: str = "max_abs"
    candidate_format: str = ""
    name_mismatch: bool = False

    @property
    def failed(self) -> list[CompareRow]:
        """Rows out of tolerance or misshaped (and missing ones when ``strict``)."""
        bad = ("FAIL", "shape", "missing") if self.strict else ("FAIL", "shape")
        return [r for r in self.rows if r.status in bad]

    @property
    def missing(self) -> list[CompareRow]:
        """Reference tensors the candidate lacks."""
        return [r for r in self.rows if r.status == "missing"]

    @property
    def compared(self) -> list[CompareRow]:
        """Rows actually compared (present in both)."""
        return [r for r in self.rows if r.status != "missing"]

    @property
    def first_divergent(self) -> CompareRow | None:
        """The first tensor in forward order that is out of tolerance (or misshaped)."""
        for r in self.rows:
            if r.first_divergent:
                return r
        return None

    @property
    def ok(self) -> bool:
        """Nothing failed, at least one tensor was compared and no systematic naming difference
        (a name hint) left tensors uncompared."""
        return not self.failed and bool(self.compared) and not self.name_mismatch

    def coverage(self) -> str:
        """``coverage: C compared of R in reference; M missing in candidate; E extra in candidate``."""
        return (
            f"coverage: {len(self.compared)} compared of {len(self.rows)} in reference; "
            f"{len(self.missing)} missing in candidate; {len(self.extra)} extra in candidate (not compared)"
            + (" [--strict: missing tensors fail]" if self.strict else "")
        )

    def tolerances(self) -> str:
        """One line per candidate dtype: how many tensors and the tolerances used."""
        by: dict[str, list[CompareRow]] = {}
        for r in self.compared:
            by.setdefault(r.dtype or "?", []).append(r)
        parts = []
        for dt, rows in by.items():
            if rows[0].atol == 0 and rows[0].rtol == 0 and all(r.atol == 0 and r.rtol == 0 for r in rows):
                parts.append(f"{dt} ({len(rows)}): exact")
                continue
            atols = sorted({r.atol for r in rows})
            a = f"{atols[0]:.2e}" if len(atols) == 1 else f"{atols[0]:.2e}..{atols[-1]:.2e}"
            parts.append(f"{dt} ({len(rows)}): atol {a}, rtol {max(r.rtol for r in rows):.2e}")
        return f"candidate dtypes and tolerances (rule {self.rule}): " + ("; ".join(parts) or "none")

    def table(self, only_failed: bool = False) -> str:
        """The per-tensor table, forward order, the first divergent tensor marked; ``only_failed``:
        just the failing rows (missing ones only under ``strict``)."""
        w = max([len(r.name) for r in self.rows] + [6])
        head = (
            f"{'tensor':<{w}}  {'shape':<16} {'dtype':<8} {'max_abs':>10} {'max_rel':>10} {'nmse':>9} "
            f"{'cosine':>10} {'atol':>8} {'rtol':>8}  status"
        )
        lines = [head, "-" * len(head)]
        failed = {id(r) for r in self.failed}
        for r in self.rows:
            if only_failed and id(r) not in failed:
                continue
            shape = "x".join(str(s) for s in r.shape) or "scalar"
            if r.status == "missing":
                nums = f"{'-':>10} {'-':>10} {'-':>9} {'-':>10}"
            else:
                nums = f"{r.max_abs:>10.3e} {r.max_rel:>10.3e} {r.nmse:>9.2e} {r.cosine:>10.7f}"
            mark = "  <== first divergence" if r.first_divergent else ""
            extra = f" ({r.detail})" if r.detail else ""
            lines.append(
                f"{r.name:<{w}}  {shape:<16} {r.dtype or '-':<8} {nums} {r.atol:>8.1e} {r.rtol:>8.1e}  "
                f"{r.status}{extra}{mark}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: counts and the first divergent tensor."""
        n = len(self.rows)
        parts = [f"{sum(r.ok for r in self.rows)}/{n} tensors within tolerance"]
        if not self.compared:
            parts.append("NOTHING COMPARED: the candidate shares no tensor name with the reference")
        elif self.name_mismatch:
            parts.append("NAMES DIFFER: candidate tensors were left uncompared (see the name hint)")
        if self.missing:
            parts.append(f"{len(self.missing)} missing in candidate")
        if self.extra:
            parts.append(f"{len(self.extra)} extra in candidate")
        fd = self.first_divergent
        if fd is not None:
            parts.append(f"first divergence: {fd.name} (max_abs {fd.max_abs:.3e}, {fd.status})")
        return "; ".join(parts) + ("  => OK" if self.ok else "  => NOT OK")

    def report(self, only_failed: bool = False) -> str:
        """Notes, table, tolerances, coverage and summary, as ``refimpl compare`` prints them."""
        lines = [*self.notes, self.table(only_failed), self.tolerances(), self.coverage()]
        if self.extra:
            lines.append(
                f"extra tensors in candidate (not compared): {', '.join(self.extra[:10])}"
                + (" ..." if len(self.extra) > 10 else "")
            )
        lines.append(self.summary())
        return "\n".join(lines)


def _tolerance_for(
    e: Mapping[str, Any], default: Mapping[str, Any], r: np.ndarray, c_dtype: str, depth: int | None
) -> tuple[float, float]:
    """The manifest's tolerance, widened to the candidate dtype's (:func:`dtype_tolerance`)."""
    if r.dtype.kind not in "fc":
        return 0.0, 0.0
    if e:
        a, t = float(e["atol"]), float(e["rtol"])
    else:
        a, t = float(default.get("atol", FLOAT64_ATOL)), float(default.get("rtol", FLOAT64_RTOL))
    u_c = UNIT_ROUNDOFF.get(c_dtype)
    if u_c is not None and u_c > UNIT_ROUNDOFF.get(str(r.dtype), 0.0):
        ca, ct = dtype_tolerance(c_dtype, int(e.get("depth", 0)) if depth is None else depth)
        a, t = max(a, ca), max(t, ct)
    return a, t


def compare(
    reference: Any,
    candidate: Any,
    atol: float | None = None,
    rtol: float | None = None,
    strict: bool = False,
    rule: str = "max_abs",
    names: NameMap | None = None,
) -> CompareResult:
    """Compare a candidate (a port's dump) with a reference golden file, tensor by tensor.

    Args:
        reference: a golden file path or :class:`~refimpl.golden.Golden` (its manifest gives
            the order, tolerances and masks). Anything without a golden manifest is refused.
        candidate: a path (safetensors, ``.npz`` or ``.npy`` directory; see
            :func:`read_candidate`), a :class:`Candidate`, a Golden or a mapping name -> array.
        atol, rtol: override every float tensor's tolerance.
        strict: count tensors missing in the candidate as failures.
        rule: the pass rule for float tensors, one of :data:`RULES`.
        names: a :class:`NameMap` applied to the candidate's names first.

    Returns:
        :class:`CompareResult`, one row per reference tensor, forward order. Without
        overrides a float tensor gets the manifest's tolerance, widened to
        :func:`dtype_tolerance` of the candidate's stored dtype when that is coarser. Masked
        positions (see :func:`refimpl.golden.mask_specs_for`) are not compared.

    Raises:
        CompareError: a reference that is not a golden file, an unreadable candidate, a bad rule.
    """
    if rule not in RULES:
        raise CompareError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    for n, v in (("atol", atol), ("rtol", rtol)):
        if v is not None and not (v >= 0 and math.isfinite(v)):
            raise CompareError(f"{n} must be a finite number >= 0, got {v}")
    ref = read_reference(reference)
    cand = candidate if isinstance(candidate, Candidate) else read_candidate(candidate)
    raw_names = list(cand.tensors)
    if names:
        cand = names.apply(cand, set(ref.tensors))
    notes = []
    diff = models_differ(ref.manifest, cand.manifest)
    if diff:
        notes.append(diff)
    entries = {e["name"]: e for e in ref.manifest.get("tensors", [])}
    default = ref.manifest.get("default_tolerance") or {}
    rows: list[CompareRow] = []
    first_marked = False
    for name, r in ref.tensors.items():
        e = entries.get(name, {})
        c = cand.tensors.get(name)
        c_dtype = cand.dtypes.get(name, str(r.dtype))
        a, t = _tolerance_for(e, default, r, c_dtype, None)
        if r.dtype.kind in "fc":
            a = a if atol is None else float(atol)
            t = t if rtol is None else float(rtol)
        if c is None:
            rows.append(CompareRow(name, tuple(r.shape), "missing", atol=a, rtol=t, rule=rule))
            continue
        specs = e.get("masks") or []
        keep = keep_mask(tuple(r.shape), specs, ref.tensors) if specs else None
        row = _compare_one(name, r, np.asarray(c), a, t, keep, rule, c_dtype)
        if not row.ok and not first_marked:
            row.first_divergent = first_marked = True
        rows.append(row)
    extra = [k for k in cand.tensors if k not in ref.tensors]
    missing = [r.name for r in rows if r.status == "missing"]
    if extra and missing:
        hint = name_hint(list(ref.tensors), list(cand.tensors))
        if hint is None and names:  # say what the names looked like before the map
            hint = name_hint(list(ref.tensors), raw_names)
        if hint:
            notes.append("name hint: " + hint)
    return CompareResult(
        rows,
        extra,
        strict,
        notes,
        rule,
        cand.format,
        name_mismatch=any(n.startswith("name hint") for n in notes),
    )


# ---------------------------------------------------------------------------------------------
# isolation: adapters onto our layer functions (the one place that calls them)
# ---------------------------------------------------------------------------------------------
# Every call into refimpl's layer functions is here, one function per block kind, so a change
# of their signatures is fixed in this section only. Each takes the nested float64 weights
# ``w`` (of the base model), the config and the block's inputs; each returns float64 arrays.
def _additive_mask(mask: np.ndarray | None) -> np.ndarray | None:
    """0/1 keep-mask ``[b, s]`` -> additive ``[b, 1, 1, s]`` float64 (``None`` stays ``None``)."""
    from .attention import extended_attention_mask

    if mask is None:
        return None
    return extended_attention_mask(np.asarray(mask, dtype=np.float64), np.float64)


def _lilt_text_embeddings(w, config, inputs) -> np.ndarray:
    """LiLT text embeddings (``embeddings.LayerNorm``) from the model inputs."""
    from .lilt.embeddings import text_embeddings

    ids = inputs["input_ids"]
    tt = inputs.get("token_type_ids")
    tt = np.zeros_like(ids) if tt is None else tt
    return text_embeddings(ids, None, tt, inputs["position_ids"], **w["embeddings"], config=config)


def _lilt_layout_embeddings(w, config, inputs) -> np.ndarray:
    """LiLT layout embeddings (``layout_embeddings.LayerNorm``) from ``bbox`` and positions."""
    from .lilt.embeddings import layout_embeddings

    return layout_embeddings(inputs["bbox"], inputs["position_ids"], **w["layout_embeddings"], config=config)


def _lilt_layer(w, config, i: int, text, layout, mask) -> tuple[np.ndarray, np.ndarray]:
    """LiLT layer ``i``: (text, layout) in -> (text, layout) out."""
    from .lilt.layers import lilt_layer

    out, layout_out, _ = lilt_layer(
        text, layout, _additive_mask(mask), None, **w["encoder"]["layer"][str(i)], config=config
    )
    return out, layout_out


def _lxmert_embeddings(w, config, inputs) -> np.ndarray:
    """LXMERT ``embeddings`` from ``input_ids`` / ``token_type_ids``."""
    from .lxmert.layers import lxmert_embeddings

    ids = inputs["input_ids"]
    tt = inputs.get("token_type_ids")
    tt = np.zeros_like(ids) if tt is None else tt
    return lxmert_embeddings(ids, tt, None, **w["embeddings"])


def _lxmert_visual_encoder(w, config, inputs) -> np.ndarray:
    """LXMERT ``encoder.visn_fc`` from ``visual_feats`` / ``visual_pos``."""
    from .lxmert.layers import lxmert_visual_feature_encoder

    return lxmert_visual_feature_encoder(
        np.asarray(inputs["visual_feats"], np.float64),
        np.asarray(inputs["visual_pos"], np.float64),
        **w["encoder"]["visn_fc"],
    )


def _lxmert_layer(w, config, kind: str, i: int, x, mask) -> np.ndarray:
    """LXMERT language (``kind="layer"``) or relationship (``"r_layers"``) layer ``i``."""
    from .lxmert.layers import lxmert_layer

    y, _ = lxmert_layer(x, _additive_mask(mask), **w["encoder"][kind][str(i)], config=config)
    return y


def _lxmert_x_layer(w, config, i: int, lang, lang_mask, visn, visn_mask) -> tuple[np.ndarray, np.ndarray]:
    """LXMERT cross layer ``i``: (lang, visn) in -> (lang, visn) out."""
    from .lxmert.layers import lxmert_x_layer

    x = lxmert_x_layer(
        lang,
        _additive_mask(lang_mask),
        visn,
        _additive_mask(visn_mask),
        **w["encoder"]["x_layers"][str(i)],
        config=config,
    )
    return x["lang"], x["visn"]


def _pooler(family: str, w, x) -> np.ndarray:
    """BERT pooler ``tanh(dense(x[:, 0]))`` of either family (``family`` names the model)."""
    from .bert import pooler

    return pooler(x, dense=w["pooler"]["dense"])


def _head(name: str, heads, base, config, x) -> np.ndarray:
    """A task head by its golden name: LiLT ``classifier`` (token or sequence), ``qa_outputs``;
    LXMERT ``cls.predictions``, ``cls.seq_relationship``, ``answer_head``."""
    from . import ops

    if name == "classifier" and "out_proj" in heads["classifier"]:
        from .lilt.heads import classification_head

        return classification_head(x, **heads["classifier"])
    if name in ("classifier", "qa_outputs"):
        return ops.linear(x, **heads[name])
    from .lxmert.heads import answer_head, lm_prediction_head

    if name == "cls.predictions":
        pred = heads["cls"]["predictions"]
        decoder = {"weight": base["embeddings"]["word_embeddings"]["weight"]}
        return lm_prediction_head(
            x, transform=pred["transform"], decoder=decoder, bias=pred["bias"], hidden_act=config.hidden_act
        )
    if name == "cls.seq_relationship":
        return ops.linear(x, **heads["cls"]["seq_relationship"])
    if name == "answer_head":
        return answer_head(x, **heads["answer_head"])
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# isolation: the block graph and the verdict
# ---------------------------------------------------------------------------------------------
@dataclass
class _Block:
    """A block: reads tensors ``inputs`` (golden names, or ``inputs.*``) and writes ``outputs``."""

    name: str
    inputs: list[str]
    outputs: list[str]
    run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def _prefix(names, base: str) -> str | None:
    for p in (base + ".", ""):
        if p + "encoder.layer.0" in names or p + "embeddings.LayerNorm" in names or p + "embeddings" in names:
            return p
    return None


def _lilt_blocks(ref: Golden, model) -> list[_Block]:
    config = model.config
    tree = model.weights
    p = _prefix(ref.tensors, "lilt")
    if p is None:
        raise CompareError("reference has no LiLT block names (embeddings.LayerNorm, encoder.layer.0)")
    w = tree["lilt"] if p else tree
    inputs = dict(ref.inputs)
    if p + "embeddings.position_ids" in ref.tensors:
        inputs["position_ids"] = ref.tensors[p + "embeddings.position_ids"]
    if "position_ids" not in inputs:
        from .lilt.embeddings import create_position_ids_from_input_ids

        inputs["position_ids"] = create_position_ids_from_input_ids(inputs["input_ids"], config.pad_token_id)
    mask = inputs.get("attention_mask")
    text, layout = p + "embeddings.LayerNorm", p + "layout_embeddings.LayerNorm"
    blocks = [
        _Block(text, ["inputs.input_ids"], [text], lambda t: [_lilt_text_embeddings(w, config, inputs)]),
        _Block(layout, ["inputs.bbox"], [layout], lambda t: [_lilt_layout_embeddings(w, config, inputs)]),
    ]
    for i in range(config.num_hidden_layers):
        name = f"{p}encoder.layer.{i}"

        def run(t, i=i, a=text, b=layout):
            return list(_lilt_layer(w, config, i, t[a], t[b], mask))

        blocks.append(_Block(name, [text, layout], [name, name + ".layout"], run))
        text, layout = name, name + ".layout"
    if p + "pooler" in ref.tensors and "pooler" in w:
        blocks.append(
            _Block(p + "pooler", [text], [p + "pooler"], lambda t, a=text: [_pooler("lilt", w, t[a])])
        )
    out_names = {"classifier.out_proj": "classifier", "classifier": "classifier", "qa_outputs": "qa_outputs"}
    for golden_name, head in out_names.items():
        if p and golden_name in ref.tensors and head in tree:
            blocks.append(
                _Block(
                    golden_name,
                    [text],
                    [golden_name],
                    lambda t, a=text, h=head: [_head(h, tree, w, config, t[a])],
                )
            )
            break
    return blocks


def _lxmert_blocks(ref: Golden, model) -> list[_Block]:
    c = model.config
    tree = model.weights
    p = _prefix(ref.tensors, "lxmert")
    if p is None:
        raise CompareError("reference has no LXMERT block names (embeddings, encoder.layer.0)")
    w = tree["lxmert"] if p else tree
    inputs = dict(ref.inputs)
    lmask, vmask = inputs.get("attention_mask"), inputs.get("visual_attention_mask")
    lang, visn = p + "embeddings", p + "encoder.visn_fc"
    blocks = [
        _Block(lang, ["inputs.input_ids"], [lang], lambda t: [_lxmert_embeddings(w, c, inputs)]),
        _Block(visn, ["inputs.visual_feats"], [visn], lambda t: [_lxmert_visual_encoder(w, c, inputs)]),
    ]
    for kind, n in (("layer", c.l_layers), ("r_layers", c.r_layers)):
        for i in range(n):
            name = f"{p}encoder.{kind}.{i}.output"
            src = lang if kind == "layer" else visn
            m = lmask if kind == "layer" else vmask

            def run(t, kind=kind, i=i, src=src, m=m):
                return [_lxmert_layer(w, c, kind, i, t[src], m)]

            blocks.append(_Block(name, [src], [name], run))
            if kind == "layer":
                lang = name
            else:
                visn = name
    for i in range(c.x_layers):
        name = f"{p}encoder.x_layers.{i}"

        def run(t, i=i, a=lang, b=visn):
            return list(_lxmert_x_layer(w, c, i, t[a], lmask, t[b], vmask))

        blocks.append(_Block(name, [lang, visn], [name + ".lang_output", name + ".visn_output"], run))
        lang, visn = name + ".lang_output", name + ".visn_output"
    pooled = p + "pooler"
    if pooled in ref.tensors:
        blocks.append(_Block(pooled, [lang], [pooled], lambda t, a=lang: [_pooler("lxmert", w, t[a])]))
    if p:
        for head, src in (
            ("cls.predictions", lang),
            ("cls.seq_relationship", pooled),
            ("answer_head", pooled),
        ):
            if head in ref.tensors:
                blocks.append(
                    _Block(head, [src], [head], lambda t, h=head, s=src: [_head(h, tree, w, c, t[s])])
                )
    return blocks


@dataclass
class BlockRow:
    """One block output: ``plain`` (candidate vs reference) and ``local`` (candidate vs our
    float64 recomputation of the block from the candidate's own inputs; ``None`` when the
    candidate lacks an input). ``culprit`` marks the first block out of tolerance locally."""

    block: str
    output: str
    inputs: list[str]
    plain: CompareRow | None
    local: CompareRow | None
    culprit: bool = False


@dataclass
class IsolationResult:
    """Per block output (forward order) the plain and the local error, and the verdict:
    ``"ok"``, ``"culprit"`` (``culprit`` names the block), ``"drift"``, or ``"names"`` (nothing
    compared, or names that differ systematically)."""

    rows: list[BlockRow]
    plain: CompareResult
    verdict: str
    culprit: str | None = None

    @property
    def ok(self) -> bool:
        """Everything within tolerance."""
        return self.verdict == "ok"

    def verdict_line(self) -> str:
        """``culprit: <block> ...``, ``accumulated drift: ...`` or ``ok: ...``."""
        checked = sum(r.local is not None for r in self.rows)
        fd = self.plain.first_divergent
        if self.verdict == "culprit":
            row = next(r for r in self.rows if r.culprit)
            where = f"; plain comparison first diverged at {fd.name}" if fd is not None else ""
            return (
                f"culprit: {self.culprit} (its output {row.output} is off by {row.local.max_abs:.3e} when "
                f"recomputed from the candidate's own inputs{where})"
            )
        if self.verdict == "drift":
            first = fd.name if fd is not None else "-"
            return (
                f"accumulated drift: all {checked} checked blocks are locally within tolerance, but the outputs "
                f"diverge (first at {first}); no single block is wrong"
            )
        if self.verdict == "names":
            return "not checked: " + self.plain.summary()
        return f"ok: {checked} blocks checked locally, every tensor within tolerance"

    def table(self) -> str:
        """Block output, plain max_abs, local max_abs, tolerance, status."""
        w = max([len(r.output) for r in self.rows] + [12])
        head = f"{'block output':<{w}}  {'plain':>10} {'local':>10} {'atol':>8} {'rtol':>8}  status"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            pl = f"{r.plain.max_abs:>10.3e}" if r.plain and r.plain.status != "missing" else f"{'-':>10}"
            lo = f"{r.local.max_abs:>10.3e}" if r.local else f"{'-':>10}"
            tol = r.local or r.plain
            a, t = (tol.atol, tol.rtol) if tol else (0.0, 0.0)
            if r.local is None:
                st = "not checked (missing " + ", ".join(r.inputs) + ")"
            else:
                st = "local ok" if r.local.ok else "LOCAL FAIL"
                if r.plain is not None and r.plain.status == "FAIL":
                    st += ", plain FAIL"
            mark = "  <== culprit" if r.culprit else ""
            lines.append(f"{r.output:<{w}}  {pl} {lo} {a:>8.1e} {t:>8.1e}  {st}{mark}")
        return "\n".join(lines)

    def report(self) -> str:
        """The plain report, the block table and the verdict line."""
        return "\n".join(
            [
                self.plain.report(only_failed=True),
                "",
                "isolation (local = recomputed from the candidate's own inputs):",
                self.table(),
                self.verdict_line(),
            ]
        )


def isolate(
    reference: Any,
    candidate: Any,
    checkpoint: str | os.PathLike,
    atol: float | None = None,
    rtol: float | None = None,
    strict: bool = False,
    rule: str = "max_abs",
    names: NameMap | None = None,
) -> IsolationResult:
    """Tell a block's own error from inherited drift.

    For every block in forward order (LiLT: text and layout embeddings, each layer's text and
    layout outputs, pooler, head; LXMERT: embeddings, visual feature encoder, language,
    relationship and cross layers, pooler, heads) whose inputs and output the candidate holds,
    the block is recomputed in float64 with refimpl's functions from the candidate's own
    inputs to it (model inputs come from the reference) and compared with the candidate's
    output: that is the block's local error. The first block whose local error is out of
    tolerance is the culprit, even when the plain comparison failed earlier; when every block
    is locally fine but the plain comparison fails, the divergence is accumulated drift.

    Args:
        reference, candidate, atol, rtol, strict, rule, names: as :func:`compare`. The local
            check uses the tolerance of one block (depth 1) for the candidate's dtype, or the
            overrides.
        checkpoint: the checkpoint directory the golden file was made from.

    Returns:
        :class:`IsolationResult`.
    """
    import refimpl

    ref = read_reference(reference)
    cand = candidate if isinstance(candidate, Candidate) else read_candidate(candidate)
    if names:
        cand = names.apply(cand, set(ref.tensors))
    plain = compare(ref, cand, atol, rtol, strict, rule)
    ck = os.fspath(checkpoint)
    if not os.path.isdir(ck):
        raise CompareError(f"checkpoint directory not found: {ck}")
    model = refimpl.from_pretrained(ck, dtype="float64")
    mt = ref.manifest.get("model_type")
    if mt != model.config.model_type:
        raise CompareError(f"checkpoint {ck} is a {model.config.model_type} model; the reference is {mt}")
    blocks = _lilt_blocks(ref, model) if mt == "lilt" else _lxmert_blocks(ref, model)
    plain_rows = {r.name: r for r in plain.rows}
    entries = {e["name"]: e for e in ref.manifest.get("tensors", [])}
    default = ref.manifest.get("default_tolerance") or {}
    rows: list[BlockRow] = []
    culprit = None
    for b in blocks:
        have = all(n.startswith("inputs.") or n in cand.tensors for n in b.inputs) and any(
            o in cand.tensors for o in b.outputs
        )
        got = None
        if have:
            t = {n: np.asarray(cand.tensors[n], np.float64) for n in b.inputs if not n.startswith("inputs.")}
            got = b.run(t)
        for k, o in enumerate(b.outputs):
            if o not in ref.tensors:
                continue
            local = None
            if got is not None and o in cand.tensors:
                r = ref.tensors[o]
                dt = cand.dtypes.get(o, str(r.dtype))
                a, tt = _tolerance_for(entries.get(o, {}), default, r, dt, 1)
                a = a if atol is None else float(atol)
                tt = tt if rtol is None else float(rtol)
                specs = entries.get(o, {}).get("masks") or []
                keep = keep_mask(tuple(r.shape), specs, ref.tensors) if specs else None
                local = _compare_one(
                    o, np.asarray(got[k]), np.asarray(cand.tensors[o]), a, tt, keep, rule, dt
                )
            row = BlockRow(b.name, o, b.inputs, plain_rows.get(o), local)
            if local is not None and not local.ok and culprit is None:
                row.culprit, culprit = True, o
            rows.append(row)
    if culprit is not None:
        verdict = "culprit"
    elif not plain.compared or plain.name_mismatch:
        verdict = "names"
    elif not plain.ok:
        verdict = "drift"
    else:
        verdict = "ok"
    return IsolationResult(rows, plain, verdict, culprit)
