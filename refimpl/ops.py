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

from .backend import get_namespace, is_device_array

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
    """Run ``block(xp, x_chunk, out_chunk)`` over cache-sized 1-D chunks of ``x``.

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
    for start in range(0, n, step):
        block(xp, flat_x[start : start + step], flat_out[start : start + step])
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
# erf: fdlibm's piecewise rational approximations (Sun, 1993), vectorized per interval
# --------------------------------------------------------------------------------------------
#
# The coefficients are those of FreeBSD msun s_erf.c / s_erff.c (Sun's fdlibm; the float
# version is the same coefficients rounded to float). Each interval is computed only on its
# own elements (gather by index, compute, scatter back). Error: <= 1.2e-16 absolute in float64
# (measured against math.erf), <= 6.2e-8 absolute in float32 (measured over every float32).
#
#   |x| <  0.84375        erf = x + x * P(x^2) / Q(x^2)
#   |x| in [0.84375, 1.25) erf = sign(x) * (erx + P1(s) / Q1(s)),     s = |x| - 1
#   |x| in [1.25, 1/0.35)  erf = sign(x) * (1 - exp(-z^2 - 0.5625) * exp((z-|x|)(z+|x|) + R1/S1) / |x|)
#   |x| in [1/0.35, 6)     same with R2/S2;   s = 1/x^2 for R, S; z = |x| with the low mantissa bits cleared
#   |x| >= 6, inf, nan     erf = sign(x)   (1 - erf(6) < 2e-17; sign(nan) = nan)

_ERX = 8.45062911510467529297e-01  # erf(1) rounded to 24 bits: exact in float32 too
# Horner order: highest degree first, constant term last.
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
_PA = (
    -2.16637559486879084300e-03,
    3.54783043256182359371e-02,
    -1.10894694282396677476e-01,
    3.18346619901161753674e-01,
    -3.72207876035701323847e-01,
    4.14856118683748331666e-01,
    -2.36211856075265944077e-03,
)
_QA = (
    1.19844998467991074170e-02,
    1.36370839120290507362e-02,
    1.26171219808761642112e-01,
    7.18286544141962662868e-02,
    5.40397917702171048937e-01,
    1.06420880400844228286e-01,
    1.0,
)
_RA = (
    -9.81432934416914548592e00,
    -8.12874355063065934246e01,
    -1.84605092906711035994e02,
    -1.62396669462573470355e02,
    -6.23753324503260060396e01,
    -1.05586262253232909814e01,
    -6.93858572707181764372e-01,
    -9.86494403484714822705e-03,
)
_SA = (
    -6.04244152148580987438e-02,
    6.57024977031928170135e00,
    1.08635005541779435134e02,
    4.29008140027567833386e02,
    6.45387271733267880336e02,
    4.34565877475229228821e02,
    1.37657754143519042600e02,
    1.96512716674392571292e01,
    1.0,
)
_RB = (
    -4.83519191608651397019e02,
    -1.02509513161107724954e03,
    -6.37566443368389627722e02,
    -1.60636384855821916062e02,
    -1.77579549177547519889e01,
    -7.99283237680523006574e-01,
    -9.86494292470009928597e-03,
)
_SB = (
    -2.24409524465858183362e01,
    4.74528541206955367215e02,
    2.55305040643316442583e03,
    3.19985821950859553908e03,
    1.53672958608443695994e03,
    3.25792512996573918826e02,
    3.03380607434824582924e01,
    1.0,
)
# Interval edges. 1/0.35 is fdlibm's high word 0x4006DB6E (0x4036DB6E in float): 2.857143402...,
# exact in float32 and float64.
_ERF_EDGES = (0.84375, 1.25, 2.8571434020996094, 6.0)
# fdlibm's split of |x| into a short head z (exact square) for exp(-x^2): clear the low bits.
_ERF_HEAD_MASK = {4: 0xFFFFF000, 8: 0xFFFFFFFF00000000}


def _horner(t, coeffs):
    """``c[0] * t^k + ... + c[k]`` evaluated in place (Horner), same dtype as ``t``."""
    r = t * coeffs[0]
    for c in coeffs[1:-1]:
        r += c
        r *= t
    r += coeffs[-1]
    return r


def _erf_tail(xp, x, r_coeffs, s_coeffs):
    """fdlibm's erf for 1.25 <= |x| < 6: ``sign(x) * (1 - erfc(|x|))``."""
    a = xp.abs(x)  # [m]
    s = a * a
    xp.divide(1.0, s, out=s)  # 1 / x^2
    ratio = _horner(s, r_coeffs)
    ratio /= _horner(s, s_coeffs)  # R/S
    # z: |x| with its low mantissa bits cleared, so z*z is exact
    uint = xp.uint32 if x.dtype.itemsize == 4 else xp.uint64
    z = (a.view(uint) & _ERF_HEAD_MASK[x.dtype.itemsize]).view(x.dtype)
    low = z - a
    low *= z + a
    low += ratio
    xp.exp(low, out=low)  # exp((z - |x|)(z + |x|) + R/S)
    head = z * z
    head += 0.5625
    xp.negative(head, out=head)
    xp.exp(head, out=head)  # exp(-z*z - 0.5625)
    head *= low
    head /= a  # erfc(|x|)
    xp.subtract(1.0, head, out=head)
    return xp.copysign(head, x, out=head)


