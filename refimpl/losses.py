"""Losses with torch semantics (``torch.nn.functional``), as transformers' heads use them.

Each takes arrays and a ``reduction`` (``"mean"``, ``"sum"`` or ``"none"``) and returns a 0-d
array or the per-item losses, in the input's dtype.
"""

from __future__ import annotations

from .backend import get_namespace
from .checks import check_index_range

__all__ = ["cross_entropy", "mse_loss", "bce_with_logits", "smooth_l1_loss"]

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
