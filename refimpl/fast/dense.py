"""Fast kernels for the dense ops: the linear GEMM, LayerNorm, and BERT's two fused blocks.

* [linear][refimpl.fast.dense.linear] replaces `refimpl.ops.linear`: one GEMM over the
  flattened rows (`matmul_wt`), the bias added in place. Equal up to the order in which BLAS
  sums each dot product: ``|fast - formula| <= 2 k u sum_i |x_i w_i|`` (``k`` input features,
  ``u`` the unit roundoff).
* [layer_norm][refimpl.fast.dense.layer_norm] replaces `refimpl.ops.layer_norm`: the formula
  per block of rows on the host threads. Bit-identical (every statistic is a reduction over
  one row).
* [layer_norm_backward][refimpl.fast.dense.layer_norm_backward] replaces
  `refimpl.ops.layer_norm_backward`: the formula per block of rows on the host threads, the
  blocks' shares of ``dweight`` and ``dbias`` added in row order. ``dx`` bit-identical;
  ``dweight``, ``dbias`` within ``n u sum_rows |term|`` of the formula's (the same column sums
  grouped by block), independent of the thread count.
* [add_and_norm][refimpl.fast.dense.add_and_norm] replaces `refimpl.bert.add_and_norm`: the
  GEMM, then ``+ residual`` and the LayerNorm formula per block of rows, in the GEMM's own
  output. Bit-identical to the formula (with this module's ``linear``).
* [intermediate][refimpl.fast.dense.intermediate] replaces `refimpl.bert.intermediate` for
  the exact GELU: the GEMM without bias, then ``+ bias`` and the GELU per block of rows, in
  the GEMM's own output. Float64: the GELU formula, bit-identical. Float32: `gelu_float32`,
  within ``GELU_FLOAT32_BOUND * max(1, |y|)`` of the exact GELU of ``y = dense(x)``.

The two fused blocks never hold the projection and its successor at once (one array of the
block's size less, as the in-place ops before them) and skip the ``dense`` tensor their
formulas record. On CuPy arrays each runs its formula (one GPU kernel per op).
"""

from __future__ import annotations

from .. import activations, bert, ops
from ..backend import get_namespace, is_device_array
from ..switch import kernel_for
from .blocks import BLOCK_BYTES, for_blocks
from .erf import gelu_float32_block

__all__ = [
    "FEW_ROWS",
    "matmul_wt",
    "linear",
    "layer_norm",
    "layer_norm_backward",
    "add_and_norm",
    "intermediate",
]

#: A float32 ``x @ weight.T`` with at most this many rows runs as ``(weight @ x.T).T``.
FEW_ROWS = 64


def matmul_wt(x, weight):
    """``x @ weight.T``, the GEMM of ``nn.Linear``, into a C-contiguous result.

    A checkpoint's ``[out, in]`` weight is row-major, so that product is BLAS's ``A @ B^T``
    case. For float32 with at most `FEW_ROWS` rows (short inputs: LXMERT's 20 tokens and 36
    boxes, a 64-token page), OpenBLAS's single-precision ``A @ B^T`` kernels run 25-45% below
    the ``W @ X^T`` case on AVX-512 (``docs/benchmarks.md``), so this computes
    ``(weight @ x.T).T`` and copies the small ``[n, out]`` result to row-major. Every output
    element is the same dot product either way; only BLAS's blocking of the sum may differ.
    Float64, more rows and device arrays take the plain product (float64 measured no gain;
    with many rows the copy costs more than the kernel gains, and holding the weights
    column-major instead would double the memory of a memory-mapped checkpoint).

    Args:
        x: ``[n, in]``.
        weight: ``[out, in]``.

    Returns:
        ``[n, out]``, C-contiguous.
    """
    xp = get_namespace(x, weight)
    if x.shape[0] <= FEW_ROWS and x.dtype == weight.dtype == xp.float32 and not is_device_array(x):
        return xp.ascontiguousarray(xp.matmul(weight, x.T).T)
    return xp.matmul(x, weight.T)


def _projection(x, weight):
    """``x @ weight.T`` on the flattened rows of ``x``: ``[..., in] -> [n, out]`` (a fresh array)."""
    return matmul_wt(x.reshape(-1, x.shape[-1]), weight)


@kernel_for(ops.linear)
def linear(x, weight, bias=None):
    """`refimpl.ops.linear` as one GEMM over the flattened rows, the bias added in place.

    Args:
        x: ``[..., in_features]``.
        weight: ``[out_features, in_features]``.
        bias: ``[out_features]`` or ``None``.

    Returns:
        ``[..., out_features]``.
    """
    y = _projection(x, weight)  # [n, out]
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def _normalize_rows(rows, out, weight, bias, eps: float, residual=None) -> None:
    """``out = layer_norm(rows [+ residual])`` per block of rows on the host threads (the
    formula on each block); ``out`` (2-D, like ``rows``) may be ``rows`` itself."""
    formula = ops.layer_norm.formula

    def block(start, stop):
        src = rows[start:stop] if residual is None else rows[start:stop] + residual[start:stop]
        out[start:stop] = formula(src, weight, bias, eps)

    for_blocks(block, rows.shape[0], rows.shape[1] * out.itemsize)


