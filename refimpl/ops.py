"""Core operations as explicit functions: linear, layer_norm, softmax, embedding, activations, losses.

Every function takes its array namespace from its inputs (``backend.get_namespace``), so the
same code runs on NumPy and CuPy arrays. Weight layouts are transformers' (``Linear.weight`` is
``[out_features, in_features]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .backend import get_namespace

__all__ = [
    "linear",
    "layer_norm",
    "softmax",
    "embedding",
    "check_index_range",
    "erf",
    "gelu",
    "gelu_new",
    "ACT2FN",
    "get_activation",
    "additive_attention_mask",
    "cross_entropy",
    "mse_loss",
    "bce_with_logits",
    "smooth_l1_loss",
]


def linear(x, weight, bias=None):
    """``x @ weight.T + bias``.

    Args:
        x: ``[..., in_features]``.
        weight: ``[out_features, in_features]`` (transformers' ``nn.Linear`` layout).
        bias: ``[out_features]`` or ``None``.

    Returns:
        ``[..., out_features]``.
    """
    xp = get_namespace(x, weight)
    y = xp.matmul(x, weight.T)  # [..., in] @ [in, out] -> [..., out]
    if bias is not None:
        y += bias
    return y


def layer_norm(x, weight, bias, eps: float):
    """LayerNorm over the last axis with biased variance, as ``torch.nn.LayerNorm``.

    Args:
        x: ``[..., d]``.
        weight, bias: ``[d]``.
        eps: added to the variance before the square root.

    Returns:
        ``[..., d]``: ``(x - mean) / sqrt(var + eps) * weight + bias``.
    """
    xp = get_namespace(x)
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    centered = x - mean  # [..., d]
    var = (centered * centered).mean(axis=-1, keepdims=True)  # [..., 1]
    out = centered * (1.0 / xp.sqrt(var + eps)).astype(x.dtype, copy=False)
    out *= weight
    out += bias
    return out


def softmax(x, axis: int = -1):
    """Numerically stable softmax over ``axis`` (default last), as ``torch.softmax``.

    A row whose every entry is ``finfo.min`` (a fully masked row after an additive mask)
    gives the uniform distribution, which is what torch gives: the max is subtracted first,
    so the row becomes all zeros before ``exp``.

    Args:
        x: any shape, float.

    Returns:
        same shape as ``x``, non-negative, summing to 1 over ``axis``.
    """
    xp = get_namespace(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    e = xp.exp(shifted, out=shifted)
    e /= e.sum(axis=axis, keepdims=True)
    return e


def check_index_range(ids, size: int, name: str) -> None:
    """Raise ``ValueError`` naming ``name``, the first bad position and ``[0, size - 1]`` if any id is outside.

    Args:
        ids: integer array of any shape.
        size: number of rows of the table the ids index.
        name: the argument's name, used in the message.
    """
    xp = get_namespace(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {ids.dtype}")
    if ids.size == 0:
        return
    bad = (ids < 0) | (ids >= size)
    if bool(bad.any()):
        pos = tuple(int(i) for i in xp.argwhere(bad)[0])
        value = int(ids[pos])
        raise ValueError(
            f"{name}[{', '.join(map(str, pos))}] = {value} is outside the allowed range [0, {size - 1}]"
        )


def embedding(ids, weight, name: str = "input_ids"):
    """Look up rows of ``weight``; ids are validated first (NumPy would wrap negatives silently).

    Args:
        ids: integer ``[...]``.
        weight: ``[num_embeddings, dim]``.
        name: argument name for the error message.

    Returns:
        ``[..., dim]``.
    """
    check_index_range(ids, weight.shape[0], name)
    return weight[ids]


# --------------------------------------------------------------------------------------------
# erf and activations
# --------------------------------------------------------------------------------------------

_erf_scalar = np.frompyfunc(math.erf, 1, 1)


def erf(x):
    """The error function, elementwise.

    Args:
        x: float array of any shape.

    Returns:
        ``erf(x)``, same shape and dtype.
    """
    xp = get_namespace(x)
    if xp is not np:
        import cupyx.scipy.special as sp  # pragma: no cover - GPU only

        return sp.erf(x)
    return np.asarray(_erf_scalar(x), dtype=x.dtype)


def gelu(x):
    """Exact GELU: ``x * 0.5 * (1 + erf(x / sqrt(2)))``, as ``torch.nn.functional.gelu``.

    Args:
        x: float array of any shape.
    """
    return x * 0.5 * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_new(x):
    """tanh GELU of the Google BERT / GPT-2 repos (transformers' ``NewGELUActivation``)."""
    xp = get_namespace(x)
    return 0.5 * x * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _gelu_fast(x):
    xp = get_namespace(x)
    return 0.5 * x * (1.0 + xp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _quick_gelu(x):
    return x * _sigmoid(1.702 * x)


def _sigmoid(x):
    xp = get_namespace(x)
    return 1.0 / (1.0 + xp.exp(-x))


def _relu(x):
    xp = get_namespace(x)
    return xp.maximum(x, 0)


def _silu(x):
    return x * _sigmoid(x)


def _tanh(x):
    return get_namespace(x).tanh(x)


def _mish(x):
    xp = get_namespace(x)
    softplus = xp.logaddexp(x, 0)  # log(1 + e^x), overflow-free
    return x * xp.tanh(softplus)


def _leaky_relu(x, negative_slope: float = 0.01):
    xp = get_namespace(x)
    return xp.where(x >= 0, x, x * negative_slope)


def _laplace(x, mu: float = 0.707107, sigma: float = 0.282095):
    return 0.5 * (1.0 + erf((x - mu) / (sigma * math.sqrt(2.0))))


def _gelu_10(x):
    xp = get_namespace(x)
    return xp.clip(gelu(x), -10, 10)


def _relu2(x):
    r = _relu(x)
    return r * r


def _relu6(x):
    xp = get_namespace(x)
    return xp.clip(x, 0, 6)


def _identity(x):
    return x


#: Name -> function, for every parameter-free activation in transformers' ``ACT2FN``.
ACT2FN: dict[str, Callable] = {
    "gelu": gelu,
    "gelu_10": _gelu_10,
    "gelu_fast": _gelu_fast,
    "gelu_new": gelu_new,
    "gelu_python": gelu,
    "gelu_pytorch_tanh": gelu_new,
    "gelu_accurate": gelu_new,
    "laplace": _laplace,
    "leaky_relu": _leaky_relu,
    "linear": _identity,
    "mish": _mish,
    "quick_gelu": _quick_gelu,
    "relu": _relu,
    "relu2": _relu2,
    "relu6": _relu6,
    "sigmoid": _sigmoid,
    "silu": _silu,
    "swish": _silu,
    "tanh": _tanh,
}


def get_activation(name: str) -> Callable:
    """Return the activation function called ``name`` in transformers' ``ACT2FN``.

    Raises:
        ValueError: for a name we do not implement, listing the supported names.
    """
    try:
        return ACT2FN[name]
    except KeyError:
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


def _log_softmax(logits):
    xp = get_namespace(logits)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def cross_entropy(logits, labels, ignore_index: int = -100):
    """``torch.nn.functional.cross_entropy`` with mean reduction over non-ignored items.

    Args:
        logits: ``[N, C]``.
        labels: integer ``[N]``; entries equal to ``ignore_index`` do not count.

    Returns:
        a 0-d array; NaN when every label is ignored (as torch).

    Raises:
        ValueError: for a label outside ``[0, C - 1]`` that is not ``ignore_index``.
    """
    xp = get_namespace(logits)
    keep = labels != ignore_index
    check_index_range(labels[keep], logits.shape[-1], "labels")
    logp = _log_softmax(logits)  # [N, C]
    safe = xp.where(keep, labels, 0)
    picked = xp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0]  # [N]
    total = -(picked * keep).sum()
    return total / keep.sum()


def mse_loss(input, target):
    """Mean squared error over every element (``torch.nn.MSELoss()``). Returns a 0-d array."""
    d = input - target
    return (d * d).mean()


def bce_with_logits(logits, targets):
    """``torch.nn.BCEWithLogitsLoss()`` (mean), computed stably. Returns a 0-d array."""
    xp = get_namespace(logits)
    # max(x, 0) - x * t + log(1 + exp(-|x|))
    loss = xp.maximum(logits, 0) - logits * targets + xp.log1p(xp.exp(-xp.abs(logits)))
    return loss.mean()


def smooth_l1_loss(input, target, beta: float = 1.0):
    """``torch.nn.SmoothL1Loss(reduction="none")``: elementwise, same shape as ``input``."""
    xp = get_namespace(input)
    d = xp.abs(input - target)
    if beta == 0:
        return d
    return xp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
