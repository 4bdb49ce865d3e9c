"""LiLT's hand-written backward (refimpl/lilt/backward.py, refimpl/lilt/modeling_backward.py) against torch autograd on
transformers 4.56.2 (the oracle), and against central finite differences.

Every case runs ``model.backward(..., tensor_grads=True)`` (one forward under the tape, then
the backward) and the oracle's forward + ``backward`` of the same scalar ``L`` on the same
random checkpoint (tests/_lilt_grad_oracle.py: module outputs by forward hooks, the
self-attention's other tensors by a torch-function log). Then:

* every parameter gradient, by checkpoint key, and every tensor gradient, by trace name, is
  within ``tol * max(1, max|torch|)``: float64 ``tol = 1e-10``, float32 ``1e-4``;
* the tensor gradients' names are exactly the floating tensors a golden file of the same
  forward holds (`refimpl.golden.capture.trace_forward`): the traced intermediates, the
  ``outputs.<field>`` and the float input ``inputs.inputs_embeds``; the case's labels, masks
  and head mask are inputs nobody differentiates;
* each oracle tensor has the forward value of the trace's tensor of the same name (so every
  name is matched to the right torch tensor).

Cases: LiltModel (no labels, seeded upstream including ``layout_last_hidden_state``) with
absolute positions and a padded batch; LiltForTokenClassification with labels (some -100),
relative_key_query and a 2-D head mask with a zero; LiltForSequenceClassification with
relative_key and every problem type; LiltForQuestionAnswering (out-of-range positions);
``inputs_embeds`` with a 3-d mask; hypothesis-drawn tiny configs. The fixed cases run in the
fast mode and in ``refimpl.reference()``.
"""

from __future__ import annotations

import copy
import functools
import os
import tempfile

import numpy as np
import pytest
import torch
import transformers
from _finite_diff import check_gradients
from _lilt_grad_oracle import lilt_oracle_gradients
from _oracle import build, save
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl
from refimpl.golden.capture import trace_forward

VOCAB, MAX_POS, MAX_2D = 50, 40, 100
TOL = {"float64": 1e-10, "float32": 1e-4}
LABEL_KEYS = ("labels", "start_positions", "end_positions")

