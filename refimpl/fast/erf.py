"""Fast erf and GELU: cache-sized chunks on the host threads, and the float32 approximations.

* [erf][refimpl.fast.erf.erf] replaces `refimpl.activations.erf`. Float64: the formula, chunk
  by chunk (bit-identical). Float32: Eigen's float erf rational, mask-free, evaluated in
  float64 and rounded once (within `ERF_FLOAT32_BOUND`
  of the formula). CuPy arrays: CUDA's erf (``cupyx.scipy.special.erf``).
* [gelu][refimpl.fast.erf.gelu] replaces `refimpl.activations.gelu`: the formula, chunk by
  chunk, with the erf above (float64 bit-identical; float32 within ``0.5 * |x| *
  ERF_FLOAT32_BOUND`` plus one rounding).
* [gelu_backward][refimpl.fast.erf.gelu_backward] replaces `refimpl.activations.gelu_backward`:
  ``dy * (Phi(x) + x phi(x))`` block by block on the host threads. Float64: the formula per
  block (bit-identical). Float32: one pass per block in float32 arithmetic with Eigen's erf
  rational, within `GELU_BACKWARD_FLOAT32_BOUND` ``* |dy|`` of the exact ``dy * GELU'(x)``.
* [gelu_float32][refimpl.fast.erf.gelu_float32] is the exact-form GELU in float32
  arithmetic throughout, within `GELU_FLOAT32_BOUND`
  ``* max(1, |x|)`` of the exact GELU; `refimpl.fast.dense.intermediate` applies it block
  by block to the projection it fuses with.
"""

from __future__ import annotations

import math

from .. import activations
from ..backend import get_namespace, is_device_array
from ..switch import kernel_for
from .blocks import BLOCK_BYTES, for_blocks

__all__ = [
    "ERF_FLOAT32_BOUND",
    "GELU_FLOAT32_BOUND",
    "GELU_BACKWARD_FLOAT32_BOUND",
    "EIGEN_ALPHA",
    "EIGEN_BETA",
    "erf",
    "gelu",
    "gelu_float32",
    "gelu_backward",
    "elementwise",
]

# Eigen's generic_fast_erf_float (also XLA's and TensorFlow's): erf(z) = z * alpha(z^2) / beta(z^2)
# on z = clip(x, -4, 4), highest degree first. The rational itself is within 6.5e-8 of erf.
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

#: ``|erf(x) - activations.erf(x)| <= ERF_FLOAT32_BOUND`` for float32 ``x``: Eigen's rational
#: evaluated in float64 is within 9.5e-8 of erf over every float32 (6.5e-8 its own error,
#: plus the final rounding), the formula within half a float32 ulp (<= 6e-8).
ERF_FLOAT32_BOUND = 1.6e-7

# GELU(x) = x/2 * (1 + erf(x / sqrt(2))) with Eigen's erf in float32 arithmetic throughout, so
# the polynomial evaluation adds rounding on top of the approximation's own 6.5e-8. The bound
# is first-principles: Horner on alpha (7 terms) and beta (5 terms) with |u| <= 16 gives a
# relative error of at most about (2*7 + 2*5 + 3) * 2^-24 = 1.6e-6 in erf, hence <= 0.8e-6 in
# Phi = (1 + erf) / 2 plus 2^-24 for the sum, times |x|, plus 2^-24 * |x| for the final
# product: |gelu_float32(x) - GELU(x)| <= 1e-6 * max(1, |x|) (measured: 2.6e-7 * max(1, |x|)
# on a 1e-5 grid over [-12, 12] and 5e5 random values; torch's float32 GELU: 3.7e-7).

#: ``|gelu_float32(x) - GELU(x)| <= GELU_FLOAT32_BOUND * max(1, |x|)`` (see the comment above).
GELU_FLOAT32_BOUND = 1e-6

# GELU'(x) = Phi(x) + x phi(x) in float32 arithmetic: Phi as in the GELU above (within
# 0.8e-6 + 2^-24 of the exact Phi); x phi(x) = x exp(-x^2 / 2) / sqrt(2 pi) with x^2, the
# halving, exp (NumPy's float32 exp: within 4 ulp), the two products each rounded: a relative
# error of at most about (x^2 / 2 + 8) * 2^-24, times |x phi(x)| (at most 0.24, and
# (x^2 / 2) |x phi(x)| at most 0.39): <= 1.4e-7 absolute. The sum adds 2^-24 * 1.13 and the
# product with dy one rounding: |gelu_backward(dy, x) - dy * GELU'(x)| <= 2e-6 * |dy|
# (measured: 3.0e-7 * |dy| on a 1e-5 grid over [-14, 14] and 2e5 random values).

