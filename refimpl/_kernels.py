"""Kernels below the readable ops: cache-sized chunks shared over host threads, and erf.

Nothing here is needed to read a model. :mod:`refimpl.ops` and :mod:`refimpl.activations`
write each formula plainly and call these helpers for the work that has to be fast:

* :func:`elementwise` runs a per-chunk function over cache-sized 1-D chunks of an array,
  shared out over :func:`refimpl.backend.num_threads` host threads (NumPy releases the GIL in
  its loops);
* :func:`softmax_rows` is the in-place softmax of :func:`refimpl.ops.softmax` over blocks of
  rows, bit-identical to the whole-array pass;
* :func:`erf_block`, :func:`gelu_block` and :func:`gelu_python_block` are the chunk bodies
  of ``erf`` and the exact GELUs: two published rational approximations of erf (fdlibm and
  W. J. Cody) in float64, Eigen's float erf for float32 inputs.
"""

from __future__ import annotations

import math

from .backend import get_namespace, host_map, is_device_array

__all__ = [
    "CHUNK_BYTES",
    "float_dtype",
    "elementwise",
    "softmax_rows",
    "erf_block",
    "gelu_block",
    "gelu_python_block",
]

# Elementwise functions with several steps (erf, gelu, laplace) run over 1-D chunks of this many
# bytes per temporary, so every temporary stays in the CPU's L2 cache and is recycled by the
# allocator instead of being page-faulted in afresh (a 2-4x difference on [512, 3072] arrays).
CHUNK_BYTES = 1 << 19


def float_dtype(xp, x):
    """The dtype elementwise float math runs in: float32/float64 kept, anything else -> float64."""
    if x.dtype == xp.float32 or x.dtype == xp.float64:
        return x.dtype
    if x.dtype.kind == "c":
        raise ValueError(f"expected a real array, got dtype {x.dtype}")
    return xp.float64


