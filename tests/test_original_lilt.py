"""The original LiLT repository (jpWang/LiLT): its checkpoint recipe and its fine-tuning heads.

* A checkpoint made as ``gen_weight_roberta_like.py`` makes it (a transformers
  ``RobertaForMaskedLM`` ``pytorch_model.bin``, ``roberta.`` renamed ``lilt.``, merged with
  LiLT-only weights, the text ``config.json`` with ``model_type: "liltrobertalike"``) loads with
  one warning line per change and equals transformers' ``LiltModel`` on it (float64, 1e-10).
* ``LiLTRobertaLikeForTokenClassification`` and ``LiLTRobertaLikeForRelationExtraction`` equal
  an independent torch implementation (tests/_original_lilt.py) on transformers' encoder, over
  hypothesis-generated documents, entities and relations (float64, 1e-10).
* Hand-computed cases for the biaffine score, the candidate pairs, the predictions and the loss.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest
import torch
import transformers
from _oracle import assert_close, build, randomize_, to_numpy
from _original_lilt import RelationExtractor, TokenClassifier, original_key_shapes
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl
from refimpl import trace
from refimpl.config import CheckpointWarning
from refimpl.files import CheckpointError
from refimpl.lilt import (
    LiltModel,
    LiLTRobertaLikeForRelationExtraction,
    LiLTRobertaLikeForTokenClassification,
)
from refimpl.lilt.original import active_token_loss
from refimpl.lilt.original_re import biaffine, candidate_pairs, predicted_relations, stand_in

ATOL = 1e-10
#: worst |ours - reference| per quantity, printed at the end (pytest -s)
WORST: dict[str, float] = {}

_TMP = tempfile.TemporaryDirectory(prefix="refimpl-original-lilt-")
atexit.register(_TMP.cleanup)


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    print(f"\noriginal LiLT worst |diff| (float64): {WORST}")


def close(name: str, ours, theirs) -> None:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert_close(name, ours, theirs, atol=ATOL)
    if ours.size:
        d = float(np.nanmax(np.abs(np.where(np.isnan(theirs), 0, ours - theirs))))
        WORST[name] = max(WORST.get(name, 0.0), d)


def text_config(**changes) -> transformers.RobertaConfig:
    """A tiny RoBERTa (the recipe's text model): 4 heads of 12, 2 layers, pad 1, eps 1e-5."""
    sizes = dict(
        vocab_size=60,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=1,
        pad_token_id=1,
        layer_norm_eps=1e-5,
    )
    return transformers.RobertaConfig(**{**sizes, **changes})


def lilt_config(**changes) -> transformers.LiltConfig:
    """The LiLT config of the same sizes (channel_shrink_ratio 4: a 12-wide layout stream)."""
    skip = ("model_type", "architectures", "id2label", "label2id")
    d = {k: v for k, v in text_config().to_dict().items() if k not in skip}
    return transformers.LiltConfig(
        **{**d, "channel_shrink_ratio": 4, "max_2d_position_embeddings": 1024, **changes}
    )


# --------------------------------------------------------------------------------------------
# the recipe's checkpoint
# --------------------------------------------------------------------------------------------


def make_recipe_checkpoint(out: str, drop_pad_token_id: bool = False, seed: int = 0) -> str:
    """``gen_weight_roberta_like.py --text roberta/pytorch_model.bin --lilt lilt-only/... --config
    roberta/config.json --out out``, step for step, on randomized tiny models.

    ``lilt-only-base`` holds the LiLT weights a RoBERTa lacks: the layout stream and the pooler
    (``RobertaForMaskedLM`` has none); here they come from a randomized transformers LiltModel.
    """
    text_dir = os.path.join(out + "-text")
    text = build(transformers.RobertaForMaskedLM, text_config(), seed=seed + 1)
    text.save_pretrained(text_dir, safe_serialization=False)  # what the README downloads
    lilt = build(transformers.LiltModel, lilt_config(), seed=seed + 2)
    # the recipe: config.json of the text model, plus the two LiLT fields and the model type
    with open(os.path.join(text_dir, "config.json")) as f:
        config = json.load(f)
    config["channel_shrink_ratio"] = 4
    config["max_2d_position_embeddings"] = 1024
    config["model_type"] = "liltrobertalike"
    if drop_pad_token_id:
        del config["pad_token_id"]  # an older RoBERTa config.json
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, sort_keys=True, indent=2, separators=(",", ": "))
    text_sd = torch.load(os.path.join(text_dir, "pytorch_model.bin"), weights_only=True)
    text_sd = {k.replace("roberta.", "lilt."): v for k, v in text_sd.items()}
    lilt_only = {f"lilt.{k}": v for k, v in lilt.state_dict().items() if f"lilt.{k}" not in text_sd}
    torch.save({**text_sd, **lilt_only}, os.path.join(out, "pytorch_model.bin"))
    return out


