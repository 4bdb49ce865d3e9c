"""Losses with torch semantics (``torch.nn.functional``), as transformers' heads use them.

Each takes arrays and a ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``) and returns a 0-d
array or the per-item losses, in the input's dtype. Each loss has its backward right after it
(``cross_entropy`` / ``cross_entropy_backward``, ...): given the upstream gradient of the loss
(a scalar for ``"mean"`` / ``"sum"``, the per-item gradients for ``"none"``) it returns the
gradient with respect to the first input (logits / input), with torch's semantics. Labels and
targets get no gradient.
"""

from __future__ import annotations

from .activations import sigmoid
from .backend import get_namespace
from .checks import check_index_range

__all__ = [
    "cross_entropy",
    "cross_entropy_backward",
    "mse_loss",
    "mse_loss_backward",
    "bce_with_logits",
    "bce_with_logits_backward",
    "smooth_l1_loss",
    "smooth_l1_loss_backward",
]

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


def _elementwise_grad(xp, grad_output, shape, reduction: str):
    """The upstream gradient of each element of an elementwise loss of ``shape``.

    ``"none"``: ``grad_output`` itself (``shape``); ``"sum"``: the scalar for every element;
    ``"mean"``: the scalar divided by the number of elements.
    """
    if reduction == "none":
        if tuple(grad_output.shape) != tuple(shape):
            raise ValueError(
                f"grad_output has shape {tuple(grad_output.shape)}; reduction='none' needs the loss's shape {tuple(shape)}"
            )
        return grad_output
    g = xp.asarray(grad_output)
    if g.size != 1:
        raise ValueError(
            f"grad_output must be a scalar for reduction={reduction!r}, got shape {tuple(g.shape)}"
        )
    g = g.reshape(())
    if reduction == "sum":
        return g
    n = 1
    for size in shape:
        n *= size
    return g / n


