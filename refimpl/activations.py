"""Activations: transformers' ``ACT2FN``, formula by formula, and erf.

Each function takes an array and returns one of the same shape and float dtype (Python
scalars never upcast float32). The exact GELU, the one every released LiLT and LXMERT
checkpoint uses, is ``x * 0.5 * (1 + erf(x / sqrt(2)))``; NumPy has no erf, so
:func:`erf` is computed here from published rational approximations (see
:mod:`refimpl._kernels`): at most 2.3e-16 absolute error in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._kernels import elementwise, erf_block, gelu_block, gelu_python_block
from .backend import get_namespace

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
]

_SQRT_2 = math.sqrt(2.0)
_SQRT_1_2 = math.sqrt(0.5)  # torch's M_SQRT1_2
# torch's kAlpha = M_2_SQRTPI * M_SQRT1_2 * 0.5 = 1 / sqrt(2 pi), the normal density's constant
_INV_SQRT_2PI = 2.0 / math.sqrt(math.pi) * math.sqrt(0.5) * 0.5
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # NewGELUActivation / AccurateGELUActivation
_GELU_TANH_BETA = math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5  # torch: M_SQRT2 * M_2_SQRTPI * 0.5


def erf(x, out=None):
    """The error function, elementwise, in pure array code (no SciPy).

    ``|x| < 0.84375``: fdlibm's ``x + x * P(x^2)/Q(x^2)``; beyond: W. J. Cody's
    ``erfc = exp(-x^2) C(|x|)/D(|x|)`` on ``min(|x|, 6)``, each computed only on its own
    elements (see :mod:`refimpl._kernels` for the error analysis). ``erf(+-inf) = +-1``,
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
    return elementwise(erf_block, x, out)


# --------------------------------------------------------------------------------------------
# activations: transformers' ACT2FN, formula by formula
# --------------------------------------------------------------------------------------------


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
    return elementwise(gelu_block, x, out)


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
    cdf = erf(x * _SQRT_1_2)
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


def gelu_python(x, out=None):
    """transformers' ``"gelu_python"``: ``x * 0.5 * (1 + erf(x / math.sqrt(2)))`` (a division).

    Args:
        x: float array of any shape.
        out: optional array to write into (may be ``x``).
    """
    return elementwise(gelu_python_block, x, out)


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
