"""Private fused kernels: each one is a faster spelling of a plain composition of public ops.

Layer code reads like the paper (``gelu(linear(x, w, b))``, ``layer_norm(dense(x) + residual)``);
the functions here compute the same thing in fewer passes over memory, in cache-sized blocks
of rows, one contiguous range of rows per host thread (``backend.num_threads()``). Each
docstring names its plain twin, and ``tests/test_fused.py`` checks that they agree:

* :func:`matmul_wt` = ``x @ weight.T``: for a few float32 rows, computed as ``(weight @ x.T).T``
  (the same dot products; OpenBLAS's kernel for that case is faster at few rows).
* :func:`linear_gelu` = ``gelu(linear(x, weight, bias))``: float64 bit-identical (the same
  1e-15 erf); float32 is computed in float32 arithmetic by :func:`gelu_float32` (within
  :data:`GELU_FLOAT32_BOUND` of the exact GELU, torch's own float32 kernel is within 1.2e-6).
* :func:`add_layer_norm` = ``layer_norm(x + bias + residual)``: bit-identical in both dtypes.
* :func:`linear_add_layer_norm` = ``layer_norm(linear(x, weight, bias) + residual)``: bit-identical.
* :func:`masked_softmax` = ``softmax(scores + additive_mask)``: bit-identical; an all-zero
  mask is skipped and the sum is done in place, block by block.
* :func:`attention_context` = ``merge_heads(probs @ value)``: the batched matmul writes
  straight into the merged ``[batch, q_len, heads * head_size]`` layout (no transpose copy).

Everything goes through ``backend.get_namespace``; on device (CuPy) arrays each function is
its plain twin (the GPU runs one kernel per op and needs no blocking).
"""

from __future__ import annotations

import math

from . import _kernels
from .backend import get_namespace, host_map, is_device_array, num_threads

__all__ = [
    "GELU_FLOAT32_BOUND",
    "gelu_float32",
    "linear_gelu",
    "layer_norm_rows",
    "add_layer_norm",
    "linear_add_layer_norm",
    "masked_softmax",
    "attention_context",
    "matmul_wt",
]

#: Bytes of one block of rows: big enough that the ~30 ufunc calls of a float32 GELU block
#: outweigh the GIL hand-over between two host threads, small enough that the block and its
#: temporaries stay in L2.
BLOCK_BYTES = 1 << 19


