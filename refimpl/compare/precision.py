"""Reduced precision: detecting it in a candidate's values, and emulating it in a block's
recomputation.

A port run in float16 or bfloat16 rounds every weight, every input and every op's output to
that dtype. `round_to` does that rounding (round to nearest, ties to even, as torch does:
bfloat16 by rounding a float32's mantissa to 8 bits, float16 through float32); `exact_dtype`
tells which coarse dtype a float32 array's values all lie on (NumPy has no bfloat16, so a
bfloat16 port saves float32); `emulating` recomputes a block as such a port would.

**Where the emulation plugs in.** `emulating` is the one place that makes refimpl's layer
functions round like a reduced-precision port: today it rides on `refimpl.trace`, rounding
each recorded intermediate in place as it is recorded (every module output and inner step
with a golden name: projections, scores, probabilities, contexts, LayerNorm outputs,
activations). Those arrays are the ones the forward continues with, so the rounding
propagates. Steps without a golden name (a residual sum before its LayerNorm, a fused
projection's pre-activation) are not rounded; the calibration of `PRECISION_FACTOR` allows
for that. When the ops gain one dispatch point (``refimpl.switch``), `emulating` should
install a table that rounds every op's output instead; nothing else changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .. import trace

__all__ = [
    "REDUCED",
    "PRECISION_FACTOR",
    "round_to",
    "exact_dtype",
    "exact_in",
    "round_tree",
    "emulating",
]

#: the dtypes whose ports are judged against an emulated recomputation (coarsest first).
REDUCED = ("bfloat16", "float16")

#: a block fails the precision test when its local error exceeds this many times the error
#: of the same block recomputed as a correct port in the candidate's precision would compute
#: it (root-mean-square errors; squared for the nmse and cosine rules). Measured with the
#: oracle run in float16 and bfloat16 (tests/test_porting.py; 80 correct ports of 20 seeds):
#: a correct port's ratio is 1.0-1.36 (the emulation leaves a few roundings out, see the
#: module text), a planted layout-score or cross-attention-scale bug's 1.86-2.18 with nearly
#: uniform attention and far more with peaked attention.
PRECISION_FACTOR = 1.6

_F16_MAX = 65504.0


def round_to(x: Any, dtype: str) -> np.ndarray:
    """``x`` rounded to ``dtype``'s values, kept in ``x``'s own float dtype.

    Args:
        x: a float array of any shape.
        dtype: ``"bfloat16"`` (float32's exponent, 8 significant bits: the float32 value's
            low 16 bits rounded away, to nearest, ties to even), ``"float16"`` (through
            float32, overflow to infinity), ``"float32"`` or ``"float64"`` (unchanged).

    Returns:
        an array of ``x``'s shape and dtype.
    """
    a = np.asarray(x)
    if dtype == "bfloat16":
        f = np.ascontiguousarray(a, dtype=np.float32)
        bits = f.view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(
            0xFFFF0000
        )
        rounded = np.where(np.isnan(f), bits, rounded).astype(np.uint32)
        return rounded.view(np.float32).astype(a.dtype, copy=False)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            return a.astype(np.float32).astype(np.float16).astype(a.dtype)
    if dtype == "float32":
        return a.astype(np.float32).astype(a.dtype)
    return a


def exact_in(a: np.ndarray, dtype: str) -> bool:
    """Every value of ``a`` (NaN and infinities included) is one of ``dtype``'s values."""
    with np.errstate(over="ignore", invalid="ignore"):
        r = round_to(a, dtype)
    return bool(np.array_equal(r, a, equal_nan=True))


def exact_dtype(a: np.ndarray, min_values: int = 16, informative: bool = False) -> str | bool | None:
    """The coarsest reduced dtype every value of a float32 array ``a`` is exactly one of.

    Checks bfloat16, then float16. An array with fewer than
    ``min_values`` distinct non-zero finite values says nothing (zeros and small integers are
    exact in every dtype): ``None``.

    Returns:
        ``"bfloat16"``, ``"float16"`` or ``None`` (no coarser dtype, or too
        few values to tell); with ``informative``, only whether there are enough values.
    """
    if a.dtype != np.float32 or a.size == 0:
        return False if informative else None
    flat = a.reshape(-1)
    sample = flat[np.isfinite(flat) & (flat != 0)]
    enough = np.unique(sample[: 4 * min_values]).size >= min_values
    if informative or not enough:
        return enough if informative else None
    for dt in REDUCED:
        if exact_in(a, dt):
            return dt
    return None


def round_tree(w: Any, dtype: str) -> Any:
    """A nested weight dict (``model.weights``) with every float array rounded to ``dtype``
    (float64 kept as the container dtype)."""
    if isinstance(w, Mapping):
        return {k: round_tree(v, dtype) for k, v in w.items()}
    a = np.asarray(w)
    if a.dtype.kind != "f":
        return a
    return round_to(a.astype(np.float64), dtype)


class _Rounding(trace.Recorder):
    """A recorder that keeps nothing: it rounds each recorded float array in place."""

    def __init__(self, dtype: str):
        super().__init__(copy=False)
        self.dtype = dtype

    def add(self, name: str, value: Any, aliases: tuple[str, ...] = ()) -> None:
        """Round ``value`` (no name bookkeeping: a block may be run many times)."""
        self.store(name, value, aliases)

    def store(self, name: str, value: Any, aliases: tuple[str, ...] = ()) -> None:
        """Round ``value`` in place when it is a writeable float array."""
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.flags.writeable:
            value[...] = round_to(value, self.dtype)


@contextlib.contextmanager
def emulating(dtype: str) -> Iterator[None]:
    """Run refimpl's layer functions as a ``dtype`` port would, for the ``with`` block: every
    recorded intermediate is rounded to ``dtype`` as it is computed (see the module text).
    Give the layer functions weights and inputs already rounded (`round_tree`, `round_to`).

    Args:
        dtype: ``"float16"`` or ``"bfloat16"`` (``"float32"`` works too).
    """
    with trace.tracing(recorder=_Rounding(dtype)):
        yield
