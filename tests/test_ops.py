"""refimpl.ops against torch.nn.functional and transformers' ACT2FN (the oracle), float32 and float64.

Shapes and values are drawn by hypothesis (values through a drawn seed and scale, so arrays of
realistic size stay fast). Tolerances: float64 1e-12 (absolute + relative), float32 1e-6.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _oracle import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.activations import ACT2FN as HF_ACT2FN

from refimpl import attention, checks, ops

DTYPES = {np.float32: torch.float32, np.float64: torch.float64}
TOL = {np.float32: 1e-6, np.float64: 1e-12}

dtypes = st.sampled_from([np.float32, np.float64])
shapes = st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple)
seeds = st.integers(0, 2**32 - 1)


def close(name, ours, theirs, dtype, scale=1.0):
    """assert_close with the dtype's tolerance (absolute and relative, times ``scale``)."""
    tol = TOL[dtype] * scale
    assert ours.dtype == dtype, f"{name}: dtype {ours.dtype} != {np.dtype(dtype)}"
    assert_close(name, ours, theirs.detach().numpy(), atol=tol, rtol=tol)


def randn(seed, shape, dtype, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


@pytest.fixture(autouse=True)
def no_floating_point_warnings():
    """Overflow / invalid / divide-by-zero in NumPy fails the test (underflow to 0 is fine)."""
    with np.errstate(over="raise", invalid="raise", divide="raise"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


# --------------------------------------------------------------------------------------------
# linear, layer_norm, softmax
# --------------------------------------------------------------------------------------------


@given(
    dtype=dtypes,
    lead=st.lists(st.integers(1, 6), max_size=3).map(tuple),
    n_in=st.integers(1, 40),
    n_out=st.integers(1, 40),
    bias=st.booleans(),
    seed=seeds,
)
def test_linear(dtype, lead, n_in, n_out, bias, seed):
    x = randn(seed, lead + (n_in,), dtype)
    w = randn(seed + 1, (n_out, n_in), dtype, 0.2)
    b = randn(seed + 2, (n_out,), dtype) if bias else None
    t = DTYPES[dtype]
    want = F.linear(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b))
    close("linear", ops.linear(x, w, b), want.to(t), dtype, scale=10)


@given(
    dtype=dtypes,
    lead=st.lists(st.integers(1, 6), max_size=3).map(tuple),
    d=st.integers(2, 64),
    eps=st.sampled_from([1e-12, 1e-6, 1e-5, 0.1]),
    shift=st.floats(-100, 100),
    scale=st.floats(1e-3, 1e3),
    seed=seeds,
)
def test_layer_norm(dtype, lead, d, eps, shift, scale, seed):
    x = (randn(seed, lead + (d,), np.float64) * scale + shift).astype(dtype)
    w = randn(seed + 1, (d,), dtype, 0.5) + dtype(1)
    b = randn(seed + 2, (d,), dtype, 0.5)
    want = F.layer_norm(torch.from_numpy(x), (d,), torch.from_numpy(w), torch.from_numpy(b), eps)
    # rounding x costs |x| / std relative error in both implementations (torch and ours)
    x64 = x.astype(np.float64)
    cond = max(1.0, float(np.abs(x64).max() / max(x64.std(axis=-1).min(), np.sqrt(eps))))
    before = x.copy()
    ours = ops.layer_norm(x, w, b, eps)
    close("layer_norm", ours, want, dtype, scale=5 * cond)
    np.testing.assert_array_equal(x, before)  # a new array; the input is left as it is


def test_layer_norm_keeps_float32_with_numpy_scalar_eps():
    x = randn(0, (4, 16), np.float32)
    w, b = np.ones(16, np.float32), np.zeros(16, np.float32)
    assert ops.layer_norm(x, w, b, np.float64(1e-12)).dtype == np.float32  # NEP 50 would upcast


def _masked_scores(seed, shape, dtype, masked_rows, finite_plus_min):
    """Scores plus transformers' additive mask, with some rows fully masked."""
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal(shape) * 4).astype(dtype)
    keep = rng.random(shape[:-2] + (1, shape[-1])) < 0.7  # [..., 1, k]: masked keys, as a padding mask
    keep = np.broadcast_to(keep, shape).copy()  # [..., q, k]
    if masked_rows:
        keep[..., rng.integers(0, shape[-2]), :] = False  # a query row with every key masked
    mask = (1.0 - keep.astype(dtype)) * np.finfo(dtype).min
    if finite_plus_min:
        return scores + mask  # finfo.min plus a finite score
    return np.where(keep, scores, mask)  # exactly finfo.min where masked