@pytest.fixture(scope="module")
def recipe() -> str:
    return make_recipe_checkpoint(os.path.join(_TMP.name, "recipe"))


def lilt_inputs(rng: np.random.Generator, b: int, s: int, vocab: int = 60, pad: int = 1) -> dict:
    """input_ids (padding after a random length), valid boxes in [0, 1023], attention mask."""
    lengths = rng.integers(1, s + 1, size=b)
    mask = (np.arange(s)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(0, vocab, size=(b, s))
    ids = np.where(mask == 1, ids, pad)
    x0, y0 = rng.integers(0, 600, size=(b, s)), rng.integers(0, 600, size=(b, s))
    x1, y1 = x0 + rng.integers(0, 400, size=(b, s)), y0 + rng.integers(0, 400, size=(b, s))
    bbox = np.stack([x0, y0, x1, y1], axis=-1)
    return {"input_ids": ids, "bbox": bbox, "attention_mask": mask}


def torch_inputs(inputs: dict) -> dict:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}


def warning_lines(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CheckpointWarning)]


def test_recipe_checkpoint_loads_with_warnings_and_equals_transformers(recipe):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ours = refimpl.from_pretrained(recipe, dtype="float64")
    lines = warning_lines(rec)
    assert isinstance(ours, LiltModel)
    assert len(lines) == 3, lines
    (arch,) = [m for m in lines if "architectures[0]" in m]
    assert "'RobertaForMaskedLM'" in arch and "LiltModel" in arch
    (mt,) = [m for m in lines if "is read as 'lilt'" in m]
    assert "model_type 'liltrobertalike'" in mt
    (unused,) = [m for m in lines if "does not use" in m]
    lm_head = [
        "lm_head.bias",
        "lm_head.dense.weight",
        "lm_head.dense.bias",
        "lm_head.layer_norm.weight",
        "lm_head.layer_norm.bias",
        "lm_head.decoder.weight",
        "lm_head.decoder.bias",
    ]
    assert all(k in unused for k in lm_head) and "strict=True" in unused
    assert all("\n" not in m for m in lines)

    oracle = transformers.LiltModel.from_pretrained(recipe, torch_dtype=torch.float64).eval()
    inputs = lilt_inputs(np.random.default_rng(0), 3, 9)
    with torch.no_grad():
        want = oracle(**torch_inputs(inputs), output_hidden_states=True, output_attentions=True)
    got = ours(**inputs, output_hidden_states=True, output_attentions=True)
    close("recipe.last_hidden_state", got.last_hidden_state, to_numpy(want.last_hidden_state))
    close("recipe.pooler_output", got.pooler_output, to_numpy(want.pooler_output))
    for i, (a, w) in enumerate(zip(got.hidden_states, want.hidden_states, strict=True)):
        close(f"recipe.hidden_states[{i}]", a, to_numpy(w))
    for i, (a, w) in enumerate(zip(got.attentions, want.attentions, strict=True)):
        close(f"recipe.attentions[{i}]", a, to_numpy(w))


def test_recipe_checkpoint_strict_refuses_the_unused_weights(recipe):
    for load in (
        lambda: refimpl.from_pretrained(recipe, dtype="float64", strict=True),
        lambda: LiltModel.from_pretrained(recipe, dtype="float64", strict=True),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)
            with pytest.raises(CheckpointError) as e:
                load()
        msg = str(e.value)
        assert "unexpected (7)" in msg and "lm_head.decoder.weight" in msg and "lm_head.dense.bias" in msg
        assert "pooler" not in msg  # LiltModel uses the pooler


