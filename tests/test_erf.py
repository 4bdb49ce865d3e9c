"""refimpl.ops.erf against math.erf (the C library's erf, < 1 ulp) and torch.erf.

Float64 must be within 1e-15 absolute everywhere on the real line; float32 (computed in float32
arithmetic) within 2e-7 absolute (measured: 9.5e-8 over every float32). Special values: erf(+-inf) = +-1, erf(nan) = nan,
erf(-0.0) = -0.0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from refimpl import ops

REF = np.vectorize(math.erf, otypes=[np.float64])
TOL64 = 1e-15
TOL32 = 2e-7
# where the approximation switches formula (0.84375), leaves Cody's stated range (4) and clamps (6)
EDGES = np.array([0.84375, 4.0, 6.0])


def max_abs_err(x: np.ndarray) -> float:
    """max |ours - math.erf| over a float64 array without NaNs."""
    return float(np.abs(ops.erf(x) - REF(x)).max())


def test_dense_grid_float64():
    x = np.linspace(-10.0, 10.0, 2_000_001)  # step 1e-5, many chunks
    assert max_abs_err(x) <= TOL64


def test_interval_edges_float64():
    near = [np.nextafter(EDGES, -np.inf), EDGES, np.nextafter(EDGES, np.inf)]
    x = np.concatenate(near + [-e for e in near] + [np.linspace(3.9, 6.1, 22_001)])  # beyond Cody's 4
    assert max_abs_err(x) <= TOL64


def test_special_values():
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0])
    for dtype in (np.float64, np.float32):
        y = ops.erf(x.astype(dtype))
        assert y.dtype == dtype
        assert y[0] == 1.0 and y[1] == -1.0 and np.isnan(y[2])
        assert y[3] == 0.0 and not np.signbit(y[3])
        assert y[4] == 0.0 and np.signbit(y[4]), "erf(-0.0) must be -0.0"


def test_tiny_and_huge_float64():
    tiny = np.array([5e-324, 1e-320, 2.2250738585072014e-308, 1e-300, 1e-200, 2.0**-28, 1e-12, 1e-8, 1e-4])
    huge = np.array([5.9, 6.0, 6.1, 10.0, 27.9, 28.0, 1e3, 1e100, 1e300, np.finfo(np.float64).max])
    x = np.concatenate([tiny, -tiny, huge, -huge])
    assert max_abs_err(x) <= TOL64
    # near zero erf(x) ~ 2x/sqrt(pi): relative accuracy too, not only absolute
    y = ops.erf(tiny[3:])
    np.testing.assert_allclose(y, REF(tiny[3:]), rtol=4e-16, atol=0)
    beyond = huge[huge >= 6.0]  # 1 - erf(6) < 2.2e-17: exactly +-1 there, as math.erf
    assert (ops.erf(beyond) == 1.0).all() and (ops.erf(-beyond) == -1.0).all()


@given(st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_scalar_values_float64(v):
    y = ops.erf(np.array([v]))[0]
    if math.isnan(v):
        assert math.isnan(y)
    else:
        assert abs(y - math.erf(v)) <= TOL64
        assert math.copysign(1.0, y) == math.copysign(1.0, v)  # odd function, signed zeros included


@settings(max_examples=20)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=40),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
    )
)
def test_arrays_float64(x):
    y = ops.erf(x)
    assert y.shape == x.shape and y.dtype == np.float64
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(y), nan)
    assert np.all(np.abs(y[~nan] - REF(x[~nan])) <= TOL64)


@settings(max_examples=20)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=2, max_side=60),
        elements=st.floats(allow_nan=False, allow_infinity=True, width=32),
    )
)
def test_arrays_float32(x):
    y = ops.erf(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.all(np.abs(y.astype(np.float64) - REF(x.astype(np.float64))) <= TOL32)


def test_float32_dense():
    # float32 arithmetic end to end: every interval, the edges, and 2e6 points on [-7, 7]
    x = np.concatenate([np.linspace(-7, 7, 2_000_001), EDGES, -EDGES]).astype(np.float32)
    y = ops.erf(x)
    assert y.dtype == np.float32
    assert np.abs(y.astype(np.float64) - REF(x.astype(np.float64))).max() <= TOL32


def test_matches_torch_float64():
    x = torch.linspace(-8, 8, 100_001, dtype=torch.float64)
    np.testing.assert_allclose(ops.erf(x.numpy()), torch.erf(x).numpy(), rtol=0, atol=TOL64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 300, 5)) * 3).astype(dtype)
    before = x.copy()
    want = ops.erf(x)
    np.testing.assert_array_equal(x, before)  # a new array; the input is left as it is
    # a non-contiguous input
    np.testing.assert_array_equal(ops.erf(x.transpose(2, 0, 1)), want.transpose(2, 0, 1))
    # 0-d and empty
    assert ops.erf(np.array(0.5, dtype)).shape == ()
    assert ops.erf(np.zeros((0, 3), dtype)).shape == (0, 3)


def test_other_dtypes():
    assert ops.erf(np.arange(-3, 4)).dtype == np.float64  # integers -> float64, like np.exp
    np.testing.assert_allclose(ops.erf(np.arange(-3, 4)), REF(np.arange(-3.0, 4.0)), atol=TOL64, rtol=0)
    h = np.array([-2.0, -0.5, 0.0, 0.5, 2.0], np.float16)
    y = ops.erf(h)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), REF(h.astype(np.float64)), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="real"):
        ops.erf(np.array([1j]))
