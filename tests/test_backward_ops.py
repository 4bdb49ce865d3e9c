"""The hand-written backward of every op against torch.autograd (the oracle), and against central
finite differences (an independent check of the calculus).

Each backward is called with the activations its forward kept and an upstream gradient ``G``;
torch differentiates ``L = sum(f(x) * G)`` for the same ``f`` written as transformers 4.56.2
writes it (``torch.nn.functional``, the heads' loss code, ``LiltSelfAttention`` and
``LxmertAttention`` themselves). Tolerance: float64, ``max|ours - torch| <= 1e-12 * max|torch|``
per tensor. Shapes and values are drawn by hypothesis, small; the edges are drawn or pinned:
padding rows, ignored labels (all of them too), the three reductions, fully masked softmax rows,
head masks with zeros, non-power-of-two head sizes, the smooth-L1 switch point.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _finite_diff import check_gradients
from _strict import strict_namespace, unwrap_tree, wrap_tree
from hypothesis import given
from hypothesis import strategies as st

from refimpl import activations, attention, bi_acm, losses, ops
from refimpl.lilt import heads as lilt_heads
from refimpl.lxmert import heads as lxmert_heads

TOL = 1e-12
MIN = float(np.finfo(np.float64).min)  # the additive mask's "minus infinity", as the oracle's

seeds = st.integers(0, 2**32 - 1)
reductions = st.sampled_from(["mean", "sum", "none"])


@pytest.fixture(autouse=True)
def no_floating_point_warnings():
    """Overflow / invalid / divide-by-zero in NumPy fails the test (underflow to 0 is fine)."""
    with np.errstate(over="raise", invalid="raise", divide="raise"), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def close(name: str, ours, theirs, tol: float = TOL, scale: float = 0.0) -> float:
    """``max|ours - theirs| <= tol * max(max|theirs|, scale)``; returns the relative error.

    ``scale`` is for results that cancel (a softmax gradient of a near one-hot row, a key bias
    whose exact gradient is 0): there both programs carry a rounding error of ``eps`` times the
    size of the terms, ``scale``, not of the result."""
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach().numpy()
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != torch {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"{name}: dtype {ours.dtype} != torch {theirs.dtype}"
    if ours.size == 0:
        return 0.0
    err = float(np.abs(ours - theirs).max())
    scale = max(float(np.abs(theirs).max()), scale)
    assert err <= tol * scale or err == 0.0, (
        f"{name}: max |ours - torch| = {err:.3e} > {tol:g} * max|torch| = {tol * scale:.3e}"
    )
    return err / scale if scale else 0.0


def t(a, grad: bool = False) -> torch.Tensor:
    x = torch.tensor(a)
    return x.requires_grad_(grad) if grad else x


def randn(rng, *shape, scale: float = 1.0):
    return rng.standard_normal(shape) * scale


def upstream(rng, y: torch.Tensor) -> np.ndarray:
    return rng.standard_normal(tuple(y.shape))


def backprop(y: torch.Tensor, g) -> None:
    """``L = sum(y * G)``; ``g`` a scalar for a 0-d ``y``."""
    (y * torch.as_tensor(g, dtype=y.dtype)).sum().backward()


leads = st.lists(st.integers(1, 4), max_size=3).map(tuple)

# --------------------------------------------------------------------------------------------
# linear, layer_norm, activations, softmax
# --------------------------------------------------------------------------------------------


@given(seed=seeds, lead=leads, n_in=st.integers(1, 12), n_out=st.integers(1, 12), bias=st.booleans())
def test_linear_backward(seed, lead, n_in, n_out, bias):
    rng = np.random.default_rng(seed)
    x, w = randn(rng, *lead, n_in), randn(rng, n_out, n_in)
    b = randn(rng, n_out) if bias else None
    xt, wt = t(x, True), t(w, True)
    bt = t(b, True) if bias else None
    y = F.linear(xt, wt, bt)
    g = upstream(rng, y)
    backprop(y, g)
    dx, dw, db = ops.linear_backward(g, x, w, b)
    close("dx", dx, xt.grad)
    close("dweight", dw, wt.grad)
    if bias:
        close("dbias", db, bt.grad)
    else:
        assert db is None


@given(
    seed=seeds,
    lead=leads,
    d=st.integers(2, 16),
    eps=st.sampled_from([1e-12, 1e-5]),
    scale=st.sampled_from([1e-2, 1.0, 30.0]),
    shift=st.sampled_from([0.0, 5.0]),
)
def test_layer_norm_backward(seed, lead, d, eps, scale, shift):
    rng = np.random.default_rng(seed)
    shift = shift if scale >= 1 else 0.0  # |mean| >> std is ill-conditioned for both programs alike
    x = randn(rng, *lead, d, scale=scale) + shift
    w, b = 1 + 0.1 * randn(rng, d), randn(rng, d)
    xt, wt, bt = t(x, True), t(w, True), t(b, True)
    y = F.layer_norm(xt, (d,), wt, bt, eps)
    g = upstream(rng, y)
    backprop(y, g)
    dx, dw, db = ops.layer_norm_backward(g, x, w, b, eps)
    # dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) cancels (for d = 2 exactly, up to eps):
    # its terms are of size rstd * |dy * w|, and x_hat carries eps * |x| * rstd from x - mean
    rstd = float((1 / np.sqrt(x.var(axis=-1) + eps)).max())
    conditioning = max(1.0, float(np.abs(x).max()) * rstd)
    close("dx", dx, xt.grad, scale=rstd * float(np.abs(g * w).max()) * conditioning)
    close("dweight", dw, wt.grad)
    close("dbias", db, bt.grad)


def test_layer_norm_backward_of_one_feature():
    """d = 1: x_hat is 0, so dx and dweight are exactly 0 here; torch's formula leaves a rounding
    residue of about eps * rstd * |dy * w| (1e-11 for eps = 1e-12), which is not a gradient."""
    x, w, b = np.array([[0.3], [-2.0]]), np.array([1.5]), np.array([0.2])
    xt, wt = t(x, True), t(w, True)
    F.layer_norm(xt, (1,), wt, t(b), 1e-12).sum().backward()
    dx, dw, db = ops.layer_norm_backward(np.ones((2, 1)), x, w, b, 1e-12)
    assert not dx.any() and not dw.any() and (db == 2.0).all()
    assert float(xt.grad.abs().max()) <= 1e-9 and float(wt.grad.abs().max()) <= 1e-9


def _gelu_points(rng, n):
    """Normal values plus the far tails (where Phi is 0 or 1 and x phi(x) underflows) and 0."""
    return np.concatenate(
        [randn(rng, n, scale=3.0), [0.0, -0.0, 1e-8, -1e-8, 6.5, -6.5, 12.0, -12.0, 40.0, -40.0]]
    )


@given(seed=seeds, n=st.integers(1, 40))
def test_gelu_backward(seed, n):
    rng = np.random.default_rng(seed)
    x = _gelu_points(rng, n)
    xt = t(x, True)
    y = F.gelu(xt)
    g = upstream(rng, y)
    backprop(y, g)
    close("gelu dx", activations.gelu_backward(g, x), xt.grad)


@given(seed=seeds, n=st.integers(1, 40))
def test_tanh_and_relu_backward(seed, n):
    rng = np.random.default_rng(seed)
    x = np.concatenate([randn(rng, n, scale=3.0), [0.0, -0.0, 25.0, -25.0]])  # relu'(0) = 0, as torch
    for fn, torch_fn, backward in (
        (activations.tanh, torch.tanh, activations.tanh_backward),
        (activations.relu, torch.relu, activations.relu_backward),
    ):
        xt = t(x, True)
        y = torch_fn(xt)
        g = upstream(rng, y)
        backprop(y, g)
        close(f"{fn.__name__} dx", backward(g, fn(x)), xt.grad)


@given(
    seed=seeds,
    lead=st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple),
    k=st.integers(1, 9),
    masked=st.sampled_from(["none", "some", "rows"]),
    scale=st.sampled_from([0.1, 1.0, 20.0]),
)
def test_softmax_backward_with_masks(seed, lead, k, masked, scale):
    """Partially masked rows (masked keys get nothing) and fully masked rows (uniform in the
    forward; they still pass a gradient back, as in torch)."""
    rng = np.random.default_rng(seed)
    s = randn(rng, *lead, k, scale=scale)
    mask = np.zeros_like(s)
    if masked != "none":
        mask[rng.random(s.shape) < 0.4] = MIN
    if masked == "rows":
        mask[..., 0, :] = MIN  # every key of the first row (or all rows, for lead = (..., 1))
    st_ = t(s, True)
    p = torch.softmax(st_ + t(mask), dim=-1)
    g = upstream(rng, p)
    backprop(p, g)
    probs = ops.softmax(s + mask)
    close("softmax dS", ops.softmax_backward(g, probs), st_.grad, scale=float(np.abs(g * probs).max()))


def test_softmax_backward_other_axis():
    rng = np.random.default_rng(1)
    s = randn(rng, 3, 4, 5)
    st_ = t(s, True)
    p = torch.softmax(st_, dim=1)
    g = upstream(rng, p)
    backprop(p, g)
    close("softmax dS axis=1", ops.softmax_backward(g, ops.softmax(s, axis=1), axis=1), st_.grad)


# --------------------------------------------------------------------------------------------
# embeddings
# --------------------------------------------------------------------------------------------


@given(
    seed=seeds,
    vocab=st.integers(1, 30),
    dim=st.integers(1, 8),
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple),
    padding=st.sampled_from([None, 0, 1, -1]),
)
def test_embedding_backward(seed, vocab, dim, shape, padding):
    rng = np.random.default_rng(seed)
    padding = None if padding is None or padding >= vocab else padding
    ids = rng.integers(0, vocab, shape)
    if padding is not None and ids.size:
        ids.reshape(-1)[::2] = padding % vocab  # plenty of padding positions
    w = randn(rng, vocab, dim)
    wt = t(w, True)
    y = F.embedding(t(ids), wt, padding_idx=padding)
    g = upstream(rng, y)
    backprop(y, g)
    dw = ops.embedding_backward(g, ids, vocab, padding_idx=padding)
    close("dweight", dw, wt.grad)
    if padding is not None:
        assert not dw[padding].any(), "the padding row got a gradient"
    # accumulating into a buffer (a tied or twice-used table): the padding row keeps its value
    buf = randn(rng, vocab, dim)
    want = buf + wt.grad.numpy()
    if padding is not None:
        want[padding] = buf[padding]
    got = ops.embedding_backward(g, ids, vocab, padding_idx=padding, dweight=buf.copy())
    close("dweight accumulated", got, want, scale=float(np.abs(g).sum()))  # added in another order


class _NotNumpy:
    """NumPy's functions under another module object (so that code takes its non-NumPy path)."""

    def __getattr__(self, name):
        return getattr(np, name)


