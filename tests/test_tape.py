"""The recorder's contract, which the backward pass relies on: a recorded array is never written
again, and the plain path records every activation a backward needs, without recomputing it.

A checking recorder keeps each recorded array *by reference* (no copy, as the backward's tape
will) together with a copy. Full LiLT and LXMERT forwards run in the fast and the reference
mode, with a recorder that wants every name (the formulas run, recording everything) and with
one that wants none of the names a kernel skips (the fused kernels run while recording);
afterwards every kept array must still equal its copy bit for bit.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from _oracle import build, save, tiny_lilt_config
from transformers import LiltForSequenceClassification

import refimpl
from refimpl import backend, data, gradients, switch, trace
from refimpl import tape as tape_mod

#: the names some kernel may skip (each replaceable op's declared records)
SKIPPABLE = {name for op in switch.kernels() for name in op.records}
#: what the fused attention kernels skip, and the projections of the fused BERT blocks
ATTENTION_STEPS = SKIPPABLE - {"dense", "LayerNorm"}
FUSED_DENSE = re.compile(r"(inter|intermediate|output)\.(dense|LayerNorm)(@\w+)?$")


def _leaf(name: str) -> str:
    return name.split("@")[0].rsplit(".", 1)[-1]


class CheckingRecorder(trace.Recorder):
    """Keeps references to what it records, and a copy of each to check them against later."""

    def __init__(self, kernel_friendly: bool):
        super().__init__(copy=False)
        self.kernel_friendly = kernel_friendly
        self.copies: dict[str, np.ndarray] = {}

    def wants(self, name: str) -> bool:
        return not (self.kernel_friendly and _leaf(name) in SKIPPABLE)

    def store(self, name, value, aliases=()):
        super().store(name, value, aliases)
        self.copies[name] = np.array(value, copy=True)

    def check_untouched(self) -> int:
        for name, copy in self.copies.items():
            kept = self.tensors[name]
            assert isinstance(kept, np.ndarray) or np.isscalar(kept), name
            kept = np.asarray(kept)
            assert kept.shape == copy.shape and kept.dtype == copy.dtype, name
            assert kept.tobytes() == copy.tobytes(), f"{name} was written after it was recorded"
        return len(self.copies)


@pytest.fixture(scope="module")
def relative_lilt(tmp_path_factory):
    """A LiLT head model with relative_key_query positions (the relative scores in BiACM)."""
    config = tiny_lilt_config(position_embedding_type="relative_key_query", num_labels=3)
    d = save(build(LiltForSequenceClassification, config, seed=5), tmp_path_factory.mktemp("lilt-rel"))
    return refimpl.from_pretrained(d, dtype="float64")


def _lilt_inputs(config, rng, b=2, s=37):
    ids = rng.integers(3, config.vocab_size, (b, s))
    mask = np.ones((b, s), np.int64)
    mask[1, -9:] = 0
    x0, y0 = rng.integers(0, 60, (b, s)), rng.integers(0, 60, (b, s))
    bbox = np.stack([x0, y0, x0 + rng.integers(0, 40, (b, s)), y0 + 5], -1)
    heads = rng.random((config.num_hidden_layers, config.num_attention_heads))
    return {"input_ids": ids, "bbox": bbox, "attention_mask": mask, "head_mask": heads}


def _lxmert_inputs(c, rng, dtype, b=2, s=9, o=7):
    am, vm = np.ones((b, s), np.int64), np.ones((b, o), np.int64)
    am[1, -3:], vm[0, -2:] = 0, 0
    return {
        "input_ids": rng.integers(0, c.vocab_size, (b, s)),
        "attention_mask": am,
        "visual_feats": rng.standard_normal((b, o, c.visual_feat_dim)).astype(dtype),
        "visual_pos": rng.random((b, o, 4)).astype(dtype),
        "visual_attention_mask": vm,
        "labels": np.where(rng.random((b, s)) < 0.5, rng.integers(0, c.vocab_size, (b, s)), -100),
        "obj_labels": {
            "obj": (rng.integers(0, c.num_object_labels, (b, o)), rng.random((b, o)).astype(dtype)),
            "attr": (rng.integers(0, c.num_attr_labels, (b, o)), rng.random((b, o)).astype(dtype)),
            "feat": (
                rng.standard_normal((b, o, c.visual_feat_dim)).astype(dtype),
                rng.random((b, o)).astype(dtype),
            ),
        },
        "matched_label": np.array([1, 0]),
        "ans": rng.integers(0, c.num_qa_labels, (b,)),
    }


def _models_and_inputs(relative_lilt, dtype):
    rng = np.random.default_rng(0)
    lilt = refimpl.from_pretrained(data.path("lilt-tiny"), dtype=dtype)
    x = _lilt_inputs(lilt.config, rng)
    yield "lilt", lilt, dict(x, labels=rng.integers(0, lilt.config.num_labels, x["input_ids"].shape))
    if dtype == "float64":
        x = _lilt_inputs(relative_lilt.config, rng)
        yield "lilt-relative", relative_lilt, dict(x, labels=np.array([0, 2]))
    lxmert = refimpl.from_pretrained(data.path("lxmert-tiny"), dtype=dtype)
    yield "lxmert", lxmert, _lxmert_inputs(lxmert.config, rng, dtype)


@pytest.fixture
def two_threads():
    backend.set_num_threads(2)  # the kernels' blocks on two threads
    yield
    backend.set_num_threads(None)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel_friendly", [False, True], ids=["wants-all", "wants-no-skipped-name"])
def test_no_recorded_array_is_written_again(two_threads, relative_lilt, mode, dtype, kernel_friendly):
    for name, model, inputs in _models_and_inputs(relative_lilt, dtype):
        rec = CheckingRecorder(kernel_friendly)
        with trace.tracing(recorder=rec):
            out = model(**inputs, output_attentions=True, output_hidden_states=True)
        assert out.loss is not None
        n = rec.check_untouched()
        assert n > 30, f"{name}: only {n} tensors recorded"
        recorded_leaves = {_leaf(k) for k in rec.tensors}
        if kernel_friendly and mode == "fast":  # the fused kernels ran: nothing they skip was formed
            fused = [k for k in rec.tensors if _leaf(k) in ATTENTION_STEPS or FUSED_DENSE.search(k)]
            assert not fused, f"{name}: {fused}"
        else:  # the formulas ran and recorded what the kernels skip
            assert {"dense", "LayerNorm", "attention_probs", "context"} <= recorded_leaves, name


def test_the_plain_path_records_every_weight_owning_modules_output(relative_lilt, mode):
    """Each Linear's output (the intermediate's pre-activation ``dense`` included), every
    LayerNorm, every embedding lookup: the backward finds them on the tape, by module path."""
    for name, model, inputs in _models_and_inputs(relative_lilt, "float64"):
        with trace.tracing(copy=False) as rec:
            model(**inputs)
        names = list(rec.tensors)
        for key in model.params:
            module = key.rsplit(".", 1)[0]
            if key.endswith(".bias"):
                continue  # a bias belongs to its Linear
            if module.endswith("embeddings.position_embeddings") and name == "lilt-relative":
                continue  # relative positions leave the absolute table unused, as in the oracle
            found = module in rec.tensors or any(n.startswith((module + ".", module + "@")) for n in names)
            assert found, f"{name}: nothing recorded for {module}"
        for leaf in ("attention_probs", "attention_scores", "context"):
            assert any(_leaf(n) == leaf for n in names), f"{name}: no {leaf}"


def test_release_drops_a_scope_and_what_lies_beneath_it_only():
    tape = tape_mod.Tape(skip=())
    names = ["encoder.layer.1", "encoder.layer.1.layout", "encoder.layer.1.attention.self.query",
             "encoder.layer.1.attention@lang", "encoder.layer.10", "encoder.layer.10.layout", "encoder.layer.0"]  # fmt: skip
    for n in names:
        tape.store(n, np.zeros(1))
    assert tape_mod.release("layer.1") == 0  # not reading a tape: nothing to drop
    with tape_mod.reading(tape), trace.tracing(recorder=trace.Recorder()), trace.scope("encoder"):
        assert tape_mod.release("layer.1") == 4
        assert sorted(tape.tensors) == ["encoder.layer.0", "encoder.layer.10", "encoder.layer.10.layout"]
        with pytest.raises(KeyError, match="encoder.layer.1.layout"):
            tape_mod.saved("layer.1.layout")


def test_the_backward_releases_each_layer_as_it_goes(monkeypatch):
    """Each encoder layer's saved activations are dropped once its backward has run (the peak
    memory of a backward is then far below "the whole tape plus every gradient"); the gradients
    stay those of the tests in test_backward_lilt.py / test_backward_lxmert.py."""
    seen = []
    real = tape_mod.release

    def spy(name):
        seen.append(trace.current_name(name))
        return real(name)

    for mod in ("refimpl.lilt.backward", "refimpl.lxmert.backward"):
        monkeypatch.setattr(f"{mod}.release", spy)
    lilt = refimpl.from_pretrained(data.path("lilt-tiny"), dtype="float64")
    rng = np.random.default_rng(0)
    ids = rng.integers(3, lilt.config.vocab_size, (1, 7))
    x0, y0 = rng.integers(0, 500, (1, 7)), rng.integers(0, 500, (1, 7))
    bbox = np.stack([x0, y0, x0 + 10, y0 + 10], axis=-1)
    gradients.backward(lilt, input_ids=ids, bbox=bbox, labels=np.zeros((1, 7), np.int64))
    n = lilt.config.num_hidden_layers
    assert seen == [f"lilt.encoder.layer.{i}" for i in reversed(range(n))]
