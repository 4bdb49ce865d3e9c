"""Core operations as explicit functions: linear, layer_norm, softmax, embedding, activations, losses.

Every function takes its array namespace from its inputs (``backend.get_namespace``), so the
same code runs on NumPy and CuPy arrays. Weight layouts are transformers' (``Linear.weight`` is
``[out_features, in_features]``).

Numerics follow PyTorch's CPU kernels (transformers 4.56.2 on torch): the same formulas in the
same order of operations wherever the order changes the rounding, and the same answers at the
edges (fully masked softmax rows, ``nan`` for an all-ignored cross entropy, ``-0.0``, ``inf``).
Elementwise work keeps the input's dtype (Python scalars never upcast a float32 array) and is
done in place where the caller allows it (``out=``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from . import _fused
from .backend import get_namespace, host_map, is_device_array

__all__ = [
    "linear",
    "layer_norm",
    "softmax",
    "embedding",
    "check_index_range",
    "erf",
    "gelu",
    "gelu_python",
    "gelu_new",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "gelu_accurate",
    "gelu_10",
    "quick_gelu",
    "laplace",
    "leaky_relu",
    "mish",
    "relu",
    "relu2",
    "relu6",
    "sigmoid",
    "silu",
    "tanh",
    "identity",
    "prelu",
    "ACT2FN",
    "PARAMETRIC_ACTIVATIONS",
    "get_activation",
    "additive_attention_mask",
    "cross_entropy",
    "mse_loss",
    "bce_with_logits",
    "smooth_l1_loss",
]

# Elementwise functions with several steps (erf, gelu, laplace) run over 1-D chunks of this many
# bytes per temporary, so every temporary stays in the CPU's L2 cache and is recycled by the
# allocator instead of being page-faulted in afresh (a 2-4x difference on [512, 3072] arrays).
_CHUNK_BYTES = 1 << 19


def _float_dtype(xp, x):
    """The dtype elementwise float math runs in: float32/float64 kept, anything else -> float64."""
    if x.dtype == xp.float32 or x.dtype == xp.float64:
        return x.dtype
    if x.dtype.kind == "c":
        raise ValueError(f"expected a real array, got dtype {x.dtype}")
    return xp.float64


def _elementwise(block, x, out):
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
        return _elementwise(block, x.astype(xp.float32), None).astype(xp.float16)
    dtype = _float_dtype(xp, x)
    if x.dtype != dtype:
        x = x.astype(dtype)
    if out is None:
        out = xp.empty(x.shape, dtype=dtype)
    elif out.shape != x.shape or out.dtype != dtype:
        raise ValueError(f"out must have shape {x.shape} and dtype {dtype}, got {out.shape} {out.dtype}")
    elif not out.flags.c_contiguous:
        out[...] = _elementwise(block, x, None)
        return out
    flat_x = x.reshape(-1)  # a view when x is C-contiguous (then it may alias out)
    flat_out = out.reshape(-1)  # a view: out is C-contiguous
    n = flat_x.shape[0]
    step = n if is_device_array(x) else max(1, _CHUNK_BYTES // x.dtype.itemsize)

    def run(start):  # one chunk; chunks touch disjoint ranges of x and out
        block(xp, flat_x[start : start + step], flat_out[start : start + step])

    host_map(run, range(0, n, step))  # chunks in parallel over backend.num_threads() threads
    return out


# --------------------------------------------------------------------------------------------
# linear algebra and normalization
# --------------------------------------------------------------------------------------------


def linear(x, weight, bias=None):
    """``x @ weight.T + bias``, as ``torch.nn.functional.linear``.

    Leading axes are flattened into one GEMM (as torch does for ``[..., in]`` inputs).

    Args:
        x: ``[..., in_features]``.
        weight: ``[out_features, in_features]`` (transformers' ``nn.Linear`` layout).
        bias: ``[out_features]`` or ``None``.

    Returns:
        ``[..., out_features]`` in the common dtype of ``x`` and ``weight``.
    """
    xp = get_namespace(x, weight)
    lead = x.shape[:-1]
    y = xp.matmul(x.reshape(-1, x.shape[-1]), weight.T)  # [n, in] @ [in, out] -> [n, out]
    if bias is not None:
        y += bias  # [n, out] + [out]
    return y.reshape(*lead, weight.shape[0])  # [..., out]


def layer_norm(x, weight, bias, eps: float, out=None):
    """LayerNorm over the last axis with biased variance, as ``torch.nn.LayerNorm``.

    Two passes for the statistics (mean, then the mean of squared deviations), then the affine
    map in place: ``(x - mean) * (1 / sqrt(var + eps)) * weight + bias``. Float32 stays float32
    (``eps`` is used as a Python float, so it never upcasts).

    Args:
        x: ``[..., d]``.
        weight, bias: ``[d]``.
        eps: added to the variance before the square root.
        out: optional ``[..., d]`` array to write into; may be ``x`` itself.

    Returns:
        ``[..., d]``.
    """
    xp = get_namespace(x, weight, bias)
    eps = float(eps)
    if not is_device_array(x) and x.nbytes > 2 * _CHUNK_BYTES and (out is None or out.flags.c_contiguous):
        # large host array: the same arithmetic per cache-sized block of rows, on the host threads
        return _fused.layer_norm_rows(x, weight, bias, eps, out=out)
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    centered = xp.subtract(x, mean, out=out)  # [..., d]; out (or a fresh array) holds x - mean
    squares = centered * centered  # [..., d]
    var = squares.mean(axis=-1, keepdims=True)  # [..., 1], biased
    del squares
    var += eps
    rstd = xp.sqrt(var, out=var)  # [..., 1]
    xp.divide(1.0, rstd, out=rstd)
    centered *= rstd  # [..., d] normalized
    centered *= weight
    centered += bias
    return centered


def softmax(x, axis: int = -1, out=None):
    """Numerically stable softmax over ``axis``, as ``torch.softmax``.

    The row maximum is subtracted before ``exp``, so a fully masked row (every entry
    ``finfo.min`` after an additive mask, or ``finfo.min`` plus finite scores, which rounds to
    ``finfo.min``) becomes all zeros before ``exp`` and gives the uniform distribution, which
    is what torch gives. A row of ``-inf`` gives NaN, as in torch.

    Args:
        x: float array of any shape.
        axis: the axis to normalize over.
        out: optional array of ``x``'s shape and dtype to write into. Pass ``out=x`` to work in
            place on a freshly computed score array (saves one full-size allocation).

    Returns:
        same shape as ``x``, non-negative, summing to 1 over ``axis``.
    """
    xp = get_namespace(x)
    in_place_rows = out is x and axis in (-1, x.ndim - 1) and x.ndim > 1 and x.flags.c_contiguous
    if in_place_rows and not is_device_array(x) and x.nbytes > 2 * _CHUNK_BYTES:
        # large host array in place over its last axis: cache-sized blocks of rows (each row
        # computed exactly as below), shared over the host threads
        rows = x.reshape(-1, x.shape[-1])  # [r, n], a view
        per = max(1, _CHUNK_BYTES // (x.shape[-1] * x.itemsize))  # rows per block

        def block(start):  # rows [start, start + per), in place
            _softmax(xp, rows[start : start + per], -1, rows[start : start + per])

        host_map(block, range(0, rows.shape[0], per))
        return x
    return _softmax(xp, x, axis, out)


def _softmax(xp, x, axis, out):
    """:func:`softmax`'s arithmetic on one array (``out`` may be ``x`` or ``None``)."""
    row_max = x.max(axis=axis, keepdims=True)  # [..., 1, ...]
    e = xp.subtract(x, row_max, out=out)  # [...]
    xp.exp(e, out=e)
    total = e.sum(axis=axis, keepdims=True)  # [..., 1, ...]
    xp.divide(1.0, total, out=total)
    e *= total  # times 1/sum, as torch's vectorized kernel
    return e


# --------------------------------------------------------------------------------------------
# embeddings and index checks
# --------------------------------------------------------------------------------------------


def check_index_range(ids, size: int, name: str, ignore_index: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name``, the first bad position and ``[0, size - 1]`` if any id is outside.

    Args:
        ids: integer array of any shape.
        size: number of rows of the table the ids index (or classes a label may take).
        name: the argument's name, used in the message.
        ignore_index: a value that is always allowed (a loss's ignored label), or ``None``.

    Raises:
        ValueError: for a non-integer dtype, or for an id outside ``[0, size - 1]``.
    """
    xp = get_namespace(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {ids.dtype}")
    if ids.size == 0:
        return
    bad = (ids < 0) | (ids >= size)  # [...]
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bool(bad.any()):
        pos = tuple(int(i) for i in xp.argwhere(bad)[0])
        value = int(ids[pos])
        allowed = f"[0, {size - 1}]" + ("" if ignore_index is None else f" (or {ignore_index}, ignored)")
        where = f"{name}[{', '.join(map(str, pos))}]" if pos else name
        raise ValueError(f"{where} = {value} is outside the allowed range {allowed}")


def embedding(ids, weight, name: str = "input_ids"):
    """Look up rows of ``weight``; ids are validated first (NumPy would wrap negatives silently).

    Args:
        ids: integer ``[...]``.
        weight: ``[num_embeddings, dim]``.
        name: argument name for the error message.

    Returns:
        ``[..., dim]``.

    Raises:
        ValueError: non-integer ids, or an id outside ``[0, num_embeddings - 1]`` (the message
            names ``name``, the position and the range).
    """
    check_index_range(ids, weight.shape[0], name)
    return weight[ids]  # [...] -> [..., dim]


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
_EIGEN_ALPHA = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_EIGEN_BETA = (
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
    num = _horner(t2, _EIGEN_ALPHA)
    num *= t
    xp.divide(num, _horner(t2, _EIGEN_BETA), out=out)  # float64 -> float32 on the way out


def _erf_block(xp, x, out):
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


def erf(x, out=None):
    """The error function, elementwise, in pure array code (no SciPy).

    ``|x| < 0.84375``: fdlibm's ``x + x * P(x^2)/Q(x^2)``; beyond: W. J. Cody's
    ``erfc = exp(-x^2) C(|x|)/D(|x|)`` on ``min(|x|, 6)``, each computed only on its own
    elements (see the comment above ``_ERF_SMALL`` for the error analysis). ``erf(+-inf) = +-1``,
    ``erf(nan) = nan``, ``erf(-0.0) = -0.0``. Float64: at most 2.3e-16 absolute error. Float32
    inputs use Eigen's float erf rational ``x * alpha(x^2) / beta(x^2)`` evaluated in float64
    (mask-free): at most 9.5e-8 absolute error. On CuPy arrays this is
    ``cupyx.scipy.special.erf``.

    Args:
        x: float array of any shape (integers are computed in float64, float16 via float32).
        out: optional array of ``x``'s shape and dtype to write into (may be ``x``).

    Returns:
        ``erf(x)``, same shape and (float) dtype as ``x``.
    """
    return _elementwise(_erf_block, x, out)


# --------------------------------------------------------------------------------------------
# activations: transformers' ACT2FN, formula by formula
# --------------------------------------------------------------------------------------------

_SQRT1_2 = math.sqrt(0.5)  # M_SQRT1_2, the constant of torch's exact GELU kernel
_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # NewGELUActivation / AccurateGELUActivation
_GELU_TANH_BETA = math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5  # torch: M_SQRT2 * M_2_SQRTPI * 0.5


def _gelu_block(xp, x, out):
    t = x * _SQRT1_2  # x / sqrt(2) as torch: x * M_SQRT1_2
    _erf_block(xp, t, t)
    t += 1.0  # 1 + erf(x / sqrt(2))
    xp.multiply(x, 0.5, out=out)  # x is not read again, so out may be x
    out *= t  # (x * 0.5) * (1 + erf)


def gelu(x, out=None):
    """Exact GELU, ``x * 0.5 * (1 + erf(x / sqrt(2)))``, as ``torch.nn.functional.gelu``.

    transformers' ``"gelu"`` (``GELUActivation``). Computed chunk by chunk in cache; ``out=x``
    works in place.

    Args:
        x: float array of any shape.
        out: optional array of ``x``'s shape and dtype to write into (may be ``x``).

    Returns:
        same shape and dtype as ``x``.
    """
    return _elementwise(_gelu_block, x, out)


def _gelu_python_block(xp, x, out):
    t = x / _SQRT_2  # input / math.sqrt(2.0)
    _erf_block(xp, t, t)
    t += 1.0
    xp.multiply(x, 0.5, out=out)
    out *= t


def gelu_python(x, out=None):
    """transformers' ``"gelu_python"``: ``x * 0.5 * (1 + erf(x / math.sqrt(2)))`` (a division).

    Args:
        x: float array of any shape.
        out: optional array to write into (may be ``x``).
    """
    return _elementwise(_gelu_python_block, x, out)


def gelu_10(x):
    """transformers' ``"gelu_10"`` (``ClippedGELUActivation(-10, 10)``): exact GELU clipped to ``[-10, 10]``."""
    xp = get_namespace(x)
    y = gelu(x)
    return xp.clip(y, -10.0, 10.0, out=y)


def _tanh_gelu(x, beta: float):
    """``0.5 * x * (1 + tanh(beta * (x + 0.044715 * x^3)))``, the tanh GELU; ``beta`` is
    ``sqrt(2/pi)`` spelled as each source spells it (the spellings differ in the last bit)."""
    xp = get_namespace(x)
    inner = x * x * x  # torch.pow(x, 3.0)
    inner *= 0.044715
    inner += x
    inner *= beta
    xp.tanh(inner, out=inner)
    inner += 1.0
    y = 0.5 * x
    y *= inner
    return y


def gelu_new(x):
    """transformers' ``"gelu_new"``: ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``.

    The tanh GELU of the Google BERT / GPT-2 repos; ``torch.pow(x, 3.0)`` is ``x * x * x``.
    """
    return _tanh_gelu(x, _SQRT_2_OVER_PI)


def gelu_accurate(x):
    """transformers' ``"gelu_accurate"`` (``AccurateGELUActivation``): the same formula as ``gelu_new``."""
    return gelu_new(x)


def gelu_pytorch_tanh(x):
    """transformers' ``"gelu_pytorch_tanh"``: ``F.gelu(x, approximate="tanh")``.

    torch's kernel: ``0.5 * x * (1 + tanh(kBeta * (x + 0.044715 * x^3)))`` with
    ``kBeta = M_SQRT2 * M_2_SQRTPI * 0.5``.
    """
    return _tanh_gelu(x, _GELU_TANH_BETA)


def gelu_fast(x):
    """transformers' ``"gelu_fast"``: ``0.5 * x * (1 + tanh(x * 0.7978845608 * (1 + 0.044715 * x * x)))``."""
    xp = get_namespace(x)
    inner = 0.044715 * x
    inner *= x
    inner += 1.0  # 1 + 0.044715 * x * x
    inner *= x * 0.7978845608
    xp.tanh(inner, out=inner)
    inner += 1.0
    y = 0.5 * x
    y *= inner
    return y


def sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow: ``exp(-|x|)`` is always <= 1.

    For ``x >= 0``: ``1 / (1 + e)``; for ``x < 0``: ``e / (1 + e)``, with ``e = exp(-|x|)``.
    """
    xp = get_namespace(x)
    e = xp.exp(-xp.abs(x))  # (0, 1]
    denom = e + 1.0
    num = xp.where(x >= 0, 1.0, e)  # python 1.0 keeps the dtype
    return xp.divide(num, denom, out=num)


def quick_gelu(x):
    """transformers' ``"quick_gelu"``: ``x * sigmoid(1.702 * x)``."""
    y = sigmoid(1.702 * x)
    y *= x
    return y


def silu(x):
    """``"silu"`` / ``"swish"`` (``nn.SiLU``): ``x * sigmoid(x)``, overflow-free."""
    y = sigmoid(x)
    y *= x
    return y


def mish(x):
    """``"mish"`` (``F.mish``): ``x * tanh(softplus(x))``; ``softplus`` as ``logaddexp(x, 0)`` so large
    ``x`` gives ``x`` without overflow."""
    xp = get_namespace(x)
    y = xp.logaddexp(x, 0.0)  # log(1 + e^x)
    xp.tanh(y, out=y)
    y *= x
    return y


def laplace(x, mu: float = 0.707107, sigma: float = 0.282095):
    """transformers' ``"laplace"`` (MEGA): ``0.5 * (1 + erf((x - mu) / (sigma * sqrt(2))))``."""
    xp = get_namespace(x)
    mu, sigma = float(mu), float(sigma)  # a NumPy float64 scalar would upcast float32 (NEP 50)
    t = x - mu
    t /= sigma * _SQRT_2
    erf(t, out=t)
    t += 1.0
    return xp.multiply(t, 0.5, out=t)


def leaky_relu(x, negative_slope: float = 0.01):
    """``"leaky_relu"`` (``nn.LeakyReLU()``, slope 0.01): ``x if x > 0 else x * negative_slope``."""
    xp = get_namespace(x)
    return xp.where(x > 0, x, x * float(negative_slope))


def relu(x):
    """``"relu"``: ``max(x, 0)`` (NaN stays NaN)."""
    xp = get_namespace(x)
    return xp.maximum(x, 0.0)


def relu2(x):
    """``"relu2"`` (``ReLUSquaredActivation``): ``relu(x)^2``."""
    r = relu(x)
    r *= r
    return r


def relu6(x):
    """``"relu6"`` (``nn.ReLU6``): ``min(max(x, 0), 6)``."""
    xp = get_namespace(x)
    return xp.clip(x, 0.0, 6.0)


def tanh(x):
    """``"tanh"``."""
    return get_namespace(x).tanh(x)


def identity(x):
    """``"linear"`` (``LinearActivation``): returns ``x`` itself."""
    return x


def prelu(x, weight):
    """``nn.PReLU``: ``x if x >= 0 else weight * x``, with its learnable ``weight``.

    transformers' ``ACT2FN["prelu"]`` is an ``nn.PReLU()`` module: ONE learnable weight
    (initialized to 0.25) saved in the checkpoint as ``<module path>.weight`` with shape ``[1]``.
    It is therefore not in :data:`ACT2FN` (whose functions take only ``x``); call it with the
    checkpoint's weight: ``prelu(x, params["...intermediate_act_fn.weight"])``.

    Args:
        x: ``[batch, channels, ...]`` or any shape when ``weight`` has one element.
        weight: ``[1]`` (or a scalar), or ``[channels]`` applied along axis 1 as torch does.

    Returns:
        same shape as ``x``.

    Raises:
        ValueError: if ``weight`` has several elements that do not match ``x.shape[1]``.
    """
    xp = get_namespace(x, weight)
    if weight is None:
        raise ValueError("prelu needs its weight (nn.PReLU's learnable parameter, initialized to 0.25)")
    w = xp.asarray(weight, dtype=x.dtype)
    if w.size == 1:
        w = w.reshape(())
    elif x.ndim < 2 or x.shape[1] != w.size:
        raise ValueError(
            f"prelu weight has {w.size} elements but x.shape[1] is "
            f"{x.shape[1] if x.ndim >= 2 else 'missing'} (x.shape = {x.shape})"
        )
    else:
        w = w.reshape((w.size,) + (1,) * (x.ndim - 2))  # [channels, 1, ...] broadcast over axis 1
    return xp.where(x >= 0, x, w * x)


#: Name -> function of ``x`` alone, for every parameter-free activation in transformers'
#: ``ACT2FN`` (``prelu`` has a learnable weight: see :func:`prelu`; ``xielu`` is not supported).
ACT2FN: dict[str, Callable] = {
    "gelu": gelu,
    "gelu_10": gelu_10,
    "gelu_fast": gelu_fast,
    "gelu_new": gelu_new,
    "gelu_python": gelu_python,
    "gelu_pytorch_tanh": gelu_pytorch_tanh,
    "gelu_accurate": gelu_accurate,
    "laplace": laplace,
    "leaky_relu": leaky_relu,
    "linear": identity,
    "mish": mish,
    "quick_gelu": quick_gelu,
    "relu": relu,
    "relu2": relu2,
    "relu6": relu6,
    "sigmoid": sigmoid,
    "silu": silu,
    "swish": silu,
    "tanh": tanh,
}

#: Activations with learnable weights: name -> function ``(x, weight)``.
PARAMETRIC_ACTIVATIONS: dict[str, Callable] = {"prelu": prelu}


def get_activation(name: str) -> Callable:
    """Return the activation function called ``name`` in transformers' ``ACT2FN``.

    Raises:
        ValueError: for ``"prelu"`` (it needs its weight: use :func:`prelu`) and for a name we do
            not implement, listing the supported names.
    """
    try:
        return ACT2FN[name]
    except KeyError:
        if name in PARAMETRIC_ACTIVATIONS:
            raise ValueError(
                f"activation {name!r} has a learnable weight (nn.PReLU, initialized to 0.25): "
                f"call refimpl.ops.prelu(x, weight) with the checkpoint's '<module>.weight'"
            ) from None
        raise ValueError(f"unknown activation {name!r}; supported: {sorted(ACT2FN)}") from None


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------


def additive_attention_mask(mask, dtype):
    """Turn a keep-mask into the additive mask transformers uses: ``(1 - mask) * finfo(dtype).min``.

    Args:
        mask: ``[batch, seq]`` of 0/1 (any numeric dtype).
        dtype: the float dtype of the scores.

    Returns:
        ``[batch, 1, 1, seq]`` in ``dtype``: 0 where kept, ``finfo.min`` where masked.
    """
    xp = get_namespace(mask)
    m = mask[:, None, None, :].astype(dtype)
    return (1.0 - m) * xp.finfo(dtype).min


# --------------------------------------------------------------------------------------------
# losses (torch semantics)
# --------------------------------------------------------------------------------------------

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(xp, loss, reduction: str):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return xp.asarray(loss.sum())
    return xp.asarray(loss.mean())


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def cross_entropy(logits, labels, ignore_index: int = -100, reduction: str = "mean"):
    """``torch.nn.functional.cross_entropy`` with class indices (transformers' ``CrossEntropyLoss``).

    ``loss_i = logsumexp(logits_i) - logits_i[label_i]``, 0 where ``label_i == ignore_index``.
    ``"mean"`` divides the sum by the number of non-ignored items: NaN when every label is
    ignored, as torch.

    Args:
        logits: ``[N, C]`` (or ``[..., C]``).
        labels: integer, ``N`` items (``[N]``, or any shape of ``N`` elements, which is flattened
            as transformers' ``labels.view(-1)``); ``ignore_index`` entries do not count.
        ignore_index: the label value that is skipped (any value, even outside ``[0, C - 1]``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (``[N]`` per-item losses).

    Returns:
        a 0-d array (``"mean"``, ``"sum"``) or ``[N]`` (``"none"``), in the logits' dtype.

    Raises:
        ValueError: a label outside ``[0, C - 1]`` that is not ``ignore_index`` (naming
            ``labels``, the position and the range); non-integer labels; a size mismatch.
    """
    xp = get_namespace(logits, labels)
    _check_reduction(reduction)
    num_classes = logits.shape[-1]
    check_index_range(labels, num_classes, "labels", ignore_index=ignore_index)
    logits = logits.reshape(-1, num_classes)  # [N, C]
    labels = labels.reshape(-1)  # [N]
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} items but logits has {logits.shape[0]} rows")
    keep = labels != ignore_index  # [N]
    # log-softmax at the label only: logits[label] - max - log(sum(exp(logits - max)))
    shifted = logits - logits.max(axis=-1, keepdims=True)  # [N, C]
    picked = xp.take_along_axis(shifted, xp.where(keep, labels, 0)[:, None], axis=-1)[:, 0]  # [N]
    xp.exp(shifted, out=shifted)
    lse = xp.log(shifted.sum(axis=-1))  # [N]
    loss = lse - picked  # [N]
    loss = xp.where(keep, loss, 0.0)  # ignored items: 0, as torch
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return xp.asarray(total)
    count = int(keep.sum())
    if count == 0:
        return xp.asarray(float("nan"), dtype=logits.dtype)
    return xp.asarray(total / count)


def mse_loss(input, target, reduction: str = "mean"):
    """``torch.nn.MSELoss``: ``(input - target)^2``, mean over every element by default.

    Args:
        input, target: float arrays of the same shape.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        a 0-d array, or the elementwise losses for ``"none"``.
    """
    xp = get_namespace(input, target)
    _check_reduction(reduction)
    d = input - target
    d *= d
    return _reduce(xp, d, reduction)


def bce_with_logits(logits, targets, reduction: str = "mean"):
    """``torch.nn.BCEWithLogitsLoss``: ``(1 - t) * x - log_sigmoid(x)``, torch's stable form.

    ``log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|))`` never overflows, so any ``|logits|`` works.

    Args:
        logits, targets: float arrays of the same shape (targets in ``[0, 1]``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        a 0-d array, or the elementwise losses for ``"none"``.
    """
    xp = get_namespace(logits, targets)
    _check_reduction(reduction)
    log_sigmoid = xp.minimum(logits, 0.0)
    log_sigmoid -= xp.log1p(xp.exp(-xp.abs(logits)))
    loss = 1.0 - targets
    loss *= logits
    loss -= log_sigmoid
    return _reduce(xp, loss, reduction)


def smooth_l1_loss(input, target, beta: float = 1.0, reduction: str = "none"):
    """``torch.nn.SmoothL1Loss(reduction="none")`` by default: elementwise.

    ``z = |input - target|``: ``0.5 * z * z / beta`` where ``z < beta``, else ``z - 0.5 * beta``
    (``beta = 0`` is the L1 loss).

    Args:
        input, target: float arrays of the same shape.
        beta: the switch point.
        reduction: ``"none"`` (default, as LXMERT uses it), ``"mean"`` or ``"sum"``.

    Returns:
        same shape as ``input`` (``"none"``), else a 0-d array.
    """
    xp = get_namespace(input, target)
    _check_reduction(reduction)
    beta = float(beta)
    z = xp.abs(input - target)
    if beta == 0:
        return _reduce(xp, z, reduction)
    quadratic = 0.5 * z
    quadratic *= z
    quadratic /= beta
    loss = xp.where(z < beta, quadratic, z - 0.5 * beta)
    return _reduce(xp, loss, reduction)
