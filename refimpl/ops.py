"""The core operations, each as its formula: linear, layer_norm, softmax, embedding.

Every function takes its array namespace from its inputs (``backend.get_namespace``), so the
same code runs on NumPy and CuPy arrays. Weight layouts are transformers' (``Linear.weight`` is
``[out_features, in_features]``, and ``linear`` computes ``x W^T + b``).

Numerics follow PyTorch's CPU kernels (transformers 4.56.2 on torch): the same formulas in the
same order of operations wherever the order changes the rounding, and the same answers at the
edges (fully masked softmax rows, ``-0.0``, ``inf``). ``out=`` lets a fused op one level up
reuse a fresh buffer; the layer functions never use it.

Activations live in :mod:`refimpl.activations`, losses in :mod:`refimpl.losses`, and the
chunked, threaded kernels below these formulas in :mod:`refimpl._kernels`. The names of
both modules are re-exported here, so ``refimpl.ops`` is the one import for every op.
"""

from __future__ import annotations

from . import _fused, _kernels
from .activations import gelu, get_activation
from .backend import get_namespace, is_device_array
from .checks import check_index_range

__all__ = [
    "linear",
    "layer_norm",
    "add_layer_norm",
    "add_layer_norm_",
    "linear_act",
    "linear_act_plain",
    "softmax",
    "embedding",
    "check_index_range",
]


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
    lead = x.shape[:-1]
    y = _fused.matmul_wt(x.reshape(-1, x.shape[-1]), weight)  # [n, in] @ [in, out] -> [n, out]
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
    if (
        not is_device_array(x)
        and x.nbytes > 2 * _kernels.CHUNK_BYTES
        and (out is None or out.flags.c_contiguous)
    ):
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


def add_layer_norm(x, residual, weight, bias, eps: float):
    """``layer_norm(x + residual, weight, bias, eps)``: the residual add and the LayerNorm of
    BERT's output blocks, fused per cache-sized block of rows (each block is added and
    normalised while it is in cache). Bit-identical to its plain twin, the formula itself.

    Args:
        x: ``[..., d]`` (a block's projected output).
        residual: ``[..., d]`` (the block's input).
        weight, bias: ``[d]``.
        eps: added to the variance before the square root.

    Returns:
        ``[..., d]``, a new array (``x`` and ``residual`` are left as they are).
    """
    if is_device_array(x):  # one kernel per op on the GPU: the plain twin
        return layer_norm(x + residual, weight, bias, eps)
    return _fused.add_layer_norm(x, residual, weight, bias, eps)


def add_layer_norm_(x, residual, weight, bias, eps: float):
    """:func:`add_layer_norm` computed in the memory of ``x``, which it consumes (the trailing
    underscore is torch's mark of an in-place op): for a block whose projected output is fresh
    and not needed again (BERT's output blocks; the trace has already copied it), one array of
    ``x``'s size fewer. Bit-identical to the plain twin ``layer_norm(x + residual)``.

    Args:
        x: ``[..., d]``, C-contiguous; overwritten.
        residual: ``[..., d]``.
        weight, bias: ``[d]``.
        eps: added to the variance before the square root.

    Returns:
        ``x``, now ``layer_norm(x + residual)``.
    """
    if is_device_array(x):  # one kernel per op on the GPU
        x += residual
        return layer_norm(x, weight, bias, eps, out=x)
    return _fused.add_layer_norm(x, residual, weight, bias, eps, out=x)


def linear_act_plain(x, weight, bias, hidden_act: str):
    """``act(x W^T + b)`` as written: :func:`linear`, then the activation named ``hidden_act``
    (the plain twin of :func:`linear_act`).

    Args:
        x: ``[..., in_features]``.
        weight: ``[out_features, in_features]``; bias: ``[out_features]`` or ``None``.
        hidden_act: a name in :data:`refimpl.activations.ACT2FN`.

    Returns:
        ``[..., out_features]``.
    """
    return get_activation(hidden_act)(linear(x, weight, bias))


def linear_act(x, weight, bias, hidden_act: str):
    """``act(x W^T + b)``, with the exact GELU fused into the projection's output (the plain
    twin is :func:`linear_act_plain`).

    For the exact GELU (``hidden_act="gelu"``) on host arrays the bias and the GELU are applied per cache-sized
    block of rows, one contiguous range per host thread. float64 is bit-identical to the plain
    twin (the same 1e-15 erf); float32 is computed in float32 arithmetic, within
    ``1e-6 * max(1, |x|)`` of the exact GELU (torch's own float32 GELU is within 3.7e-7; see
    :func:`refimpl._fused.gelu_float32`). Other activations run the plain twin.

    Args:
        x: ``[..., in_features]``.
        weight: ``[out_features, in_features]``; bias: ``[out_features]`` or ``None``.
        hidden_act: a name in :data:`refimpl.activations.ACT2FN`.

    Returns:
        ``[..., out_features]``.
    """
    if get_activation(hidden_act) is not gelu or is_device_array(x):
        return linear_act_plain(x, weight, bias, hidden_act)
    return _fused.linear_gelu(x, weight, bias)


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
    if x.shape[axis] == 0:  # nothing to normalise (no keys): torch returns the empty input
        return x.copy() if out is None else out
    in_place_rows = out is x and axis in (-1, x.ndim - 1) and x.ndim > 1 and x.flags.c_contiguous
    if in_place_rows and not is_device_array(x) and x.nbytes > 2 * _kernels.CHUNK_BYTES:
        # a large host array in place: cache-sized blocks of rows over the host threads
        return _kernels.softmax_rows(xp, x, _softmax)
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


# The activations and losses, so that ``refimpl.ops`` is the one import for every op
# (``refimpl.ops.gelu``, ``refimpl.ops.cross_entropy``); each module's ``__all__`` lists them.
from .activations import *  # noqa: E402, F403
from .losses import *  # noqa: E402, F403