#: ``|gelu_backward(dy, x) - dy * GELU'(x)| <= GELU_BACKWARD_FLOAT32_BOUND * |dy|`` for float32
#: (the kernel's float32 arithmetic; see the comment above).
GELU_BACKWARD_FLOAT32_BOUND = 2e-6

_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = activations._INV_SQRT_2PI  # the formula's constant, as torch spells it


def _horner(xp, u, coefs, out):
    """``out = c0 * u^(n-1) + ... + c_(n-1)`` in ``u``'s dtype (Python floats never upcast)."""
    xp.multiply(u, coefs[0], out=out)
    out += coefs[1]
    for c in coefs[2:]:
        out *= u
        out += c
    return out


def elementwise(block, x):
    """``block`` (an elementwise function) over cache-sized 1-D chunks of ``x`` on the host
    threads, into a new array; a small ``x`` is passed to ``block`` whole.

    Args:
        block: maps a 1-D chunk to a new chunk of the same size and float dtype.
        x: float32 or float64 array of any shape.

    Returns:
        same shape and dtype as ``x``.
    """
    if x.nbytes <= 2 * BLOCK_BYTES:
        return block(x)
    xp = get_namespace(x)
    flat = xp.ascontiguousarray(x).reshape(-1)  # [n]
    out = xp.empty(flat.shape, dtype=x.dtype)

    def chunk(start, stop):
        out[start:stop] = block(flat[start:stop])

    for_blocks(chunk, flat.shape[0], x.itemsize)
    return out.reshape(x.shape)


def _erf_eigen(x):
    """Eigen's float erf rational in float64 arithmetic, rounded once to float32 (mask-free:
    clipping keeps nan, sends +-inf to erf(+-4), which rounds to +-1, and keeps -0.0)."""
    xp = get_namespace(x)
    t = x.astype(xp.float64)  # [n]
    xp.clip(t, -4.0, 4.0, out=t)  # erf(4) rounds to 1 in float32
    t2 = t * t
    num = _horner(xp, t2, EIGEN_ALPHA, xp.empty_like(t2))
    num *= t
    den = _horner(xp, t2, EIGEN_BETA, t)  # t is not read again
    out = xp.empty(x.shape, dtype=xp.float32)
    xp.divide(num, den, out=out)  # computed in float64, rounded once
    return out


@kernel_for(activations.erf)
def erf(x):
    """`refimpl.activations.erf` on the host threads; float32 through Eigen's rational.

    Args:
        x: float array of any shape.

    Returns:
        ``erf(x)``, same shape and dtype as ``x``.
    """
    xp = get_namespace(x)
    if is_device_array(x):
        import cupyx.scipy.special  # pragma: no cover - GPU only

        return cupyx.scipy.special.erf(x)  # pragma: no cover
    if x.dtype == xp.float32:
        return elementwise(_erf_eigen, x)
    if x.dtype == xp.float64:
        return elementwise(activations.erf.formula, x)
    return activations.erf.formula(x)


@kernel_for(activations.gelu)
def gelu(x):
    """`refimpl.activations.gelu`, chunk by chunk on the host threads (its erf is the kernel above).

    Args:
        x: float array of any shape.

    Returns:
        same shape and dtype as ``x``.
    """
    xp = get_namespace(x)
    if is_device_array(x) or x.dtype not in (xp.float32, xp.float64):
        return activations.gelu.formula(x)
    return elementwise(activations.gelu.formula, x)


