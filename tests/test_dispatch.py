"""Every op of the models goes through the array-namespace dispatch (CPU test, no GPU needed).

The models run on :class:`tests._strict.StrictArray` (a CuPy stand-in over NumPy, see
tests/_strict.py) with a strict namespace installed as ``backend._namespace_override``. A plain
NumPy function, an implicit ``np.asarray`` or a plain ``ndarray`` mixed into the math raises and
is recorded, so a passing model run proves the code would run unchanged on CuPy arrays. The
strict run must equal the plain run exactly (the same NumPy kernels underneath).
"""

from __future__ import annotations

import copy
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
from _strict import DispatchViolation, StrictArray, strict_namespace, unwrap_tree, wrap_tree

import refimpl
from refimpl import attention, backend, ops
from refimpl.fast import blocks

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


# --------------------------------------------------------------------------------------------
# whole models: every op of a forward (and its losses) goes through the dispatch
# --------------------------------------------------------------------------------------------

DATA = Path(refimpl.__file__).parent / "data"


def _model_strict_equals_plain(model, inputs: dict) -> None:
    """Plain run vs strict run (weights and inputs wrapped) of one model: equal, and no violation."""
    want = unwrap_tree(model(**inputs, output_attentions=True, output_hidden_states=True))
    strict_model = type(model)(model.config, wrap_tree(model.params), dtype=model.dtype)
    with strict_namespace() as ns:
        got = strict_model(**wrap_tree(inputs), output_attentions=True, output_hidden_states=True)
        assert ns.violations == [], ns.violations
        assert ns.calls["matmul"] > 0, "the strict namespace was not used"
    for name, value in got.__dict__.items():
        for leaf in value if isinstance(value, tuple) else (value,):
            assert leaf is None or isinstance(leaf, StrictArray), f"{name} left the device: {type(leaf)}"
    got = unwrap_tree(got)
    assert got.keys() == want.keys()
    checked = 0
    for name, w in want.items():
        for g_leaf, w_leaf in zip(
            *((v if isinstance(v, tuple) else (v,)) for v in (got[name], w)), strict=True
        ):
            if w_leaf is not None:
                np.testing.assert_array_equal(g_leaf, w_leaf, err_msg=name)
                checked += 1
    assert checked >= 4


def _lilt_inputs(config, rng, batch=2, seq=9):
    x0 = rng.integers(0, 400, (batch, seq, 1))
    y0 = rng.integers(0, 400, (batch, seq, 1))
    mask = np.ones((batch, seq), np.int64)
    mask[1, -2:] = 0
    return {
        "input_ids": rng.integers(3, config.vocab_size, (batch, seq)),
        "bbox": np.concatenate([x0, y0, x0 + rng.integers(0, 50, x0.shape), y0 + 11], axis=-1),
        "attention_mask": mask,
    }


def _lxmert_inputs(config, rng, dtype, batch=2, seq=7, boxes=5):
    mask = np.ones((batch, seq), np.int64)
    mask[0, -2:] = 0
    return {
        "input_ids": rng.integers(0, config.vocab_size, (batch, seq)),
        "attention_mask": mask,
        "visual_feats": rng.standard_normal((batch, boxes, config.visual_feat_dim)).astype(dtype),
        "visual_pos": rng.random((batch, boxes, 4)).astype(dtype),
    }


@pytest.fixture(scope="module")
def lilt_base_dir(tmp_path_factory):
    """A tiny random LiltModel checkpoint (with its pooler), saved by the oracle."""
    from _oracle import build, save
    from transformers import LiltConfig
    from transformers import LiltModel as OracleLilt

    config = LiltConfig(
        vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=40, max_2d_position_embeddings=512, channel_shrink_ratio=2,
    )  # fmt: skip
    return save(build(OracleLilt, config, seed=3), tmp_path_factory.mktemp("lilt-base"))


