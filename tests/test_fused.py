"""Each fused kernel of refimpl._fused against its plain twin (and the fast float32 GELU against
the exact GELU from first principles); backend.quiet_blas_threads against OpenBLAS's own state.

Float64 twins must agree bit for bit (the fused kernels do the same arithmetic per row block).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from _strict import strict_namespace, unwrap_tree, wrap_tree

from refimpl import _fused, _kernels, attention, backend, ops

DTYPES = [np.float32, np.float64]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    backend.set_num_threads(request.param)
    yield request.param
    backend.set_num_threads(None)


def rand(seed, shape, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def one_pass_layer_norm(x, g, b, eps):
    """ops.layer_norm on slices small enough for its one-pass (unblocked) path."""
    rows = x.reshape(-1, x.shape[-1])
    parts = [ops.layer_norm(rows[i : i + 64], g, b, eps) for i in range(0, rows.shape[0], 64)]
    return np.concatenate(parts).reshape(x.shape)


def exact_gelu(x):
    x64 = x.astype(np.float64)
    return x64 * 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x64 / math.sqrt(2.0)))


# --------------------------------------------------------------------------------------------
# GELU
# --------------------------------------------------------------------------------------------


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
    got = _fused.gelu_float32(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    err = np.abs(got.astype(np.float64) - exact_gelu(x)) / np.maximum(1.0, np.abs(x.astype(np.float64)))
    assert err.max() <= _fused.GELU_FLOAT32_BOUND, (err.max(), x[err.argmax()])
    # special values as the exact GELU: gelu(+inf) = inf, gelu(-inf) = 0 (x/2 * 0 is -0.0 or nan
    # in float arithmetic; torch gives nan for -inf too), nan stays nan, -0.0 keeps its sign
    with np.errstate(invalid="ignore"):
        special = _fused.gelu_float32(np.array([np.inf, np.nan, -0.0], np.float32))
    assert special[0] == np.inf and np.isnan(special[1]) and np.signbit(special[2])


def test_gelu_float32_in_place_and_errors():
    x = rand(1, (33, 3072), np.float32, 2.0)
    want = _fused.gelu_float32(x)
    y = x.copy()
    assert _fused.gelu_float32(y, out=y) is y
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(_fused.gelu_float32(x.T), want.T)  # non-contiguous input
    with pytest.raises(ValueError, match="float32 x"):
        _fused.gelu_float32(x.astype(np.float64))
    with pytest.raises(ValueError, match="out must be"):
        _fused.gelu_float32(x, out=np.empty((33, 3071), np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_gelu_equals_gelu_of_linear(threads, dtype):
    x = rand(2, (3, 70, 96), dtype)
    w, b = rand(3, (384, 96), dtype, 0.3), rand(4, 384, dtype)
    got = _fused.linear_gelu(x, w, b)
    plain = ops.gelu(ops.linear(x, w, b))
    assert got.shape == (3, 70, 384) and got.dtype == dtype
    if dtype == np.float64:
        np.testing.assert_array_equal(got, plain)  # the same 1e-15 erf, bit for bit
    else:  # float32 arithmetic: within the fast GELU's bound of the exact GELU of the same input
        y = ops.linear(x, w, b)
        bound = _fused.GELU_FLOAT32_BOUND * np.maximum(1.0, np.abs(y.astype(np.float64)))
        assert np.all(np.abs(got - exact_gelu(y)) <= bound)
        np.testing.assert_array_equal(_fused.linear_gelu(x, w, None), _fused.gelu_float32(ops.linear(x, w)))


# --------------------------------------------------------------------------------------------
# LayerNorm with the residual (and bias) folded in
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_layer_norm_equals_plain_twin(threads, dtype):
    x = rand(5, (4, 300, 768), dtype)  # several row blocks
    res, xb = rand(6, x.shape, dtype), rand(7, 768, dtype)
    g, b = 1 + 0.1 * rand(8, 768, dtype), rand(9, 768, dtype)
    h = x + xb
    h += res
    want = one_pass_layer_norm(h, g, b, 1e-12)
    got = _fused.add_layer_norm(x.copy(), res, g, b, 1e-12, x_bias=xb)
    np.testing.assert_array_equal(got, want)
    y = x.copy()
    assert _fused.add_layer_norm(y, res, g, b, 1e-12, x_bias=xb, out=y) is y
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(
        _fused.add_layer_norm(x, res, g, b, 1e-5), one_pass_layer_norm(x + res, g, b, 1e-5)
    )
    shared = res[:1]  # [1, 300, 768]: one residual broadcast over the batch
    np.testing.assert_array_equal(
        _fused.add_layer_norm(x, shared, g, b, 1e-5), one_pass_layer_norm(x + shared, g, b, 1e-5)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_layer_norm_in_blocks_equals_one_pass(threads, dtype):
    """ops.layer_norm hands large arrays to the row-block kernel: the numbers do not change."""
    x = rand(10, (2, 400, 768), dtype, 3.0)  # > 1 MiB: the blocked path
    g, b = 1 + 0.1 * rand(11, 768, dtype), rand(12, 768, dtype)
    assert x.nbytes > 2 * _kernels.CHUNK_BYTES  # the blocked path
    np.testing.assert_array_equal(ops.layer_norm(x, g, b, 1e-5), one_pass_layer_norm(x, g, b, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_add_layer_norm_equals_plain_twin(threads, dtype):
    x, res = rand(13, (2, 40, 3072), dtype), rand(14, (2, 40, 768), dtype)
    w, bias = rand(15, (768, 3072), dtype, 0.02), rand(16, 768, dtype)
    g, b = 1 + 0.1 * rand(17, 768, dtype), rand(18, 768, dtype)
    h = ops.linear(x, w, bias)
    h += res
    want = ops.layer_norm(h, g, b, 1e-12, out=h)
    np.testing.assert_array_equal(_fused.linear_add_layer_norm(x, w, bias, res, g, b, 1e-12), want)


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, mask_shape",
    [
        ((3, 12, 20, 36), (3, 1, 1, 36)),
        ((2, 4, 200, 300), (2, 1, 200, 300)),
        ((1, 12, 64, 64), (1, 1, 1, 64)),
        ((5, 12, 64, 100), (1, 1, 1, 100)),  # blocks of 20 slabs cross batch items; batch-broadcast mask
        ((5, 12, 64, 100), (5, 12, 64, 100)),  # a full mask, per head
    ],
)
@pytest.mark.parametrize("masked", [True, False])
def test_masked_softmax_equals_softmax_of_sum(threads, dtype, shape, mask_shape, masked):
    scores = rand(19, shape, dtype, 4.0)
    keep = np.random.default_rng(20).random(mask_shape) > (0.3 if masked else -1.0)
    if masked:
        keep[0, ..., :] = False  # a fully masked row: uniform, as the oracle
    mask = ((1.0 - keep.astype(dtype)) * np.finfo(dtype).min).astype(dtype)
    assert bool(mask.any()) is masked
    want = ops.softmax(scores + mask, axis=-1)
    before = scores.copy()
    fresh = _fused.masked_softmax(scores, mask)  # a fresh array: the scores are left alone
    np.testing.assert_array_equal(fresh, want)
    np.testing.assert_array_equal(scores, before)
    got = scores.copy()
    assert _fused.masked_softmax(got, mask, out=got) is got  # in place on request
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_fused.masked_softmax(scores, None), ops.softmax(scores))
    np.testing.assert_array_equal(scores, before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_context_equals_merge_heads(threads, dtype):
    probs, value = rand(21, (3, 12, 20, 36), dtype), rand(22, (3, 12, 36, 64), dtype)
    want = attention.merge_heads(np.matmul(probs, value))
    got = _fused.attention_context(probs, value)
    assert got.shape == (3, 20, 768) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------
# every fused op goes through the array-namespace dispatch (the CuPy path)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_ops_dispatch(dtype):
    x, res = rand(23, (2, 5, 8), dtype), rand(24, (2, 5, 6), dtype)
    w, b, g = rand(25, (6, 8), dtype), rand(26, 6, dtype), 1 + rand(27, 6, dtype) * 0.1
    s, m = rand(28, (2, 3, 5, 5), dtype), np.zeros((2, 1, 1, 5), dtype)
    m[1, ..., 3:] = np.finfo(dtype).min
    calls = [
        (lambda x, w, b: _fused.linear_gelu(x, w, b), (x, w, b)),
        (lambda x, w, b, r, g: _fused.linear_add_layer_norm(x, w, b, r, g, b, 1e-12), (x, w, b, res, g)),
        (lambda s, m: _fused.masked_softmax(s, m), (s, m)),
        (lambda p, v: _fused.attention_context(p, v), (s, x.reshape(2, 1, 5, 8).repeat(3, axis=1))),
    ]
    if dtype == np.float32:
        calls.append((lambda x: _fused.gelu_float32(x), (x,)))
    for fn, args in calls:
        want = fn(*[a.copy() for a in args])
        with strict_namespace() as ns:
            got = fn(*wrap_tree([a.copy() for a in args]))
            assert ns.violations == [], ns.violations
        np.testing.assert_array_equal(unwrap_tree(got), want)


# --------------------------------------------------------------------------------------------
# quiet_blas_threads
# --------------------------------------------------------------------------------------------


def _spin_cpu_after_gemm(a) -> float:
    """CPU time the process burns while the main thread sleeps right after a GEMM."""
    a @ a
    c0 = time.process_time()
    time.sleep(0.2)
    return time.process_time() - c0


def test_quiet_blas_threads_validates_and_stops_the_spinning():
    with pytest.raises(ValueError, match=r"timeout must be an integer in \[4, 30\]"):
        backend.quiet_blas_threads(3)
    lib = backend._loaded_openblas()
    if lib is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS with openblas_read_env")
    lib.openblas_thread_timeout.restype = int
    a = np.random.default_rng(0).random((600, 600))
    assert backend.quiet_blas_threads(4) is True
    assert lib.openblas_thread_timeout() == 4
    # idle workers now sleep right after the GEMM: (almost) no CPU time while we sleep
    assert min(_spin_cpu_after_gemm(a) for _ in range(3)) < 0.01
    np.testing.assert_allclose(a @ a, np.einsum("ij,jk->ik", a, a), rtol=1e-12)  # BLAS still works


# --------------------------------------------------------------------------------------------
# x @ weight.T
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 20, _fused.FEW_ROWS, _fused.FEW_ROWS + 1, 300])
def test_matmul_wt_equals_x_times_weight_transposed(rows, dtype):
    x, w = rand(0, (rows, 96), dtype), rand(1, (160, 96), dtype)
    got = _fused.matmul_wt(x, w)
    assert got.shape == (rows, 160) and got.dtype == dtype and got.flags.c_contiguous
    # the same dot products; only BLAS's blocking of the 96-term sum may differ
    want = x.astype(np.float64) @ w.astype(np.float64).T
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(got, x @ w.T, rtol=tol, atol=tol)
    if rows <= _fused.FEW_ROWS and dtype == np.float32:  # the few-row path also behind linear
        b = rand(2, (160,), dtype)
        np.testing.assert_allclose(ops.linear(x, w, b), want + b, rtol=tol, atol=tol)
