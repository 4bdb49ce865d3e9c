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

import numpy as np

from .backend import get_namespace
from .switch import replaceable

__all__ = [
    "linear",
    "linear_backward",
    "layer_norm",
    "layer_norm_backward",
    "softmax",
    "softmax_backward",
    "embedding",
    "embedding_backward",
]


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


def linear_backward(grad_output, x, weight, bias=None):
    """Backward of `linear`: the gradients of ``y = x W^T + b`` with respect to ``x``, ``W`` and ``b``.

    With the leading axes flattened into ``n`` rows, as the forward does (``X`` is ``[n, in]``,
    ``dY`` is ``[n, out]``):

        dX = dY W          dW = dY^T X          db = sum over rows of dY

    Args:
        grad_output: ``dL/dy``, ``[..., out_features]``.
        x: the forward's input, ``[..., in_features]``.
        weight: ``[out_features, in_features]``.
        bias: the forward's bias ``[out_features]`` or ``None``; only whether it is ``None``
            matters (the gradient does not depend on its value).

    Returns:
        ``(dx [..., in_features], dweight [out_features, in_features], dbias [out_features] or None)``.
    """
    xp = get_namespace(grad_output, x, weight)
    n_out, n_in = weight.shape
    dy = grad_output.reshape(-1, n_out)  # [..., out] -> [n, out]
    x2 = x.reshape(-1, n_in)  # [..., in] -> [n, in]
    # dL/dx: [n, out] @ [out, in] -> [n, in] -> [..., in]
    dx = xp.matmul(dy, weight).reshape(x.shape)
    # dL/dW: [out, n] @ [n, in] -> [out, in]
    dweight = xp.matmul(dy.T, x2)
    # dL/db: [n, out] -> [out]
    dbias = None if bias is None else dy.sum(axis=0)
    return dx, dweight, dbias


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
def layer_norm_backward(grad_output, x, weight, bias, eps: float):
    """Backward of `layer_norm`: the gradients with respect to ``x``, ``weight`` and ``bias``.

    It takes the LayerNorm's *input* ``x`` and recomputes the row statistics with the forward's
    formulas (mean, then the biased variance of ``x - mean``), because the forward returns
    only the normalised output: the output cannot give them back (``x_hat = (y - b) / w``
    fails where a weight is 0, and ``rstd`` is gone), and two passes over ``[..., d]`` cost
    far less than keeping ``[..., 1]`` statistics beside every LayerNorm of the trace. With
    ``x_hat = (x - mean) * rstd``, ``rstd = 1 / sqrt(var + eps)`` and ``g = dy * weight``:

        dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))     (means over the last axis)
        dweight = sum over rows of dy * x_hat
        dbias = sum over rows of dy

    Args:
        grad_output: ``dL/dy``, ``[..., d]``.
        x: the forward's input, ``[..., d]``.
        weight: ``[d]``.
        bias: ``[d]`` (or ``None``): not needed for the gradient, taken so that the
            checkpoint's ``{"weight", "bias"}`` sub-dict splats in as for the forward.
        eps: the forward's ``eps``.

    Returns:
        ``(dx [..., d], dweight [d], dbias [d])``.
    """
    xp = get_namespace(grad_output, x, weight)
    eps = float(eps)
    d = x.shape[-1]
    # the forward's statistics, recomputed: [..., 1]
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean  # [..., d]
    var = (centered * centered).mean(axis=-1, keepdims=True)  # [..., 1], biased
    rstd = 1.0 / xp.sqrt(var + eps)  # [..., 1]
    x_hat = centered * rstd  # [..., d]
    # through the affine map: dL/dx_hat = dy * weight: [..., d]
    g = grad_output * weight
    # through the normalisation: [..., d]
    dx = g - g.mean(axis=-1, keepdims=True) - x_hat * (g * x_hat).mean(axis=-1, keepdims=True)
    dx *= rstd
    # parameters: [..., d] -> [d]
    dweight = (grad_output * x_hat).reshape(-1, d).sum(axis=0)
    dbias = grad_output.reshape(-1, d).sum(axis=0)
    return dx, dweight, dbias


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


@replaceable
def softmax_backward(grad_output, probs, axis: int = -1):
    """Backward of `softmax`, from its output ``P``: ``dS = P * (dP - sum(dP * P))``.

    The Jacobian of ``P = softmax(S)`` is ``diag(P) - P P^T`` per row, so
    ``dS_j = P_j (dP_j - sum_k dP_k P_k)``. A masked key (``P_j = 0``) gets no gradient; a
    fully masked row, uniform in the forward, gets the uniform row's gradient, as in torch
    (the additive mask passes the gradient through unchanged).

    Args:
        grad_output: ``dL/dP``, same shape as ``probs``.
        probs: the forward's output ``P``, any shape.
        axis: the axis the forward normalised over.

    Returns:
        ``dL/dS``, same shape as ``probs``.
    """
    # sum over the normalised axis of dP * P: [..., 1, ...]
    inner = (grad_output * probs).sum(axis=axis, keepdims=True)
    # [...]
    return probs * (grad_output - inner)


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