def _row_blocks(fn, n_rows: int, row_bytes: int, block_bytes: int = BLOCK_BYTES) -> None:
    """Call ``fn(start, stop)`` on blocks of about ``block_bytes`` covering ``range(n_rows)``.

    The rows are split into one contiguous range per host thread (fewer when there are
    fewer blocks than threads); each thread walks its range block by block, so a thread's
    blocks stay on one core and its scratch memory is reused.
    """
    per_block = max(1, block_bytes // max(1, row_bytes))
    n_blocks = -(-n_rows // per_block)
    parts = max(1, min(num_threads(), n_blocks))
    # contiguous ranges of whole blocks, as even as possible
    bounds = [min(n_rows, (n_blocks * p // parts) * per_block) for p in range(parts + 1)]

    def run(p):
        for start in range(bounds[p], bounds[p + 1], per_block):
            fn(start, min(start + per_block, bounds[p + 1]))

    host_map(run, range(parts))


# --------------------------------------------------------------------------------------------
# x @ weight.T
# --------------------------------------------------------------------------------------------

#: A float32 ``x @ weight.T`` with at most this many rows runs as ``(weight @ x.T).T``.
FEW_ROWS = 64


def matmul_wt(x, weight):
    """``x @ weight.T``, the GEMM of ``nn.Linear``, into a C-contiguous result.

    Plain twin: ``x @ weight.T``. A checkpoint's ``[out, in]`` weight is row-major, so that
    product is BLAS's ``A @ B^T`` case. For float32 with at most :data:`FEW_ROWS` rows
    (short inputs: LXMERT's 20 tokens and 36 boxes, a 64-token page), OpenBLAS's
    single-precision ``A @ B^T`` kernels run 25-45% below the ``W @ X^T`` case on AVX-512
    (``docs/benchmarks.md``), so this computes ``(weight @ x.T).T`` and copies the small
    ``[n, out]`` result to row-major. Every output element is the same dot product either way;
    only BLAS's blocking of the sum may differ. Float64, more rows and device arrays take
    the plain product (float64 measured no gain; with many rows the copy costs more than the
    kernel gains, and holding the weights column-major instead would double the memory of a
    memory-mapped checkpoint).

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


# --------------------------------------------------------------------------------------------
# GELU in float32 arithmetic
# --------------------------------------------------------------------------------------------
#
# GELU(x) = x/2 * (1 + erf(x / sqrt(2))). erf is Eigen's float rational (the one ops.erf uses
# for float32, there evaluated in float64): erf(z) = z * alpha(z^2) / beta(z^2) on
# z = clip(x / sqrt(2), -4, 4). Here every step is float32, so the polynomial evaluation adds
# rounding on top of the approximation's own 6.5e-8. The bound below is first-principles:
# Horner on alpha (7 terms) and beta (5 terms) with |u| <= 16 gives a relative error of at most
# about (2*7 + 2*5 + 3) * 2^-24 = 1.6e-6 in erf, hence <= 0.8e-6 in Phi = (1 + erf) / 2 plus
# 2^-24 for the sum, times |x|, plus 2^-24 * |x| for the final product:
# |gelu_float32(x) - GELU(x)| <= 1e-6 * max(1, |x|) (measured: 2.6e-7 * max(1, |x|) on a
# 1e-5 grid over [-12, 12] and 5e5 random values; torch's float32 GELU: 3.7e-7).

#: ``|gelu_float32(x) - GELU(x)| <= GELU_FLOAT32_BOUND * max(1, |x|)`` (see the comment above).
GELU_FLOAT32_BOUND = 1e-6

_SQRT1_2 = math.sqrt(0.5)
# Eigen's generic_fast_erf_float, highest degree first (the constants refimpl.ops.erf uses for float32).
_ALPHA, _BETA = _kernels.EIGEN_ALPHA, _kernels.EIGEN_BETA


def _horner(xp, u, coefs, out):
    """``out = c0 * u^(n-1) + ... + c_(n-1)`` in ``u``'s dtype (Python floats never upcast)."""
    xp.multiply(u, coefs[0], out=out)
    out += coefs[1]
    for c in coefs[2:]:
        out *= u
        out += c
    return out


def _gelu_float32_block(xp, x, out, scratch):
    """GELU of a float32 block ``x`` into ``out`` (may be ``x``); ``scratch`` is ``[4, >= x.size]``
    float32 memory for the temporaries."""
    t, u, num, den = (s[: x.size].reshape(x.shape) for s in scratch)
    xp.multiply(x, _SQRT1_2, out=t)  # z = x / sqrt(2)
    xp.clip(t, -4.0, 4.0, out=t)  # erf(4) rounds to 1 in float32; nan stays nan
    xp.multiply(t, t, out=u)  # z^2
    _horner(xp, u, _ALPHA, num)
    num *= t
    _horner(xp, u, _BETA, den)
    num /= den  # erf(z)
    num += 1.0
    xp.multiply(x, 0.5, out=out)  # x is not read again, so out may be x
    out *= num  # (x / 2) * (1 + erf(z))


def gelu_float32(x, out=None):
    """Exact-form GELU ``x/2 * (1 + erf(x / sqrt(2)))`` for float32, in float32 arithmetic.

    Plain twin: :func:`refimpl.ops.gelu`, which evaluates the float32 erf in float64 (within
    2e-7 of the exact GELU, about 1.7 times slower on AVX-512). This one is within
    ``GELU_FLOAT32_BOUND * max(1, |x|)`` of the exact GELU (measured 2.6e-7; torch's float32
    kernel 3.7e-7).

    Args:
        x: float32 array of any shape.
        out: optional float32 array of ``x``'s shape (may be ``x``; C-contiguous).

    Returns:
        float32, same shape as ``x``.

    Raises:
        ValueError: ``x`` is not float32, or ``out`` does not match it.
    """
    xp = get_namespace(x, out)
    if x.dtype != xp.float32:
        raise ValueError(f"gelu_float32 needs a float32 x, got dtype {x.dtype}")
    if out is None:
        out = xp.empty(x.shape, dtype=x.dtype)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous float32 array of shape {x.shape}, got {out.shape} {out.dtype}"
        )
    if is_device_array(x):
        from .ops import gelu  # the GPU's erf kernel is exact and fast

        return gelu(x, out=out)
    flat_x = xp.ascontiguousarray(x).reshape(-1)  # [n]
    flat_out = out.reshape(-1)  # [n], may alias flat_x
    step = BLOCK_BYTES // flat_x.itemsize  # elements per block

    def chunk(i):  # elements [i * step, (i + 1) * step)
        lo, hi = i * step, min((i + 1) * step, flat_x.shape[0])
        _gelu_float32_block(xp, flat_x[lo:hi], flat_out[lo:hi], xp.empty((4, hi - lo), dtype=flat_x.dtype))

    _row_blocks(lambda start, stop: [chunk(i) for i in range(start, stop)], -(-flat_x.shape[0] // step), 1, 1)
    return out


def _gelu_rows(xp, y, bias):
    """``y = gelu_float32(y + bias)`` in place on the float32 2-D ``y``, per block of rows."""

    def rows(start, stop):
        block = y[start:stop]  # [r, width]
        if bias is not None:
            block += bias  # the linear layer's bias, folded into the block
        _gelu_float32_block(xp, block, block, xp.empty((4, block.size), dtype=block.dtype))

    _row_blocks(rows, y.shape[0], y.shape[1] * y.itemsize)


def linear_gelu(x, weight, bias=None):
    """``gelu(linear(x, weight, bias))``, with the bias folded into the GELU's blocks.

    Plain twin: ``refimpl.ops.gelu(refimpl.ops.linear(x, weight, bias))``. Float64 (and any
    device array) is computed exactly as the twin (bit-identical). Float32: one GEMM without
    bias, then per block of rows ``+ bias`` and :func:`gelu_float32` in float32 arithmetic
    (within ``GELU_FLOAT32_BOUND * max(1, |y|)`` of the exact GELU of ``y = linear(...)``).

    Args:
        x: ``[..., in_features]``.
        weight: ``[out_features, in_features]``.
        bias: ``[out_features]`` or ``None``.

    Returns:
        ``[..., out_features]``.
    """
    from .ops import gelu, linear

    xp = get_namespace(x, weight, bias)
    dtype = xp.result_type(x, weight)
    if dtype != xp.float32 or is_device_array(x):
        h = linear(x, weight, bias)  # fresh: the exact GELU in place on it, as the plain twin computes
        return gelu(h, out=h)
    lead = x.shape[:-1]
    y = matmul_wt(x.reshape(-1, x.shape[-1]), weight)  # [n, in] @ [in, out] -> [n, out]
    _gelu_rows(xp, y, bias)  # + bias, GELU, in place
    return y.reshape(*lead, weight.shape[0])  # [..., out]


# --------------------------------------------------------------------------------------------
# LayerNorm over blocks of rows, with the residual (and the dense layer's bias) folded in
# --------------------------------------------------------------------------------------------


def _layer_norm_block(xp, x, out, weight, bias, eps: float):
    """``refimpl.ops.layer_norm``'s arithmetic on the 2-D block ``x`` into ``out`` (may be ``x``),
    step for step."""
    mean = x.mean(axis=-1, keepdims=True)  # [r, 1]
    centered = xp.subtract(x, mean, out=out)  # [r, d]
    squares = centered * centered
    var = squares.mean(axis=-1, keepdims=True)  # [r, 1], biased
    var += eps
    rstd = xp.sqrt(var, out=var)
    xp.divide(1.0, rstd, out=rstd)
    centered *= rstd
    centered *= weight
    centered += bias


def layer_norm_rows(x, weight, bias, eps: float, out=None, *, add=()):
    """LayerNorm over the last axis of ``x + add[0] + add[1] + ...``, block by block of rows.

    Plain twin: ``refimpl.ops.layer_norm(x + a0 + a1 ..., weight, bias, eps)`` (the sums in that
    order): bit-identical, since every statistic is a reduction over one row.

    Args:
        x: ``[..., d]``.
        weight, bias: ``[d]``.
        eps: added to the variance.
        out: optional C-contiguous ``[..., d]`` array in ``x``'s dtype to write into (may be ``x``).
        add: arrays broadcastable to ``x`` (``[d]`` biases or ``[..., d]`` residuals), added
            in order before normalizing.

    Returns:
        ``[..., d]``.
    """
    xp = get_namespace(x, weight, bias, out, *add)
    eps = float(eps)
    d = x.shape[-1]
    if out is None:
        out = xp.empty(x.shape, dtype=xp.result_type(x, *add))
    elif out.shape != x.shape or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous array of shape {x.shape}, got {out.shape}")
    if is_device_array(x) or out.size == 0:
        src = x
        if add:
            src = xp.add(x, add[0], out=out)
            for a in add[1:]:
                src += a
        if out.size:
            _layer_norm_block(xp, src.reshape(-1, d), out.reshape(-1, d), weight, bias, eps)
        return out
    rows_out = out.reshape(-1, d)  # [r, d], a view
    rows_x = x.reshape(-1, d)
    # [d] terms broadcast over every row; any other shape is broadcast to x's and seen as rows
    rows_add = [a if a.ndim <= 1 else xp.broadcast_to(a, x.shape).reshape(-1, d) for a in add]

    def block(start, stop):
        y = rows_out[start:stop]  # [r, d]
        src = rows_x[start:stop]
        terms = [a[start:stop] if a.ndim == 2 else a for a in rows_add]
        if terms:
            src = xp.add(src, terms[0], out=y)
            for a in terms[1:]:
                src += a
        _layer_norm_block(xp, src, y, weight, bias, eps)

    _row_blocks(block, rows_out.shape[0], d * out.itemsize)
    return out


def add_layer_norm(x, residual, weight, bias, eps: float, *, x_bias=None, out=None):
    """``layer_norm(x + x_bias + residual)`` per block of rows (BERT's Add & Norm).

    Plain twin: ``h = x + x_bias; h += residual; refimpl.ops.layer_norm(h, weight, bias, eps)``
    (bit-identical).

    Args:
        x: ``[..., d]``, e.g. a dense layer's output without its bias.
        residual: ``[..., d]``.
        weight, bias: the LayerNorm's ``[d]``.
        eps: the LayerNorm's eps.
        x_bias: optional ``[d]`` added to ``x`` first (the dense layer's bias).
        out: optional ``[..., d]`` to write into (may be ``x``).

    Returns:
        ``[..., d]``.
    """
    add = (residual,) if x_bias is None else (x_bias, residual)
    return layer_norm_rows(x, weight, bias, eps, out=out, add=add)


def linear_add_layer_norm(x, weight, bias, residual, ln_weight, ln_bias, eps: float):
    """``layer_norm(linear(x, weight, bias) + residual)``: one GEMM, then bias + residual +
    LayerNorm per block of rows, in place on the GEMM's output.

    Plain twin: ``h = refimpl.ops.linear(x, weight, bias); h += residual;
    refimpl.ops.layer_norm(h, ln_weight, ln_bias, eps, out=h)`` (bit-identical).

    Args:
        x: ``[..., in_features]``.
        weight: ``[d, in_features]``; bias: ``[d]`` or ``None``.
        residual: ``[..., d]``.
        ln_weight, ln_bias: ``[d]``.
        eps: the LayerNorm's eps.

    Returns:
        ``[..., d]``.
    """
    lead = x.shape[:-1]
    y = matmul_wt(x.reshape(-1, x.shape[-1]), weight)  # [n, in] @ [in, d] -> [n, d]
    y = y.reshape(*lead, weight.shape[0])  # [..., d]
    return add_layer_norm(y, residual, ln_weight, ln_bias, eps, x_bias=bias, out=y)


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------


def _softmax_block(xp, x):
    """``refimpl.ops.softmax``'s arithmetic over the last axis, in place on ``x``."""
    row_max = x.max(axis=-1, keepdims=True)
    x -= row_max
    xp.exp(x, out=x)
    total = x.sum(axis=-1, keepdims=True)
    xp.divide(1.0, total, out=total)
    x *= total


def masked_softmax(scores, additive_mask=None, out=None):
    """``softmax(scores + additive_mask)`` over the last axis, into ``out`` (a fresh array by
    default; pass ``out=scores`` to work in place).

    Plain twin: ``refimpl.ops.softmax(scores + additive_mask, axis=-1)`` (bit-identical: an
    all-zero mask is skipped, and ``-0.0 + 0.0`` only changes a zero's sign, which ``exp``
    ignores). The mask is added and the softmax taken per block of ``[batch, heads]`` slabs,
    so each block is read from memory once and finished while it is in cache.

    Args:
        scores: ``[batch, heads, q_len, k_len]``.
        additive_mask: ``None`` or broadcastable to ``scores`` with its last two axes
            ``[1 or q_len, k_len]`` (see ``refimpl.attention.extended_attention_mask``).
        out: ``None`` or a C-contiguous array of ``scores``' shape and dtype (may be ``scores``).

    Returns:
        ``out``: the probabilities ``[batch, heads, q_len, k_len]``.
    """
    xp = get_namespace(scores, additive_mask)
    if additive_mask is not None and not bool(additive_mask.any()):
        additive_mask = None  # nothing masked (every key kept): skip the add
    if out is None:
        out = xp.empty(scores.shape, dtype=scores.dtype)
    if is_device_array(scores) or scores.ndim != 4 or not out.flags.c_contiguous or scores.size == 0:
        if additive_mask is not None:
            xp.add(scores, additive_mask, out=out)
        elif out is not scores:
            out[...] = scores
        if out.size:
            _softmax_block(xp, out)
        return out
    b, h, q, k = scores.shape
    slabs = out.reshape(b * h, q, k)  # [b * h, q, k], a view
    mask = None
    if additive_mask is not None:
        mask = additive_mask.reshape((1,) * (4 - additive_mask.ndim) + additive_mask.shape)  # 4-D

    def add_mask(start, stop):  # slabs [start, stop) = (batch, head) pairs in row-major order
        pos = start
        while pos < stop:  # at most three steps: a partial item, whole items, a partial item
            i, h0 = divmod(pos, h)
            h1 = min(stop - i * h, h)
            if h0 == 0 and h1 == h:  # whole batch items [i, j): one broadcast add
                j = stop // h
                xp.add(scores[i:j], mask[i:j] if mask.shape[0] > 1 else mask, out=out[i:j])
                pos = j * h
            else:
                m = mask[i if mask.shape[0] > 1 else 0]  # [1 or h, 1 or q, k]
                xp.add(scores[i, h0:h1], m[h0:h1] if m.shape[0] > 1 else m, out=out[i, h0:h1])
                pos = i * h + h1

    def block(start, stop):
        if mask is not None:
            add_mask(start, stop)
        elif out is not scores:
            slabs[start:stop] = scores.reshape(b * h, q, k)[start:stop]
        _softmax_block(xp, slabs[start:stop])

    _row_blocks(block, b * h, q * k * scores.itemsize)
    return out


def attention_context(probs, value, out=None):
    """``probs @ value`` with the heads merged: ``[b, n, q, r] @ [b, n, r, d] -> [b, q, n*d]``.

    Plain twin: ``refimpl.attention.merge_heads(probs @ value)``. The batched matmul writes
    straight into a ``[b, n, q, d]`` view of the merged ``[b, q, n * d]`` array (``out=``), so
    there is no transpose copy afterwards.

    Args:
        probs: ``[batch, heads, q_len, k_len]``.
        value: ``[batch, heads, k_len, head_size]``.
        out: optional C-contiguous ``[batch, q_len, heads * head_size]`` to write into.

    Returns:
        ``[batch, q_len, heads * head_size]``.
    """
    xp = get_namespace(probs, value, out)
    b, n, q, _ = probs.shape
    d = value.shape[-1]
    if is_device_array(probs) and out is None:  # one kernel per op on the GPU: the plain twin
        return xp.matmul(probs, value).transpose(0, 2, 1, 3).reshape(b, q, n * d)
    if out is None:
        out = xp.empty((b, q, n * d), dtype=xp.result_type(probs, value))
    view = out.reshape(b, q, n, d).transpose(0, 2, 1, 3)  # [b, n, q, d], strided view of out
    xp.matmul(probs, value, out=view)
    return out