#: worst error / max(1, max|torch|) per (class, dtype) and kind, printed at the end (pytest -s)
WORST: dict[tuple[str, str], dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    print("\nLiLT backward, worst error / max(1, max|torch|):")
    for (arch, dtype), w in sorted(WORST.items()):
        print(f"  {arch:32s} {dtype}: params {w['params']:.2e}  tensors {w['tensors']:.2e}")


def tiny_config(**changes) -> dict:
    """Keyword arguments of a tiny LiltConfig (hidden 24: 2 heads of 12, layout heads of 3)."""
    return {
        "vocab_size": VOCAB,
        "hidden_size": 24,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 20,
        "max_position_embeddings": MAX_POS,
        "max_2d_position_embeddings": MAX_2D,
        "type_vocab_size": 2,
        "pad_token_id": 1,
        "layer_norm_eps": 1e-5,
        "channel_shrink_ratio": 4,
        "num_labels": 3,
        **changes,
    }


@functools.lru_cache(maxsize=32)
def checkpoint(arch: str, cfg_items: tuple, seed: int = 0):
    """An oracle model with every weight random (std 0.2), float64 and float32, and its checkpoint dir."""
    oracle = build(
        getattr(transformers, arch), transformers.LiltConfig(**dict(cfg_items)), seed=seed, std=0.2
    )
    directory = save(oracle, tempfile.mkdtemp(prefix="refimpl-lilt-grad-"))
    return oracle, copy.deepcopy(oracle).to(torch.float32), directory


@functools.lru_cache(maxsize=64)
def ours(arch: str, cfg_items: tuple, dtype: str, seed: int = 0):
    return refimpl.from_pretrained(checkpoint(arch, cfg_items, seed)[2], dtype=dtype)


def key(cfg: dict) -> tuple:
    return tuple(sorted(cfg.items()))


def lilt_inputs(rng, b: int = 2, s: int = 7, pad: int = 1, padded: bool = True) -> dict:
    """``<s>`` first, random ids (no pad id inside), right padding in the last row, valid boxes."""
    ids = rng.integers(pad + 2, VOCAB, (b, s))
    ids[:, 0] = 0
    mask = np.ones((b, s), np.int64)
    if padded:
        ids[-1, s - 2 :], mask[-1, s - 2 :] = pad, 0
    x0, y0 = rng.integers(0, MAX_2D // 2, (b, s)), rng.integers(0, MAX_2D // 2, (b, s))
    bbox = np.stack(
        [x0, y0, x0 + rng.integers(0, MAX_2D // 2, (b, s)), y0 + rng.integers(0, MAX_2D // 2, (b, s))], -1
    )
    return {"input_ids": ids, "bbox": bbox, "attention_mask": mask}


def _err(ours_, theirs) -> float:
    """``max|ours - torch| / max(1, max|torch|)``; NaN where torch has NaN (a loss whose every
    label is ignored) counts as equal, NaN anywhere else as infinitely far."""
    ours_, theirs = np.asarray(ours_, np.float64), np.asarray(theirs, np.float64)
    assert ours_.shape == theirs.shape, f"shape {ours_.shape} != torch {theirs.shape}"
    if ours_.size == 0:
        return 0.0
    nan = np.isnan(theirs)
    if (np.isnan(ours_) != nan).any():
        return float("inf")
    diff = np.where(nan, 0.0, np.abs(ours_ - theirs))
    return float(diff.max()) / max(1.0, float(np.abs(np.where(nan, 0.0, theirs)).max()))


def golden_float_names(model, inputs: dict) -> set[str]:
    """The floating tensors a golden file of this forward holds, less the inputs nobody
    differentiates (labels, masks, head mask): ``inputs.inputs_embeds`` stays."""
    tensors, _ = trace_forward(model, inputs, output_attentions=False, output_hidden_states=False)
    return {
        k
        for k, v in tensors.items()
        if v.dtype.kind == "f" and (not k.startswith("inputs.") or k == "inputs.inputs_embeds")
    }


def counterpart(name: str, oracle, layout_last: str):
    """The oracle's gradient of the tensor refimpl names ``name``."""
    if name == "loss":
        return oracle.outputs["outputs.loss"]
    if name == "outputs.layout_last_hidden_state":  # refimpl's field: the last layer's layout output
        return oracle.modules[layout_last]
    for found in (oracle.modules, oracle.outputs, oracle.inputs):
        if name in found:
            return found[name]
    raise AssertionError(f"the oracle has no tensor named {name!r}")


def check_parity(arch: str, cfg: dict, inputs: dict, dtype: str, seed: int = 0) -> None:
    """Our gradients of every parameter and every named tensor against the oracle's (see the module docstring)."""
    model = ours(arch, key(cfg), dtype, seed)
    oracle64, oracle32, _ = checkpoint(arch, key(cfg), seed)
    oracle = oracle64 if dtype == "float64" else oracle32
    oracle.config.problem_type = cfg.get("problem_type")  # the oracle caches its first choice there
    tol = TOL[dtype]
    grads = model.backward(tensor_grads=True, seed=seed, **inputs)
    prefix = "" if arch == "LiltModel" else "lilt."
    layout_last = f"{prefix}encoder.layer.{cfg['num_hidden_layers'] - 1}.layout"
    if any(k in inputs for k in LABEL_KEYS):
        assert grads.loss is not None and not grads.upstream
        theirs = lilt_oracle_gradients(oracle, inputs)
        assert _err(grads.loss, theirs.loss) <= tol, f"loss {grads.loss} vs torch {theirs.loss}"
    else:
        upstream = dict(grads.upstream)
        layout = {layout_last: upstream.pop("layout_last_hidden_state")} if arch == "LiltModel" else {}
        theirs = lilt_oracle_gradients(oracle, inputs, upstream, upstream_modules=layout)
    worst = WORST.setdefault((arch, dtype), {"params": 0.0, "tensors": 0.0})

    # every parameter, by checkpoint key
    assert list(grads.params) == list(model.params)
    assert set(grads.params) == set(theirs.params)
    for k, g in grads.params.items():
        assert g.dtype == model.params[k].dtype, f"{k}: dtype {g.dtype}"
        err = _err(g, theirs.params[k])
        worst["params"] = max(worst["params"], err)
        assert err <= tol, f"grad.{k}: error {err:.2e} > {tol:g} * max(1, max|torch|)"

    # every floating tensor of the golden file, by trace name
    names = golden_float_names(model, inputs)
    assert set(grads.tensors) == names, (
        f"missing {sorted(names - set(grads.tensors))}, extra {sorted(set(grads.tensors) - names)}"
    )
    forward, _ = trace_forward(model, inputs, output_attentions=False, output_hidden_states=False)
    for name, g in grads.tensors.items():
        assert g.dtype == np.dtype(dtype), f"{name}: dtype {g.dtype}"
        err = _err(g, counterpart(name, theirs, layout_last))
        worst["tensors"] = max(worst["tensors"], err)
        assert err <= tol, f"grad.{name}: error {err:.2e} > {tol:g} * max(1, max|torch|)"
        if name in theirs.activations:  # the oracle's tensor of that name is the trace's tensor
            value_err = _err(forward[name], theirs.activations[name])
            assert value_err <= tol, f"{name}: the oracle's tensor has another value ({value_err:.1e})"


DTYPES = pytest.mark.parametrize("dtype", ["float64", "float32"])


# --------------------------------------------------------------------------------------------
# the cases the issue names, in the fast mode and in refimpl.reference()
# --------------------------------------------------------------------------------------------


@DTYPES
def test_lilt_model_absolute_padded_batch(mode, dtype):
    """No labels: L = sum_X <X, G_X> over last_hidden_state, pooler_output and layout_last_hidden_state."""
    cfg = tiny_config(position_embedding_type="absolute")
    check_parity("LiltModel", cfg, lilt_inputs(np.random.default_rng(1)), dtype)


@DTYPES
def test_token_classification_relative_key_query_head_mask(mode, dtype):
    """Labels with -100, relative_key_query, a 2-D head mask with a zero and a fraction."""
    cfg = tiny_config(position_embedding_type="relative_key_query")
    rng = np.random.default_rng(2)
    inputs = lilt_inputs(rng)
    labels = rng.integers(0, cfg["num_labels"], inputs["input_ids"].shape)
    labels[-1, -2:] = labels[0, 3] = -100
    inputs.update(labels=labels, head_mask=np.array([[1.0, 0.0], [0.5, 1.0]]))
    check_parity("LiltForTokenClassification", cfg, inputs, dtype)


@DTYPES
@pytest.mark.parametrize("problem", ["regression", "regression_multi", "single_label", "multi_label"])
def test_sequence_classification_relative_key_every_problem_type(mode, dtype, problem):
    """MSE (one label, squeezed; and several), cross entropy, binary cross entropy with logits."""
    cfg = tiny_config(
        position_embedding_type="relative_key",
        num_labels=1 if problem == "regression" else 3,
        problem_type="regression" if problem == "regression_multi" else None,
    )
    rng = np.random.default_rng(3)
    b = 3
    inputs = lilt_inputs(rng, b=b)
    labels = {
        "regression": rng.normal(size=(b,)),
        "regression_multi": rng.normal(size=(b, 3)),
        "single_label": rng.integers(0, 3, (b,)),
        "multi_label": (rng.random((b, 3)) < 0.5).astype(np.float64),
    }[problem]
    check_parity("LiltForSequenceClassification", cfg, {**inputs, "labels": labels}, dtype)


@DTYPES
def test_question_answering(mode, dtype):
    """Start/end positions in range, one past the end (ignored) and negative (clamped to 0)."""
    cfg = tiny_config(num_labels=2)
    inputs = lilt_inputs(np.random.default_rng(4), b=3)
    inputs.update(start_positions=np.array([2, 7, -3]), end_positions=np.array([4, 5, 9]))
    check_parity("LiltForQuestionAnswering", cfg, inputs, dtype)


@DTYPES
def test_inputs_embeds_without_labels(mode, dtype):
    """``inputs_embeds`` gets its gradient (``inputs.inputs_embeds``); a head without labels takes
    ``G`` on its logits; token types, explicit positions and a 3-d mask with a fully masked row."""
    cfg = tiny_config(position_embedding_type="absolute")
    rng = np.random.default_rng(5)
    b, s = 2, 6
    mask = (rng.random((b, s, s)) < 0.8).astype(np.int64)
    mask[1, 2] = 0
    inputs = {
        "inputs_embeds": rng.normal(size=(b, s, cfg["hidden_size"])),
        "bbox": lilt_inputs(rng, b, s)["bbox"],
        "attention_mask": mask,
        "token_type_ids": rng.integers(0, 2, (b, s)),
        "position_ids": rng.integers(0, MAX_POS, (b, s)),
    }
    check_parity("LiltForSequenceClassification", cfg, inputs, dtype)
    check_parity("LiltModel", cfg, inputs, dtype)


# --------------------------------------------------------------------------------------------
# hypothesis: tiny configs of every class, random inputs
# --------------------------------------------------------------------------------------------


@st.composite
def cases(draw):
    arch = draw(
        st.sampled_from(
            [
                "LiltModel",
                "LiltForSequenceClassification",
                "LiltForTokenClassification",
                "LiltForQuestionAnswering",
            ]
        )
    )
    shrink = draw(st.sampled_from([1, 2, 4]))
    heads = draw(st.sampled_from([1, 2, 3]))
    head_size = draw(st.sampled_from([d for d in (4, 6, 8, 12) if d % shrink == 0 and (heads * d) % 6 == 0]))
    cfg = tiny_config(
        hidden_size=heads * head_size,
        num_attention_heads=heads,
        num_hidden_layers=draw(st.integers(1, 2)),
        intermediate_size=draw(st.integers(4, 24)),
        channel_shrink_ratio=shrink,
        position_embedding_type=draw(st.sampled_from(["absolute", "relative_key", "relative_key_query"])),
        hidden_act=draw(st.sampled_from(["gelu", "relu", "tanh"])),
        pad_token_id=draw(st.sampled_from([0, 1])),
        num_labels=2 if arch == "LiltForQuestionAnswering" else draw(st.integers(1, 3)),
    )
    b, s = draw(st.integers(1, 3)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inputs = lilt_inputs(rng, b, s, pad=cfg["pad_token_id"], padded=draw(st.booleans()))
    if draw(st.booleans()):
        hm = rng.random((cfg["num_hidden_layers"], heads))
        hm[rng.random(hm.shape) < 0.3] = 0.0
        inputs["head_mask"] = hm
    if draw(st.booleans()) and arch != "LiltModel":
        n = cfg["num_labels"]
        if arch == "LiltForSequenceClassification":
            inputs["labels"] = rng.normal(size=(b,)) if n == 1 else rng.integers(0, n, (b,))
        elif arch == "LiltForTokenClassification":
            inputs["labels"] = np.where(rng.random((b, s)) < 0.3, -100, rng.integers(0, n, (b, s)))
        else:
            inputs["start_positions"] = rng.integers(-2, s + 2, (b,))
            inputs["end_positions"] = rng.integers(-2, s + 2, (b,))
    return arch, cfg, inputs


@settings(max_examples=int(os.environ.get("LILT_GRAD_EXAMPLES", "8")))
@given(case=cases(), dtype=st.sampled_from(["float64", "float32"]))
def test_hypothesis_configs(case, dtype):
    arch, cfg, inputs = case
    check_parity(arch, cfg, inputs, dtype)


# --------------------------------------------------------------------------------------------
# what a reader should see at a glance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch",
    ["LiltModel", "LiltForSequenceClassification", "LiltForTokenClassification", "LiltForQuestionAnswering"],
)
def test_gradient_names_are_the_golden_files_floating_names(arch):
    """One gradient per floating tensor of the golden file, none more: intermediates (every
    layer's scores, summands and both streams' probabilities included), outputs, inputs_embeds."""
    cfg = tiny_config(position_embedding_type="relative_key_query", num_labels=2)
    rng = np.random.default_rng(6)
    inputs = lilt_inputs(rng)
    model = ours(arch, key(cfg), "float64")
    names = golden_float_names(model, inputs)
    grads = model.backward(tensor_grads=True, **inputs)
    assert set(grads.tensors) == names
    assert "encoder.layer.1.attention.self.tmp_layout_attention_scores" in {
        n.removeprefix("lilt.") for n in names
    }
    assert grads.loss is None and set(grads.upstream) == {
        k for k in grads.outputs.keys() if k != "loss" and hasattr(grads.outputs[k], "shape")
    }
    # inputs_embeds instead of ids: its gradient is one of the names, the word table's is not
    embeds = rng.normal(size=(*inputs["input_ids"].shape, cfg["hidden_size"]))
    inputs2 = {k: v for k, v in inputs.items() if k != "input_ids"} | {"inputs_embeds": embeds}
    grads2 = model.backward(tensor_grads=True, **inputs2)
    assert set(grads2.tensors) == golden_float_names(model, inputs2)
    assert "inputs.inputs_embeds" in grads2.tensors
    assert not any(n.endswith("embeddings.word_embeddings") for n in grads2.tensors)


def test_forward_aliases_are_not_gradient_aliases():
    """Both streams' probabilities hold the same values and get different gradients; the two
    summands of the shared score get the same one; the padding rows get none."""
    cfg = tiny_config(position_embedding_type="absolute")
    inputs = lilt_inputs(np.random.default_rng(7))
    model = ours("LiltModel", key(cfg), "float64")
    grads = model.backward(tensor_grads=True, **inputs)
    forward, _ = trace_forward(model, inputs, output_attentions=False, output_hidden_states=False)
    at = "encoder.layer.0.attention.self."
    assert np.array_equal(forward[at + "attention_probs"], forward[at + "layout_attention_probs"])
    assert not np.allclose(
        grads.tensors[at + "attention_probs"], grads.tensors[at + "layout_attention_probs"]
    )
    assert not np.allclose(
        grads.tensors[at + "attention_scores"], grads.tensors[at + "layout_attention_scores"]
    )
    np.testing.assert_array_equal(
        grads.tensors[at + "tmp_attention_scores"], grads.tensors[at + "tmp_layout_attention_scores"]
    )
    pad = cfg["pad_token_id"]
    for k in (
        "embeddings.word_embeddings",
        "embeddings.position_embeddings",
        "layout_embeddings.box_position_embeddings",
    ):
        assert not grads.params[f"{k}.weight"][pad].any(), k
    assert grads.params["embeddings.token_type_embeddings.weight"].any()


# --------------------------------------------------------------------------------------------
# central finite differences (float64): the calculus itself, op kind by op kind
# --------------------------------------------------------------------------------------------

#: parameters to sample, per op kind (LiltModel's keys; the heads add their own below)
FD_KEYS = [
    "embeddings.word_embeddings.weight",  # lookup
    "embeddings.token_type_embeddings.weight",  # lookup, no padding row
    "embeddings.LayerNorm.weight",  # LayerNorm
    "layout_embeddings.x_position_embeddings.weight",  # lookup used twice
    "layout_embeddings.h_position_embeddings.weight",  # lookup of a difference
    "layout_embeddings.box_linear_embeddings.weight",  # linear over the concatenation
    "layout_embeddings.box_position_embeddings.weight",  # lookup with a padding row
    "layout_embeddings.LayerNorm.bias",
    "encoder.layer.0.attention.self.query.weight",  # BiACM, text scale
    "encoder.layer.0.attention.self.key.weight",
    "encoder.layer.0.attention.self.layout_query.weight",  # BiACM, layout scale
    "encoder.layer.0.attention.self.layout_value.weight",
    "encoder.layer.0.attention.self.distance_embedding.weight",  # relative positions
    "encoder.layer.0.attention.output.dense.weight",  # add and norm
    "encoder.layer.1.intermediate.dense.weight",  # GELU
    "encoder.layer.1.layout_intermediate.dense.bias",
    "encoder.layer.1.output.LayerNorm.weight",
]


def _finite_differences(arch: str, cfg: dict, inputs: dict, head_keys: list[str]) -> float:
    model = ours(arch, key(cfg), "float64")
    prefix = "" if arch == "LiltModel" else "lilt."
    keys = [prefix + k for k in FD_KEYS if prefix + k in model.params] + head_keys
    grads = model.backward(seed=11, **inputs)
    params = {k: np.array(model.params[k]) for k in keys}  # writable copies, put in the model
    restore = {k: model.params[k] for k in keys}
    _put(model, params)
    try:
        if grads.loss is not None:

            def loss():
                return float(model(**inputs).loss)
        else:

            def loss():
                out = model(**inputs)
                return float(sum((out[f] * g).sum() for f, g in grads.upstream.items()))

        return check_gradients(loss, params, {k: grads.params[k] for k in keys}, samples=3)
    finally:
        _put(model, restore)


def _put(model, arrays: dict) -> None:
    from refimpl.modeling import nest

    model.params.update(arrays)
    model.weights = nest(model.params)


def test_finite_differences_every_op_kind():
    """Sampled entries of one parameter of every kind, for L = sum <X, G> (LiltModel: pooler's
    tanh) and each head's loss (cross entropy with -100, MSE, BCE, the QA loss). The ids hold
    no pad id, so the padding rows are never looked up (torch gives them no gradient, which a
    finite difference of a looked-up row would not agree with)."""
    rng = np.random.default_rng(8)
    cfg = tiny_config(position_embedding_type="relative_key_query", num_labels=2)
    inputs = lilt_inputs(rng, padded=False)
    inputs["head_mask"] = np.array([[1.0, 0.0], [0.7, 1.0]])
    worst = _finite_differences("LiltModel", cfg, inputs, ["pooler.dense.weight"])
    labels = np.where(
        rng.random(inputs["input_ids"].shape) < 0.3, -100, rng.integers(0, 2, inputs["input_ids"].shape)
    )
    worst = max(
        worst,
        _finite_differences(
            "LiltForTokenClassification",
            cfg,
            {**inputs, "labels": labels},
            ["classifier.weight", "classifier.bias"],
        ),
    )
    for labels in (rng.normal(size=(2,)), (rng.random((2, 2)) < 0.5).astype(np.float64), np.array([1, 0])):
        c = tiny_config(
            position_embedding_type="relative_key",
            num_labels=1 if labels.ndim == 1 and labels.dtype.kind == "f" else 2,
        )
        worst = max(
            worst,
            _finite_differences(
                "LiltForSequenceClassification",
                c,
                {**inputs, "labels": labels},
                ["classifier.dense.weight", "classifier.out_proj.bias"],
            ),
        )
    qa = {**inputs, "start_positions": np.array([1, 9]), "end_positions": np.array([5, 3])}
    worst = max(worst, _finite_differences("LiltForQuestionAnswering", cfg, qa, ["qa_outputs.weight"]))
    assert worst <= 1e-6
