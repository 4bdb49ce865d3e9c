"""Every op of the models goes through the array-namespace dispatch (CPU test, no GPU needed).

The models run on :class:`tests._strict.StrictArray` (a CuPy stand-in over NumPy, see
tests/_strict.py) with a strict namespace installed as ``backend._namespace_override``. A plain
NumPy function, an implicit ``np.asarray`` or a plain ``ndarray`` mixed into the math raises and
is recorded, so a passing model run proves the code would run unchanged on CuPy arrays. The
strict run must equal the plain run exactly (the same NumPy kernels underneath).
"""

from __future__ import annotations

import numpy as np
import pytest
from _strict import DispatchViolation, StrictArray, strict_namespace, unwrap_tree, wrap_tree

from refimpl import attention, backend, ops

# --------------------------------------------------------------------------------------------
# the strict machinery itself catches what it must catch
# --------------------------------------------------------------------------------------------


@pytest.fixture
def x():
    return StrictArray(np.arange(6, dtype=np.float64).reshape(2, 3))


@pytest.mark.parametrize(
    "misuse",
    [
        lambda a: np.exp(a),  # plain ufunc
        lambda a: np.matmul(a, np.ones((3, 2))),  # plain function (ufunc in NumPy 2)
        lambda a: np.concatenate([a, a]),  # plain __array_function__
        lambda a: np.asarray(a),  # implicit host conversion
        lambda a: a + np.ones(3),  # mixing a plain array into an operator
        lambda a: np.ones(3) * a,  # ... on either side
        lambda a: a[np.array([0, 1])],  # plain index array
        lambda a: backend.get_namespace(a).matmul(a, np.ones((3, 2))),  # plain array into xp
    ],
    ids=["ufunc", "matmul", "concatenate", "asarray", "mix-left", "mix-right", "index", "xp-mix"],
)
def test_strict_array_refuses_plain_numpy(x, misuse):
    with strict_namespace() as ns:
        with pytest.raises(DispatchViolation):
            misuse(x)
        assert len(ns.violations) == 1


def test_strict_array_allows_namespace_methods_and_operators(x):
    plain = np.arange(6, dtype=np.float64).reshape(2, 3)
    with strict_namespace() as ns:
        xp = backend.get_namespace(x)
        assert xp is ns
        got = xp.exp(x) * 2.0 + x.T.T - x.mean(axis=-1, keepdims=True)
        got /= x.sum() + 1
        got = xp.matmul(got, xp.asarray(np.ones((3, 2))))  # explicit host->device is allowed
        assert isinstance(got, StrictArray)
        assert ns.violations == []
        assert ns.calls["exp"] == 1 and ns.calls["matmul"] == 1
    want = (np.exp(plain) * 2.0 + plain - plain.mean(axis=-1, keepdims=True)) / (plain.sum() + 1)
    np.testing.assert_array_equal(unwrap_tree(got), want @ np.ones((3, 2)))


def test_override_is_removed_after_the_block(x):
    with strict_namespace():
        pass
    assert backend.get_namespace(np.zeros(2)) is np


# --------------------------------------------------------------------------------------------
# core ops and attention steps dispatch every op
# --------------------------------------------------------------------------------------------


def _strict_equals_plain(fn, *args):
    """Run ``fn`` on plain arrays, then on strict arrays; they must agree exactly, without violations."""
    want = fn(*[a.copy() if isinstance(a, np.ndarray) else a for a in args])
    with strict_namespace() as ns:
        got = fn(*wrap_tree(list(args)))
        assert ns.violations == [], ns.violations
    got, want = unwrap_tree(got), unwrap_tree(want)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    for g, w in zip(got, want, strict=True):
        assert not isinstance(g, StrictArray)
        np.testing.assert_array_equal(g, w)


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 5, 8))
W = RNG.standard_normal((6, 8))
B = RNG.standard_normal(6)
G = 1 + 0.1 * RNG.standard_normal(8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "name, fn, args",
    [
        ("linear", ops.linear, (X, W, B)),
        ("layer_norm", lambda x, w, b: ops.layer_norm(x, w, b, 1e-12), (X, G, G - 1)),
        ("softmax", ops.softmax, (X,)),
        ("tanh", ops.get_activation("tanh"), (X,)),
        ("relu", ops.get_activation("relu"), (X,)),
        (
            "mask",
            lambda m: attention.extended_attention_mask(m, m.dtype),
            (np.array([[1.0, 1, 0], [1, 0, 0]]),),
        ),
        (
            "sdpa",
            lambda q, k, v: attention.scaled_dot_product_attention(q, k, v),
            (X.reshape(2, 2, 5, 4), X.reshape(2, 2, 5, 4) * 0.5, X.reshape(2, 2, 5, 4) - 1),
        ),
    ],
)
def test_core_ops_dispatch(name, fn, args, dtype):
    args = tuple(a.astype(dtype) for a in args)
    _strict_equals_plain(fn, *args)