def test_strict_lists_the_unused_weights_beside_the_missing_ones(recipe, tmp_path):
    sd = torch.load(os.path.join(recipe, "pytorch_model.bin"), weights_only=True)
    del sd["lilt.pooler.dense.bias"]
    torch.save(sd, tmp_path / "pytorch_model.bin")
    with open(os.path.join(recipe, "config.json")) as f:
        (tmp_path / "config.json").write_text(f.read())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        with pytest.raises(CheckpointError) as e:
            LiltModel.from_pretrained(tmp_path, dtype="float64", strict=True)
        msg = str(e.value)
        assert "missing (1):\n    pooler.dense.bias" in msg and "unexpected, another class (7):" in msg
        with pytest.raises(CheckpointError) as e:
            LiltModel.from_pretrained(tmp_path, dtype="float64")
        assert "missing (1)" in str(e.value) and "lm_head" not in str(e.value)


def test_missing_weights_stay_an_error(recipe):
    # the recipe has no token classifier: a head model needs one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        with pytest.raises(
            CheckpointError, match=r"missing \(2\):\n    classifier.weight\n    classifier.bias"
        ):
            LiLTRobertaLikeForTokenClassification.from_pretrained(recipe, dtype="float64")


def test_config_without_pad_token_id_uses_the_oracles_default(tmp_path):
    path = make_recipe_checkpoint(str(tmp_path / "nopad"), drop_pad_token_id=True, seed=5)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ours = refimpl.from_pretrained(path, dtype="float64")
    (pad,) = [m for m in warning_lines(rec) if "pad_token_id" in m]
    assert "no pad_token_id: using 0" in pad and "position ids" in pad and "use 1" in pad
    oracle = transformers.LiltModel.from_pretrained(path, torch_dtype=torch.float64).eval()
    assert ours.config.pad_token_id == oracle.config.pad_token_id == 0
    # token 0 is now the padding token: its positions keep the padding index
    inputs = lilt_inputs(np.random.default_rng(1), 2, 8, pad=0)
    inputs["input_ids"][:, 3] = 0
    with torch.no_grad():
        want = oracle(**torch_inputs(inputs))
    got = ours(**inputs)
    close("nopad.last_hidden_state", got.last_hidden_state, to_numpy(want.last_hidden_state))
    close("nopad.pooler_output", got.pooler_output, to_numpy(want.pooler_output))


