"""Every fused op equals its plain twin, and the plain twins equal the oracle's formulas.

The fused ops (``bi_acm_scores``, ``bi_acm_contexts``, ``add_layer_norm``) are what the
layers call for speed; their plain twins are the paper's formulas. Expected values come from
torch (the oracle's arithmetic) or from the plain twin, never from the fused op itself.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import attention, ops, trace


def _qkv(rng, b, n, s, d, r, dtype):
    q, k, v = (rng.standard_normal((b, n, s, d)).astype(dtype) for _ in range(3))
    lq, lk, lv = (rng.standard_normal((b, n, s, d // r)).astype(dtype) for _ in range(3))
    return q, k, v, lq, lk, lv


@settings(max_examples=40)
@given(
    b=st.integers(1, 2),
    n=st.integers(1, 3),
    s=st.integers(1, 9),
    d=st.sampled_from([4, 6, 8, 12]),
    r=st.sampled_from([1, 2, 4]),
    relative=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_bi_acm_scores_fused_equals_plain_and_oracle(b, n, s, d, r, relative, seed):
    if d % r:
        return
    rng = np.random.default_rng(seed)
    q, k, _, lq, lk, _ = _qkv(rng, b, n, s, d, r, np.float64)
    rel = rng.standard_normal((b, n, s, s)) if relative else None
    fused = attention.bi_acm_scores(q, k, lq, lk, r, rel)
    plain = attention.bi_acm_scores_plain(q, k, lq, lk, r, rel)
    # the oracle's lines (modeling_lilt.py LiltSelfAttention.forward), in torch
    tq, tk, tlq, tlk = (torch.from_numpy(a) for a in (q, k, lq, lk))
    scores = torch.matmul(tq, tk.transpose(-1, -2))
    if rel is not None:
        scores = scores + torch.from_numpy(rel)
    oracle = scores / math.sqrt(d) + torch.matmul(tlq, tlk.transpose(-1, -2)) / math.sqrt(d // r)
    np.testing.assert_allclose(plain, oracle.numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-13)


def test_bi_acm_scores_is_exact_when_the_scales_are_powers_of_two():
    # base size: d = 64, r = 4 -> sqrt(64) = 8 and sqrt(16) = 4 scale exactly
    rng = np.random.default_rng(0)
    q, k, _, lq, lk, _ = _qkv(rng, 1, 2, 16, 64, 4, np.float32)
    fused = attention.bi_acm_scores(q, k, lq, lk, 4)
    text = attention.text_attention_scores(q, k)
    layout = attention.layout_attention_scores(lq, lk, 4)
    # one product over d + d/r terms vs two products summed: equal up to the summation order
    np.testing.assert_allclose(fused, text + layout, rtol=0, atol=2e-5)


def test_bi_acm_scores_records_the_oracles_summands_only_while_tracing():
    rng = np.random.default_rng(1)
    q, k, _, lq, lk, _ = _qkv(rng, 1, 2, 5, 8, 2, np.float64)
    with trace.tracing() as rec:
        attention.bi_acm_scores(q, k, lq, lk, 2)
    assert list(rec.tensors) == ["tmp_attention_scores", "tmp_layout_attention_scores"]
    np.testing.assert_allclose(rec.tensors["tmp_attention_scores"], q @ k.swapaxes(-1, -2) / math.sqrt(8))
    np.testing.assert_allclose(
        rec.tensors["tmp_layout_attention_scores"], lq @ lk.swapaxes(-1, -2) / math.sqrt(4)
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bi_acm_contexts_fused_equals_plain_bit_for_bit(dtype):
    rng = np.random.default_rng(2)
    _, _, v, _, _, lv = _qkv(rng, 2, 3, 7, 8, 4, dtype)
    probs = ops.softmax(rng.standard_normal((2, 3, 7, 7)).astype(dtype))
    fused = attention.bi_acm_contexts(probs, v, lv)
    plain = attention.bi_acm_contexts_plain(probs, v, lv)
    for f, p in zip(fused, plain, strict=True):
        assert f.shape == p.shape and f.dtype == dtype
        np.testing.assert_allclose(f, p, rtol=0, atol=2e-6 if dtype == np.float32 else 1e-14)
    # against torch: (P V).permute(0, 2, 1, 3).reshape(b, s, n * d)
    want = torch.matmul(torch.from_numpy(probs), torch.from_numpy(v)).permute(0, 2, 1, 3).reshape(2, 7, 24)
    np.testing.assert_allclose(fused[0], want.numpy(), rtol=0, atol=2e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_layer_norm_equals_its_plain_twin_and_torch(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 16)).astype(dtype)
    res = rng.standard_normal((3, 5, 16)).astype(dtype)
    w, b = rng.standard_normal(16).astype(dtype), rng.standard_normal(16).astype(dtype)
    x0, res0 = x.copy(), res.copy()
    fused = ops.add_layer_norm(x, res, w, b, 1e-5)
    np.testing.assert_array_equal(fused, ops.layer_norm(x + res, w, b, 1e-5))  # bit for bit
    np.testing.assert_array_equal(x, x0)  # inputs untouched
    np.testing.assert_array_equal(res, res0)
    want = torch.nn.functional.layer_norm(
        torch.from_numpy(x + res), (16,), torch.from_numpy(w), torch.from_numpy(b), 1e-5
    )
    np.testing.assert_allclose(fused, want.numpy(), rtol=0, atol=1e-5 if dtype == np.float32 else 1e-13)


def test_attention_probs_does_not_change_its_scores():
    rng = np.random.default_rng(4)
    scores = rng.standard_normal((1, 2, 3, 4))
    mask = np.zeros((1, 1, 1, 4))
    mask[..., -1] = np.finfo(np.float64).min
    before = scores.copy()
    probs = attention.attention_probs(scores, mask)
    np.testing.assert_array_equal(scores, before)
    np.testing.assert_allclose(probs[..., -1], 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0)


def test_softmax_over_an_empty_axis_returns_it_as_torch():
    x = np.zeros((2, 3, 0))
    out = ops.softmax(x, axis=-1)
    assert out.shape == (2, 3, 0)
    assert torch.softmax(torch.zeros(2, 3, 0), dim=-1).shape == (2, 3, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mask_kind", ["none", "zeros", "padding", "full"])
def test_attention_probs_equals_its_plain_twin_bit_for_bit(dtype, mask_kind):
    rng = np.random.default_rng(5)
    scores = (rng.standard_normal((3, 4, 40, 40)) * 3).astype(dtype)
    mask = None
    if mask_kind != "none":
        keep = np.ones((3, 1, 1, 40), dtype) if mask_kind == "zeros" else (rng.random((3, 1, 1, 40)) > 0.3)
        if mask_kind == "full":
            keep = rng.random((3, 1, 40, 40)) > 0.3
        mask = attention.extended_attention_mask(
            keep.reshape(keep.shape[0], *keep.shape[2:]).squeeze(1)
            if keep.shape[2] == 1
            else keep.reshape(3, 40, 40),
            dtype,
        )
    before = scores.copy()
    fused = attention.attention_probs(scores, mask)
    np.testing.assert_array_equal(fused, attention.attention_probs_plain(scores, mask))
    np.testing.assert_array_equal(scores, before)
    want = torch.softmax(torch.from_numpy(scores if mask is None else scores + mask), dim=-1)
    np.testing.assert_allclose(fused, want.numpy(), rtol=0, atol=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_context_equals_its_plain_twin_bit_for_bit(dtype):
    rng = np.random.default_rng(6)
    probs = ops.softmax(rng.standard_normal((2, 3, 7, 9)).astype(dtype))
    value = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    fused = attention.attention_context(probs, value)
    np.testing.assert_array_equal(fused, attention.attention_context_plain(probs, value))
    assert fused.shape == (2, 7, 24) and fused.flags.c_contiguous


def test_linear_act_equals_its_plain_twin():
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((3, 50, 16)), rng.standard_normal((64, 16)), rng.standard_normal(64)
    # float64: the same erf, bit for bit
    np.testing.assert_array_equal(ops.linear_act(x, w, b, "gelu"), ops.linear_act_plain(x, w, b, "gelu"))
    # float32: GELU in float32 arithmetic, within 1e-6 * max(1, |x|) of the exact GELU (torch in float64)
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    pre = torch.from_numpy(x32.astype(np.float64)) @ torch.from_numpy(
        w32.astype(np.float64)
    ).T + torch.from_numpy(b32.astype(np.float64))
    exact = torch.nn.functional.gelu(pre).numpy()
    got = ops.linear_act(x32, w32, b32, "gelu")
    assert got.dtype == np.float32
    bound = 1e-6 * np.maximum(1.0, np.abs(pre.numpy())) + 4e-6 * np.abs(
        pre.numpy()
    )  # + the GEMM's float32 rounding
    assert np.all(np.abs(got - exact) <= bound)
    # another activation runs the plain twin
    np.testing.assert_array_equal(ops.linear_act(x, w, b, "relu"), np.maximum(x @ w.T + b, 0.0))


def test_attention_probs_in_place_consumes_its_scores_and_equals_the_plain_twin():
    rng = np.random.default_rng(8)
    scores = rng.standard_normal((2, 3, 6, 6))
    mask = attention.extended_attention_mask(np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]), np.float64)
    want = attention.attention_probs_plain(scores, mask)
    got = attention.attention_probs_(scores, mask)
    assert got is scores  # the scores' memory now holds the probabilities
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_layer_norm_in_place_consumes_x_and_equals_the_plain_twin(dtype):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 300, 768)).astype(dtype)  # large enough for the blocked kernel
    res = rng.standard_normal((2, 300, 768)).astype(dtype)
    w, b = rng.standard_normal(768).astype(dtype), rng.standard_normal(768).astype(dtype)
    want = ops.layer_norm(x + res, w, b, 1e-12)
    got = ops.add_layer_norm_(x, res, w, b, 1e-12)
    assert got is x
    np.testing.assert_array_equal(got, want)