@given(
    dtype=dtypes,
    shape=st.lists(st.integers(1, 7), min_size=2, max_size=4).map(tuple),
    seed=seeds,
    masked_rows=st.booleans(),
    finite_plus_min=st.booleans(),
)
def test_softmax_with_additive_masks(dtype, shape, seed, masked_rows, finite_plus_min):
    s = _masked_scores(seed, shape, dtype, masked_rows, finite_plus_min)
    want = torch.softmax(torch.from_numpy(s), dim=-1)
    before = s.copy()
    ours = ops.softmax(s)
    assert not np.isnan(ours).any()
    close("softmax", ours, want, dtype)
    np.testing.assert_array_equal(s, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_fully_masked_rows_are_uniform(dtype):
    m = np.finfo(dtype).min
    s = np.array([[m, m, m, m], [m + 3.0, m - 1.0, m, m + 0.5], [0.0, m, 1.0, m]], dtype)
    want = torch.softmax(torch.from_numpy(s), dim=-1).numpy()
    np.testing.assert_array_equal(want[:2], 0.25)  # what the oracle gives
    close("softmax", ops.softmax(s), torch.from_numpy(want), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_minus_inf_rows_match_torch(dtype):
    s = np.array([[-np.inf, -np.inf, -np.inf], [1.0, -np.inf, 2.0]], dtype)
    want = torch.softmax(torch.from_numpy(s), dim=-1).numpy()
    with np.errstate(invalid="ignore"):  # -inf - (-inf) in the first row: NaN, as torch
        ours = ops.softmax(s)
    assert np.isnan(want[0]).all() and np.isnan(ours[0]).all()
    np.testing.assert_allclose(ours[1], want[1], rtol=TOL[dtype], atol=0)


@given(
    dtype=dtypes,
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
    seed=seeds,
    data=st.data(),
)
def test_softmax_any_axis(dtype, shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    s = randn(seed, shape, dtype, 5)
    close("softmax", ops.softmax(s, axis=axis), torch.softmax(torch.from_numpy(s), dim=axis), dtype)


def test_softmax_large_rows_float32():
    s = randn(1, (12, 64, 512), np.float32, 3)
    close("softmax", ops.softmax(s), torch.softmax(torch.from_numpy(s), dim=-1), np.float32)


# --------------------------------------------------------------------------------------------
# activations: every ACT2FN entry against transformers' module
# --------------------------------------------------------------------------------------------

ACT_NAMES = sorted(ops.ACT2FN)


def test_every_transformers_activation_is_covered():
    assert set(HF_ACT2FN) - set(ops.ACT2FN) == {"prelu", "xielu"}  # prelu: ops.prelu (needs its weight)
    assert set(ops.ACT2FN) <= set(HF_ACT2FN)


@pytest.mark.parametrize("name", ACT_NAMES)
@settings(max_examples=6)
@given(dtype=dtypes, shape=shapes, seed=seeds, scale=st.sampled_from([0.1, 1.0, 3.0, 8.0]))
def test_activation_matches_transformers(name, dtype, shape, seed, scale):
    x = randn(seed, shape, dtype, scale)
    want = HF_ACT2FN[name](torch.from_numpy(x.copy()))
    ours = ops.get_activation(name)(x)
    assert ours.shape == x.shape
    close(name, ours, want, dtype, scale=4)


@pytest.mark.parametrize("name", ACT_NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_dense_grid(name, dtype):
    # every erf interval, both tanh tails, exact zeros and signed zero
    x = np.concatenate([np.linspace(-12, 12, 4801), [0.0, -0.0]]).astype(dtype)
    want = HF_ACT2FN[name](torch.from_numpy(x.copy()))
    close(name, ops.ACT2FN[name](x), want, dtype, scale=4)


@pytest.mark.parametrize("name", ["sigmoid", "silu", "swish", "quick_gelu", "mish", "gelu", "relu", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_extreme_inputs_without_overflow(name, dtype):
    big = 1e30 if dtype == np.float32 else 1e300
    x = np.array([-big, -1e4, -800.0, -100.0, -40.0, 40.0, 100.0, 800.0, 1e4, big], dtype)
    want = HF_ACT2FN[name](torch.from_numpy(x.copy()))
    ours = ops.ACT2FN[name](x)  # the autouse fixture turns any overflow warning into an error
    close(name, ours, want, dtype, scale=4)


def test_sigmoid_and_mish_limits():
    x = np.array([-1e308, -745.0, -700.0, 0.0, 745.0, 1e308])
    y = ops.sigmoid(x)
    np.testing.assert_array_equal(y[[0, 3, 4, 5]], [0.0, 0.5, 1.0, 1.0])
    assert 0.0 <= y[1] < 1e-320 and y[2] == np.exp(-700.0) / (1 + np.exp(-700.0))  # no 1/(1+inf) loss
    np.testing.assert_array_equal(ops.mish(np.array([1e4, 1e300])), [1e4, 1e300])  # mish(x) = x for large x


def test_float32_stays_float32():
    x = randn(0, (3, 5), np.float32)
    for name, fn in ops.ACT2FN.items():
        assert fn(x).dtype == np.float32, name
    assert ops.gelu(x * np.float32(2)).dtype == np.float32
    assert ops.softmax(x).dtype == np.float32
    # NumPy float64 scalars as parameters would upcast a float32 array under NEP 50: not here
    f64 = np.float64
    assert ops.leaky_relu(x, f64(0.2)).dtype == np.float32
    assert ops.laplace(x, f64(0.7), f64(0.3)).dtype == np.float32
    assert ops.smooth_l1_loss(x, x * 0, beta=f64(0.5)).dtype == np.float32
    assert ops.prelu(x, np.array([0.25])).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_of_large_arrays(dtype):
    x = randn(3, (64, 3072), dtype, 2)  # several cache-sized chunks
    want = F.gelu(torch.from_numpy(x))
    y = ops.gelu(x)
    # torch's vectorized float32 GELU is itself up to ~1.2e-6 off the exact GELU (see QUIRKS):
    # the float32 margin is the oracle's own error; float64 agrees to ~1e-15
    close("gelu", y, want, dtype, scale=4)
    close("gelu", ops.gelu(x.T), want.T, dtype, scale=4)  # non-contiguous input
    # first principles: against the exact GELU in float64 (math.erf), error <= c * max(1, |x|)
    x64 = x.astype(np.float64)
    exact = x64 * 0.5 * (1.0 + np.vectorize(math.erf)(x64 / math.sqrt(2.0)))
    bound = (2e-7 if dtype == np.float32 else 1e-15) * np.maximum(1.0, np.abs(x64))
    assert np.all(np.abs(y.astype(np.float64) - exact) <= bound)


@given(dtype=dtypes, shape=shapes, seed=seeds, channels=st.booleans())
def test_prelu_matches_nn_prelu(dtype, shape, seed, channels):
    x = randn(seed, shape, dtype, 3)
    n = shape[1] if channels and len(shape) >= 2 else 1
    w = np.random.default_rng(seed).uniform(-1, 1, n).astype(dtype)
    m = torch.nn.PReLU(num_parameters=n).to(DTYPES[dtype])
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(w))
    close("prelu", ops.prelu(x, w), m(torch.from_numpy(x)), dtype)


def test_prelu_default_weight_and_errors():
    x = np.array([-2.0, -0.5, 0.0, 3.0])
    assert torch.nn.PReLU().weight.item() == 0.25  # the init documented in ops.prelu
    np.testing.assert_array_equal(ops.prelu(x, np.array([0.25])), [-0.5, -0.125, 0.0, 3.0])
    with pytest.raises(ValueError, match="weight"):
        ops.get_activation("prelu")
    with pytest.raises(ValueError, match="weight"):
        ops.prelu(x, None)
    with pytest.raises(ValueError, match="x.shape"):
        ops.prelu(np.zeros((2, 3)), np.ones(4))
    with pytest.raises(ValueError, match="supported"):
        ops.get_activation("no_such_act")


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------


@given(
    dtype=dtypes,
    n=st.integers(1, 40),
    c=st.integers(1, 12),
    seed=seeds,
    p_ignored=st.sampled_from([0.0, 0.3, 1.0]),
    scale=st.sampled_from([1.0, 30.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_cross_entropy(dtype, n, c, seed, p_ignored, scale, reduction):
    rng = np.random.default_rng(seed)
    logits = randn(seed, (n, c), dtype, scale)
    labels = rng.integers(0, c, n)
    labels[rng.random(n) < p_ignored] = -100
    want = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels), reduction=reduction)
    ours = ops.cross_entropy(logits, labels, reduction=reduction)
    assert ours.shape == tuple(want.shape)
    if reduction == "mean" and (labels == -100).all():
        assert np.isnan(ours) and torch.isnan(want)  # all ignored -> NaN, as torch
    else:
        close("cross_entropy", ours, want, dtype, scale=10)


def test_cross_entropy_custom_ignore_index_and_label_shape():
    # LiLT's QA loss ignores index = seq_len (outside [0, C-1]); labels may come as [b, s]
    logits = randn(0, (6, 4), np.float64)
    labels = np.array([[0, 4, 3], [4, 1, 2]])
    want = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels.reshape(-1)), ignore_index=4)
    close("cross_entropy", ops.cross_entropy(logits, labels, ignore_index=4), want, np.float64)


@pytest.mark.parametrize("bad", [5, -1, -101, 1000])
def test_cross_entropy_rejects_out_of_range_labels(bad):
    labels = np.array([[0, 1], [-100, bad]])
    with pytest.raises(ValueError, match=rf"labels\[1, 1\] = {bad} is outside the allowed range \[0, 4\]"):
        ops.cross_entropy(np.zeros((4, 5)), labels)
    with pytest.raises(ValueError, match="integers"):
        ops.cross_entropy(np.zeros((2, 5)), np.array([0.0, 1.0]))


@given(dtype=dtypes, shape=shapes, seed=seeds, reduction=st.sampled_from(["mean", "sum", "none"]))
def test_mse_loss(dtype, shape, seed, reduction):
    a, b = randn(seed, shape, dtype), randn(seed + 1, shape, dtype)
    want = F.mse_loss(torch.from_numpy(a), torch.from_numpy(b), reduction=reduction)
    close("mse_loss", ops.mse_loss(a, b, reduction=reduction), want, dtype, scale=10)


@given(
    dtype=dtypes,
    shape=shapes,
    seed=seeds,
    scale=st.sampled_from([1.0, 50.0, 1e4]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_bce_with_logits(dtype, shape, seed, scale, reduction):
    logits = randn(seed, shape, dtype, scale)
    targets = np.random.default_rng(seed).random(shape).astype(dtype)
    targets[..., 0] = np.round(targets[..., 0])  # hard 0/1 labels too
    want = F.binary_cross_entropy_with_logits(
        torch.from_numpy(logits), torch.from_numpy(targets), reduction=reduction
    )
    close("bce_with_logits", ops.bce_with_logits(logits, targets, reduction=reduction), want, dtype, scale=10)


def test_bce_with_huge_logits_is_finite():
    logits = np.array([-1e300, -800.0, 800.0, 1e300])
    targets = np.array([0.0, 1.0, 0.0, 1.0])
    want = F.binary_cross_entropy_with_logits(
        torch.from_numpy(logits), torch.from_numpy(targets), reduction="none"
    )
    np.testing.assert_array_equal(ops.bce_with_logits(logits, targets, reduction="none"), want.numpy())


@given(dtype=dtypes, shape=shapes, seed=seeds, beta=st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_smooth_l1_loss(dtype, shape, seed, beta):
    a, b = randn(seed, shape, dtype, 2), randn(seed + 1, shape, dtype, 2)
    want = F.smooth_l1_loss(torch.from_numpy(a), torch.from_numpy(b), reduction="none", beta=beta)
    close("smooth_l1_loss", ops.smooth_l1_loss(a, b, beta=beta), want, dtype)


def test_loss_reduction_is_validated():
    with pytest.raises(ValueError, match="reduction"):
        ops.mse_loss(np.zeros(2), np.zeros(2), reduction="avg")


# --------------------------------------------------------------------------------------------
# embedding and index checks
# --------------------------------------------------------------------------------------------


def test_embedding_matches_torch():
    w = randn(0, (10, 4), np.float64)
    ids = np.array([[0, 9, 3], [3, 3, 1]])
    want = F.embedding(torch.from_numpy(ids), torch.from_numpy(w))
    np.testing.assert_array_equal(ops.embedding(ids, w), want.numpy())


@pytest.mark.parametrize("bad, pos", [(-1, "0, 2"), (10, "1, 0"), (-10, "1, 1"), (2**40, "0, 0")])
def test_index_check_names_the_argument_position_and_range(bad, pos):
    """``check_inputs`` checks every id once with ``check_index_range`` (``embedding`` is ``weight[ids]``)."""
    ids = np.array([[1, 2, 3], [4, 5, 6]])
    r, c = map(int, pos.split(", "))
    ids[r, c] = bad
    with pytest.raises(
        ValueError, match=rf"token_type_ids\[{pos}\] = {bad} is outside the allowed range \[0, 9\]"
    ):
        checks.check_index_range(ids, 10, "token_type_ids")


def test_index_check_rejects_non_integer_ids():
    with pytest.raises(ValueError, match="input_ids must hold integers"):
        checks.check_index_range(np.array([1.0, 2.0]), 10, "input_ids")
    with pytest.raises(ValueError, match="integers"):
        checks.check_index_range(np.array([True, False]), 10, "input_ids")


def test_extended_attention_mask():
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    for dtype in (np.float32, np.float64):
        m = attention.extended_attention_mask(mask, dtype)
        assert m.shape == (2, 1, 1, 3) and m.dtype == dtype
        want = (1.0 - mask[:, None, None, :]) * np.finfo(dtype).min  # transformers' formula
        np.testing.assert_array_equal(m, want.astype(dtype))


# --------------------------------------------------------------------------------------------
# every op dispatches through the array namespace (runs unchanged on CuPy arrays)
# --------------------------------------------------------------------------------------------


def _dispatch_cases():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 70)) * 4
    x[0, :5] = [np.inf, -np.inf, np.nan, -0.0, 7.0]
    labels = np.array([1, -100, 4])
    cases = [(f"act:{n}", fn, (x,)) for n, fn in ops.ACT2FN.items()]
    cases += [
        ("erf", ops.erf, (x,)),
        ("prelu", ops.prelu, (x, np.array([0.25]))),
        ("softmax_axis0", lambda a: ops.softmax(a, axis=0), (x[1:],)),
        ("layer_norm", lambda a, w, b: ops.layer_norm(a, w, b, 1e-5), (x[1:], x[1] / 8, x[2] / 8)),
        ("cross_entropy", ops.cross_entropy, (x[:, :6], labels)),
        ("cross_entropy_none", lambda a, y: ops.cross_entropy(a, y, reduction="none"), (x[:, :6], labels)),
        ("mse_loss", ops.mse_loss, (x[1:], x[1:] * 0.5)),
        ("bce_with_logits", ops.bce_with_logits, (x[1:], (x[1:] > 0).astype(np.float64))),
        ("smooth_l1_loss", ops.smooth_l1_loss, (x[1:], x[1:] * 0.5)),
        ("embedding", ops.embedding, (np.array([[0, 2], [1, 1]]), x)),
        (
            "extended_attention_mask",
            lambda m: attention.extended_attention_mask(m, np.float32),
            (np.array([[1, 0]]),),
        ),
    ]
    return cases


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, fn, args", _dispatch_cases(), ids=[c[0] for c in _dispatch_cases()])
def test_ops_dispatch_through_namespace(name, fn, args, dtype):
    from _strict import strict_namespace, unwrap_tree, wrap_tree

    args = tuple(a.astype(dtype) if a.dtype.kind == "f" else a for a in args)
    with np.errstate(all="ignore"):  # inf/nan inputs on purpose
        want = fn(*[a.copy() for a in args])
        with strict_namespace() as ns:
            got = fn(*wrap_tree([a.copy() for a in args]))
            assert ns.violations == [], ns.violations
    np.testing.assert_array_equal(unwrap_tree(got), want)