def test_cli_shows_the_warnings(recipe):
    p = subprocess.run(
        [sys.executable, "-m", "refimpl.cli", "inspect", recipe], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert (
        "model_type 'liltrobertalike'" in p.stderr and "architectures[0] = 'RobertaForMaskedLM'" in p.stderr
    )


# --------------------------------------------------------------------------------------------
# the heads: checkpoints in the original's format
# --------------------------------------------------------------------------------------------


def save_original(
    model: torch.nn.Module, config: transformers.LiltConfig, arch: str, out: str, **extra
) -> str:
    """What the original's ``save_pretrained`` writes: its keys (and the persistent
    ``lilt.embeddings.position_ids`` buffer of its text embeddings), ``model_type`` and class name."""
    os.makedirs(out, exist_ok=True)
    d = config.to_dict()
    d.update(model_type="liltrobertalike", architectures=[arch])
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(d, f)
    sd = dict(model.state_dict())
    sd["lilt.embeddings.position_ids"] = torch.arange(config.max_position_embeddings)[None]
    sd.update(extra)
    torch.save(sd, os.path.join(out, "pytorch_model.bin"))
    return out


def head_config() -> transformers.LiltConfig:
    return lilt_config(num_labels=5, max_2d_position_embeddings=1024)


def build_head(cls, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = cls(head_config())
    randomize_(model, seed=seed, std=0.08)
    return model.to(torch.float64).eval()


@pytest.fixture(scope="module")
def token_pair():
    theirs = build_head(TokenClassifier, seed=11)
    path = save_original(
        theirs, head_config(), "LiLTRobertaLikeForTokenClassification", os.path.join(_TMP.name, "tc")
    )
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ours = refimpl.from_pretrained(path, dtype="float64")
    # only the model-type line: the position_ids buffer is dropped silently, as transformers does
    assert [m for m in warning_lines(rec) if "liltrobertalike" not in m] == []
    return ours, theirs


def balance_predictions(theirs: RelationExtractor) -> None:
    """Shift the class-1 bias so that about half the pairs of random documents are predicted
    relations (random weights alone predict almost none, which would leave the comparison of
    ``pred_relations`` empty)."""
    rng = np.random.default_rng(99)
    ents = [{"start": list(range(8)), "end": [8] * 8, "label": [1, 1, 1, 1, 2, 2, 2, 2]}] * 4
    with torch.no_grad():
        _, logits, _, _ = theirs(entities=ents, **torch_inputs(lilt_inputs(rng, 4, 8)))
        margin = logits[:, 1] - logits[:, 0]
        theirs.extractor.rel_classifier.linear.bias[1] -= margin.median()


@pytest.fixture(scope="module")
def re_pair():
    theirs = build_head(RelationExtractor, seed=12)
    balance_predictions(theirs)
    path = save_original(
        theirs, head_config(), "LiLTRobertaLikeForRelationExtraction", os.path.join(_TMP.name, "re")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        ours = refimpl.from_pretrained(path, dtype="float64")
    return ours, theirs


@pytest.mark.parametrize("head", ["token", "relation"])
def test_keys_and_shapes_are_the_originals(head):
    config = head_config()
    ref = (TokenClassifier if head == "token" else RelationExtractor)(config)
    ours = LiLTRobertaLikeForTokenClassification if head == "token" else LiLTRobertaLikeForRelationExtraction
    want = {
        f"lilt.{k}": tuple(v.shape)
        for k, v in transformers.LiltModel(config, add_pooling_layer=False).state_dict().items()
    }
    want |= original_key_shapes(config, head)
    # the reference's module tree holds exactly the original's keys...
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == want
    # ... and so does ours, in the same order
    got = ours.expected_shapes(refimpl.config.LiltConfig.from_dict(config.to_dict()))
    assert list(got.items()) == list(want.items())
    # base size: 960 = 768 + 768 // 4 features into the heads
    base = refimpl.config.LiltConfig(vocab_size=50265, num_labels=7, channel_shrink_ratio=4)
    if head == "token":
        assert ours.expected_shapes(base)["classifier.weight"] == (7, 960)
    else:
        s = ours.expected_shapes(base)
        assert s["extractor.entity_emb.weight"] == (3, 960)
        assert s["extractor.ffnn_head.0.weight"] == (768, 1920)
        assert s["extractor.rel_classifier.bilinear.weight"] == (2, 384, 384)


def test_original_architecture_names_are_picked(token_pair, re_pair):
    assert isinstance(token_pair[0], LiLTRobertaLikeForTokenClassification)
    assert isinstance(re_pair[0], LiLTRobertaLikeForRelationExtraction)
    assert refimpl.model_class("LiLTRobertaLikeModel") is LiltModel


def test_head_checkpoint_with_a_pooler_warns_and_strict_refuses(tmp_path):
    theirs = build_head(TokenClassifier, seed=13)
    h = head_config().hidden_size
    pooler = {"lilt.pooler.dense.weight": torch.zeros(h, h), "lilt.pooler.dense.bias": torch.zeros(h)}
    path = save_original(
        theirs, head_config(), "LiLTRobertaLikeForTokenClassification", str(tmp_path), **pooler
    )
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        refimpl.from_pretrained(path, dtype="float64")
    (line,) = [m for m in warning_lines(rec) if "does not use" in m]
    assert "2 checkpoint weights" in line and "lilt.pooler.dense.weight, lilt.pooler.dense.bias" in line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        with pytest.raises(CheckpointError, match=r"unexpected \(2\):\n    lilt.pooler.dense.weight"):
            LiLTRobertaLikeForTokenClassification.from_pretrained(path, dtype="float64", strict=True)


# --------------------------------------------------------------------------------------------
# token classification against the reference
# --------------------------------------------------------------------------------------------


@settings(max_examples=12)
@given(
    b=st.integers(1, 3),
    s=st.integers(2, 9),
    seed=st.integers(0, 2**16),
    with_mask=st.booleans(),
)
def test_token_classification_equals_reference(token_pair, b, s, seed, with_mask):
    ours, theirs = token_pair
    rng = np.random.default_rng(seed)
    inputs = lilt_inputs(rng, b, s)
    if not with_mask:
        del inputs["attention_mask"]
    mask = inputs.get("attention_mask", np.ones((b, s), dtype=np.int64))
    labels = rng.integers(0, 5, size=(b, s))
    labels = np.where(rng.random((b, s)) < 0.2, -100, labels)
    labels = np.where(mask == 1, labels, rng.integers(5, 50, size=(b, s)))  # any value where inactive
    with torch.no_grad():
        loss, logits = theirs(labels=torch.from_numpy(labels), **torch_inputs(inputs))
    got = ours(**inputs, labels=labels)
    close("token.logits", got.logits, to_numpy(logits))
    close("token.loss", got.loss, to_numpy(loss))


def test_token_loss_hand_computed():
    # two tokens, two labels, equal logits: each counted token costs ln 2
    logits = np.zeros((1, 2, 2))
    # token 1 is masked out: its label 7 (outside [0, 1]) is not even looked at
    loss = active_token_loss(logits, np.array([[0, 7]]), np.array([[1, 0]]))
    assert abs(float(loss) - np.log(2)) < 1e-15
    # token 0 wins by 1 with label 0: ln(1 + e^-1); token 1 ignored by -100
    logits = np.array([[[1.0, 0.0], [3.0, -3.0]]])
    loss = active_token_loss(logits, np.array([[0, -100]]), np.array([[1, 1]]))
    assert abs(float(loss) - np.log1p(np.exp(-1.0))) < 1e-15
    # a mask value that is not exactly 1 does not count (the original compares with == 1)
    loss = active_token_loss(logits, np.array([[0, 1]]), np.array([[1, 2]]))
    assert abs(float(loss) - np.log1p(np.exp(-1.0))) < 1e-15


# --------------------------------------------------------------------------------------------
# relation extraction against the reference
# --------------------------------------------------------------------------------------------


@st.composite
def documents(draw, b: int, s: int):
    """Entities and gold relations in the original's format; some documents empty, some with
    one or two entities (decoded as the stand-in), gold relations valid, repeated or not
    (question, answer) pairs."""
    entities, relations = [], []
    for _ in range(b):
        n = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6]))
        start = draw(st.lists(st.integers(0, s - 1), min_size=n, max_size=n))
        end = [draw(st.integers(a, s)) for a in start]
        label = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        head, tail = [], []
        questions = [i for i, x in enumerate(label) if x == 1]
        answers = [i for i, x in enumerate(label) if x == 2]
        for _ in range(draw(st.integers(0, 4)) if n else 0):
            if questions and answers and draw(st.booleans()):
                head.append(draw(st.sampled_from(questions)))
                tail.append(draw(st.sampled_from(answers)))
            else:
                head.append(draw(st.integers(0, n - 1)))
                tail.append(draw(st.integers(0, n - 1)))
        entities.append({"start": start, "end": end, "label": label})
        relations.append({"head": head, "tail": tail})
    return entities, relations


