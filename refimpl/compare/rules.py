"""Tolerances and the per-tensor check: the dtype-aware tolerance of a candidate tensor and
the four pass rules (`RULES`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..golden.format import FLOAT32_ATOL, FLOAT64_ATOL, FLOAT64_RTOL
from ..golden.grads import GRADIENT_TOLERANCE
from .errors import CompareError

__all__ = [
    "RULES",
    "UNIT_ROUNDOFF",
    "TOLERANCE_ULPS",
    "TOLERANCE_FLOOR",
    "dtype_tolerance",
    "gradient_dtype_tol",
    "CompareRow",
]

#: the pass rules a comparison can use (see `_compare_one`).
RULES = ("max_abs", "rel", "nmse", "cosine")

#: unit roundoff ``u = 2**-p`` (``p`` = significand bits, the implicit one included) per dtype.
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}

#: tolerance = ``TOLERANCE_ULPS * u`` (16 unit roundoffs), never below the float32 parity target.
TOLERANCE_ULPS = 16.0

#: the floor: the project's measured float32 parity target (atol and rtol at depth 0).
TOLERANCE_FLOOR = FLOAT32_ATOL


def dtype_tolerance(dtype: str, depth: int) -> tuple[float, float]:
    """``(atol, rtol)`` for a candidate tensor stored in ``dtype`` after ``depth`` layers.

    With the dtype's unit roundoff ``u = 2**-p`` (float16 ``2**-11``, bfloat16 ``2**-8``,
    float32 ``2**-24``):

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
    ``cosine`` (of the flattened tensors), ``rms`` (root-mean-square of ``c - r``) and
    ``rms_ref`` (of ``r``), ``one_minus_cos`` (``1 - cosine``, computed without cancellation).
    ``dtype`` is the dtype the candidate tensor is judged as.
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
    rms: float = 0.0
    rms_ref: float = 0.0
    one_minus_cos: float = 0.0

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
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rel = np.where(absr != 0, diff / absr, np.where(diff == 0, 0.0, np.inf))
        sr = float(np.sum(rf * rf))
        finite = bool(np.all(np.isfinite(diff)))
        nmse = float(np.sum(diff * diff)) / sr if sr > 0 else (0.0 if not diff.any() else math.inf)
        cf = np.where(exact, rf, np.where(np.isfinite(c), c, 0.0))
        nc = float(np.sqrt(np.sum(cf * cf)))
        # 1 - cos as half the squared distance of the unit vectors: exact (0) for an exact copy,
        # where 1 - dot / (|r||c|) would show float64's own rounding (~2e-16)
        if sr > 0 and nc > 0:
            one_minus_cos = 0.5 * float(np.sum((cf / nc - rf / math.sqrt(sr)) ** 2))
        else:
            one_minus_cos = 0.0 if (sr == 0 and nc == 0) else 1.0
        rms = float(np.sqrt(np.mean(diff * diff)))
    if not finite:
        nmse, one_minus_cos, rms = math.inf, 2.0, math.inf
    cos = 1.0 - one_minus_cos
    row.max_abs, row.max_rel, row.nmse, row.cosine = float(diff.max()), float(rel.max()), nmse, cos
    row.rms, row.rms_ref, row.one_minus_cos = rms, math.sqrt(sr / r.size), one_minus_cos
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
        ok = finite and (one_minus_cos <= rtol * rtol / 2 if sr > 0 else bool(np.all(diff <= atol)))
        detail = f"1 - cos {one_minus_cos:.3e} > {rtol * rtol / 2:.3e}"
    else:
        raise CompareError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if not ok:
        row.status, row.detail = "FAIL", detail
    return row


def _tolerance_for(
    e: Mapping[str, Any], default: Mapping[str, Any], r: np.ndarray, c_dtype: str, depth: int | None
) -> tuple[float, float]:
    """The manifest's tolerance, widened to the candidate dtype's (`dtype_tolerance`)."""
    if r.dtype.kind not in "fc":
        return 0.0, 0.0
    if e:
        a, t = float(e["atol"]), float(e["rtol"])
    else:
        a, t = float(default.get("atol", FLOAT64_ATOL)), float(default.get("rtol", FLOAT64_RTOL))
    u_c = UNIT_ROUNDOFF.get(c_dtype)
    if u_c is not None and u_c > UNIT_ROUNDOFF.get(str(r.dtype), 0.0):
        if e.get("role") == "gradient":  # tol * max(1, max|g|): the scale kept, tol the candidate's
            scale = a / GRADIENT_TOLERANCE.get(str(r.dtype), GRADIENT_TOLERANCE["float32"])
            return max(a, gradient_dtype_tol(c_dtype) * scale), t
        ca, ct = dtype_tolerance(c_dtype, int(e.get("depth", 0)) if depth is None else depth)
        a, t = max(a, ca), max(t, ct)
    return a, t


def gradient_dtype_tol(dtype: str) -> float:
    """The ``tol`` of a gradient computed in ``dtype`` (its ``atol`` is ``tol * max(1,
    max|g|)``, ``rtol`` 0): float64 ``1e-10``, float32 ``1e-4`` (the project's gradient
    parity targets), coarser floats 16 unit roundoffs when that is wider (bfloat16 ``6.25e-2``)."""
    if dtype in GRADIENT_TOLERANCE:
        return GRADIENT_TOLERANCE[dtype]
    u = UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF["float32"])
    return max(GRADIENT_TOLERANCE["float32"], TOLERANCE_ULPS * u)
