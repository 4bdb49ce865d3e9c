"""The core operations, each as its formula: linear, layer_norm, softmax, embedding.

Every function takes its array namespace from its inputs (``backend.get_namespace``), so the
same code runs on NumPy and CuPy arrays. Weight layouts are transformers' (``Linear.weight`` is
``[out_features, in_features]``, and ``linear`` computes ``x W^T + b``).

Numerics follow PyTorch's CPU kernels (transformers 4.56.2 on torch): the same formulas in the
same order of operations wherever the order changes the rounding, and the same answers at the
edges (fully masked softmax rows, ``-0.0``, ``inf``). Each op returns a new array and never
writes its inputs (a last step may work in place on a temporary the op made itself).

These are the plain formulas. Where a kernel pays for itself it lives in `refimpl.fast` under
the same name and runs instead (`refimpl.switch`); ``refimpl.reference()`` runs these bodies.
Inputs are validated once, by each family's ``check_inputs``: the ops do not check them again.

Activations live in `refimpl.activations`, losses in `refimpl.losses`; both are re-exported
here, so ``refimpl.ops`` is the one import for every op.
"""

from __future__ import annotations

from .backend import get_namespace
from .switch import replaceable

__all__ = ["linear", "layer_norm", "softmax", "embedding"]


@replaceable
def linear(x, weight, bias=None):
    """``x @ weight.T + bias``, as ``torch.nn.functional.linear``.

    Args:
        x: ``[..., in_features]``.
        weight: ``[out_features, in_features]`` (transformers' ``nn.Linear`` layout).
        bias: ``[out_features]`` or ``None``.

    Returns:
        ``[..., out_features]`` in the common dtype of ``x`` and ``weight``.
    """
    y = x @ weight.T  # [..., in] @ [in, out] -> [..., out]
    if bias is None:
        return y
    return y + bias  # [..., out] + [out]


@replaceable
def layer_norm(x, weight, bias, eps: float):
    """LayerNorm over the last axis with biased variance, as ``torch.nn.LayerNorm``.

    Two passes for the statistics (mean, then the mean of squared deviations), then
    ``(x - mean) * (1 / sqrt(var + eps)) * weight + bias``. Float32 stays float32 (``eps`` is
    used as a Python float, so it never upcasts).

    Args:
        x: ``[..., d]``.
        weight, bias: ``[d]``.
        eps: added to the variance before the square root.

    Returns:
        ``[..., d]``.
    """
    xp = get_namespace(x, weight, bias)
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    centered = x - mean  # [..., d]
    var = (centered * centered).mean(axis=-1, keepdims=True)  # [..., 1], biased
    y = centered * (1.0 / xp.sqrt(var + float(eps)))  # [..., d] normalized (times 1/std)
    y *= weight  # the affine map, in y's own memory
    y += bias
    return y


@replaceable
def softmax(x, axis: int = -1):
    """Numerically stable softmax over ``axis``, as ``torch.softmax``:
    ``exp(x - max) * (1 / sum(exp(x - max)))``.

    The row maximum is subtracted before ``exp``, so a fully masked row (every entry
    ``finfo.min`` after an additive mask, or ``finfo.min`` plus finite scores, which rounds to
    ``finfo.min``) becomes all zeros before ``exp`` and gives the uniform distribution, which
    is what torch gives. A row of ``-inf`` gives NaN, as in torch. An empty ``axis`` (no keys)
    gives the empty array back, as torch.

    Args:
        x: float array of any shape.
        axis: the axis to normalize over.

    Returns:
        same shape as ``x``, non-negative, summing to 1 over ``axis``.
    """
    xp = get_namespace(x)
    if x.shape[axis] == 0:  # nothing to normalise
        return x.copy()
    e = x - x.max(axis=axis, keepdims=True)  # [...], the largest of each row is 0
    xp.exp(e, out=e)  # in e's own memory
    e *= 1.0 / e.sum(axis=axis, keepdims=True)  # times 1/sum, as torch's vectorized kernel
    return e


def embedding(ids, weight):
    """Look up rows of ``weight``: ``weight[ids]``, as ``torch.nn.functional.embedding``.

    The ids must lie in ``[0, num_embeddings - 1]`` (NumPy would wrap a negative id); each
    family's ``check_inputs`` checks the ids it is given once, before the forward.

    Args:
        ids: integer ``[...]``.
        weight: ``[num_embeddings, dim]``.

    Returns:
        ``[..., dim]``.
    """
    return weight[ids]  # [...] -> [..., dim]


# The activations and losses, so that ``refimpl.ops`` is the one import for every op
# (``refimpl.ops.gelu``, ``refimpl.ops.cross_entropy``); each module's ``__all__`` lists them.
from .activations import *  # noqa: E402, F403
from .losses import *  # noqa: E402, F403