@settings(max_examples=20)
@given(
    data=st.data(), b=st.integers(1, 3), s=st.integers(2, 9), seed=st.integers(0, 2**16), gold=st.booleans()
)
def test_relation_extraction_equals_reference(re_pair, data, b, s, seed, gold):
    ours, theirs = re_pair
    entities, relations = data.draw(documents(b, s))
    if not gold:
        relations = None
    inputs = lilt_inputs(np.random.default_rng(seed), b, s)
    with torch.no_grad():
        loss, logits, pred, used = theirs(entities=entities, relations=relations, **torch_inputs(inputs))
    before = json.dumps([entities, relations])
    got = ours(**inputs, entities=entities, relations=relations)
    assert json.dumps([entities, relations]) == before  # the caller's lists are not changed
    close("relation.logits", got.logits, to_numpy(logits))
    if relations is None:
        assert got.loss is None and loss is None
    else:
        close("relation.loss", got.loss, to_numpy(loss))
    assert got.pred_relations == pred
    assert got.entities == used
    assert got.relations is relations


def test_relation_trace_names_equal_forward_hooks_on_the_reference(re_pair):
    """Every head intermediate we record is what a forward hook on the same module of the
    original records: per document ``@doc<b>``; ``entity_emb`` runs twice per document."""
    ours, theirs = re_pair
    entities = [
        {"start": [1, 2, 4, 5], "end": [2, 4, 5, 6], "label": [1, 2, 2, 0]},
        {"start": [0], "end": [3], "label": [1]},
    ]
    relations = [{"head": [0], "tail": [2]}, {"head": [], "tail": []}]
    inputs = lilt_inputs(np.random.default_rng(3), 2, 7)
    seen: dict[str, list] = {}
    names = ["dropout", "extractor.entity_emb", "extractor.ffnn_head", "extractor.ffnn_tail"]
    names += [f"extractor.{f}.{i}" for f in ("ffnn_head", "ffnn_tail") for i in range(6)]
    names += [
        "extractor.rel_classifier",
        "extractor.rel_classifier.bilinear",
        "extractor.rel_classifier.linear",
    ]
    names += ["extractor.loss_fct"]
    modules = dict(theirs.named_modules())
    hooks = [
        modules[n].register_forward_hook(lambda m, a, out, n=n: seen.setdefault(n, []).append(out.detach()))
        for n in names
    ]
    try:
        with torch.no_grad():
            theirs(entities=entities, relations=relations, **torch_inputs(inputs))
    finally:
        for h in hooks:
            h.remove()
    want = {}
    for n, outs in seen.items():
        if n in ("dropout", "extractor.loss_fct"):
            (want[n],) = outs
        elif n == "extractor.entity_emb":
            for k, out in enumerate(outs):
                want[f"{n}@doc{k // 2}_{('head', 'tail')[k % 2]}"] = out
        else:
            for b, out in enumerate(outs):
                want[f"{n}@doc{b}"] = out
    with trace.tracing() as rec:
        out = ours(**inputs, entities=entities, relations=relations)
    # the fixture predicts some pairs and not others (see balance_predictions)
    assert 0 < len(out.pred_relations[0]) < len(out.logits)
    head_names = {n for n in rec.tensors if not n.startswith("lilt.")} - {"loss"}
    assert head_names == set(want)
    for n, w in want.items():
        close(f"trace {n}", rec.tensors[n], to_numpy(w))
    assert "lilt.encoder.layer.1.layout_output.LayerNorm" in rec.tensors and "classifier" not in rec.tensors