def gelu_float32_block(xp, x, out, scratch):
    """GELU of a float32 block ``x`` into ``out`` (may be ``x``), in float32 arithmetic;
    ``scratch`` is ``[4, >= x.size]`` float32 memory for the temporaries."""
    t, u, num, den = (s[: x.size].reshape(x.shape) for s in scratch)
    xp.multiply(x, _SQRT1_2, out=t)  # z = x / sqrt(2)
    xp.clip(t, -4.0, 4.0, out=t)  # erf(4) rounds to 1 in float32; nan stays nan
    xp.multiply(t, t, out=u)  # z^2
    _horner(xp, u, EIGEN_ALPHA, num)
    num *= t
    _horner(xp, u, EIGEN_BETA, den)
    num /= den  # erf(z)
    num += 1.0
    xp.multiply(x, 0.5, out=out)  # x is not read again, so out may be x
    out *= num  # (x / 2) * (1 + erf(z))


def gelu_float32(x):
    """Exact-form GELU ``x/2 * (1 + erf(x / sqrt(2)))`` of a float32 array, in float32 arithmetic.

    Within ``GELU_FLOAT32_BOUND * max(1, |x|)`` of the exact GELU (measured 2.6e-7; torch's
    float32 kernel 3.7e-7).

    Args:
        x: float32 array of any shape.

    Returns:
        float32, same shape as ``x``.
    """
    xp = get_namespace(x)
    flat = xp.ascontiguousarray(x).reshape(-1)  # [n]
    out = xp.empty(flat.shape, dtype=xp.float32)

    def chunk(start, stop):
        gelu_float32_block(xp, flat[start:stop], out[start:stop], xp.empty((4, stop - start), xp.float32))

    for_blocks(chunk, flat.shape[0], 4)
    return out.reshape(x.shape)


def gelu_backward_float32_block(xp, dy, x, out, scratch):
    """``dy * GELU'(x)`` of float32 blocks ``dy``, ``x`` into ``out`` (may be ``dy``), in float32
    arithmetic; ``scratch`` is ``[4, >= x.size]`` float32 memory for the temporaries."""
    t, u, num, den = (s[: x.size].reshape(x.shape) for s in scratch)
    # Phi(x) = (1 + erf(x / sqrt(2))) / 2, erf by Eigen's rational as in gelu_float32_block
    xp.multiply(x, _SQRT1_2, out=t)
    xp.clip(t, -4.0, 4.0, out=t)
    xp.multiply(t, t, out=u)
    _horner(xp, u, EIGEN_ALPHA, num)
    num *= t
    _horner(xp, u, EIGEN_BETA, den)
    num /= den  # erf(z)
    num += 1.0
    num *= 0.5  # Phi(x)
    # x phi(x) = x exp(-x^2 / 2) / sqrt(2 pi), in the formula's order
    xp.multiply(x, x, out=u)
    u *= -0.5
    xp.exp(u, out=u)
    u *= _INV_SQRT_2PI
    u *= x
    u += num  # GELU'(x)
    xp.multiply(u, dy, out=out)


@kernel_for(activations.gelu_backward)
def gelu_backward(grad_output, x):
    """`refimpl.activations.gelu_backward` block by block on the host threads: float64 the
    formula per block (bit-identical), float32 one pass in float32 arithmetic (within
    `GELU_BACKWARD_FLOAT32_BOUND` ``* |dy|`` of the exact gradient). Other dtypes, shapes that
    differ (broadcasting) and device arrays run the formula.

    Args:
        grad_output: ``dL/dy``, any shape.
        x: the forward's input, same shape and dtype.

    Returns:
        ``dL/dx``, same shape and dtype as ``x``.
    """
    xp = get_namespace(grad_output, x)
    if (
        is_device_array(x)
        or x.shape != grad_output.shape
        or x.dtype != grad_output.dtype
        or x.dtype not in (xp.float32, xp.float64)
    ):
        return activations.gelu_backward.formula(grad_output, x)
    flat_dy = xp.ascontiguousarray(grad_output).reshape(-1)  # [n]
    flat_x = xp.ascontiguousarray(x).reshape(-1)  # [n]
    out = xp.empty(flat_x.shape, dtype=x.dtype)
    if x.dtype == xp.float64:

        def chunk(start, stop):
            out[start:stop] = activations.gelu_backward.formula(flat_dy[start:stop], flat_x[start:stop])

    else:

        def chunk(start, stop):
            scratch = xp.empty((4, stop - start), xp.float32)
            gelu_backward_float32_block(xp, flat_dy[start:stop], flat_x[start:stop], out[start:stop], scratch)

    for_blocks(chunk, flat_x.shape[0], x.itemsize)
    return out.reshape(x.shape)
