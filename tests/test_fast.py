"""Every fast kernel against the formula it replaces, and the switch between them.

Each kernel in ``refimpl.fast`` is checked against its op's formula (``op.formula``): bit for
bit where its module says so, else within the bound its module states, derived from first
principles (dot products summed in another order, a cheaper erf). A composite kernel is
compared with its formula evaluated in the fast mode, so its parts are the same kernels.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from _strict import strict_namespace, unwrap_tree, wrap_tree

from refimpl import activations, attention, backend, bert, bi_acm, ops, switch, trace
from refimpl.fast import attention as fast_attention
from refimpl.fast import blocks, dense, erf

DTYPES = [np.float32, np.float64]
U = {np.float32: 2.0**-24, np.float64: 2.0**-53}  # unit roundoff

#: every kernel and the test below that checks it against its formula
COVERED = {
    ops.linear: "test_linear",
    ops.layer_norm: "test_layer_norm_in_blocks",
    ops.softmax: "test_softmax_in_blocks",
    activations.erf: "test_erf",
    activations.gelu: "test_gelu",
    activations.gelu_backward: "test_gelu_backward",
    attention.attention_probs: "test_attention_probs",
    attention.attention_context: "test_attention_context",
    bi_acm.bi_acm_scores: "test_bi_acm_scores",
    bi_acm.bi_acm_contexts: "test_bi_acm_contexts",
    attention.scaled_dot_product_attention: "test_scaled_dot_product_attention",
    bi_acm.bi_acm_attention: "test_bi_acm_attention",
    bert.add_and_norm: "test_add_and_norm",
    bert.intermediate: "test_intermediate",
    ops.layer_norm_backward: "test_layer_norm_backward_in_blocks",
    ops.softmax_backward: "test_softmax_backward_in_blocks",
}


@pytest.fixture(autouse=True)
def fast_mode():
    """The formulas are evaluated with the fast kernels of their parts (also under REFIMPL_REFERENCE=1)."""
    with switch.fast():
        yield


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    backend.set_num_threads(request.param)
    yield request.param
    backend.set_num_threads(None)


def rand(seed, shape, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def exact_gelu(x):
    x64 = x.astype(np.float64)
    return x64 * 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x64 / math.sqrt(2.0)))


def test_every_kernel_is_checked_here_and_declares_its_op():
    kernels = switch.kernels()
    assert set(kernels) == set(COVERED), "a kernel without a test against its formula"
    for op, kernel in kernels.items():
        assert kernel.replaces is op and kernel.__name__ == op.__name__  # the same name, one level down
        assert kernel.__module__.startswith("refimpl.fast.") and globals()[COVERED[op]]


# --------------------------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 20, dense.FEW_ROWS, dense.FEW_ROWS + 1, 300])
def test_linear(rows, dtype):
    x, w, b = rand(0, (rows, 96), dtype), rand(1, (160, 96), dtype), rand(2, 160, dtype)
    got = dense.linear(x, w, b)
    want = ops.linear.formula(x, w, b)
    assert got.shape == want.shape == (rows, 160) and got.dtype == dtype and got.flags.c_contiguous
    # the same dot products summed in BLAS's order: each within k u sum|x_i w_i| of the exact one
    bound = 2 * (96 + 1) * U[dtype] * (np.abs(x).astype(np.float64) @ np.abs(w).T + np.abs(b))
    assert np.all(np.abs(got.astype(np.float64) - want) <= bound)
    x3 = x.reshape(1, rows, 96)  # leading axes are flattened into one GEMM
    np.testing.assert_array_equal(dense.linear(x3, w, b), got.reshape(1, rows, 160))
    np.testing.assert_array_equal(dense.linear(x, w), dense.matmul_wt(x, w))


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_in_blocks(threads, dtype):
    x = rand(10, (2, 400, 768), dtype, 3.0)  # > 1 MiB: several blocks
    g, b = 1 + 0.1 * rand(11, 768, dtype), rand(12, 768, dtype)
    assert x.nbytes > 2 * blocks.BLOCK_BYTES
    np.testing.assert_array_equal(dense.layer_norm(x, g, b, 1e-5), ops.layer_norm.formula(x, g, b, 1e-5))
    small = x[:, :3]  # one block, not contiguous
    np.testing.assert_array_equal(
        dense.layer_norm(small, g, b, 1e-5), ops.layer_norm.formula(small, g, b, 1e-5)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_backward_in_blocks(threads, dtype):
    x, dy = rand(40, (2, 400, 768), dtype, 3.0), rand(41, (2, 400, 768), dtype)  # several blocks
    g, b = 1 + 0.1 * rand(42, 768, dtype), rand(43, 768, dtype)
    assert x.nbytes > 2 * blocks.BLOCK_BYTES
    got = dense.layer_norm_backward(dy, x, g, b, 1e-5)
    want = ops.layer_norm_backward.formula(dy, x, g, b, 1e-5)
    assert [a.dtype for a in got] == [dtype] * 3 and [a.shape for a in got] == [a.shape for a in want]
    np.testing.assert_array_equal(got[0], want[0])  # dx: row by row, bit for bit
    # dweight, dbias: the same column sums grouped by block, each within n u sum|term| of the
    # formula's (both are sums of the same n = 800 terms, each within that of the exact sum)
    x64 = x.astype(np.float64).reshape(-1, 768)
    x_hat = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    terms = {1: np.abs(dy.reshape(-1, 768) * x_hat), 2: np.abs(dy.reshape(-1, 768)).astype(np.float64)}
    for i, t in terms.items():
        bound = 2 * (800 + 4) * U[dtype] * t.sum(axis=0)
        assert np.all(np.abs(got[i].astype(np.float64) - want[i]) <= bound)
        assert not np.array_equal(got[i], np.zeros_like(got[i]))
    # the result does not depend on the thread count
    backend.set_num_threads(3 - threads)
    try:
        for a, c in zip(dense.layer_norm_backward(dy, x, g, b, 1e-5), got, strict=True):
            np.testing.assert_array_equal(a, c)
    finally:
        backend.set_num_threads(threads)
    small = (dy[:, :3], x[:, :3])  # one block: the formula
    for a, c in zip(
        dense.layer_norm_backward(*small, g, b, 1e-5),
        ops.layer_norm_backward.formula(*small, g, b, 1e-5),
        strict=True,
    ):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_and_norm(threads, dtype):
    x, res = rand(13, (2, 300, 512), dtype), rand(14, (2, 300, 768), dtype)  # several row blocks
    w = {"weight": rand(15, (768, 512), dtype, 0.05), "bias": rand(16, 768, dtype)}
    ln = {"weight": 1 + 0.1 * rand(17, 768, dtype), "bias": rand(18, 768, dtype)}
    x0, res0 = x.copy(), res.copy()
    got = dense.add_and_norm(x, res, dense=w, LayerNorm=ln, layer_norm_eps=1e-12)
    want = bert.add_and_norm.formula(x, res, dense=w, LayerNorm=ln, layer_norm_eps=1e-12)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(x, x0)  # the inputs are left as they are
    np.testing.assert_array_equal(res, res0)
    shared = res[:1]  # one residual broadcast over the batch
    np.testing.assert_array_equal(
        dense.add_and_norm(x, shared, dense=w, LayerNorm=ln, layer_norm_eps=1e-5),
        bert.add_and_norm.formula(x, shared, dense=w, LayerNorm=ln, layer_norm_eps=1e-5),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_intermediate(threads, dtype):
    x = rand(2, (3, 70, 96), dtype)
    w = {"weight": rand(3, (384, 96), dtype, 0.3), "bias": rand(4, 384, dtype)}
    got = dense.intermediate(x, dense=w, hidden_act="gelu")
    plain = bert.intermediate.formula(x, dense=w, hidden_act="gelu")
    assert got.shape == (3, 70, 384) and got.dtype == dtype
    if dtype == np.float64:
        np.testing.assert_array_equal(got, plain)  # the same erf, bit for bit
    else:  # float32 arithmetic: within the bound of the exact GELU of the same projection
        y = dense.linear(x, **w)
        bound = erf.GELU_FLOAT32_BOUND * np.maximum(1.0, np.abs(y.astype(np.float64)))
        assert np.all(np.abs(got - exact_gelu(y)) <= bound)
    # other activations run the formula
    relu = dense.intermediate(x, dense=w, hidden_act="relu")
    np.testing.assert_array_equal(relu, bert.intermediate.formula(x, dense=w, hidden_act="relu"))


# --------------------------------------------------------------------------------------------
# erf and GELU
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_erf(threads, dtype):
    x = np.concatenate(
        [np.linspace(-7, 7, 300_001), [0.84375, -0.84375, 6.0, np.inf, -np.inf, -0.0, 1e-30]]
    ).astype(dtype)
    with np.errstate(invalid="ignore"):
        got, want = erf.erf(x), activations.erf.formula(x)
    assert got.dtype == dtype and got.shape == x.shape
    if dtype == np.float64:
        np.testing.assert_array_equal(got, want)  # the formula, chunk by chunk
    else:
        assert np.abs(got.astype(np.float64) - want).max() <= erf.ERF_FLOAT32_BOUND
    assert got[-4] == 1.0 and got[-3] == -1.0 and got[-2] == 0.0 and np.signbit(got[-2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu(threads, dtype):
    x = rand(5, (64, 3072), dtype, 3.0)  # several chunks
    got, want = erf.gelu(x), activations.gelu.formula(x)
    if dtype == np.float64:
        np.testing.assert_array_equal(got, want)
    else:  # the erf's difference, times |x| / 2, and two roundings of the product
        bound = (erf.ERF_FLOAT32_BOUND / 2 + 2.0**-22) * np.abs(x.astype(np.float64))
        assert np.all(np.abs(got.astype(np.float64) - want) <= bound)


def exact_gelu_grad(dy, x):
    x64 = x.astype(np.float64)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x64 / math.sqrt(2.0)))
    return dy.astype(np.float64) * (cdf + x64 * np.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_backward(threads, dtype):
    x = rand(6, (64, 3072), dtype, 3.0)  # several blocks
    dy = rand(7, (64, 3072), dtype)
    got = erf.gelu_backward(dy, x)
    assert got.dtype == dtype and got.shape == x.shape
    if dtype == np.float64:
        np.testing.assert_array_equal(got, activations.gelu_backward.formula(dy, x))  # per block, bit for bit
    else:  # float32 arithmetic: within its bound of the exact gradient, on random values and a grid
        grid = np.linspace(-14, 14, 200_001, dtype=np.float32)
        ones = np.ones_like(grid)
        assert np.all(np.abs(got - exact_gelu_grad(dy, x)) <= erf.GELU_BACKWARD_FLOAT32_BOUND * np.abs(dy))
        assert (
            np.abs(erf.gelu_backward(ones, grid) - exact_gelu_grad(ones, grid)).max()
            <= erf.GELU_BACKWARD_FLOAT32_BOUND
        )
    view = x[:, :5].T  # not contiguous: the same values
    np.testing.assert_array_equal(erf.gelu_backward(dy[:, :5].T, view), got[:, :5].T)
    # broadcast shapes and the reference mode run the formula
    np.testing.assert_array_equal(
        erf.gelu_backward(dy[:1], x[:2]), activations.gelu_backward.formula(dy[:1], x[:2])
    )
    with switch.reference():
        np.testing.assert_array_equal(
            activations.gelu_backward(dy, x), activations.gelu_backward.formula(dy, x)
        )


def test_gelu_float32_within_its_bound_of_the_exact_gelu(threads):
    # a dense grid over the whole range where GELU is not exactly 0 or x, the clip point
    # 4 * sqrt(2), and random values; the bound is GELU_FLOAT32_BOUND * max(1, |x|)
    edge = np.float32(4 * math.sqrt(2))
    x = np.concatenate(
        [
            np.linspace(-14, 14, 400_001, dtype=np.float32),
            [edge, -edge, np.nextafter(edge, 0), 0.0, -0.0, 1e-30, -1e-30, 3e38, -3e38],
            rand(0, 200_000, np.float32, 3.0),
        ]
    ).astype(np.float32)
    got = erf.gelu_float32(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    err = np.abs(got.astype(np.float64) - exact_gelu(x)) / np.maximum(1.0, np.abs(x.astype(np.float64)))
    assert err.max() <= erf.GELU_FLOAT32_BOUND, (err.max(), x[err.argmax()])
    # special values as the exact GELU: gelu(+inf) = inf, nan stays nan, -0.0 keeps its sign
    with np.errstate(invalid="ignore"):
        special = erf.gelu_float32(np.array([np.inf, np.nan, -0.0], np.float32))
    assert special[0] == np.inf and np.isnan(special[1]) and np.signbit(special[2])
    np.testing.assert_array_equal(erf.gelu_float32(x[:99].reshape(9, 11).T), got[:99].reshape(9, 11).T)


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------


def _mask(seed, shape, dtype, masked=True):
    keep = np.random.default_rng(seed).random(shape) > (0.3 if masked else -1.0)
    if masked:
        keep[0, ..., :] = False  # a fully masked row: uniform, as the oracle
    return ((1.0 - keep.astype(dtype)) * np.finfo(dtype).min).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_in_blocks(threads, dtype):
    x = rand(6, (2, 3, 300, 257), dtype, 4.0)
    x[0, 1, 5] = np.finfo(dtype).min
    np.testing.assert_array_equal(fast_attention.softmax(x), ops.softmax.formula(x))
    np.testing.assert_array_equal(fast_attention.softmax(x, axis=1), ops.softmax.formula(x, axis=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_backward_in_blocks(threads, dtype):
    p = ops.softmax.formula(rand(44, (2, 3, 300, 257), dtype, 4.0))
    p[0, 1, 5] = 0.0  # masked keys: no gradient
    dp = rand(45, p.shape, dtype)
    assert p.nbytes > 2 * blocks.BLOCK_BYTES
    got = fast_attention.softmax_backward(dp, p)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, ops.softmax_backward.formula(dp, p))
    np.testing.assert_array_equal(got[0, 1, 5], 0.0)
    for other in ((dp, p, 1), (dp[..., :7], p[..., :7])):  # another axis; not contiguous
        np.testing.assert_array_equal(
            fast_attention.softmax_backward(*other), ops.softmax_backward.formula(*other)
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, mask_shape",
    [
        ((3, 12, 20, 36), (3, 1, 1, 36)),
        ((2, 4, 200, 300), (2, 1, 200, 300)),
        ((5, 12, 64, 100), (1, 1, 1, 100)),  # blocks of slabs cross batch items; batch-broadcast mask
        ((5, 12, 64, 100), (5, 12, 64, 100)),  # a full mask, per head
    ],
)
@pytest.mark.parametrize("masked", [True, False])
def test_attention_probs(threads, dtype, shape, mask_shape, masked):
    scores = rand(19, shape, dtype, 4.0)
    mask = _mask(20, mask_shape, dtype, masked)
    assert bool(mask.any()) is masked  # an all-zero mask is skipped
    before = scores.copy()
    np.testing.assert_array_equal(
        fast_attention.attention_probs(scores, mask), attention.attention_probs.formula(scores, mask)
    )
    np.testing.assert_array_equal(scores, before)  # the scores are left as they are
    np.testing.assert_array_equal(
        fast_attention.attention_probs(scores), attention.attention_probs.formula(scores)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_context(threads, dtype):
    probs, value = rand(21, (3, 12, 20, 36), dtype), rand(22, (3, 12, 36, 64), dtype)
    got = fast_attention.attention_context(probs, value)
    assert got.shape == (3, 20, 768) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, attention.attention_context.formula(probs, value))


def _qkv(rng, b, n, s, d, r, dtype):
    q, k, v = (rng.standard_normal((b, n, s, d)).astype(dtype) for _ in range(3))
    lq, lk, lv = (rng.standard_normal((b, n, s, d // r)).astype(dtype) for _ in range(3))
    return q, k, v, lq, lk, lv


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d, r, relative", [(8, 2, False), (12, 4, True), (64, 4, False), (6, 1, True)])
def test_bi_acm_scores(dtype, d, r, relative):
    rng = np.random.default_rng(d + r)
    q, k, _, lq, lk, _ = _qkv(rng, 3, 12, 40, d, r, dtype)  # several blocks of heads
    rel = rng.standard_normal((3, 12, 40, 40)).astype(dtype) if relative else None
    got = fast_attention.bi_acm_scores(q, k, lq, lk, r, rel)
    np.testing.assert_array_equal(got, bi_acm.bi_acm_scores.formula(q, k, lq, lk, r, rel))
    big = _qkv(rng, 1, 2, 300, d, r, dtype)  # one slab larger than a block
    np.testing.assert_array_equal(
        fast_attention.bi_acm_scores(big[0], big[1], big[3], big[4], r),
        bi_acm.bi_acm_scores.formula(big[0], big[1], big[3], big[4], r),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_bi_acm_contexts(dtype):
    rng = np.random.default_rng(2)
    _, _, v, _, _, lv = _qkv(rng, 2, 3, 7, 8, 4, dtype)
    probs = ops.softmax(rng.standard_normal((2, 3, 7, 7)).astype(dtype))
    got = fast_attention.bi_acm_contexts(probs, v, lv)
    want = bi_acm.bi_acm_contexts.formula(probs, v, lv)
    for g, w, vv in zip(got, want, (v, lv), strict=True):  # the same dot products of 7 terms
        assert g.shape == w.shape and g.dtype == dtype
        size = attention.merge_heads(np.abs(probs).astype(np.float64) @ np.abs(vv))
        assert np.all(np.abs(g.astype(np.float64) - w) <= 2 * (7 + 1) * U[dtype] * size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_mask", [False, True])
@pytest.mark.parametrize("d", [16, 12])  # sqrt(d) a power of two (the queries are scaled) or not
def test_scaled_dot_product_attention(threads, dtype, head_mask, d):
    rng = np.random.default_rng(3)
    q, k, v, _, _, _ = _qkv(rng, 4, 12, 40, d, 1, dtype)
    mask = _mask(4, (4, 1, 1, 40), dtype)
    hm = rng.random((1, 12, 1, 1)).astype(dtype) if head_mask else None
    with switch.fast():
        got = fast_attention.scaled_dot_product_attention(q, k, v, mask, hm)
        want = attention.scaled_dot_product_attention.formula(q, k, v, mask, hm)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_mask, relative", [(False, False), (True, True)])
def test_bi_acm_attention(threads, dtype, head_mask, relative):
    rng = np.random.default_rng(5)
    qkv = _qkv(rng, 2, 12, 100, 16, 4, dtype)
    mask = _mask(6, (2, 1, 1, 100), dtype)
    hm = rng.random((1, 12, 1, 1)).astype(dtype) if head_mask else None
    rel = rng.standard_normal((2, 12, 100, 100)).astype(dtype) if relative else None
    args = (qkv[0], qkv[1], qkv[2], qkv[3], qkv[4], qkv[5], 4, mask, hm, rel)
    with switch.fast():
        got = fast_attention.bi_acm_attention(*args)
        want = bi_acm.bi_acm_attention.formula(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------------------------
# every kernel goes through the array-namespace dispatch (the CuPy path)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_dispatch(dtype):
    x, res = rand(23, (2, 5, 8), dtype), rand(24, (2, 5, 6), dtype)
    w, b, g = rand(25, (6, 8), dtype), rand(26, 6, dtype), 1 + rand(27, 6, dtype) * 0.1
    s, m = rand(28, (2, 3, 5, 5), dtype), np.zeros((2, 1, 1, 5), dtype)
    m[1, ..., 3:] = np.finfo(dtype).min
    v = x.reshape(2, 1, 5, 8).repeat(3, axis=1)
    calls = [
        (lambda x, w, b: dense.linear(x, w, b), (x, w, b)),
        (lambda x, w, b: dense.intermediate(x, dense={"weight": w, "bias": b}, hidden_act="gelu"), (x, w, b)),
        (
            lambda x, w, b, r, g: dense.add_and_norm(
                x, r, dense={"weight": w, "bias": b}, LayerNorm={"weight": g, "bias": b}, layer_norm_eps=1e-12
            ),
            (x, w, b, res, g),
        ),
        (lambda s, m: fast_attention.attention_probs(s, m), (s, m)),
        (lambda p, v: fast_attention.attention_context(p, v), (s, v)),
        (lambda q, k, v, m: fast_attention.scaled_dot_product_attention(q, k, v, m), (v, v * 0.5, v, m)),
        (lambda q, v, m: fast_attention.bi_acm_attention(q, q, v, q, q, v, 2, m), (v, v, m)),
        (lambda x: erf.gelu(x), (x,)),
        (lambda x: erf.erf(x), (x,)),
        (lambda g, x: erf.gelu_backward(g, x), (x * 0.5, x)),
        (lambda g, x, w, b: dense.layer_norm_backward(g, x, w, b, 1e-12), (res * 0.5, res, g, b)),
        (lambda g, p: fast_attention.softmax_backward(g, p), (s * 0.5, s)),
    ]
    if dtype == np.float32:
        calls.append((lambda x: erf.gelu_float32(x), (x,)))
    for fn, args in calls:
        want = fn(*[a.copy() for a in args])
        with strict_namespace() as ns:
            got = fn(*wrap_tree([a.copy() for a in args]))
            assert ns.violations == [], ns.violations
        got = unwrap_tree(got)
        for g, w in zip(*(t if isinstance(t, tuple) else (t,) for t in (got, want)), strict=True):
            np.testing.assert_array_equal(g, w)


# --------------------------------------------------------------------------------------------
# the switch
# --------------------------------------------------------------------------------------------


def test_reference_runs_the_formulas_and_fast_the_kernels():
    calls = []
    with switch.fast():
        assert switch.mode() == "fast"
        with switch.reference():
            assert switch.mode() == "reference"
            x = rand(0, (3, 4), np.float32)
            np.testing.assert_array_equal(ops.linear(x, x[:2]), x @ x[:2].T)
        with switch.fast(without=[ops.linear, bert.intermediate]):
            assert switch.mode() == "fast without refimpl.bert.intermediate, refimpl.ops.linear"
    original = switch._KERNELS[ops.layer_norm.key]
    switch._KERNELS[ops.layer_norm.key] = lambda *a, **k: calls.append("kernel") or original(*a, **k)
    try:
        x, g = rand(1, (2, 8), np.float64), np.ones(8)
        with switch.fast():
            ops.layer_norm(x, g, g, 1e-5)
        with switch.reference():
            ops.layer_norm(x, g, g, 1e-5)
    finally:
        switch._KERNELS[ops.layer_norm.key] = original
    assert calls == ["kernel"]


def test_a_recording_op_gives_way_to_its_formula_while_a_recorder_wants_a_skipped_name():
    class Only(trace.Recorder):
        def __init__(self, names):
            super().__init__()
            self.names = names

        def wants(self, name):
            return name in self.names

    x = rand(7, (2, 5, 8), np.float64)
    w = {"weight": rand(8, (16, 8), np.float64), "bias": rand(9, 16, np.float64)}
    with switch.fast():
        with trace.tracing(recorder=Only({"blk.dense"})) as rec, trace.scope("blk"):
            out = bert.intermediate(x, dense=w, hidden_act="gelu")
        assert list(rec.tensors) == ["blk.dense"]  # the formula ran: it records dense
        with trace.tracing(recorder=Only({"blk"})) as rec, trace.scope("blk"):
            fused = bert.intermediate(x, dense=w, hidden_act="gelu")
        assert list(rec.tensors) == []  # the kernel ran: nothing recorded inside
    np.testing.assert_array_equal(out, fused)


def _recording_calls():
    t = rand(0, (1, 2, 3, 4), np.float64)
    x = rand(1, (1, 3, 4), np.float64)
    lin = {"weight": np.eye(4), "bias": np.zeros(4)}
    norm = {"weight": np.ones(4), "bias": np.zeros(4)}
    return [
        (attention.scaled_dot_product_attention, (t, t, t), {}),
        (bi_acm.bi_acm_scores, (t, t, t, t, 2), {}),
        (bi_acm.bi_acm_attention, (t, t, t, t, t, t, 2), {}),
        (bert.add_and_norm, (x, x), {"dense": lin, "LayerNorm": norm, "layer_norm_eps": 1e-5}),
        (bert.intermediate, (x,), {"dense": lin, "hidden_act": "gelu"}),
    ]


@pytest.mark.parametrize("op, args, kwargs", _recording_calls(), ids=lambda v: getattr(v, "__name__", ""))
def test_each_recording_op_declares_exactly_the_names_its_formula_records(op, args, kwargs):
    with trace.tracing() as rec:
        op.formula(*args, **kwargs)
    assert op.records and set(rec.tensors) == set(op.records)


def test_the_environment_variable_sets_the_default_and_is_checked():
    code = "import refimpl.fast as f; print(f.mode())"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for value, want in (("1", "reference"), ("0", "fast"), ("", "fast")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=dict(env, REFIMPL_REFERENCE=value),
            capture_output=True,
            text=True,
        )
        assert out.stdout.strip() == want, out.stderr
    bad = subprocess.run(
        [sys.executable, "-c", code], env=dict(env, REFIMPL_REFERENCE="yes"), capture_output=True, text=True
    )
    assert (
        bad.returncode != 0
        and "REFIMPL_REFERENCE must be 0 (fast kernels) or 1 (plain formulas), got 'yes'" in bad.stderr
    )


def test_kernel_for_refuses_a_plain_function_and_a_second_kernel():
    with pytest.raises(ValueError, match="not a @replaceable op"):
        switch.kernel_for(ops.embedding)
    with pytest.raises(ValueError, match="already has a fast kernel"):
        switch.kernel_for(ops.linear)