@pytest.fixture(scope="module")
def lxmert_base_dir(tmp_path_factory):
    """A tiny random LxmertModel checkpoint, saved by the oracle."""
    from _oracle import build, save
    from transformers import LxmertConfig
    from transformers import LxmertModel as OracleLxmert

    config = LxmertConfig(
        vocab_size=97, hidden_size=24, num_attention_heads=2, intermediate_size=37, l_layers=2, x_layers=1,
        r_layers=1, visual_feat_dim=16, visual_pos_dim=4,
    )  # fmt: skip
    return save(build(OracleLxmert, config, seed=4), tmp_path_factory.mktemp("lxmert-base"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lilt_models_dispatch_every_op(dtype, lilt_base_dir):
    from refimpl.lilt import LiltForTokenClassification, LiltModel

    rng = np.random.default_rng(0)
    base = LiltModel.from_pretrained(lilt_base_dir, dtype=dtype)
    inputs = _lilt_inputs(base.config, rng)
    _model_strict_equals_plain(base, inputs)
    head = LiltForTokenClassification.from_pretrained(DATA / "lilt-tiny", dtype=dtype)
    labels = rng.integers(0, head.config.num_labels, inputs["input_ids"].shape)
    labels[0, 0] = -100
    _model_strict_equals_plain(head, dict(inputs, labels=labels))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lxmert_models_dispatch_every_op(dtype, lxmert_base_dir):
    from refimpl.lxmert import LxmertForPreTraining, LxmertModel

    rng = np.random.default_rng(1)
    base = LxmertModel.from_pretrained(lxmert_base_dir, dtype=dtype)
    c = base.config
    inputs = _lxmert_inputs(c, rng, dtype)
    _model_strict_equals_plain(base, inputs)
    head = LxmertForPreTraining.from_pretrained(DATA / "lxmert-tiny", dtype=dtype)
    c = head.config
    inputs = _lxmert_inputs(c, rng, dtype)
    b, s = inputs["input_ids"].shape
    o = inputs["visual_feats"].shape[1]
    labels = np.where(rng.random((b, s)) < 0.5, rng.integers(0, c.vocab_size, (b, s)), -100)
    obj_labels = {
        "obj": (rng.integers(0, c.num_object_labels, (b, o)), rng.random((b, o)).astype(dtype)),
        "attr": (rng.integers(0, c.num_attr_labels, (b, o)), rng.random((b, o)).astype(dtype)),
        "feat": (
            rng.standard_normal((b, o, c.visual_feat_dim)).astype(dtype),
            rng.random((b, o)).astype(dtype),
        ),
    }
    targets = dict(
        labels=labels,
        obj_labels=obj_labels,
        matched_label=np.array([1, 0]),
        ans=rng.integers(0, c.num_qa_labels, (b,)),
    )
    _model_strict_equals_plain(head, dict(inputs, **targets))


def _backward_strict_equals_plain(model, inputs: dict, upstream=None) -> None:
    """``model.backward`` plain vs strict (weights, inputs and upstream wrapped): every
    parameter's and tensor's gradient equal, no violation, nothing left the device."""
    want = model.backward(tensor_grads=True, upstream=upstream, **inputs)
    strict_model = type(model)(model.config, wrap_tree(model.params), dtype=model.dtype)
    with strict_namespace() as ns:
        got = strict_model.backward(
            tensor_grads=True, upstream=None if upstream is None else wrap_tree(upstream), **wrap_tree(inputs)
        )
        assert ns.violations == [], ns.violations
        assert ns.calls["matmul"] > 0, "the strict namespace was not used"
    for kind in ("params", "tensors"):
        mine, theirs = getattr(got, kind), getattr(want, kind)
        assert mine.keys() == theirs.keys() and len(mine) > 20, kind
        for name, value in mine.items():
            assert isinstance(value, StrictArray), f"{kind} {name} left the device: {type(value)}"
            np.testing.assert_array_equal(value._a, theirs[name], err_msg=name)


def test_lxmert_backward_dispatches_every_op(lxmert_base_dir):
    """LXMERT's backward (base model with upstream gradients; pre-training with every label)
    does all its math through the array namespace, as the forward."""
    from refimpl.lxmert import LxmertForPreTraining, LxmertModel

    rng = np.random.default_rng(2)
    base = LxmertModel.from_pretrained(lxmert_base_dir, dtype="float64")
    inputs = _lxmert_inputs(base.config, rng, "float64")
    upstream = base.backward(**inputs).upstream
    _backward_strict_equals_plain(base, inputs, upstream)
    head = LxmertForPreTraining.from_pretrained(DATA / "lxmert-tiny", dtype="float64")
    c = head.config
    inputs = _lxmert_inputs(c, rng, "float64")
    b, s = inputs["input_ids"].shape
    o = inputs["visual_feats"].shape[1]
    targets = dict(
        labels=np.where(rng.random((b, s)) < 0.5, rng.integers(0, c.vocab_size, (b, s)), -100),
        obj_labels={
            "obj": (rng.integers(0, c.num_object_labels, (b, o)), rng.random((b, o))),
            "attr": (rng.integers(0, c.num_attr_labels, (b, o)), rng.random((b, o))),
            "feat": (rng.standard_normal((b, o, c.visual_feat_dim)), rng.random((b, o))),
        },
        matched_label=np.array([1, 0]),
        ans=rng.integers(0, c.num_qa_labels, (b,)),
    )
    _backward_strict_equals_plain(head, dict(inputs, **targets))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lilt_backward_dispatches_every_op(dtype, lilt_base_dir):
    """The backward (refimpl/lilt/backward.py and the ops' backwards) too: LiltModel with upstream
    gradients (BiACM, pooler, both embedding streams), a token classifier with labels (its loss)
    and a head mask with a zero."""
    from refimpl.lilt import LiltForTokenClassification, LiltModel

    rng = np.random.default_rng(2)
    base = LiltModel.from_pretrained(lilt_base_dir, dtype=dtype)
    inputs = _lilt_inputs(base.config, rng)
    out = base(**inputs)
    upstream = {
        k: rng.standard_normal(out[k].shape).astype(dtype)
        for k in out.keys()
        if out[k] is not None and hasattr(out[k], "shape")
    }
    _backward_strict_equals_plain(base, inputs, upstream)
    # relative_key_query: the distance table's scatter-add and both relative scores' backwards
    config = copy.deepcopy(base.config)
    config.position_embedding_type = "relative_key_query"
    head_size = config.hidden_size // config.num_attention_heads
    tables = {
        f"encoder.layer.{i}.attention.self.distance_embedding.weight": rng.standard_normal(
            (2 * config.max_position_embeddings - 1, head_size)
        ).astype(dtype)
        for i in range(config.num_hidden_layers)
    }
    relative = LiltModel(config, {**base.params, **tables}, dtype=base.dtype)
    _backward_strict_equals_plain(relative, inputs, upstream)
    head = LiltForTokenClassification.from_pretrained(DATA / "lilt-tiny", dtype=dtype)
    labels = rng.integers(0, head.config.num_labels, inputs["input_ids"].shape)
    labels[0, 0] = -100
    c = head.config
    head_mask = np.ones((c.num_hidden_layers, c.num_attention_heads), dtype)
    head_mask[0, 0] = 0.0
    _backward_strict_equals_plain(head, dict(inputs, labels=labels, head_mask=head_mask))


def test_a_hidden_numpy_call_in_a_model_is_caught(lilt_base_dir, monkeypatch):
    """The model test is not vacuous: one plain ``np.`` call inside a layer fails the strict run."""
    from refimpl.lilt import LiltModel

    model = LiltModel.from_pretrained(lilt_base_dir, dtype="float64")
    gelu = ops.ACT2FN["gelu"]
    # a host array sneaks into the activation
    monkeypatch.setitem(ops.ACT2FN, "gelu", lambda x: gelu(x) + np.zeros(x.shape[-1]))
    with pytest.raises(DispatchViolation, match="mixed with a device array"):
        _model_strict_equals_plain(model, _lilt_inputs(model.config, np.random.default_rng(0)))


# --------------------------------------------------------------------------------------------
# backend helpers
# --------------------------------------------------------------------------------------------


def test_tune_allocator_validates_and_applies():
    with pytest.raises(ValueError, match="mmap_threshold"):
        backend.tune_allocator(mmap_threshold=64 * 1024 * 1024)  # above glibc's 32 MiB limit
    with pytest.raises(ValueError, match="trim_threshold"):
        backend.tune_allocator(trim_threshold=-1)
    applied = backend.tune_allocator()
    assert applied is (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    # the allocator still works: a large array round-trips
    x = np.arange(5_000_000, dtype=np.float64)
    assert float(x.sum()) == 5_000_000 * 4_999_999 / 2


def test_cuda_available_is_a_bool_without_raising():
    assert backend.cuda_available() in (True, False)


@pytest.fixture
def two_threads():
    backend.set_num_threads(2)
    yield
    backend.set_num_threads(None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["gelu", "erf", "gelu_new", "silu"])
def test_threaded_elementwise_equals_serial(two_threads, name, dtype):
    """Chunks shared out over threads give bit-identical results (each chunk is independent)."""
    fn = getattr(ops, name) if hasattr(ops, name) else ops.get_activation(name)
    x = np.random.default_rng(5).standard_normal((300, 3072)).astype(dtype) * 3  # many chunks
    threaded = fn(x.copy())
    backend.set_num_threads(1)
    serial = fn(x.copy())
    np.testing.assert_array_equal(threaded, serial)


def test_host_map_order_and_thread_settings(two_threads):
    assert backend.num_threads() == 2
    assert blocks.host_map(lambda i: i * i, range(7)) == [i * i for i in range(7)]
    with pytest.raises(ValueError, match="positive integer"):
        backend.set_num_threads(0)
    backend.set_num_threads(None)
    assert backend.num_threads() >= 1


def test_host_map_keeps_the_callers_errstate(two_threads):
    with np.errstate(over="raise"):
        assert blocks.host_map(lambda _: np.geterr()["over"], range(4)) == ["raise"] * 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threaded_softmax_equals_serial(two_threads, dtype):
    """A large softmax runs over blocks of rows on the host threads: the same numbers."""
    x = np.random.default_rng(6).standard_normal((2, 3, 300, 257)).astype(dtype) * 4
    x[0, 1, 5] = np.finfo(dtype).min  # a fully masked row
    threaded = ops.softmax(x)
    backend.set_num_threads(1)
    np.testing.assert_array_equal(threaded, ops.softmax(x))