def _unbroadcast(grad, shape):
    """Sum ``grad`` over the axes along which an input of ``shape`` was broadcast (the input's gradient)."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    extra = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(extra))) if extra > 0 else grad
    axes = tuple(i for i, size in enumerate(shape) if size == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


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


def cross_entropy_backward(grad_output, logits, labels, ignore_index: int = -100, reduction: str = "mean"):
    """Backward of `cross_entropy`: ``dlogits_i = g_i * (softmax(logits_i) - onehot(label_i))``.

    ``g_i`` is each item's share of the upstream gradient: ``grad_output`` for ``"sum"``,
    ``grad_output / count`` for ``"mean"`` (``count`` = items not ignored), ``grad_output[i]``
    for ``"none"``; 0 where ``label_i == ignore_index``. When every label is ignored, torch's
    ``"mean"`` loss is NaN (0 / 0) but its gradient is all zeros (no item takes a share), and
    so is this one.

    Args:
        grad_output: ``dL/dloss``: a scalar (0-d) for ``"mean"`` / ``"sum"``; ``[N]`` for
            ``"none"``.
        logits: ``[N, C]`` (or ``[..., C]``), as in the forward.
        labels: integer, ``N`` items, as in the forward.
        ignore_index: the label value that is skipped.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``, as in the forward.

    Returns:
        ``dL/dlogits``, ``logits``' shape and dtype.

    Raises:
        ValueError: as the forward (labels out of range, size mismatch), or ``grad_output`` of
            the wrong shape.
    """
    xp = get_namespace(grad_output, logits, labels)
    _check_reduction(reduction)
    num_classes = logits.shape[-1]
    check_index_range(labels, num_classes, "labels", ignore_index=ignore_index)
    flat = logits.reshape(-1, num_classes)  # [N, C]
    labels = labels.reshape(-1)  # [N]
    n = flat.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} items but logits has {n} rows")
    keep = labels != ignore_index  # [N]
    # each item's share of the upstream gradient: [N]
    if reduction == "none":
        g = _elementwise_grad(xp, grad_output.reshape(-1), (n,), "none")
    else:
        g = _elementwise_grad(xp, grad_output, (), "sum")  # the scalar
        if reduction == "mean":
            count = int(keep.sum())
            g = g / count if count else g * 0.0  # all ignored: no item takes a share (torch)
        g = xp.broadcast_to(g, (n,))
    g = xp.where(keep, g, 0.0).astype(logits.dtype, copy=False)  # [N]
    # softmax(logits) - onehot(label): [N, C]
    p = flat - flat.max(axis=-1, keepdims=True)
    xp.exp(p, out=p)
    p /= p.sum(axis=-1, keepdims=True)
    rows = xp.arange(n)
    p[rows, xp.where(keep, labels, 0)] -= 1.0
    # times each item's share: [N, C] -> logits' shape
    p *= g[:, None]
    return p.reshape(logits.shape)


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


def mse_loss_backward(grad_output, input, target, reduction: str = "mean"):
    """Backward of `mse_loss`: ``dinput = (2 / N) * (input - target) * g`` (``N`` = elements for
    ``"mean"``, 1 otherwise), as torch's ``mse_loss_backward``.

    Args:
        grad_output: ``dL/dloss``: a scalar (0-d) for ``"mean"`` / ``"sum"``; the loss's
            shape for ``"none"``.
        input, target: float arrays of the same shape, as in the forward (if they broadcast
            against each other, the input's gradient is summed back to its shape).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        ``dL/dinput``, ``input``'s shape.
    """
    xp = get_namespace(grad_output, input, target)
    _check_reduction(reduction)
    d = input - target  # [...] (the broadcast shape)
    g = _elementwise_grad(xp, grad_output, d.shape, reduction)
    d *= 2.0
    d *= g
    return _unbroadcast(d, input.shape)


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


def bce_with_logits_backward(grad_output, logits, targets, reduction: str = "mean"):
    """Backward of `bce_with_logits`: ``dlogits = (sigmoid(x) - t) * g`` (divided by the number of
    elements for ``"mean"``), as torch's ``binary_cross_entropy_with_logits_backward``.

    Args:
        grad_output: ``dL/dloss``: a scalar (0-d) for ``"mean"`` / ``"sum"``; the loss's
            shape for ``"none"``.
        logits, targets: float arrays of the same shape, as in the forward.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        ``dL/dlogits``, ``logits``' shape.
    """
    xp = get_namespace(grad_output, logits, targets)
    _check_reduction(reduction)
    d = sigmoid(logits) - targets  # [...]
    d *= _elementwise_grad(xp, grad_output, d.shape, reduction)
    return _unbroadcast(d, logits.shape)


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


def smooth_l1_loss_backward(grad_output, input, target, beta: float = 1.0, reduction: str = "none"):
    """Backward of `smooth_l1_loss`, with ``z = input - target``:
    ``dinput = g * z / beta`` where ``|z| < beta``, else ``g * sign(z)``.

    At ``|z| = beta`` both branches give ``sign(z)``, so the switch point is smooth, as in
    torch. ``beta = 0`` is the L1 loss, whose gradient is ``sign(z)`` with ``sign(0) = 0``
    (torch's ``l1_loss``, which ``smooth_l1_loss`` calls for ``beta = 0``).

    Args:
        grad_output: ``dL/dloss``: the loss's shape for ``"none"`` (the default); a scalar
            (0-d) for ``"mean"`` / ``"sum"``.
        input, target: float arrays of the same shape, as in the forward.
        beta: the switch point, as in the forward.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
        ``dL/dinput``, ``input``'s shape.
    """
    xp = get_namespace(grad_output, input, target)
    _check_reduction(reduction)
    beta = float(beta)
    z = input - target  # [...]
    g = _elementwise_grad(xp, grad_output, z.shape, reduction)
    slope = xp.sign(z)  # the linear branch: [...]
    if beta > 0:
        slope = xp.where(xp.abs(z) < beta, z / beta, slope)  # the quadratic branch
    slope *= g
    return _unbroadcast(slope, input.shape)
