"""Bad LiLT inputs raise ValueError naming the argument, the position and the allowed range."""

from __future__ import annotations

import numpy as np
import pytest

from refimpl.config import LiltConfig
from refimpl.lilt import (
    LiltForQuestionAnswering,
    LiltForSequenceClassification,
    LiltForTokenClassification,
    LiltModel,
)

VOCAB, MAX_POS, MAX_2D, B, S = 40, 45, 64, 2, 6


def config(**kw) -> LiltConfig:
    base = dict(
        vocab_size=VOCAB,
        hidden_size=12,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=MAX_POS,
        type_vocab_size=2,
        pad_token_id=1,
        channel_shrink_ratio=2,
        max_2d_position_embeddings=MAX_2D,
    )
    return LiltConfig(**{**base, **kw})


def random_model(cls, **kw):
    """A model with random weights straight from ``expected_shapes`` (no oracle needed to check inputs)."""
    cfg = config(**kw)
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=shape) * 0.05 for k, shape in cls.expected_shapes(cfg).items()}
    return cls(cfg, params, dtype="float64")


@pytest.fixture(scope="module")
def model():
    return random_model(LiltModel)


def good():
    rng = np.random.default_rng(1)
    x0 = rng.integers(0, 30, (B, S))
    y0 = rng.integers(0, 30, (B, S))
    bbox = np.stack([x0, y0, x0 + 3, y0 + 5], axis=-1)
    return {
        "input_ids": rng.integers(2, VOCAB, (B, S)),
        "bbox": bbox,
        "attention_mask": np.ones((B, S), np.int64),
    }


def with_(**changes):
    def make():
        inputs = good()
        for k, v in changes.items():
            inputs[k] = v(inputs) if callable(v) else v
        return {k: v for k, v in inputs.items() if v is not None}

    return make


def setitem(name, index, value):
    def change(inputs):
        a = inputs[name].copy()
        a[index] = value
        return a

    return change


def with_token_type_out_of_range():
    def make():
        inputs = good()
        inputs["token_type_ids"] = np.zeros((B, S), np.int64)
        inputs["token_type_ids"][1, 0] = 2
        return inputs

    return make