def _erf_block(xp, x, out):
    """erf of a 1-D float32/float64 chunk into ``out`` (which may be ``x``)."""
    if is_device_array(x):
        import cupyx.scipy.special  # pragma: no cover - GPU only

        cupyx.scipy.special.erf(x, out=out)  # pragma: no cover
        return  # pragma: no cover
    ax = xp.abs(x)
    below = [ax < edge for edge in _ERF_EDGES]  # 4 x [n] bool
    idx_small = xp.flatnonzero(below[0])
    idx_mid = xp.flatnonzero(xp.logical_xor(below[1], below[0], out=below[0]))
    idx_tail_a = xp.flatnonzero(xp.logical_xor(below[2], below[1], out=below[1]))
    idx_tail_b = xp.flatnonzero(xp.logical_xor(below[3], below[2], out=below[2]))
    idx_rest = xp.flatnonzero(xp.logical_not(below[3], out=below[3]))  # |x| >= 6, inf, nan
    del ax, below
    # Each interval reads only its own positions and writes only them, so out may alias x.
    if idx_small.shape[0]:
        xs = x.take(idx_small)  # [m]
        z = xs * xs
        y = _horner(z, _PP)
        y /= _horner(z, _QQ)
        y *= xs
        y += xs  # x + x * P/Q
        out[idx_small] = y
    if idx_mid.shape[0]:
        xs = x.take(idx_mid)
        s = xp.abs(xs)
        s -= 1.0
        y = _horner(s, _PA)
        y /= _horner(s, _QA)
        y += _ERX
        out[idx_mid] = xp.copysign(y, xs, out=y)
    if idx_tail_a.shape[0]:
        out[idx_tail_a] = _erf_tail(xp, x.take(idx_tail_a), _RA, _SA)
    if idx_tail_b.shape[0]:
        out[idx_tail_b] = _erf_tail(xp, x.take(idx_tail_b), _RB, _SB)
    if idx_rest.shape[0]:
        out[idx_rest] = xp.sign(x.take(idx_rest))


def erf(x, out=None):
    """The error function, elementwise, in pure array code (no SciPy).

    Sun's fdlibm algorithm (``s_erf.c``): four rational approximations on ``|x|`` in
    ``[0, 0.84375)``, ``[0.84375, 1.25)``, ``[1.25, 1/0.35)`` and ``[1/0.35, 6)``, each computed
    only on its own elements, and ``sign(x)`` beyond (``erf(+-inf) = +-1``, ``erf(nan) = nan``,
    ``erf(-0.0) = -0.0``). Float64: at most 1.2e-16 absolute error; float32 runs the same
    algorithm in float32 arithmetic: at most 6.2e-8 absolute error. On CuPy arrays this is
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


def gelu_new(x):
    """transformers' ``"gelu_new"``: ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``.

    The tanh GELU of the Google BERT / GPT-2 repos; ``torch.pow(x, 3.0)`` is ``x * x * x``.
    """
    xp = get_namespace(x)
    inner = x * x * x  # torch.pow(x, 3.0)
    inner *= 0.044715
    inner += x
    inner *= _SQRT_2_OVER_PI
    xp.tanh(inner, out=inner)
    inner += 1.0
    y = 0.5 * x
    y *= inner
    return y


def gelu_accurate(x):
    """transformers' ``"gelu_accurate"`` (``AccurateGELUActivation``): the same formula as ``gelu_new``."""
    return gelu_new(x)


def gelu_pytorch_tanh(x):
    """transformers' ``"gelu_pytorch_tanh"``: ``F.gelu(x, approximate="tanh")``.

    torch's kernel: ``0.5 * x * (1 + tanh(kBeta * (x + 0.044715 * x^3)))`` with
    ``kBeta = M_SQRT2 * M_2_SQRTPI * 0.5``.
    """
    xp = get_namespace(x)
    inner = x * x * x
    inner *= 0.044715
    inner += x
    inner *= _GELU_TANH_BETA
    xp.tanh(inner, out=inner)
    inner += 1.0
    y = 0.5 * x
    y *= inner
    return y


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
    t = x - mu
    t /= sigma * _SQRT_2
    erf(t, out=t)
    t += 1.0
    return xp.multiply(t, 0.5, out=t)


def leaky_relu(x, negative_slope: float = 0.01):
    """``"leaky_relu"`` (``nn.LeakyReLU()``, slope 0.01): ``x if x > 0 else x * negative_slope``."""
    xp = get_namespace(x)
    return xp.where(x > 0, x, x * negative_slope)


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
    z = xp.abs(input - target)
    if beta == 0:
        return _reduce(xp, z, reduction)
    quadratic = 0.5 * z
    quadratic *= z
    quadratic /= beta
    loss = xp.where(z < beta, quadratic, z - 0.5 * beta)
    return _reduce(xp, loss, reduction)
