"""The attention and BERT-block formulas against the oracle's arithmetic (torch), in both modes.

Each test runs with the fast kernels and with the plain formulas only (the ``mode`` fixture);
expected values come from torch, written as the oracle writes them. ``tests/test_fast.py``
checks each kernel against its formula.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from refimpl import attention, bert, bi_acm, ops, switch, trace


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
def test_bi_acm_scores_equals_the_oracle(b, n, s, d, r, relative, seed):
    if d % r:
        return
    rng = np.random.default_rng(seed)
    q, k, _, lq, lk, _ = _qkv(rng, b, n, s, d, r, np.float64)
    rel = rng.standard_normal((b, n, s, s)) if relative else None
    # the oracle's lines (modeling_lilt.py LiltSelfAttention.forward), in torch
    tq, tk, tlq, tlk = (torch.from_numpy(a) for a in (q, k, lq, lk))
    scores = torch.matmul(tq, tk.transpose(-1, -2))
    if rel is not None:
        scores = scores + torch.from_numpy(rel)
    oracle = scores / math.sqrt(d) + torch.matmul(tlq, tlk.transpose(-1, -2)) / math.sqrt(d // r)
    for use in (switch.reference, switch.fast):
        with use():
            got = bi_acm.bi_acm_scores(q, k, lq, lk, r, rel)
        np.testing.assert_allclose(got, oracle.numpy(), rtol=0, atol=1e-13, err_msg=use.__name__)


def test_bi_acm_scores_records_the_oracles_summands_while_tracing(mode):
    rng = np.random.default_rng(1)
    q, k, _, lq, lk, _ = _qkv(rng, 1, 2, 5, 8, 2, np.float64)
    with trace.tracing() as rec:
        bi_acm.bi_acm_scores(q, k, lq, lk, 2)
    assert list(rec.tensors) == ["tmp_attention_scores", "tmp_layout_attention_scores"]
    np.testing.assert_allclose(rec.tensors["tmp_attention_scores"], q @ k.swapaxes(-1, -2) / math.sqrt(8))
    np.testing.assert_allclose(
        rec.tensors["tmp_layout_attention_scores"], lq @ lk.swapaxes(-1, -2) / math.sqrt(4)
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bi_acm_contexts_equal_the_oracle(mode, dtype):
    rng = np.random.default_rng(2)
    _, _, v, _, _, lv = _qkv(rng, 2, 3, 7, 8, 4, dtype)
    probs = ops.softmax(rng.standard_normal((2, 3, 7, 7)).astype(dtype))
    tol = 2e-6 if dtype == np.float32 else 1e-14
    context, layout_context = bi_acm.bi_acm_contexts(probs, v, lv)
    # torch: (P V).permute(0, 2, 1, 3).reshape(b, s, n * d)
    for got, value, width in ((context, v, 24), (layout_context, lv, 6)):
        want = torch.matmul(torch.from_numpy(probs), torch.from_numpy(value)).permute(0, 2, 1, 3)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want.reshape(2, 7, width).numpy(), rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_add_and_norm_equals_the_oracle(mode, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 16)).astype(dtype)
    res = rng.standard_normal((3, 5, 16)).astype(dtype)
    dense = {
        "weight": rng.standard_normal((16, 16)).astype(dtype),
        "bias": rng.standard_normal(16).astype(dtype),
    }
    norm = {"weight": rng.standard_normal(16).astype(dtype), "bias": rng.standard_normal(16).astype(dtype)}
    x0, res0 = x.copy(), res.copy()
    got = bert.add_and_norm(x, res, dense=dense, LayerNorm=norm, layer_norm_eps=1e-5)
    np.testing.assert_array_equal(x, x0)  # inputs untouched
    np.testing.assert_array_equal(res, res0)
    t = {k: torch.from_numpy(v) for k, v in {"x": x, "res": res, **dense}.items()}
    h = torch.nn.functional.linear(t["x"], t["weight"], t["bias"]) + t["res"]
    want = torch.nn.functional.layer_norm(
        h, (16,), torch.from_numpy(norm["weight"]), torch.from_numpy(norm["bias"]), 1e-5
    )
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=2e-5 if dtype == np.float32 else 1e-13)


def test_attention_probs_does_not_change_its_scores(mode):
    rng = np.random.default_rng(4)
    scores = rng.standard_normal((1, 2, 3, 4))
    mask = np.zeros((1, 1, 1, 4))
    mask[..., -1] = np.finfo(np.float64).min
    before = scores.copy()
    probs = attention.attention_probs(scores, mask)
    np.testing.assert_array_equal(scores, before)
    np.testing.assert_allclose(probs[..., -1], 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0)


def test_softmax_over_an_empty_axis_returns_it_as_torch(mode):
    x = np.zeros((2, 3, 0))
    out = ops.softmax(x, axis=-1)
    assert out.shape == (2, 3, 0)
    assert torch.softmax(torch.zeros(2, 3, 0), dim=-1).shape == (2, 3, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mask_kind", ["none", "zeros", "padding", "full"])
def test_attention_probs_equal_the_oracle(mode, dtype, mask_kind):
    rng = np.random.default_rng(5)
    scores = (rng.standard_normal((3, 4, 40, 40)) * 3).astype(dtype)
    mask = None
    if mask_kind != "none":
        keep = np.ones((3, 40), dtype) if mask_kind == "zeros" else (rng.random((3, 40)) > 0.3)
        if mask_kind == "full":
            keep = rng.random((3, 40, 40)) > 0.3
        mask = attention.extended_attention_mask(keep, dtype)
    before = scores.copy()
    got = attention.attention_probs(scores, mask)
    np.testing.assert_array_equal(scores, before)
    want = torch.softmax(torch.from_numpy(scores if mask is None else scores + mask), dim=-1)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scaled_dot_product_attention_equals_the_oracle(mode, dtype):
    rng = np.random.default_rng(6)
    q, k, v, _, _, _ = _qkv(rng, 2, 3, 9, 8, 1, dtype)
    mask = attention.extended_attention_mask(rng.random((2, 9)) > 0.3, dtype)
    head_mask = rng.random((1, 3, 1, 1)).astype(dtype)
    context, probs = attention.scaled_dot_product_attention(q, k, v, mask, head_mask)
    t = [torch.from_numpy(a) for a in (q, k, v, mask, head_mask)]
    p = torch.softmax(torch.matmul(t[0], t[1].transpose(-1, -2)) / math.sqrt(8) + t[3], dim=-1) * t[4]
    c = torch.matmul(p, t[2]).permute(0, 2, 1, 3).reshape(2, 9, 24)
    tol = 2e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(probs, p.numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(context, c.numpy(), rtol=0, atol=tol)
    assert context.flags.c_contiguous


def test_intermediate_equals_the_oracle():
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((3, 50, 16)), rng.standard_normal((64, 16)), rng.standard_normal(64)
    pre = torch.nn.functional.linear(*(torch.from_numpy(a) for a in (x, w, b)))
    for use in (switch.reference, switch.fast):
        with use():
            got = bert.intermediate(x, dense={"weight": w, "bias": b}, hidden_act="gelu")
        np.testing.assert_allclose(got, torch.nn.functional.gelu(pre).numpy(), rtol=0, atol=1e-13)
    # float32: the fast GELU in float32 arithmetic is within 1e-6 * max(1, |x|) of the exact
    # GELU (torch in float64), plus the float32 GEMM's rounding
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    pre = torch.nn.functional.linear(*(torch.from_numpy(a.astype(np.float64)) for a in (x32, w32, b32)))
    exact = torch.nn.functional.gelu(pre).numpy()
    bound = 1e-6 * np.maximum(1.0, np.abs(pre.numpy())) + 4e-6 * np.abs(pre.numpy())
    for use in (switch.reference, switch.fast):
        with use():
            got = bert.intermediate(x32, dense={"weight": w32, "bias": b32}, hidden_act="gelu")
        assert got.dtype == np.float32 and np.all(np.abs(got - exact) <= bound), use.__name__