CASES = {
    "input_ids above vocab": (
        with_(input_ids=setitem("input_ids", (1, 3), VOCAB)),
        r"input_ids\[1, 3\] = 40 .*\[0, 39\]",
    ),
    "negative input_ids": (
        with_(input_ids=setitem("input_ids", (0, 2), -1)),
        r"input_ids\[0, 2\] = -1 .*\[0, 39\]",
    ),
    "float input_ids": (
        with_(input_ids=lambda i: i["input_ids"].astype(float)),
        r"input_ids must hold integers",
    ),
    "1-d input_ids": (with_(input_ids=np.arange(5)), r"input_ids must have shape \[batch, seq\]"),
    "both ids and embeds": (
        with_(inputs_embeds=np.zeros((B, S, 12))),
        r"either input_ids or inputs_embeds, not both",
    ),
    "neither ids nor embeds": (with_(input_ids=None), r"pass input_ids or inputs_embeds"),
    "embeds of the wrong width": (
        with_(input_ids=None, inputs_embeds=np.zeros((B, S, 10))),
        r"inputs_embeds must have shape \[batch, seq, 12\]",
    ),
    "empty sequence": (
        with_(input_ids=np.zeros((B, 0), np.int64), bbox=None, attention_mask=None),
        r"seq = 0",
    ),
    "bbox coordinate too large": (
        with_(bbox=setitem("bbox", (1, 2, 3), MAX_2D)),
        r"bbox\[1, 2, 3\] = 64 .*\[0, 63\]",
    ),
    "negative bbox coordinate": (
        with_(bbox=setitem("bbox", (0, 4, 0), -2)),
        r"bbox\[0, 4, 0\] = -2 .*\[0, 63\]",
    ),
    "x1 < x0": (
        with_(bbox=setitem("bbox", (1, 1), [9, 3, 8, 5])),
        r"bbox\[1, 1\] = \[9, 3, 8, 5\].*width.*\[0, 63\]",
    ),
    "y1 < y0": (
        with_(bbox=setitem("bbox", (0, 5), [1, 7, 2, 6])),
        r"bbox\[0, 5\] = \[1, 7, 2, 6\].*height.*\[0, 63\]",
    ),
    "float bbox": (with_(bbox=lambda i: i["bbox"].astype(np.float32)), r"bbox must hold integers"),
    "bbox with 3 coordinates": (
        with_(bbox=np.zeros((B, S, 3), np.int64)),
        r"bbox must have shape \[batch, seq, 4\]",
    ),
    "bbox of another length": (
        with_(bbox=np.zeros((B, S + 1, 4), np.int64)),
        r"bbox must have shape .*\[2, 6, 4\]",
    ),
    "sequence too long": (
        with_(input_ids=np.full((1, MAX_POS - 1), 5), bbox=None, attention_mask=None),
        r"too long: token \[0, 43\] gets position id 45 .*\[0, 44\]",
    ),
    "position_ids out of range": (
        with_(position_ids=lambda i: np.full((B, S), 3) + np.eye(B, S, 2, dtype=np.int64) * MAX_POS),
        r"position_ids\[0, 2\] = 48 .*\[0, 44\]",
    ),
    "position_ids of another shape": (
        with_(position_ids=np.zeros((B, S + 2), np.int64)),
        r"position_ids must have shape",
    ),
    "token_type_ids out of range": (
        with_token_type_out_of_range(),
        r"token_type_ids\[1, 0\] = 2 .*\[0, 1\]",
    ),
    "token_type_ids of another shape": (
        with_(token_type_ids=np.zeros((B + 1, S), np.int64)),
        r"token_type_ids must have shape",
    ),
    "attention_mask of another shape": (
        with_(attention_mask=np.ones((B, S - 1))),
        r"attention_mask must have shape",
    ),
    "1-d attention_mask": (with_(attention_mask=np.ones(S)), r"attention_mask must have shape"),
    "head_mask with too many heads": (with_(head_mask=np.ones(3)), r"head_mask has shape \(3,\)"),
    "head_mask with too many layers": (with_(head_mask=np.ones((3, 2))), r"head_mask has shape \(3, 2\)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_argument_and_position(model, case):
    make, message = CASES[case]
    with pytest.raises(ValueError, match=message):
        model(**make())


def test_the_good_inputs_are_good(model):
    """The base of every bad case runs (so each case fails only for its one change)."""
    out = model(**good())
    assert out.last_hidden_state.shape == (B, S, 12)


def test_relative_positions_longer_than_the_table():
    m = random_model(LiltModel, position_embedding_type="relative_key")
    s = MAX_POS + 1
    with pytest.raises(ValueError, match=r"sequence length 46 exceeds max_position_embeddings = 45"):
        m(input_ids=np.full((1, s), 5), position_ids=np.zeros((1, s), np.int64))


def test_label_errors():
    tok = random_model(LiltForTokenClassification, num_labels=3)
    with pytest.raises(ValueError, match=r"labels\[4\] = 3 .*\[0, 2\]"):
        tok(**good(), labels=np.array([[0, 1, 2, 0, 3, 1], [0, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match=r"labels has shape \(2, 5\)"):
        tok(**good(), labels=np.zeros((B, S - 1), np.int64))
    seq = random_model(LiltForSequenceClassification, num_labels=3)
    with pytest.raises(ValueError, match=r"labels\[1\] = -1 .*\[0, 2\]"):
        seq(**good(), labels=np.array([0, -1]))
    with pytest.raises(ValueError, match=r"labels has shape \(2, 2\); multi-label"):
        seq(**good(), labels=np.zeros((B, 2)))
    qa = random_model(LiltForQuestionAnswering)
    with pytest.raises(ValueError, match=r"start_positions must hold integers"):
        qa(**good(), start_positions=np.zeros(B), end_positions=np.zeros(B, np.int64))
    with pytest.raises(ValueError, match=r"end_positions has shape \(3,\)"):
        qa(**good(), start_positions=np.zeros(B, np.int64), end_positions=np.zeros(3, np.int64))


def test_question_answering_needs_two_labels():
    with pytest.raises(ValueError, match=r"num_labels == 2"):
        LiltForQuestionAnswering.expected_shapes(config(num_labels=3))


def test_unset_output_flags_take_the_configs_value_as_the_oracle(tmp_path):
    """config.json may set output_attentions / output_hidden_states; an unset keyword follows it."""
    import torch
    import transformers
    from _oracle import build, save, to_numpy

    import refimpl

    cfg = transformers.LiltConfig(
        vocab_size=30,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=40,
        max_2d_position_embeddings=50,
        channel_shrink_ratio=2,
        output_attentions=True,
        output_hidden_states=True,
    )
    oracle = build(transformers.LiltModel, cfg, seed=3)
    model = refimpl.from_pretrained(save(oracle, tmp_path), dtype="float64")
    ids = np.array([[0, 5, 7, 9, 2]])
    with torch.no_grad():
        theirs = oracle(input_ids=torch.tensor(ids))
    ours = model(input_ids=ids)
    assert len(ours.attentions) == len(theirs.attentions) == 2
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3
    np.testing.assert_allclose(ours.hidden_states[1], to_numpy(theirs.hidden_states[1]), atol=1e-10, rtol=0)
    quiet = model(input_ids=ids, output_attentions=False, output_hidden_states=False)
    assert quiet.attentions is None and quiet.hidden_states is None
