"""The original LiLT heads' hand-written backward (refimpl/lilt/original.py, original_re.py)
against torch autograd on the independent torch implementation of the heads
(tests/_original_lilt.py, on transformers 4.56.2's ``LiltModel``), and the biaffine score's
backward against central finite differences.

Every parameter gradient, by the original's checkpoint key, must be within
``1e-10 * max(1, max|torch|)`` in float64 (``1e-4`` in float32), with the loss as ``L``
(labels / relations given) and with ``L = sum(logits * G)`` (no labels: ``G`` the seeded upstream
that `model.backward` draws); the gradient of the joined streams (traced as ``dropout``) is
compared with torch's gradient of the same tensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _finite_diff import check_gradients
from hypothesis import given, settings
from hypothesis import strategies as st
from test_original_lilt import (
    RelationExtractor,
    TokenClassifier,
    balance_predictions,
    build_head,
    documents,
    head_config,
    lilt_inputs,
    save_original,
    torch_inputs,
)

import refimpl
from refimpl.lilt.original_re import biaffine, biaffine_backward

TOL = {"float64": 1e-10, "float32": 1e-4}


def _pair(tmp_path_factory, cls, arch: str, seed: int, dtype: str):
    theirs = build_head(cls, seed=seed)
    if cls is RelationExtractor:
        balance_predictions(theirs)
    path = save_original(theirs, head_config(), arch, str(tmp_path_factory.mktemp(arch)))
    with pytest.warns(refimpl.config.CheckpointWarning):
        ours = refimpl.from_pretrained(path, dtype=dtype)
    return ours, theirs.to(getattr(torch, dtype))


@pytest.fixture(scope="module", params=["float64", "float32"])
def token(request, tmp_path_factory):
    return _pair(
        tmp_path_factory, TokenClassifier, "LiLTRobertaLikeForTokenClassification", 21, request.param
    )


@pytest.fixture(scope="module")
def relation(tmp_path_factory):
    return _pair(tmp_path_factory, RelationExtractor, "LiLTRobertaLikeForRelationExtraction", 22, "float64")


def _joined(theirs) -> dict:
    """A hook keeping torch's joined streams (the dropout's output) with its gradient."""
    kept = {}

    def hook(module, args, out):
        out.retain_grad()
        kept["x"] = out

    theirs.dropout.register_forward_hook(hook)
    return kept


def _assert_params(grads, theirs, dtype: str) -> int:
    """Every parameter's gradient equals torch's; returns how many were compared."""
    n = 0
    for name, p in theirs.named_parameters():
        want = p.grad.detach().double().numpy() if p.grad is not None else np.zeros(tuple(p.shape))
        got = np.asarray(grads.params[name], dtype=np.float64)
        bound = TOL[dtype] * max(1.0, float(np.max(np.abs(want))))
        assert np.max(np.abs(got - want)) <= bound, (name, float(np.max(np.abs(got - want))), bound)
        n += 1
    assert n == len(grads.params)  # every weight of ours is a parameter of theirs, and back
    return n


@pytest.mark.parametrize("labelled", [True, False])
def test_token_classification_gradients_equal_autograd(token, labelled):
    ours, theirs = token
    dtype = str(ours.dtype)
    rng = np.random.default_rng(5)
    inputs = lilt_inputs(rng, 3, 9)
    mask = inputs["attention_mask"]
    labels = rng.integers(0, 5, size=(3, 9))
    labels = np.where(rng.random((3, 9)) < 0.2, -100, labels)
    labels = np.where(mask == 1, labels, rng.integers(5, 50, size=(3, 9)))  # anything where inactive
    theirs.zero_grad()
    kept = _joined(theirs)
    if labelled:
        grads = ours.backward(**inputs, labels=labels, tensor_grads=True)
        loss, _ = theirs(labels=torch.from_numpy(labels), **torch_inputs(inputs))
        loss.backward()
        assert abs(float(grads.loss) - loss.item()) <= TOL[dtype] * max(1.0, abs(loss.item()))
    else:
        grads = ours.backward(**inputs, seed=3, tensor_grads=True)
        _, logits = theirs(**torch_inputs(inputs))
        (logits * torch.from_numpy(grads.upstream["logits"])).sum().backward()
    _assert_params(grads, theirs, dtype)
    want = kept["x"].grad.double().numpy()
    got = np.asarray(grads.tensors["dropout"], dtype=np.float64)
    assert np.max(np.abs(got - want)) <= TOL[dtype] * max(1.0, float(np.max(np.abs(want))))


@settings(max_examples=8, deadline=None)
@given(
    data=st.data(), b=st.integers(1, 3), s=st.integers(2, 9), seed=st.integers(0, 2**16), gold=st.booleans()
)
def test_relation_extraction_gradients_equal_autograd(relation, data, b, s, seed, gold):
    """Documents drawn as the forward's tests draw them: empty, one- and two-entity documents
    (the stand-in), repeated and non-candidate gold relations; with relations ``L`` is the
    loss, without them ``L = sum(logits * G)``."""
    ours, theirs = relation
    entities, relations = data.draw(documents(b, s))
    inputs = lilt_inputs(np.random.default_rng(seed), b, s)
    theirs.zero_grad()
    kept = _joined(theirs)
    if gold:
        grads = ours.backward(**inputs, entities=entities, relations=relations, tensor_grads=True)
        loss, _, _, _ = theirs(entities=entities, relations=relations, **torch_inputs(inputs))
        loss.backward()
    else:
        grads = ours.backward(**inputs, entities=entities, seed=seed, tensor_grads=True)
        _, logits, _, _ = theirs(entities=entities, relations=None, **torch_inputs(inputs))
        (logits * torch.from_numpy(grads.upstream["logits"])).sum().backward()
    assert _assert_params(grads, theirs, "float64") > 0
    want = kept["x"].grad.double().numpy()
    got = np.asarray(grads.tensors["dropout"])
    assert np.max(np.abs(got - want)) <= 1e-10 * max(1.0, float(np.max(np.abs(want))))


def test_relation_gradient_names_follow_the_forward_names(relation):
    """The decoder's gradients are recorded under the forward's own trace names (per document)."""
    ours, _ = relation
    inputs = lilt_inputs(np.random.default_rng(1), 2, 8)
    entities = [{"start": [0, 2, 4, 6], "end": [1, 3, 5, 7], "label": [1, 2, 1, 2]}] * 2
    relations = [{"head": [0], "tail": [1]}, {"head": [2], "tail": [3]}]
    grads = ours.backward(**inputs, entities=entities, relations=relations, tensor_grads=True)
    for d in ("doc0", "doc1"):
        for name in (
            f"extractor.rel_classifier@{d}",
            f"extractor.ffnn_head@{d}",
            f"extractor.ffnn_tail.3@{d}",
            f"extractor.ffnn_head.0@{d}",
            f"extractor.entity_emb@{d}_head",
        ):
            assert name in grads.tensors, (name, sorted(k for k in grads.tensors if "extractor" in k))


def test_biaffine_backward_equals_finite_differences():
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    w = {"bilinear": {"weight": rng.standard_normal((2, 3, 3))}}
    w["linear"] = {"weight": rng.standard_normal((2, 6)), "bias": rng.standard_normal(2)}
    g = rng.standard_normal((4, 2))

    def loss() -> float:
        return float((biaffine(x1, x2, **w) * g).sum())

    dx1, dx2, dw = biaffine_backward(g, x1, x2, **w)
    arrays = {
        "x1": x1,
        "x2": x2,
        "W": w["bilinear"]["weight"],
        "V": w["linear"]["weight"],
        "b": w["linear"]["bias"],
    }
    analytic = {
        "x1": dx1,
        "x2": dx2,
        "W": dw["bilinear"]["weight"],
        "V": dw["linear"]["weight"],
        "b": dw["linear"]["bias"],
    }
    assert check_gradients(loss, arrays, analytic, samples=8) <= 1e-6