def test_relation_extraction_float32_runs_close(re_pair, tmp_path):
    _, theirs = re_pair
    path = save_original(theirs, head_config(), "LiLTRobertaLikeForRelationExtraction", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        ours = refimpl.from_pretrained(path, dtype="float32")
    entities = [{"start": [0, 2, 3, 5], "end": [1, 3, 5, 6], "label": [1, 2, 1, 2]}]
    inputs = lilt_inputs(np.random.default_rng(4), 1, 6)
    with torch.no_grad():
        loss, logits, _, _ = theirs(
            entities=entities, relations=[{"head": [0], "tail": [1]}], **torch_inputs(inputs)
        )
    got = ours(**inputs, entities=entities, relations=[{"head": [0], "tail": [1]}])
    assert got.logits.dtype == np.float32
    assert_close("float32 logits", got.logits, to_numpy(logits), atol=1e-5)
    assert_close("float32 loss", got.loss, to_numpy(loss), atol=1e-5)


# --------------------------------------------------------------------------------------------
# hand-computed cases
# --------------------------------------------------------------------------------------------


def test_biaffine_hand_computed():
    x1, x2 = np.array([[1.0, 2.0]]), np.array([[3.0, -1.0]])
    W = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [2.0, 0.0]]])
    V = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    bias = np.array([0.5, -2.0])
    # class 0: x1.x2 = 3 - 2 = 1;  V_0 [1, 2, 3, -1] = 5;  + 0.5  -> 6.5
    # class 1: x1^T W_1 x2 = 1 * (0*3 + 1*-1) + 2 * (2*3 + 0*-1) = 11;  V_1 [...] = -1;  - 2  -> 8
    got = biaffine(x1, x2, bilinear={"weight": W}, linear={"weight": V, "bias": bias})
    np.testing.assert_array_equal(got, [[6.5, 8.0]])
    # pairs are scored independently: the same pair twice, and a zero pair gives the bias
    got = biaffine(
        np.vstack([x1, x1, [[0, 0]]]),
        np.vstack([x2, x2, [[0, 0]]]),
        bilinear={"weight": W},
        linear={"weight": V, "bias": bias},
    )
    np.testing.assert_array_equal(got, [[6.5, 8.0], [6.5, 8.0], [0.5, -2.0]])