def embedding_backward(grad_output, ids, num_embeddings: int, padding_idx: int | None = None, dweight=None):
    """Backward of `embedding`: scatter-add each looked-up row's gradient into its table row.

    ``dW[i] = sum of dy[p] over the positions p with ids[p] == i``: rows looked up several
    times add up, rows never looked up stay 0. The row ``padding_idx`` gets no gradient from
    the lookup, as ``torch.nn.Embedding(padding_idx=...)``: LiLT's ``word_embeddings``,
    ``position_embeddings`` and ``layout_embeddings.box_position_embeddings`` use
    ``config.pad_token_id``; LXMERT's ``word_embeddings``, ``position_embeddings`` and
    ``token_type_embeddings`` use 0. LiLT's token-type, x/y/h/w and distance tables have none.

    Deterministic: each row's gradients are added in the order of their positions. On the host
    this is NumPy's ``add.at`` (sequential; for a 50k-row table its cost is dominated by
    zeroing the table); other namespaces (CuPy) use the same order with collision-free layers
    (`_scatter_add_rows`), without atomics, so the result is the same to the last bit.

    Args:
        grad_output: ``dL/dy``, ``[..., dim]``.
        ids: the forward's integer ids, ``[...]``.
        num_embeddings: rows of the table.
        padding_idx: the row that gets no gradient, or ``None``; negative counts from the end,
            as in torch.
        dweight: optional ``[num_embeddings, dim]`` buffer to accumulate into (a table used
            twice, or tied to another weight); its ``padding_idx`` row is left as it is.
            Default: a new zero table.

    Returns:
        ``dweight``, ``[num_embeddings, dim]`` in ``grad_output``'s dtype.

    Raises:
        ValueError: a ``padding_idx`` outside
            ``[-num_embeddings, num_embeddings - 1]``, or ``dweight`` of the wrong shape. The ids
            are not checked here: `check_inputs` validated them before the forward.
    """
    xp = get_namespace(grad_output, ids, dweight)
    dim = grad_output.shape[-1]
    if dweight is None:
        dweight = xp.zeros((num_embeddings, dim), dtype=grad_output.dtype)
    elif tuple(dweight.shape) != (num_embeddings, dim):
        raise ValueError(f"dweight has shape {tuple(dweight.shape)}, expected [{num_embeddings}, {dim}]")
    rows = ids.reshape(-1)  # [n]
    values = grad_output.reshape(-1, dim)  # [..., dim] -> [n, dim]
    if padding_idx is not None:
        if not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(
                f"padding_idx = {padding_idx} is outside [{-num_embeddings}, {num_embeddings - 1}]"
            )
        # the padding row gets nothing: drop its positions
        keep = xp.flatnonzero(rows != padding_idx % num_embeddings)  # [m]
        rows, values = rows[keep], values[keep]
    # dW[rows[p]] += values[p], repeats accumulated: [num_embeddings, dim]
    _scatter_add_rows(xp, dweight, rows, values)
    return dweight


def _scatter_add_rows(xp, table, rows, values):
    """``table[rows[p]] += values[p]`` for every ``p`` in order, repeated rows accumulated.

    NumPy: ``np.add.at``. Elsewhere (no ``add.at`` in every namespace, and a GPU's atomics
    would add in a varying order) the positions are grouped into layers by their occurrence
    number (the k-th time a row appears goes to layer k); within a layer every row appears at
    most once, so a plain fancy-index ``+=`` is exact, and layer by layer each row sums its
    values in position order, as ``add.at`` does.
    """
    if xp is np:
        np.add.at(table, rows, values)
        return
    n = rows.shape[0]
    if n == 0:
        return
    order = xp.argsort(rows, kind="stable")  # [n] positions, grouped by row, in position order
    sorted_rows = rows[order]
    # occurrence number of each position among those with the same row: [n]
    rank = xp.arange(n) - xp.searchsorted(sorted_rows, sorted_rows, side="left")
    by_rank = xp.argsort(rank, kind="stable")  # [n], layer 0 first
    bounds = xp.searchsorted(rank[by_rank], xp.arange(int(rank.max()) + 2), side="left")  # [layers + 1]
    bounds = [int(b) for b in bounds]
    for k in range(len(bounds) - 1):
        take = order[by_rank[bounds[k] : bounds[k + 1]]]  # positions whose row is new to this layer
        table[rows[take]] += values[take]


# The activations and losses, so that ``refimpl.ops`` is the one import for every op
# (``refimpl.ops.gelu``, ``refimpl.ops.cross_entropy``); each module's ``__all__`` lists them.
from .activations import *  # noqa: E402, F403
from .losses import *  # noqa: E402, F403