def test_embedding_backward_layers_equal_add_at_bit_for_bit():
    """The namespace-generic scatter (collision-free layers) sums in add.at's order: same bits."""
    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(0, 50, 300), np.full(40, 7), rng.integers(0, 3, 60)])
    rng.shuffle(ids)
    g = randn(rng, ids.size, 5, scale=1e3) + randn(rng, ids.size, 5, scale=1e-3)
    want = np.zeros((50, 5))
    np.add.at(want, ids, g)
    got = np.zeros((50, 5))
    ops._scatter_add_rows(_NotNumpy(), got, ids, g)  # any namespace but numpy's: the layered path
    np.testing.assert_array_equal(got, want)


def test_embedding_backward_rejects_bad_input():
    g = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"padding_idx = 5 is outside \[-5, 4\]"):
        ops.embedding_backward(g, np.array([0, 1]), 5, padding_idx=5)
    with pytest.raises(ValueError, match=r"dweight has shape \(4, 3\), expected \[5, 3\]"):
        ops.embedding_backward(g, np.array([0, 1]), 5, dweight=np.zeros((4, 3)))


def test_which_oracle_embeddings_have_a_padding_row():
    """The tables embedding_backward's docstring names as having a padding row, read off
    transformers 4.56.2's modules (LiLT: pad_token_id; LXMERT: 0); every other table has none."""
    from _oracle import tiny_lilt_config, tiny_lxmert_config
    from transformers import LiltModel, LxmertModel

    lilt_cfg = tiny_lilt_config(pad_token_id=3, position_embedding_type="relative_key")
    lilt = LiltModel(lilt_cfg)
    found = {n: m.padding_idx for n, m in lilt.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert {n: p for n, p in found.items() if p is not None} == {
        "embeddings.word_embeddings": 3,
        "embeddings.position_embeddings": 3,
        "layout_embeddings.box_position_embeddings": 3,
    }
    assert "encoder.layer.0.attention.self.distance_embedding" in found  # present, without a padding row
    lxmert = LxmertModel(tiny_lxmert_config(pad_token_id=5))
    found = {n: m.padding_idx for n, m in lxmert.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert found == {
        "embeddings.word_embeddings": 0,
        "embeddings.position_embeddings": 0,
        "embeddings.token_type_embeddings": 0,
    }


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------


@given(
    seed=seeds,
    n=st.integers(1, 12),
    c=st.integers(1, 7),
    reduction=reductions,
    ignored=st.sampled_from([0.0, 0.3, 1.0]),
    ignore_index=st.sampled_from([-100, 0, 3]),
    scale=st.sampled_from([1.0, 30.0]),
)
def test_cross_entropy_backward(seed, n, c, reduction, ignored, ignore_index, scale):
    """ignore_index anywhere (inside the classes too), all-ignored (mean: NaN loss, zero gradient)."""
    rng = np.random.default_rng(seed)
    logits = randn(rng, n, c, scale=scale)
    labels = rng.integers(0, c, n)
    labels[rng.random(n) < ignored] = ignore_index
    lt = t(logits, True)
    loss = F.cross_entropy(lt, t(labels), ignore_index=ignore_index, reduction=reduction)
    g = upstream(rng, loss) if reduction == "none" else np.float64(rng.standard_normal())
    backprop(loss, g)
    got = losses.cross_entropy_backward(g, logits, labels, ignore_index=ignore_index, reduction=reduction)
    close("dlogits", got, lt.grad)
    if (labels == ignore_index).all():
        assert not got.any()


def test_cross_entropy_all_ignored_mean_is_nan_with_zero_gradient():
    logits = np.random.default_rng(0).standard_normal((3, 4))
    labels = np.full(3, -100)
    lt = t(logits, True)
    loss = F.cross_entropy(lt, t(labels))
    loss.backward()
    assert torch.isnan(loss) and np.isnan(losses.cross_entropy(logits, labels))
    assert not lt.grad.any()
    np.testing.assert_array_equal(losses.cross_entropy_backward(1.0, logits, labels), np.zeros((3, 4)))


def test_cross_entropy_backward_logits_with_leading_axes():
    rng = np.random.default_rng(2)
    logits, labels = randn(rng, 2, 3, 5), rng.integers(0, 5, (2, 3))
    lt = t(logits, True)
    F.cross_entropy(lt.reshape(-1, 5), t(labels).reshape(-1)).backward()
    close("dlogits", losses.cross_entropy_backward(1.0, logits, labels), lt.grad)


@given(
    seed=seeds,
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    reduction=reductions,
)
def test_mse_and_bce_backward(seed, shape, reduction):
    rng = np.random.default_rng(seed)
    x, target = randn(rng, *shape, scale=3.0), randn(rng, *shape)
    probs = rng.random(shape)
    for name, torch_fn, backward, tgt in (
        ("mse", F.mse_loss, losses.mse_loss_backward, target),
        ("bce", F.binary_cross_entropy_with_logits, losses.bce_with_logits_backward, probs),
    ):
        xt = t(x, True)
        loss = torch_fn(xt, t(tgt), reduction=reduction)
        g = upstream(rng, loss) if reduction == "none" else np.float64(rng.standard_normal())
        backprop(loss, g)
        close(f"{name} dinput", backward(g, x, tgt, reduction=reduction), xt.grad)


@given(
    seed=seeds,
    n=st.integers(1, 20),
    beta=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    reduction=reductions,
)
def test_smooth_l1_backward(seed, n, beta, reduction):
    """The switch point |z| = beta exactly, z = 0 (sign(0) = 0 for beta = 0), and beta = 0 (L1)."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([randn(rng, n, scale=2.0), [beta, -beta, 0.0, 1e-9, -3 * beta - 1]])
    target = np.round(randn(rng, n + 5) * 8) / 8  # dyadic, so target + beta - target == beta exactly
    x = target + z
    assert (np.abs(x - target)[n : n + 2] == beta).all()
    xt = t(x, True)
    loss = F.smooth_l1_loss(xt, t(target), beta=beta, reduction=reduction)
    g = upstream(rng, loss) if reduction == "none" else np.float64(rng.standard_normal())
    backprop(loss, g)
    got = losses.smooth_l1_loss_backward(g, x, target, beta=beta, reduction=reduction)
    close("smooth_l1 dinput", got, xt.grad)


def test_loss_backward_rejects_a_wrong_upstream_shape():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="grad_output must be a scalar"):
        losses.mse_loss_backward(np.ones(2), x, x)
    with pytest.raises(ValueError, match=r"reduction='none' needs the loss's shape \(2, 3\)"):
        losses.mse_loss_backward(np.ones(2), x, x, reduction="none")
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.bce_with_logits_backward(1.0, x, x, reduction="avg")


# --------------------------------------------------------------------------------------------
# the heads' losses, as transformers' heads write them
# --------------------------------------------------------------------------------------------


def _oracle_sequence_classification_loss(logits, labels, num_labels, problem_type):
    """LiltForSequenceClassification.forward's loss lines (transformers 4.56.2)."""
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif num_labels > 1 and (labels.dtype == torch.long or labels.dtype == torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels)


@pytest.mark.parametrize(
    "num_labels, kind, batch",
    [
        (1, "regression", 3),
        (1, "regression", 1),  # squeeze() of [1, 1] is 0-d
        (3, "regression", 4),
        (3, "single_label_classification", 4),
        (3, "multi_label_classification", 4),
        (3, None, 4),  # chosen from the labels' dtype: int64 -> single label
        (4, None, 2),  # float labels -> multi label
    ],
)
def test_sequence_classification_loss_backward(num_labels, kind, batch):
    rng = np.random.default_rng(num_labels * 10 + batch)
    logits = randn(rng, batch, num_labels)
    if kind == "single_label_classification" or (kind is None and num_labels == 3):
        labels = rng.integers(0, num_labels, batch)
        labels[0] = -100  # CrossEntropyLoss's default ignore_index
    elif kind == "regression":
        labels = randn(rng, batch) if num_labels == 1 else randn(rng, batch, num_labels)
    else:
        labels = rng.integers(0, 2, (batch, num_labels)).astype(np.float64)
    lt = t(logits, True)
    loss = _oracle_sequence_classification_loss(lt, t(labels), num_labels, kind)
    loss.backward()
    ours = lilt_heads.sequence_classification_loss(logits, labels, num_labels=num_labels, problem_type=kind)
    np.testing.assert_allclose(ours, loss.detach().numpy(), rtol=1e-14)
    got = lilt_heads.sequence_classification_loss_backward(
        1.0, logits, labels, num_labels=num_labels, problem_type=kind
    )
    close("dlogits", got, lt.grad)


@given(seed=seeds, b=st.integers(1, 3), s=st.integers(1, 6), c=st.integers(2, 5), all_ignored=st.booleans())
def test_token_classification_loss_backward(seed, b, s, c, all_ignored):
    rng = np.random.default_rng(seed)
    logits, labels = randn(rng, b, s, c), rng.integers(0, c, (b, s))
    labels[rng.random((b, s)) < 0.3] = -100
    if all_ignored:
        labels[:] = -100
    lt = t(logits, True)
    F.cross_entropy(lt.view(-1, c), t(labels).view(-1)).backward()
    close("dlogits", lilt_heads.token_classification_loss_backward(1.0, logits, labels), lt.grad)


@given(seed=seeds, b=st.integers(1, 4), s=st.integers(1, 7), column=st.booleans())
def test_question_answering_loss_backward(seed, b, s, column):
    """Positions below 0 and above seq are clamped; seq itself (and what clamps to it) is ignored."""
    rng = np.random.default_rng(seed)
    start, end = randn(rng, b, s), randn(rng, b, s)
    sp = rng.integers(-3, s + 4, b)
    ep = rng.integers(-3, s + 4, b)
    if column:
        sp, ep = sp[:, None], ep[:, None]
    st_, et = t(start, True), t(end, True)
    # LiltForQuestionAnswering.forward's loss lines
    spt, ept = t(sp), t(ep)
    if len(spt.size()) > 1:
        spt, ept = spt.squeeze(-1), ept.squeeze(-1)
    ignored = st_.size(1)
    spt, ept = spt.clamp(0, ignored), ept.clamp(0, ignored)
    loss = (
        F.cross_entropy(st_, spt, ignore_index=ignored) + F.cross_entropy(et, ept, ignore_index=ignored)
    ) / 2
    g = rng.standard_normal()
    backprop(loss, g)
    d_start, d_end = lilt_heads.question_answering_loss_backward(np.float64(g), start, end, sp, ep)
    close("dstart_logits", d_start, st_.grad)
    close("dend_logits", d_end, et.grad)


@given(
    seed=seeds, b=st.integers(1, 3), boxes=st.integers(1, 5), kind=st.sampled_from(["obj", "attr", "feat"])
)
def test_visual_loss_backward(seed, b, boxes, kind):
    """LxmertForPreTraining's visual losses: per-region CE (-100 regions) or smooth-L1 averaged over
    the features, times the confidence, mean over every region, times the 6.67 normaliser."""
    rng = np.random.default_rng(seed)
    num = {"obj": 7, "attr": 3, "feat": 6}[kind]
    scores = randn(rng, b, boxes, num, scale=2.0)
    if kind == "feat":
        label = randn(rng, b * boxes, num)
    else:
        label = rng.integers(0, num, b * boxes)
        label[rng.random(b * boxes) < 0.3] = -100
    conf = rng.random(b * boxes)
    normalizer = 6.67
    st_ = t(scores, True)
    # the oracle's lines (loss_fcts "visual_ce" / "l2" with reduction="none")
    loss_fct = (
        torch.nn.SmoothL1Loss(reduction="none")
        if kind == "feat"
        else torch.nn.CrossEntropyLoss(reduction="none")
    )
    visual_loss = loss_fct(st_.view(-1, num), t(label).view((-1, num) if kind == "feat" else (-1,)))
    if visual_loss.dim() > 1:
        visual_loss = visual_loss.mean(1)
    visual_loss = (visual_loss * t(conf).view(-1)).mean() * normalizer
    g = rng.standard_normal()
    backprop(visual_loss, g)
    loss_kind = "l2" if kind == "feat" else "visual_ce"
    ours = lxmert_heads.visual_loss(scores, label, conf, kind=loss_kind, normalizer=normalizer)
    np.testing.assert_allclose(ours, visual_loss.detach().numpy(), rtol=1e-13)
    got = lxmert_heads.visual_loss_backward(
        np.float64(g), scores, label, conf, kind=loss_kind, normalizer=normalizer
    )
    close("dscores", got, st_.grad)


# --------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------
# The forward pieces are written out here in NumPy (the oracle's formulas), so that these tests
# depend on the backward functions alone.


def split(x, n):
    """[b, s, n*d] -> [b, n, s, d]."""
    b, s, f = x.shape
    return x.reshape(b, s, n, f // n).transpose(0, 2, 1, 3)


def merge(x):
    """[b, n, s, d] -> [b, s, n*d]."""
    b, n, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, n * d)


def distance_table(weight, s, max_pos):
    """[s, s, d]: row l - r + P - 1 of the distance embedding."""
    pos = np.arange(s)
    return weight[pos[:, None] - pos[None, :] + max_pos - 1]


def np_relative_scores(q, k, e, relative):
    r = np.einsum("bhld,lrd->bhlr", q, e)
    if relative == "relative_key_query":
        r = r + np.einsum("bhrd,lrd->bhlr", k, e)
    return r


def np_bi_acm_scores(q, k, ql, kl, r, rel=None):
    text = q @ k.swapaxes(-1, -2)
    if rel is not None:
        text = text + rel
    return text / math.sqrt(q.shape[-1]) + (ql @ kl.swapaxes(-1, -2)) / math.sqrt(q.shape[-1] // r)


def with_head_mask(p, hm):
    return p if hm is None else p * hm


def _additive_mask(rng, b, lq, lk, kind):
    """``[b, 1, 1, lk]`` padding masks, or ``[b, 1, lq, lk]`` with fully masked rows."""
    if kind == "none":
        return None
    if kind == "keys":
        keep = (rng.random((b, 1, 1, lk)) < 0.7).astype(np.float64)
        keep[..., 0] = 1.0
    else:
        keep = (rng.random((b, 1, lq, lk)) < 0.6).astype(np.float64)
        keep[:, :, 0, :] = 0.0  # the first query attends to nothing: a uniform row
    return (1.0 - keep) * MIN


def _head_mask(rng, b, n, lq, lk, kind):
    if kind == "none":
        return None
    if kind == "heads":  # [1, n, 1, 1], one head dropped, one scaled
        m = np.ones(n)
        m[0] = 0.0
        if n > 1:
            m[-1] = 0.5
        return m[None, :, None, None]
    m = (rng.random((b, n, 1, lk)) < 0.7).astype(np.float64)  # 5-d style: single keys dropped per head
    return m


def _torch_sdpa(q, k, v, mask, head_mask):
    """BertSelfAttention / LxmertAttention's lines on split heads, with a head mask."""
    scores = torch.matmul(q, k.transpose(-1, -2))
    scores = scores / math.sqrt(q.shape[-1])
    scores.retain_grad()
    masked = scores + t(mask) if mask is not None else scores
    probs = F.softmax(masked, dim=-1)
    if head_mask is not None:
        probs = probs * t(head_mask)
    probs.retain_grad()
    context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
    return context.view(*context.shape[:2], -1), probs, scores


@given(
    seed=seeds,
    b=st.integers(1, 2),
    n=st.integers(1, 3),
    lq=st.integers(1, 5),
    lk=st.integers(1, 5),
    d=st.sampled_from([1, 3, 4, 6]),
    mask=st.sampled_from(["none", "keys", "rows"]),
    head_mask=st.sampled_from(["none", "heads", "keys"]),
    probs_upstream=st.booleans(),
)
def test_scaled_dot_product_attention_backward(seed, b, n, lq, lk, d, mask, head_mask, probs_upstream):
    rng = np.random.default_rng(seed)
    q, k, v = randn(rng, b, n, lq, d), randn(rng, b, n, lk, d), randn(rng, b, n, lk, d)
    m = _additive_mask(rng, b, lq, lk, mask)
    hm = _head_mask(rng, b, n, lq, lk, head_mask)
    qt, kt, vt = t(q, True), t(k, True), t(v, True)
    context, probs_t, scores_t = _torch_sdpa(qt, kt, vt, m, hm)
    g = upstream(rng, context)
    gp = upstream(rng, probs_t) if probs_upstream else None
    ((context * t(g)).sum() + ((probs_t * t(gp)).sum() if probs_upstream else 0)).backward()
    # ours, from the forward's own activations: P before the head mask
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(d)
    p = ops.softmax(scores if m is None else scores + m)
    grads = attention.scaled_dot_product_attention_backward(g, q, k, v, p, hm, grad_probs=gp)
    close("dquery", grads.query, qt.grad)
    close("dkey", grads.key, kt.grad)
    close("dvalue", grads.value, vt.grad)
    close("attention_scores", grads.attention_scores, scores_t.grad)
    close("attention_probs", grads.attention_probs, probs_t.grad)


def _torch_bi_acm(q, k, v, ql, kl, vl, mask, head_mask, r, relative, dist_w, max_pos):
    """LiltSelfAttention.forward's lines after the projections (transformers 4.56.2), on split heads."""
    kept = {}
    d = q.shape[-1]
    s = q.shape[2]
    attention_scores = torch.matmul(q, k.transpose(-1, -2))
    layout_attention_scores = torch.matmul(ql, kl.transpose(-1, -2))
    if relative != "absolute":
        pos_l = torch.arange(s).view(-1, 1)
        pos_r = torch.arange(s).view(1, -1)
        positional = F.embedding(pos_l - pos_r + max_pos - 1, dist_w)
        if relative == "relative_key":
            rel = torch.einsum("bhld,lrd->bhlr", q, positional)
            rel.retain_grad()
            kept["relative_position_scores"] = rel
            attention_scores = attention_scores + rel
        else:
            rq = torch.einsum("bhld,lrd->bhlr", q, positional)
            rk = torch.einsum("bhrd,lrd->bhlr", k, positional)
            rq.retain_grad(), rk.retain_grad()
            kept["relative_position_scores_query"], kept["relative_position_scores_key"] = rq, rk
            attention_scores = attention_scores + rq + rk
    tmp_attention_scores = attention_scores / math.sqrt(d)
    tmp_layout_attention_scores = layout_attention_scores / math.sqrt(d // r)
    attention_scores = tmp_attention_scores + tmp_layout_attention_scores
    layout_attention_scores = tmp_layout_attention_scores + tmp_attention_scores
    for name, x in (
        ("tmp_attention_scores", tmp_attention_scores),
        ("tmp_layout_attention_scores", tmp_layout_attention_scores),
        ("attention_scores", attention_scores),
        ("layout_attention_scores", layout_attention_scores),
    ):
        x.retain_grad()
        kept[name] = x
    if mask is not None:
        layout_attention_scores = layout_attention_scores + t(mask)
    layout_attention_probs = torch.nn.Softmax(dim=-1)(layout_attention_scores)
    if head_mask is not None:
        layout_attention_probs = layout_attention_probs * t(head_mask)
    layout_context = torch.matmul(layout_attention_probs, vl).permute(0, 2, 1, 3).contiguous()
    if mask is not None:
        attention_scores = attention_scores + t(mask)
    attention_probs = torch.nn.Softmax(dim=-1)(attention_scores)
    if head_mask is not None:
        attention_probs = attention_probs * t(head_mask)
    context = torch.matmul(attention_probs, v).permute(0, 2, 1, 3).contiguous()
    layout_attention_probs.retain_grad(), attention_probs.retain_grad()
    kept["attention_probs"], kept["layout_attention_probs"] = attention_probs, layout_attention_probs
    return context.view(*context.shape[:2], -1), layout_context.view(*layout_context.shape[:2], -1), kept


def _ours_bi_acm(g, gl, gp, q, k, v, ql, kl, vl, m, hm, r, relative, dist_w, max_pos):
    """Our forward's activations (numpy), then the backward chain: BiACM, relative positions, distances."""
    s = q.shape[2]
    e = rel = None
    if relative != "absolute":
        e = distance_table(dist_w, s, max_pos)
        rel = np_relative_scores(q, k, e, relative)
    scores = np_bi_acm_scores(q, k, ql, kl, r, rel)
    p = ops.softmax(scores if m is None else scores + m)
    grads = bi_acm.bi_acm_backward(g, gl, q, k, v, ql, kl, vl, p, r, hm, grad_probs=gp)
    dq, dk, dw = grads.query, grads.key, None
    if relative != "absolute":
        dq_rel, de = attention.relative_position_scores_query_backward(grads.relative_scores, q, e)
        dq = dq + dq_rel
        if relative == "relative_key_query":
            dk_rel, de_key = attention.relative_position_scores_key_backward(grads.relative_scores, k, e)
            dk, de = dk + dk_rel, de + de_key
        dw = attention.relative_position_embeddings_backward(de, max_pos)
    return grads, dq, dk, dw


@given(
    seed=seeds,
    b=st.integers(1, 2),
    n=st.integers(1, 3),
    s=st.integers(1, 5),
    head=st.sampled_from([(4, 4), (6, 2), (12, 4), (10, 2), (9, 3)]),  # (d, r): scales sqrt(d), sqrt(d // r)
    relative=st.sampled_from(["absolute", "relative_key", "relative_key_query"]),
    mask=st.sampled_from(["none", "keys", "rows"]),
    head_mask=st.sampled_from(["none", "heads", "keys"]),
    probs_upstream=st.booleans(),
)
def test_bi_acm_backward(seed, b, n, s, head, relative, mask, head_mask, probs_upstream):
    d, r = head
    max_pos = s + 2
    rng = np.random.default_rng(seed)
    q, k, v = (randn(rng, b, n, s, d) for _ in range(3))
    ql, kl, vl = (randn(rng, b, n, s, d // r) for _ in range(3))
    dist_w = randn(rng, 2 * max_pos - 1, d, scale=0.5)
    m = _additive_mask(rng, b, s, s, mask)
    hm = _head_mask(rng, b, n, s, s, head_mask)
    leaves = [t(a, True) for a in (q, k, v, ql, kl, vl, dist_w)]
    context, layout_context, kept = _torch_bi_acm(*leaves[:6], m, hm, r, relative, leaves[6], max_pos)
    g, gl = upstream(rng, context), upstream(rng, layout_context)
    gp = upstream(rng, kept["attention_probs"]) if probs_upstream else None
    loss = (context * t(g)).sum() + (layout_context * t(gl)).sum()
    if probs_upstream:
        loss = loss + (kept["attention_probs"] * t(gp)).sum()  # the returned attentions feed the loss
    loss.backward()

    grads, dq, dk, dw = _ours_bi_acm(g, gl, gp, q, k, v, ql, kl, vl, m, hm, r, relative, dist_w, max_pos)
    for name, ours, leaf in zip(
        ("query", "key", "value", "layout_query", "layout_key", "layout_value"),
        (dq, dk, grads.value, grads.layout_query, grads.layout_key, grads.layout_value),
        leaves,
        strict=False,
    ):
        close(f"d{name}", ours, leaf.grad)
    if relative != "absolute":
        close("ddistance_embedding.weight", dw, leaves[6].grad)
        for name in (
            "relative_position_scores",
            "relative_position_scores_query",
            "relative_position_scores_key",
        ):
            if name in kept:
                close(name, grads.relative_scores, kept[name].grad)
    for name in ("attention_scores", "layout_attention_scores", "attention_probs", "layout_attention_probs"):
        close(name, getattr(grads, name), kept[name].grad)
    close("tmp_attention_scores", grads.tmp_attention_scores, kept["tmp_attention_scores"].grad)
    close("tmp_layout_attention_scores", grads.tmp_attention_scores, kept["tmp_layout_attention_scores"].grad)


def test_bi_acm_streams_get_different_probability_gradients():
    """The two equal probability tensors of the oracle receive different gradients (forward
    aliases are not gradient aliases)."""
    rng = np.random.default_rng(3)
    q, k, v = (randn(rng, 1, 2, 4, 8) for _ in range(3))
    ql, kl, vl = (randn(rng, 1, 2, 4, 2) for _ in range(3))
    p = ops.softmax(np_bi_acm_scores(q, k, ql, kl, 4))
    grads = bi_acm.bi_acm_backward(randn(rng, 1, 4, 16), randn(rng, 1, 4, 4), q, k, v, ql, kl, vl, p, 4)
    assert np.abs(grads.attention_probs - grads.layout_attention_probs).max() > 0.1


# --- against the oracle's own modules: projections in, our backward chain out -------------------


def _linear_chain(module, x, dy):
    """linear_backward for an nn.Linear, returning (dx, {param name: grad})."""
    w = module.weight.detach().numpy()
    b = module.bias.detach().numpy() if module.bias is not None else None
    dx, dw, db = ops.linear_backward(dy, x, w, b)
    return dx, {"weight": dw, "bias": db}


@pytest.mark.parametrize("relative", ["absolute", "relative_key_query"])
def test_bi_acm_chain_equals_lilt_self_attention(relative):
    """transformers' LiltSelfAttention (head mask with a zero, padding mask, output_attentions)
    differentiated by autograd, against linear_backward + bi_acm_backward + the relative-position
    backward on the module's own weights: every parameter and both inputs."""
    from _oracle import randomize_, tiny_lilt_config
    from transformers.models.lilt.modeling_lilt import LiltSelfAttention

    cfg = tiny_lilt_config(
        hidden_size=36, num_attention_heads=3, position_embedding_type=relative
    )  # d=12, d//r=3
    module = randomize_(LiltSelfAttention(cfg), seed=5, std=0.3).double().eval()
    rng = np.random.default_rng(5)
    b, s, n, r = 2, 6, cfg.num_attention_heads, cfg.channel_shrink_ratio
    h, lay = randn(rng, b, s, 36), randn(rng, b, s, 9)
    keep = np.ones((b, s))
    keep[1, 4:] = 0
    m = ((1.0 - keep) * MIN)[:, None, None, :]
    hm = np.array([1.0, 0.0, 0.7])[None, :, None, None]
    ht, lt = t(h, True), t(lay, True)
    (context, layout_context), probs = module(
        ht, lt, attention_mask=t(m), head_mask=t(hm), output_attentions=True
    )
    g, gl, gp = upstream(rng, context), upstream(rng, layout_context), upstream(rng, probs)
    ((context * t(g)).sum() + (layout_context * t(gl)).sum() + (probs * t(gp)).sum()).backward()

    with torch.no_grad():
        proj = {name: getattr(module, name)(ht if "layout" not in name else lt).numpy() for name in
                ("query", "key", "value", "layout_query", "layout_key", "layout_value")}  # fmt: skip
    heads = {name: split(x, n) for name, x in proj.items()}
    dist_w = module.distance_embedding.weight.detach().numpy() if relative != "absolute" else None
    grads, dq, dk, dw = _ours_bi_acm(
        g, gl, gp, heads["query"], heads["key"], heads["value"], heads["layout_query"], heads["layout_key"],
        heads["layout_value"], m, hm, r, relative, dist_w, cfg.max_position_embeddings,
    )  # fmt: skip
    d_split = {"query": dq, "key": dk, "value": grads.value, "layout_query": grads.layout_query,
               "layout_key": grads.layout_key, "layout_value": grads.layout_value}  # fmt: skip
    dh, dlay = np.zeros_like(h), np.zeros_like(lay)
    for name, d_heads in d_split.items():
        dx, params = _linear_chain(getattr(module, name), h if "layout" not in name else lay, merge(d_heads))
        if "layout" in name:
            dlay += dx
        else:
            dh += dx
        for p, grad in params.items():
            # a key bias shifts every score of a row equally: its exact gradient is 0, both are rounding
            close(
                f"{name}.{p}",
                grad,
                getattr(getattr(module, name), p).grad,
                scale=float(np.abs(d_heads).max()),
            )
    close("dhidden_states", dh, ht.grad)
    close("dlayout_inputs", dlay, lt.grad)
    if relative != "absolute":
        close("distance_embedding.weight", dw, module.distance_embedding.weight.grad)


def test_attention_chain_equals_lxmert_cross_attention():
    """transformers' LxmertAttention used as cross-attention (query from one stream, keys and
    values from the other, a padding mask with a fully masked batch row), against ours."""
    from _oracle import randomize_, tiny_lxmert_config
    from transformers.models.lxmert.modeling_lxmert import LxmertAttention

    cfg = tiny_lxmert_config(hidden_size=20, num_attention_heads=4)  # d = 5
    module = randomize_(LxmertAttention(cfg), seed=6, std=0.3).double().eval()
    rng = np.random.default_rng(6)
    b, lq, lk, n = 2, 5, 3, 4
    x, ctx = randn(rng, b, lq, 20), randn(rng, b, lk, 20)
    keep = np.ones((b, lk))
    keep[1, :] = 0  # every key of batch row 1 masked: uniform rows
    m = ((1.0 - keep) * MIN)[:, None, None, :]
    xt, ct = t(x, True), t(ctx, True)
    context, probs = module(xt, ct, attention_mask=t(m), output_attentions=True)
    g, gp = upstream(rng, context), upstream(rng, probs)
    ((context * t(g)).sum() + (probs * t(gp)).sum()).backward()

    with torch.no_grad():
        q = split(module.query(xt).numpy(), n)
        k = split(module.key(ct).numpy(), n)
        v = split(module.value(ct).numpy(), n)
    p = ops.softmax(q @ k.swapaxes(-1, -2) / math.sqrt(5) + m)
    grads = attention.scaled_dot_product_attention_backward(g, q, k, v, p, grad_probs=gp)
    dx, dctx = np.zeros_like(x), np.zeros_like(ctx)
    for name, d_heads, src in (
        ("query", grads.query, x),
        ("key", grads.key, ctx),
        ("value", grads.value, ctx),
    ):
        d_in, params = _linear_chain(getattr(module, name), src, merge(d_heads))
        if name == "query":
            dx += d_in
        else:
            dctx += d_in
        for pname, grad in params.items():
            # the key bias's exact gradient is 0 (softmax ignores a shift per row): both are rounding
            close(
                f"{name}.{pname}",
                grad,
                getattr(getattr(module, name), pname).grad,
                scale=float(np.abs(d_heads).max()),
            )
    close("dhidden_states", dx, xt.grad)
    close("dcontext", dctx, ct.grad)


# --------------------------------------------------------------------------------------------
# finite differences: an independent check of every op kind (float64, 1e-6 relative)
# --------------------------------------------------------------------------------------------


def _fd(loss, arrays, grads, **kw):
    worst = check_gradients(loss, arrays, grads, **kw)
    assert worst <= 1e-6
    return worst


def test_finite_differences_linear_layer_norm_activations_softmax():
    rng = np.random.default_rng(10)
    x, w, b = randn(rng, 2, 3, 5), randn(rng, 4, 5), randn(rng, 4)
    g = randn(rng, 2, 3, 4)
    dx, dw, db = ops.linear_backward(g, x, w, b)
    _fd(
        lambda: (ops.linear(x, w, b) * g).sum(),
        {"x": x, "weight": w, "bias": b},
        {"x": dx, "weight": dw, "bias": db},
    )

    x, w, b = randn(rng, 3, 7, scale=2.0) + 1.0, 1 + 0.1 * randn(rng, 7), randn(rng, 7)
    g = randn(rng, 3, 7)
    dx, dw, db = ops.layer_norm_backward(g, x, w, b, 1e-5)
    _fd(
        lambda: (ops.layer_norm(x, w, b, 1e-5) * g).sum(),
        {"x": x, "weight": w, "bias": b},
        {"x": dx, "weight": dw, "bias": db},
    )

    x = randn(rng, 40, scale=2.0)
    x[np.abs(x) < 1e-2] = 0.5  # away from ReLU's kink
    g = randn(rng, 40)
    _fd(lambda: (activations.gelu(x) * g).sum(), {"x": x}, {"x": activations.gelu_backward(g, x)}, samples=12)
    _fd(
        lambda: (activations.tanh(x) * g).sum(),
        {"x": x},
        {"x": activations.tanh_backward(g, activations.tanh(x))},
        samples=12,
    )
    _fd(
        lambda: (activations.relu(x) * g).sum(),
        {"x": x},
        {"x": activations.relu_backward(g, activations.relu(x))},
        samples=12,
    )

    s, g = randn(rng, 2, 3, 6, scale=2.0), randn(rng, 2, 3, 6)
    # masked keys, but no fully masked row: there finfo.min + s rounds to finfo.min, so the forward
    # does not move with s and finite differences see 0, while torch (and we) return the uniform
    # row's gradient (tested against torch above)
    mask = np.where(rng.random((2, 3, 6)) < 0.3, MIN, 0.0)
    mask[..., 0] = 0.0
    _fd(
        lambda: (ops.softmax(s + mask) * g).sum(),
        {"scores": s},
        {"scores": ops.softmax_backward(g, ops.softmax(s + mask))},
        samples=10,
    )


def test_finite_differences_embedding():
    rng = np.random.default_rng(11)
    w = randn(rng, 9, 4)
    ids = rng.integers(0, 9, (3, 5))
    ids[0, :3] = 1
    g = randn(rng, 3, 5, 4)

    def loss():  # the padding row is a constant of the forward: nn.Embedding(padding_idx=1)'s lookup
        return (ops.embedding(ids, w) * g).sum()

    dw = ops.embedding_backward(g, ids, 9, padding_idx=1)
    # the true derivative of the padding row is not 0, so only the other rows are compared; the
    # padding row is 0 by torch's definition (tested against torch above)
    rows = [r for r in range(9) if r != 1]
    _fd(loss, {"weight": w}, {"weight": ops.embedding_backward(g, ids, 9)}, samples=10)
    np.testing.assert_array_equal(dw[rows], ops.embedding_backward(g, ids, 9)[rows])

    s, pmax = 4, 5
    dist_w = randn(rng, 2 * pmax - 1, 3)
    g = randn(rng, s, s, 3)
    _fd(
        lambda: (distance_table(dist_w, s, pmax) * g).sum(),
        {"distance_embedding": dist_w},
        {"distance_embedding": attention.relative_position_embeddings_backward(g, pmax)},
        samples=10,
    )


def test_finite_differences_losses():
    rng = np.random.default_rng(12)
    logits = randn(rng, 6, 4, scale=2.0)
    labels = np.array([0, 3, -100, 2, 1, -100])
    for reduction in ("mean", "sum"):
        _fd(
            lambda reduction=reduction: losses.cross_entropy(logits, labels, reduction=reduction),
            {"logits": logits},
            {"logits": losses.cross_entropy_backward(1.0, logits, labels, reduction=reduction)},
            samples=10,
        )
    x, target = randn(rng, 3, 4), randn(rng, 3, 4)
    z = x - target
    x[np.abs(np.abs(z) - 1.0) < 1e-2] += 0.1  # away from smooth-L1's switch point
    probs = rng.random((3, 4))
    g = randn(rng, 3, 4)
    _fd(lambda: losses.mse_loss(x, target), {"x": x}, {"x": losses.mse_loss_backward(1.0, x, target)})
    _fd(
        lambda: losses.bce_with_logits(x, probs),
        {"x": x},
        {"x": losses.bce_with_logits_backward(1.0, x, probs)},
    )
    _fd(
        lambda: (losses.smooth_l1_loss(x, target) * g).sum(),
        {"x": x},
        {"x": losses.smooth_l1_loss_backward(g, x, target)},
        samples=10,
    )


def test_finite_differences_head_losses():
    rng = np.random.default_rng(13)
    for num_labels, labels in (
        (1, randn(rng, 3)),
        (3, np.array([0, 2, -100])),
        (3, rng.integers(0, 2, (3, 3)) * 1.0),
    ):
        logits = randn(rng, 3, num_labels)
        _fd(
            lambda logits=logits, labels=labels, num_labels=num_labels: (
                lilt_heads.sequence_classification_loss(
                    logits, labels, num_labels=num_labels, problem_type=None
                )
            ),
            {"logits": logits},
            {
                "logits": lilt_heads.sequence_classification_loss_backward(
                    1.0, logits, labels, num_labels=num_labels, problem_type=None
                )
            },
        )
    start, end = randn(rng, 3, 5), randn(rng, 3, 5)
    sp, ep = np.array([0, 7, -2]), np.array([4, 5, 1])  # 7 -> 5 (ignored), -2 -> 0
    d_start, d_end = lilt_heads.question_answering_loss_backward(1.0, start, end, sp, ep)
    _fd(
        lambda: lilt_heads.question_answering_loss(start, end, sp, ep),
        {"start": start, "end": end},
        {"start": d_start, "end": d_end},
    )
    scores = randn(rng, 2, 3, 5)
    conf = rng.random(6)
    for kind, label in (("visual_ce", np.array([0, 4, -100, 2, 2, 1])), ("l2", randn(rng, 6, 5))):
        _fd(
            lambda kind=kind, label=label: lxmert_heads.visual_loss(
                scores, label, conf, kind=kind, normalizer=6.67
            ),
            {"scores": scores},
            {
                "scores": lxmert_heads.visual_loss_backward(
                    1.0, scores, label, conf, kind=kind, normalizer=6.67
                )
            },
            samples=10,
        )


def test_finite_differences_attention():
    rng = np.random.default_rng(14)
    b, n, s, d, r, pmax = 1, 2, 4, 6, 2, 5
    q, k, v = (randn(rng, b, n, s, d) for _ in range(3))
    ql, kl, vl = (randn(rng, b, n, s, d // r) for _ in range(3))
    dist_w = randn(rng, 2 * pmax - 1, d, scale=0.5)
    m = _additive_mask(rng, b, s, s, "keys")
    hm = np.array([1.0, 0.6])[None, :, None, None]
    g, gl = randn(rng, b, s, n * d), randn(rng, b, s, n * d // r)

    def lilt_loss():
        rel = np_relative_scores(q, k, distance_table(dist_w, s, pmax), "relative_key_query")
        p = with_head_mask(ops.softmax(np_bi_acm_scores(q, k, ql, kl, r, rel) + m), hm)
        return (merge(p @ v) * g).sum() + (merge(p @ vl) * gl).sum()

    grads, dq, dk, dw = _ours_bi_acm(
        g, gl, None, q, k, v, ql, kl, vl, m, hm, r, "relative_key_query", dist_w, pmax
    )
    arrays = {
        "query": q,
        "key": k,
        "value": v,
        "layout_query": ql,
        "layout_key": kl,
        "layout_value": vl,
        "distance": dist_w,
    }
    analytic = {"query": dq, "key": dk, "value": grads.value, "layout_query": grads.layout_query,
                "layout_key": grads.layout_key, "layout_value": grads.layout_value, "distance": dw}  # fmt: skip
    _fd(lilt_loss, arrays, analytic, samples=5)

    lq, lk = 3, 5
    q, k, v = randn(rng, 2, n, lq, d), randn(rng, 2, n, lk, d), randn(rng, 2, n, lk, d)
    m = _additive_mask(rng, 2, lq, lk, "keys")  # no fully masked row (see the softmax case above)
    g = randn(rng, 2, lq, n * d)

    def sdpa_loss():
        p = ops.softmax(q @ k.swapaxes(-1, -2) / math.sqrt(d) + m)
        return (merge(with_head_mask(p, hm) @ v) * g).sum()

    p = ops.softmax(q @ k.swapaxes(-1, -2) / math.sqrt(d) + m)
    grads = attention.scaled_dot_product_attention_backward(g, q, k, v, p, hm)
    _fd(
        sdpa_loss,
        {"query": q, "key": k, "value": v},
        {"query": grads.query, "key": grads.key, "value": grads.value},
    )


# --------------------------------------------------------------------------------------------
# every backward goes through the array-namespace dispatch (so it runs unchanged on CuPy)
# --------------------------------------------------------------------------------------------


def _dispatch_cases():
    rng = np.random.default_rng(20)
    x, w, b, g = randn(rng, 2, 3, 5), randn(rng, 4, 5), randn(rng, 4), randn(rng, 2, 3, 4)
    q, k, v = (randn(rng, 1, 2, 4, 4) for _ in range(3))
    ql, kl, vl = (randn(rng, 1, 2, 4, 2) for _ in range(3))
    p = ops.softmax(randn(rng, 1, 2, 4, 4))
    hm = np.array([1.0, 0.0])[None, :, None, None]
    ids = rng.integers(0, 6, (3, 4))
    logits, labels = randn(rng, 4, 3), np.array([0, 2, -100, 1])
    return [
        ("linear", ops.linear_backward, (g, x, w, b)),
        ("layer_norm", lambda g, x, w: ops.layer_norm_backward(g, x, w, w, 1e-5), (g[..., :4], x[..., :4], w[0, :4])),
        ("softmax", ops.softmax_backward, (g, ops.softmax(g))),
        ("embedding", lambda g, i: ops.embedding_backward(g, i, 6, padding_idx=1), (randn(rng, 3, 4, 2), ids)),
        ("gelu", activations.gelu_backward, (g, x[..., :4])),
        ("tanh", activations.tanh_backward, (g, np.tanh(g))),
        ("relu", activations.relu_backward, (g, np.maximum(g, 0))),
        ("cross_entropy", lambda lg, lb: losses.cross_entropy_backward(1.0, lg, lb), (logits, labels)),
        ("mse", lambda a, c: losses.mse_loss_backward(1.0, a, c), (g, x[..., :4])),
        ("bce", lambda a, c: losses.bce_with_logits_backward(1.0, a, c), (g, np.abs(np.tanh(x[..., :4])))),
        ("smooth_l1", losses.smooth_l1_loss_backward, (g, g * 2, x[..., :4])),
        ("sdpa", lambda gc, q, k, v, p, hm: tuple(attention.scaled_dot_product_attention_backward(gc, q, k, v, p, hm)),
         (randn(rng, 1, 4, 8), q, k, v, p, hm)),
        ("bi_acm", lambda gc, gl, q, k, v, ql, kl, vl, p: tuple(bi_acm.bi_acm_backward(gc, gl, q, k, v, ql, kl, vl, p, 2)),
         (randn(rng, 1, 4, 8), randn(rng, 1, 4, 4), q, k, v, ql, kl, vl, p)),
        ("relative_query", attention.relative_position_scores_query_backward, (p, q, randn(rng, 4, 4, 4))),
        ("relative_key", attention.relative_position_scores_key_backward, (p, k, randn(rng, 4, 4, 4))),
        ("distance", lambda e: attention.relative_position_embeddings_backward(e, 6), (randn(rng, 4, 4, 3),)),
    ]  # fmt: skip


@pytest.mark.parametrize("name, fn, args", _dispatch_cases(), ids=[c[0] for c in _dispatch_cases()])
def test_backward_ops_dispatch(name, fn, args):
    """On strict stand-in device arrays, no plain NumPy call, and the same bits as on NumPy."""
    want = fn(*[a.copy() for a in args])
    with strict_namespace() as ns:
        got = fn(*wrap_tree(list(args)))
        assert ns.violations == [], ns.violations
    got, want = unwrap_tree(got), unwrap_tree(want)
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    for gv, wv in zip(got, want, strict=True):
        np.testing.assert_array_equal(gv, wv, err_msg=name)