def elementwise(block, x, out):
    """Run ``block(xp, x_chunk, out_chunk)`` over cache-sized 1-D chunks of ``x``, shared out
    over ``backend.num_threads()`` host threads (NumPy releases the GIL in its loops).

    ``block`` must allow ``out_chunk`` to be the same memory as ``x_chunk`` (every step reads
    its inputs before the positions it writes), so ``out=x`` works in place.

    Args:
        block: the per-chunk function.
        x: float array of any shape (other dtypes are cast to float64, float16 to float32).
        out: ``None`` or an array of ``x``'s shape and float dtype to write into.

    Returns:
        ``out`` (or a new array) holding the result, same shape as ``x``.
    """
    xp = get_namespace(x)
    if x.dtype == xp.float16:
        return elementwise(block, x.astype(xp.float32), None).astype(xp.float16)
    dtype = float_dtype(xp, x)
    if x.dtype != dtype:
        x = x.astype(dtype)
    if out is None:
        out = xp.empty(x.shape, dtype=dtype)
    elif out.shape != x.shape or out.dtype != dtype:
        raise ValueError(f"out must have shape {x.shape} and dtype {dtype}, got {out.shape} {out.dtype}")
    elif not out.flags.c_contiguous:
        out[...] = elementwise(block, x, None)
        return out
    flat_x = x.reshape(-1)  # a view when x is C-contiguous (then it may alias out)
    flat_out = out.reshape(-1)  # a view: out is C-contiguous
    n = flat_x.shape[0]
    step = n if is_device_array(x) else max(1, CHUNK_BYTES // x.dtype.itemsize)

    def run(start):  # one chunk; chunks touch disjoint ranges of x and out
        block(xp, flat_x[start : start + step], flat_out[start : start + step])

    host_map(run, range(0, n, step))  # chunks in parallel over backend.num_threads() threads
    return out


def softmax_rows(xp, x, softmax_block):
    """Apply ``softmax_block(xp, rows, -1, rows)`` in place to cache-sized blocks of the rows of
    the C-contiguous host array ``x`` (softmax over its last axis), shared over the host threads.

    Each row is computed exactly as the whole-array pass computes it, so the result is
    bit-identical.

    Args:
        xp: the array namespace (NumPy).
        x: ``[..., n]`` C-contiguous, overwritten.
        softmax_block: the one-array softmax, ``(xp, x, axis, out) -> out``.

    Returns:
        ``x``.
    """
    rows = x.reshape(-1, x.shape[-1])  # [r, n], a view
    per = max(1, CHUNK_BYTES // (x.shape[-1] * x.itemsize))  # rows per block

    def block(start):  # rows [start, start + per), in place
        softmax_block(xp, rows[start : start + per], -1, rows[start : start + per])

    host_map(block, range(0, rows.shape[0], per))
    return x


# --------------------------------------------------------------------------------------------
# erf: two published rational approximations, each computed only on its own elements
# --------------------------------------------------------------------------------------------
#
#   |x| <  0.84375   Sun's fdlibm (s_erf.c, 1993):  erf(x) = x + x * P(x^2) / Q(x^2),
#                    |P/Q - (erf(x) - x)/x| < 2^-57.9, relative accuracy down to subnormals.
#   |x| >= 0.84375   W. J. Cody's rational Chebyshev approximation (Math. Comp. 1969; SPECFUN
#                    CALERF): erfc(y) = exp(-y^2) * C(y) / D(y), y = min(|x|, 6), and
#                    erf(x) = sign(x) * ((0.5 - erfc) + 0.5).
#
# Cody gives C/D on [0.46875, 4] (and an asymptotic form beyond). We use it up to 6 instead: on
# (4, 6] its relative error grows to 2.4e-12 (measured against math.erfc), but erfc < 1.6e-8
# there, so erf's absolute error stays below 4e-20. Beyond 6, 1 - erf < 2.2e-17 rounds to 1 and
# the clamp gives exactly +-1 (inf included; nan stays nan through min and every step). Both
# fdlibm and Cody split exp(-y^2) in two for erfc's *relative* accuracy; erf only needs absolute
# accuracy, where the rounding of y^2 changes the result by < 1e-18, so one exp suffices.
#
# Measured: float64 <= 2.3e-16 absolute error against math.erf (dense grids, interval edges,
# tiny, huge and random values). Two index sets per chunk (flatnonzero), gather, compute, scatter.
#
# float32 inputs take a cheaper, mask-free path: the rational approximation of Eigen / XLA /
# TensorFlow's float erf, erf(x) = x * alpha(x^2) / beta(x^2) on clip(x, -4, 4), evaluated in
# float64 and rounded once to float32: <= 9.5e-8 absolute error over every float32 (the
# approximation itself is within 6.5e-8; evaluated in float32 arithmetic it would lose 4.7e-7).
# Clipping keeps nan, sends +-inf to erf(+-4) which rounds to +-1, and -0.0 stays -0.0.

_ERF_SMALL = 0.84375
_ERF_CLAMP = 6.0
# fdlibm s_erf.c pp0..pp4, qq1..qq5 (FreeBSD msun); Horner order: highest degree first.
_PP = (
    -2.37630166566501626084e-05,
    -5.77027029648944159157e-03,
    -2.84817495755985104766e-02,
    -3.25042107247001499370e-01,
    1.28379167095512558561e-01,
)
_QQ = (
    -3.96022827877536812320e-06,
    1.32494738004321644526e-04,
    5.08130628187576562776e-03,
    6.50222499887672944485e-02,
    3.97917223959155352819e-01,
    1.0,
)
# Cody's CALERF c(1..9) and d(1..8), in his order: numerator c(9)*y^8 + ..., monic denominator.
_CODY_C = (
    5.64188496988670089e-1,
    8.88314979438837594e0,
    6.61191906371416295e1,
    2.98635138197400131e2,
    8.81952221241769090e2,
    1.71204761263407058e3,
    2.05107837782607147e3,
    1.23033935479799725e3,
    2.15311535474403846e-8,
)
_CODY_D = (
    1.57449261107098347e1,
    1.17693950891312499e2,
    5.37181101862009858e2,
    1.62138957456669019e3,
    3.29079923573345963e3,
    4.36261909014324716e3,
    3.43936767414372164e3,
    1.23033935480374942e3,
)
# Eigen's generic_fast_erf_float numerator (odd: x * alpha(x^2)) and denominator beta(x^2),
# highest degree first.
EIGEN_ALPHA = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
EIGEN_BETA = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def _horner(t, coeffs):
    """``c[0] * t^k + ... + c[k]`` evaluated in place (Horner), same dtype as ``t``."""
    r = t * coeffs[0]
    for c in coeffs[1:-1]:
        r += c
        r *= t
    r += coeffs[-1]
    return r


def _erf_small(x):
    """fdlibm: ``x + x * P(x^2) / Q(x^2)`` for ``|x| < 0.84375`` (keeps -0.0 and subnormals)."""
    z = x * x
    y = _horner(z, _PP)
    y /= _horner(z, _QQ)
    y *= x
    y += x
    return y


def _erf_large(xp, x):
    """Cody: ``sign(x) * (1 - exp(-y^2) C(y)/D(y))``, ``y = min(|x|, 6)``, for ``|x| >= 0.84375``."""
    y = xp.abs(x)
    xp.minimum(y, _ERF_CLAMP, out=y)  # nan stays nan
    c, d = _CODY_C, _CODY_D
    num = y * c[8]  # CALERF: xnum = c9*y; xnum = (xnum + c_i)*y, i = 1..7; + c8
    for ci in c[:7]:
        num += ci
        num *= y
    num += c[7]
    den = y + d[0]  # CALERF: xden = y; xden = (xden + d_i)*y, i = 1..7; + d8
    for di in d[1:7]:
        den *= y
        den += di
    den *= y
    den += d[7]
    num /= den  # exp(y^2) * erfc(y)
    xp.multiply(y, y, out=y)
    xp.negative(y, out=y)
    xp.exp(y, out=y)
    num *= y  # erfc(y)
    xp.subtract(0.5, num, out=num)
    num += 0.5  # erf(y) = (0.5 - erfc) + 0.5
    return xp.copysign(num, x, out=num)


def _erf_float32(xp, x, out):
    """Eigen's float erf rational, in float64 arithmetic, rounded once into float32 ``out``."""
    t = x.astype(xp.float64)  # [n]
    xp.clip(t, -4.0, 4.0, out=t)  # erf(4) rounds to 1 in float32; nan stays nan
    t2 = t * t
    num = _horner(t2, EIGEN_ALPHA)
    num *= t
    xp.divide(num, _horner(t2, EIGEN_BETA), out=out)  # float64 -> float32 on the way out


def erf_block(xp, x, out):
    """erf of a 1-D float32/float64 chunk into ``out`` (which may be ``x``)."""
    if is_device_array(x):
        import cupyx.scipy.special  # pragma: no cover - GPU only

        cupyx.scipy.special.erf(x, out=out)  # pragma: no cover
        return  # pragma: no cover
    if x.dtype == xp.float32:
        _erf_float32(xp, x, out)
        return
    small = xp.abs(x) < _ERF_SMALL  # [n]
    idx_small = xp.flatnonzero(small)  # [m]
    idx_large = xp.flatnonzero(xp.logical_not(small, out=small))  # [n - m], nan and +-inf included
    del small
    # Each part reads only its own positions and writes only them, so out may alias x.
    if idx_small.shape[0]:
        out[idx_small] = _erf_small(x.take(idx_small))
    if idx_large.shape[0]:
        out[idx_large] = _erf_large(xp, x.take(idx_large))


# The exact GELU's chunk bodies (see refimpl.activations.gelu / gelu_python).
_SQRT1_2 = math.sqrt(0.5)  # M_SQRT1_2, the constant of torch's exact GELU kernel
_SQRT_2 = math.sqrt(2.0)


def gelu_block(xp, x, out):
    """``(x * 0.5) * (1 + erf(x * M_SQRT1_2))`` of a 1-D chunk into ``out`` (which may be ``x``)."""
    t = x * _SQRT1_2  # x / sqrt(2) as torch: x * M_SQRT1_2
    erf_block(xp, t, t)
    t += 1.0  # 1 + erf(x / sqrt(2))
    xp.multiply(x, 0.5, out=out)  # x is not read again, so out may be x
    out *= t  # (x * 0.5) * (1 + erf)


def gelu_python_block(xp, x, out):
    """``(x * 0.5) * (1 + erf(x / sqrt(2)))`` (a division, as transformers' gelu_python)."""
    t = x / _SQRT_2  # input / math.sqrt(2.0)
    erf_block(xp, t, t)
    t += 1.0
    xp.multiply(x, 0.5, out=out)
    out *= t