def test_candidate_pairs_hand_computed():
    # entities: QUESTION 0, ANSWER 1, ANSWER 2, HEADER 3
    labels = [1, 2, 2, 0]
    # candidates (0, 1), (0, 2); gold (0, 2) twice (counted once), (2, 0) and (3, 1) are not
    # question -> answer pairs and are dropped: one positive, listed first
    assert candidate_pairs(labels, [0, 0, 2, 3], [2, 2, 0, 1]) == ([0, 0], [2, 1], [1, 0])
    # no gold: every candidate is a negative
    heads, tails, lab = candidate_pairs(labels, [], [])
    assert sorted(zip(heads, tails, strict=True)) == [(0, 1), (0, 2)] and lab == [0, 0]
    # no question -> answer pair: the single pair (0, 1), whatever entities 0 and 1 are
    # (no QUESTION in the first, no ANSWER in the second), labelled by the gold as usual
    assert candidate_pairs([2, 2, 0], [], []) == ([0], [1], [0])
    assert candidate_pairs([1, 1, 1], [0], [1]) == ([0], [1], [1])
    # two questions, two answers, gold (1, 3) and (0, 2): positives first, then negatives
    heads, tails, lab = candidate_pairs([1, 1, 2, 2], [1, 0], [3, 2])
    pairs = list(zip(heads, tails, strict=True))
    assert sorted(pairs[:2]) == [(0, 2), (1, 3)] and sorted(pairs[2:]) == [(0, 3), (1, 2)]
    assert lab == [1, 1, 0, 0]
    # within a group the order is the iteration order of the Python set the original lists:
    # the candidates filled in row-major order, less the gold pairs
    candidates = set()
    for i, j in [(0, 2), (0, 3), (1, 2), (1, 3)]:
        candidates.add((i, j))
    assert pairs[2:] == list(candidates - {(1, 3), (0, 2)})


def test_stand_in_hand_computed():
    stand = {"start": [0, 0], "end": [1, 1], "label": [0, 0]}
    assert stand_in({"start": [], "end": [], "label": []}) == stand
    assert stand_in({"start": [3], "end": [4], "label": [1]}) == stand
    # two entities are replaced too, even a question and its answer
    assert stand_in({"start": [3, 5], "end": [4, 6], "label": [1, 2]}) == stand
    three = {"start": [3, 5, 6], "end": [4, 6, 7], "label": [1, 2, 0]}
    assert stand_in(three) is three
    # a stand-in document has one candidate, (0, 1), positive when the gold says (0, 1)
    assert candidate_pairs(stand["label"], [0], [1]) == ([0], [1], [1])


def test_predicted_relations_hand_computed():
    doc = {"start": [2, 5, 7], "end": [4, 7, 9], "label": [1, 2, 2]}
    # pair 0 predicts class 1; pair 1 class 0; pair 2 ties, and a tie goes to class 0
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    got = predicted_relations(logits, [0, 0, 0], [1, 2, 2], doc)
    assert got == [
        {
            "head_id": 0,
            "head": (2, 4),
            "head_type": 1,
            "tail_id": 1,
            "tail": (5, 7),
            "tail_type": 2,
            "type": 1,
        }
    ]


