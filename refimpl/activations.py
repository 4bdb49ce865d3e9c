"""Activations: transformers' ``ACT2FN``, formula by formula, and erf.

Each function takes an array and returns a new one of the same shape and float dtype (Python
scalars never upcast float32). The exact GELU, the one every released LiLT and LXMERT
checkpoint uses, is ``x * 0.5 * (1 + erf(x / sqrt(2)))``; NumPy has no erf, so
[erf][refimpl.activations.erf] is computed here from two published rational approximations:
at most 2.3e-16 absolute error in float64.

These are the plain formulas; `refimpl.fast` holds the kernels that run in their place for
large arrays (cache-sized chunks on the host threads, and a cheaper erf for float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .backend import get_namespace
from .switch import replaceable

__all__ = [
    "erf",
    "gelu",
    "gelu_backward",
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
    "relu_backward",
    "relu2",
    "relu6",
    "sigmoid",
    "silu",
    "tanh",
    "tanh_backward",
    "identity",
    "prelu",
    "ACT2FN",
    "PARAMETRIC_ACTIVATIONS",
    "get_activation",
    "activation_backward",
]

_SQRT_2 = math.sqrt(2.0)
_SQRT1_2 = math.sqrt(0.5)  # M_SQRT1_2, the constant of torch's exact GELU kernel
_INV_SQRT_2PI = (
    2.0 / math.sqrt(math.pi) * math.sqrt(0.5) * 0.5
)  # 1/sqrt(2 pi), as torch's GELU backward kernel (M_2_SQRTPI * M_SQRT1_2 * 0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # NewGELUActivation / AccurateGELUActivation
_GELU_TANH_BETA = math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5  # torch: M_SQRT2 * M_2_SQRTPI * 0.5


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
# tiny, huge and random values). Float32 (and float16) inputs are computed in float64 and
# rounded once, so they are correctly rounded but for ties. refimpl.fast.erf runs float32
# through a cheaper, mask-free rational instead (Eigen's float erf, within 9.5e-8).

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


@replaceable
def erf(x):
    """The error function, elementwise, in pure array code (no SciPy).

    ``|x| < 0.84375``: fdlibm's ``x + x * P(x^2)/Q(x^2)``; beyond: W. J. Cody's
    ``erfc = exp(-x^2) C(|x|)/D(|x|)`` on ``min(|x|, 6)``, each computed only on its own
    elements (the error analysis is in the comment above). ``erf(+-inf) = +-1``,
    ``erf(nan) = nan``, ``erf(-0.0) = -0.0``. Computed in float64 (at most 2.3e-16 absolute
    error) and rounded once to the input's float dtype.

    Args:
        x: float array of any shape (integers give float64, as ``np.exp`` does).

    Returns:
        ``erf(x)``, same shape and (float) dtype as ``x``.
    """
    xp = get_namespace(x)
    dtype = _float_dtype(xp, x)
    t = x.astype(xp.float64, copy=False).reshape(-1)  # [n], in float64
    out = xp.empty(t.shape, dtype=xp.float64)
    small = xp.abs(t) < _ERF_SMALL  # [n]; nan and +-inf are not small
    i, j = xp.flatnonzero(small), xp.flatnonzero(xp.logical_not(small))  # each branch's positions
    out[i] = _erf_small(t.take(i))
    out[j] = _erf_large(xp, t.take(j))
    return out.reshape(x.shape).astype(dtype, copy=False)


def _float_dtype(xp, x):
    """The float dtype elementwise math returns for ``x``: floats kept, integers -> float64."""
    if x.dtype.kind == "f":
        return x.dtype
    if x.dtype.kind == "c":
        raise ValueError(f"expected a real array, got dtype {x.dtype}")
    return xp.float64


# --------------------------------------------------------------------------------------------
# activations: transformers' ACT2FN, formula by formula
# --------------------------------------------------------------------------------------------


@replaceable
def gelu(x):
    """Exact GELU, ``(x * 0.5) * (1 + erf(x / sqrt(2)))``, as ``torch.nn.functional.gelu``.

    transformers' ``"gelu"`` (``GELUActivation``); ``x / sqrt(2)`` is ``x * M_SQRT1_2``, as
    torch's kernel computes it.

    Args:
        x: float array of any shape.

    Returns:
        same shape and dtype as ``x``.
    """
    phi = erf(x * _SQRT1_2)  # [...]
    phi += 1.0  # 1 + erf(x / sqrt(2)), in its own memory
    return (x * 0.5) * phi


@replaceable
def gelu_backward(grad_output, x):
    """Backward of the exact `gelu`: ``dx = dy * (Phi(x) + x * phi(x))``.

    ``GELU(x) = x Phi(x)`` with ``Phi`` the standard normal CDF, so
    ``GELU'(x) = Phi(x) + x phi(x)``, with ``Phi(x) = (1 + erf(x / sqrt(2))) / 2`` (this
    module's `erf`) and the density ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``, in the order of
    torch's ``GeluBackward`` kernel.

    Args:
        grad_output: ``dL/dy``, any shape.
        x: the forward's input, same shape.

    Returns:
        ``dL/dx``, same shape and dtype as ``x``.
    """
    xp = get_namespace(grad_output, x)
    # Phi(x) = 0.5 * (1 + erf(x / sqrt(2))): [...]
    cdf = erf(x * _SQRT1_2)
    cdf += 1.0
    cdf *= 0.5
    # phi(x) = exp(-x^2 / 2) / sqrt(2 pi): [...]
    pdf = xp.exp(x * x * -0.5)
    pdf *= _INV_SQRT_2PI
    # dy * (Phi + x phi): [...]
    pdf *= x
    pdf += cdf
    pdf *= grad_output
    return pdf


def gelu_python(x):
    """transformers' ``"gelu_python"``: ``(x * 0.5) * (1 + erf(x / math.sqrt(2)))`` (a division).

    Args:
        x: float array of any shape.

    Returns:
        same shape and dtype as ``x``.
    """
    return (x * 0.5) * (1.0 + erf(x / _SQRT_2))


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
    t = erf((x - mu) / (sigma * _SQRT_2))
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


def relu_backward(grad_output, y):
    """Backward of `relu` from its output ``y``: ``dx = dy`` where ``y > 0``, else 0 (0 at ``x = 0``,
    as torch's ``threshold_backward``).

    Args:
        grad_output: ``dL/dy``, any shape.
        y: the forward's output ``relu(x)``, same shape.

    Returns:
        ``dL/dx``, same shape.
    """
    xp = get_namespace(grad_output, y)
    return xp.where(y <= 0, 0.0, grad_output).astype(grad_output.dtype, copy=False)


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


def tanh_backward(grad_output, y):
    """Backward of `tanh` from its output ``y``: ``dx = dy * (1 - y^2)``.

    Args:
        grad_output: ``dL/dy``, any shape.
        y: the forward's output ``tanh(x)``, same shape.

    Returns:
        ``dL/dx``, same shape.
    """
    # d tanh(x) / dx = 1 - tanh(x)^2: [...]
    return grad_output * (1.0 - y * y)


def identity(x):
    """``"linear"`` (``LinearActivation``): returns ``x`` itself."""
    return x


def prelu(x, weight):
    """``nn.PReLU``: ``x if x >= 0 else weight * x``, with its learnable ``weight``.

    transformers' ``ACT2FN["prelu"]`` is an ``nn.PReLU()`` module: ONE learnable weight
    (initialized to 0.25) saved in the checkpoint as ``<module path>.weight`` with shape ``[1]``.
    It is therefore not in `ACT2FN` (whose functions take only ``x``); call it with the
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
#: ``ACT2FN`` (``prelu`` has a learnable weight: see `prelu`; ``xielu`` is not supported).
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
        ValueError: for ``"prelu"`` (it needs its weight: use `prelu`) and for a name we do
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


def activation_backward(name: str, grad_output, x, y):
    """The backward of the activation called ``name``, from its input ``x`` and output ``y``
    (each backward takes the one it needs: the exact GELU its input, ReLU and tanh their output).

    Args:
        name: a name in ``ACT2FN`` with a written backward: ``"gelu"``, ``"relu"``, ``"tanh"``.
        grad_output: ``dL/dy``, any shape.
        x: the activation's input, same shape.
        y: its output, same shape.

    Returns:
        ``dL/dx``, same shape.

    Raises:
        NotImplementedError: for an activation whose backward is not written, naming the ones
            that are (every released LiLT and LXMERT uses the exact ``"gelu"``).
    """
    if name == "gelu":
        return gelu_backward(grad_output, x)
    if name == "relu":
        return relu_backward(grad_output, y)
    if name == "tanh":
        return tanh_backward(grad_output, y)
    raise NotImplementedError(
        f"the backward of hidden_act={name!r} is not written; written: 'gelu' (exact), 'relu', 'tanh'"
    )