@kernel_for(ops.layer_norm)
def layer_norm(x, weight, bias, eps: float):
    """`refimpl.ops.layer_norm` per block of rows on the host threads (a small array in one go).

    Args:
        x: ``[..., d]``.
        weight, bias: ``[d]``.
        eps: added to the variance before the square root.

    Returns:
        ``[..., d]``.
    """
    if is_device_array(x) or x.nbytes <= 2 * BLOCK_BYTES:
        return ops.layer_norm.formula(x, weight, bias, eps)
    xp = get_namespace(x, weight, bias)
    d = x.shape[-1]
    out = xp.empty(x.shape, dtype=xp.result_type(x, weight, bias))
    _normalize_rows(x.reshape(-1, d), out.reshape(-1, d), weight, bias, eps)
    return out


@kernel_for(ops.layer_norm_backward)
def layer_norm_backward(grad_output, x, weight, bias, eps: float):
    """`refimpl.ops.layer_norm_backward` per block of rows on the host threads: the formula on
    each block gives its rows' ``dx`` and its share of ``dweight`` and ``dbias``; the shares are
    added in row order (a small array runs the formula whole).

    ``dx`` is bit-identical (every step is a reduction over one row). ``dweight`` and
    ``dbias`` are the same column sums grouped by block, so only their rounding differs:
    within ``n u sum_rows |term|`` of the formula's (``n`` rows, ``u`` the unit roundoff). The
    blocks do not depend on the thread count, so neither does the result.

    Args:
        grad_output: ``dL/dy``, ``[..., d]``.
        x: the forward's input, ``[..., d]``.
        weight, bias: ``[d]`` (``bias`` unused, as in the formula).
        eps: the forward's ``eps``.

    Returns:
        ``(dx [..., d], dweight [d], dbias [d])``.
    """
    formula = ops.layer_norm_backward.formula
    if is_device_array(x) or x.nbytes <= 2 * BLOCK_BYTES or grad_output.shape != x.shape:
        return formula(grad_output, x, weight, bias, eps)
    xp = get_namespace(grad_output, x, weight)
    d = x.shape[-1]
    dy, rows = grad_output.reshape(-1, d), x.reshape(-1, d)  # [n, d] views
    dx = xp.empty(rows.shape, dtype=xp.result_type(grad_output, x, weight))
    shares = {}  # block start -> (dweight, dbias) of its rows

    def block(start, stop):
        dx[start:stop], *shares[start] = formula(dy[start:stop], rows[start:stop], weight, bias, eps)

    for_blocks(block, rows.shape[0], d * dx.itemsize)
    ordered = [shares[start] for start in sorted(shares)]
    dweight, dbias = (sum(parts[1:], parts[0].copy()) for parts in zip(*ordered, strict=True))
    return dx.reshape(x.shape), dweight, dbias


@kernel_for(bert.add_and_norm)
def add_and_norm(hidden_states, input_tensor, *, dense, LayerNorm, layer_norm_eps: float):
    """`refimpl.bert.add_and_norm` in the projection's own memory: the GEMM, then
    ``layer_norm(h + input_tensor)`` per block of rows.

    Args:
        hidden_states: ``[batch, seq, in_features]``.
        input_tensor: the residual ``[batch, seq, features]``.
        dense: ``{"weight", "bias"}``; LayerNorm: ``{"weight", "bias"}``.
        layer_norm_eps: the LayerNorm's eps.

    Returns:
        ``[batch, seq, features]``.
    """
    if is_device_array(hidden_states):
        return bert.add_and_norm.formula(
            hidden_states, input_tensor, dense=dense, LayerNorm=LayerNorm, layer_norm_eps=layer_norm_eps
        )
    xp = get_namespace(hidden_states, input_tensor)
    h = linear(hidden_states, **dense)  # [b, s, f], fresh
    d = h.shape[-1]
    residual = xp.broadcast_to(input_tensor, h.shape).reshape(-1, d)  # a view unless broadcast
    rows = h.reshape(-1, d)
    _normalize_rows(rows, rows, LayerNorm["weight"], LayerNorm["bias"], layer_norm_eps, residual)
    return h


@kernel_for(bert.intermediate)
def intermediate(hidden_states, *, dense, hidden_act: str):
    """`refimpl.bert.intermediate` for the exact GELU in the projection's own memory: the GEMM
    without bias, then ``+ bias`` and the GELU per block of rows (float32: `gelu_float32`'s
    arithmetic). Other activations run the formula.

    Args:
        hidden_states: ``[batch, seq, features]``.
        dense: ``{"weight": [inner, features], "bias": [inner]}``.
        hidden_act: a name in `refimpl.activations.ACT2FN`.

    Returns:
        ``[batch, seq, inner]``.
    """
    weight, bias = dense["weight"], dense.get("bias")
    xp = get_namespace(hidden_states, weight, bias)
    dtype = xp.result_type(hidden_states, weight)
    if (
        activations.get_activation(hidden_act) is not activations.gelu
        or is_device_array(hidden_states)
        or dtype not in (xp.float32, xp.float64)
    ):
        return bert.intermediate.formula(hidden_states, dense=dense, hidden_act=hidden_act)
    y = _projection(hidden_states, weight)  # [n, inner], fresh

    def block(start, stop):
        rows = y[start:stop]
        if bias is not None:
            rows += bias  # the linear layer's bias, folded into the block
        if dtype == xp.float32:
            gelu_float32_block(xp, rows, rows, xp.empty((4, rows.size), dtype=xp.float32))
        else:
            rows[...] = activations.gelu.formula(rows)

    for_blocks(block, y.shape[0], y.shape[1] * y.itemsize)
    return y.reshape(*hidden_states.shape[:-1], weight.shape[0])