def test_relation_loss_is_one_mean_over_every_pair(re_pair):
    """Two documents: the loss is the mean over all pairs, not the mean of document means."""
    ours, _ = re_pair
    entities = [
        {"start": [0, 1, 2, 3], "end": [1, 2, 3, 4], "label": [1, 2, 2, 2]},  # 3 pairs
        {"start": [0], "end": [1], "label": [0]},  # the stand-in: 1 pair
    ]
    relations = [{"head": [0], "tail": [1]}, {"head": [], "tail": []}]
    inputs = lilt_inputs(np.random.default_rng(5), 2, 5)
    out = ours(**inputs, entities=entities, relations=relations)
    logits = np.asarray(out.logits)
    assert logits.shape == (4, 2)
    # pair 0 is the one positive (positives first); the rest are negatives
    nll = np.logaddexp(logits[:, 0], logits[:, 1]) - logits[np.arange(4), [1, 0, 0, 0]]
    assert abs(float(out.loss) - nll.mean()) < 1e-12
    assert abs(float(out.loss) - (nll[:3].mean() + nll[3]) / 2) > 1e-6  # not the mean of means


# --------------------------------------------------------------------------------------------
# bad inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entities", "relations", "match"),
    [
        (None, None, r"entities is required"),
        ([{"start": [0], "end": [1], "label": [0]}], None, r"entities has 1 documents; the batch has 2"),
        ([{"start": [0], "end": [1]}] * 2, None, r"entities\[0\] must have keys .*missing \['label'\]"),
        ([{"start": [0], "end": [1], "label": [0], "x": []}] * 2, None, r"unknown \['x'\]"),
        (
            [{"start": [0, 1], "end": [1], "label": [0]}] * 2,
            None,
            r"entities\[0\]: the fields must have one length",
        ),
        (
            [{"start": [0], "end": [1], "label": [0]}, {"start": [0, 6], "end": [1, 6], "label": [0, 0]}],
            None,
            r"entities\[1\]\['start'\]\[1\] = 6 is outside the allowed range \[0, 5\]",
        ),
        (
            [{"start": [0], "end": [1], "label": [3]}] * 2,
            None,
            r"entities\[0\]\['label'\]\[0\] = 3 .*\[0, 2\]",
        ),
        (
            [{"start": [2], "end": [1], "label": [0]}] * 2,
            None,
            r"entities\[0\]\['end'\]\[0\] = 1 is outside the allowed range \[2, 6\]",
        ),
        (
            [{"start": [0.5], "end": [1], "label": [0]}] * 2,
            None,
            r"entities\[0\]\['start'\]\[0\] = 0.5 must be an integer",
        ),
        (
            [{"start": [0], "end": [1], "label": [0]}] * 2,
            [{"head": [0], "tail": [1]}] * 2,
            r"relations\[0\]\['tail'\]\[0\] = 1 is outside the allowed range \[0, 0\]",
        ),
        (
            [{"start": [0], "end": [1], "label": [0]}] * 2,
            [{"head": []}] * 2,
            r"relations\[0\] must have keys .*missing \['tail'\]",
        ),
        (
            [{"start": [0], "end": [1], "label": [0]}] * 2,
            [{"head": [], "tail": []}],
            r"relations has 1 documents",
        ),
    ],
)
def test_bad_entities_and_relations_are_named(re_pair, entities, relations, match):
    ours, _ = re_pair
    inputs = lilt_inputs(np.random.default_rng(0), 2, 6)
    with pytest.raises(ValueError, match=match):
        ours(**inputs, entities=entities, relations=relations)


def test_relations_accept_the_xfund_extras_and_arrays(re_pair):
    ours, _ = re_pair
    inputs = lilt_inputs(np.random.default_rng(6), 1, 6)
    entities = [{"start": np.array([0, 2, 4]), "end": (1, 3, 5), "label": [1, 2, 2]}]
    relations = [{"head": [0], "tail": [1], "start_index": [0], "end_index": [3]}]
    out = ours(**inputs, entities=entities, relations=relations)
    assert out.logits.shape == (2, 2) and out.entities == [
        {"start": [0, 2, 4], "end": [1, 3, 5], "label": [1, 2, 2]}
    ]
