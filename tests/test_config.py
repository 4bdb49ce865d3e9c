"""Configs: transformers' defaults and label semantics, real hub configs, round trips, and
validation that refuses exactly what the oracle cannot build or run."""

from __future__ import annotations

import inspect
import itertools
import json

import pytest
import torch
import transformers

from refimpl.config import LiltConfig, LxmertConfig, PretrainedConfig, load_config

# SCUT-DLVCLab/lilt-roberta-en-base config.json
LILT_ROBERTA_EN_BASE = {
    "_name_or_path": "lilt-roberta-en-base",
    "architectures": ["LiltModel"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "channel_shrink_ratio": 4,
    "classifier_dropout": None,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_2d_position_embeddings": 1024,
    "max_position_embeddings": 514,
    "model_type": "lilt",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "position_embedding_type": "absolute",
    "torch_dtype": "float32",
    "transformers_version": "4.21.0.dev0",
    "type_vocab_size": 1,
    "use_cache": True,
    "vocab_size": 50265,
}

# unc-nlp/lxmert-base-uncased config.json
LXMERT_BASE_UNCASED = {
    "architectures": ["LxmertForPreTraining"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "l_layers": 9,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "lxmert",
    "num_attention_heads": 12,
    "num_attr_labels": 400,
    "num_hidden_layers": {"cross_encoder": 5, "language": 9, "vision": 5},
    "num_object_labels": 1600,
    "num_qa_labels": 9500,
    "r_layers": 5,
    "task_mask_lm": True,
    "task_matched": True,
    "task_obj_predict": True,
    "task_qa": True,
    "type_vocab_size": 2,
    "visual_attr_loss": True,
    "visual_feat_dim": 2048,
    "visual_feat_loss": True,
    "visual_loss_normalizer": 6.67,
    "visual_obj_loss": True,
    "visual_pos_dim": 4,
    "vocab_size": 30522,
}

PAIRS = [(LiltConfig, transformers.LiltConfig), (LxmertConfig, transformers.LxmertConfig)]


def _norm(d: dict) -> dict:
    """A to_dict() in JSON form (id2label keys as strings, dtype as its name)."""
    d = json.loads(json.dumps(d, default=str))
    if d.get("dtype") is not None:
        d["dtype"] = str(d["dtype"]).replace("torch.", "")
    return d


def assert_shared_fields_equal(ours: PretrainedConfig, theirs: transformers.PretrainedConfig) -> None:
    a, b = _norm(ours.to_dict()), _norm(theirs.to_dict())
    shared = set(a) & set(b) - {"transformers_version", "_name_or_path"}  # provenance: to_dict writes its own
    assert len(shared) > 20, sorted(shared)
    diff = {k: (a[k], b[k]) for k in shared if a[k] != b[k]}
    assert not diff, f"fields differing from transformers: {diff}"
    assert ours.num_labels == theirs.num_labels


# ---------------------------------------------------------------------------------------------
# defaults
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ours, theirs", PAIRS, ids=["lilt", "lxmert"])
def test_every_default_is_transformers(ours, theirs):
    mine = ours()
    seen = set()
    for cls in (theirs, transformers.PretrainedConfig):  # the model's own defaults override the base's
        for name, p in inspect.signature(cls.__init__).parameters.items():
            if p.default is inspect.Parameter.empty or name in seen:
                continue
            seen.add(name)
            if name in ("self", "num_labels", "id2label", "label2id"):
                continue  # the label maps are derived in the body (checked below and against theirs())
            want = {} if name == "pruned_heads" else p.default  # None there becomes {} in the body
            assert getattr(mine, name) == want, (
                f"{cls.__name__}.{name}: ours {getattr(mine, name)!r} != {want!r}"
            )
    assert_shared_fields_equal(mine, theirs())
    assert mine.num_labels == 2 and mine.id2label == {0: "LABEL_0", 1: "LABEL_1"}


# ---------------------------------------------------------------------------------------------
# real hub configs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw, cls, theirs",
    [
        (LILT_ROBERTA_EN_BASE, LiltConfig, transformers.LiltConfig),
        (LXMERT_BASE_UNCASED, LxmertConfig, transformers.LxmertConfig),
    ],
    ids=["lilt-roberta-en-base", "lxmert-base-uncased"],
)
def test_real_hub_configs_load_like_transformers(tmp_path, raw, cls, theirs):
    (tmp_path / "config.json").write_text(json.dumps(raw))
    c = load_config(tmp_path)
    assert type(c) is cls
    for k, v in raw.items():
        if k in ("model_type", "torch_dtype"):
            continue
        assert getattr(c, k) == v, k
    assert c.dtype == "float32" if "torch_dtype" in raw else c.dtype is None
    assert_shared_fields_equal(c, theirs.from_dict(raw))
    assert cls.from_pretrained(tmp_path / "config.json") == c


def test_lilt_roberta_values():
    c = LiltConfig.from_dict(LILT_ROBERTA_EN_BASE)
    assert (c.vocab_size, c.max_position_embeddings, c.type_vocab_size, c.pad_token_id, c.layer_norm_eps) == (
        50265,
        514,
        1,
        1,
        1e-5,
    )
    assert c.architectures == ["LiltModel"] and c.use_cache is True  # unknown keys kept


# ---------------------------------------------------------------------------------------------
# round trips and label semantics
# ---------------------------------------------------------------------------------------------
CASES = [
    {},
    {"num_labels": 5},
    {"id2label": {"0": "O", "1": "B-HEADER", "2": "I-HEADER"}},
    {"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}, "num_labels": 7},  # num_labels ignored
    {"label2id": {"x": 0}},  # replaced, as transformers does without id2label
    {"problem_type": "multi_label_classification", "num_labels": 4, "my_extra": [1, 2]},
    {"torch_dtype": "bfloat16", "output_hidden_states": True, "return_dict": False},
]


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=["lilt", "lxmert"])
@pytest.mark.parametrize("kwargs", CASES)
def test_round_trip_and_transformers_agree(ours, theirs, kwargs):
    c = ours(**kwargs)
    d = c.to_dict()
    again = ours.from_dict(json.loads(json.dumps(d)))
    assert again == c and again.to_dict() == d
    assert_shared_fields_equal(c, theirs(**kwargs))  # same arguments, same config
    assert_shared_fields_equal(
        c, theirs(**{k: v for k, v in d.items() if k != "model_type"})
    )  # from our dict
    assert_shared_fields_equal(ours.from_dict(theirs(**kwargs).to_dict()), theirs(**kwargs))  # from theirs


def test_num_labels_setter_recreates_the_maps_like_transformers():
    ours, theirs = LiltConfig(id2label={0: "a"}), transformers.LiltConfig(id2label={0: "a"})
    ours.num_labels = theirs.num_labels = 3
    assert ours.id2label == theirs.id2label and ours.label2id == theirs.label2id
    assert ours.num_labels == 3
    ours.num_labels = 3  # same count: kept
    assert ours.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


def test_lxmert_num_hidden_layers_is_derived():
    c = LxmertConfig(l_layers=2, x_layers=1, r_layers=3, num_hidden_layers={"language": 99})
    assert c.num_hidden_layers == {"vision": 3, "cross_encoder": 1, "language": 2}
    assert c.to_dict()["num_hidden_layers"] == c.num_hidden_layers


# ---------------------------------------------------------------------------------------------
# impossible values
# ---------------------------------------------------------------------------------------------
IMPOSSIBLE = [
    (LiltConfig, "hidden_size", 100, "num_attention_heads"),
    (LiltConfig, "hidden_size", 0, "hidden_size"),
    (LiltConfig, "hidden_size", 24 * 4 + 8, "hidden_size"),  # 104 = 8 heads x 13, not a multiple of 6
    (LiltConfig, "vocab_size", -1, "vocab_size"),
    (LiltConfig, "intermediate_size", 0, "intermediate_size"),
    (LiltConfig, "num_attention_heads", 0, "num_attention_heads"),
    (LiltConfig, "num_hidden_layers", 2.0, "num_hidden_layers"),
    (LiltConfig, "max_2d_position_embeddings", 0, "max_2d_position_embeddings"),
    (LiltConfig, "channel_shrink_ratio", 0, "channel_shrink_ratio"),
    (LiltConfig, "channel_shrink_ratio", 5, "channel_shrink_ratio"),
    (LiltConfig, "channel_shrink_ratio", 128, "channel_shrink_ratio"),
    (LiltConfig, "hidden_act", "nope", "hidden_act"),
    (LiltConfig, "position_embedding_type", "rotary", "position_embedding_type"),
    (LiltConfig, "pad_token_id", None, "pad_token_id"),
    (LiltConfig, "pad_token_id", 512, "pad_token_id"),  # == max_position_embeddings
    (LiltConfig, "layer_norm_eps", 0.0, "layer_norm_eps"),
    (LiltConfig, "hidden_dropout_prob", 1.5, "hidden_dropout_prob"),
    (LiltConfig, "classifier_dropout", -0.1, "classifier_dropout"),
    (LiltConfig, "problem_type", "ranking", "problem_type"),
    (LiltConfig, "id2label", ["a"], "id2label"),
    (LiltConfig, "label2id", "a", "label2id"),
    (LiltConfig, "pruned_heads", {0: [1]}, "pruned_heads"),
    (LiltConfig, "num_labels", -2, "num_labels"),
    (LxmertConfig, "hidden_size", 100, "num_attention_heads"),
    (LxmertConfig, "visual_feat_dim", 0, "visual_feat_dim"),
    (LxmertConfig, "l_layers", -1, "l_layers"),
    (LxmertConfig, "num_qa_labels", 0, "num_qa_labels"),
    (LxmertConfig, "hidden_act", "swishy", "hidden_act"),
    (LxmertConfig, "attention_probs_dropout_prob", 2, "attention_probs_dropout_prob"),
]


@pytest.mark.parametrize("cls, field, value, message", IMPOSSIBLE, ids=lambda x: str(x)[:24])
def test_impossible_values_raise_naming_the_field(cls, field, value, message):
    with pytest.raises(ValueError, match=message):
        cls(**{field: value})


def _oracle_runs(h: int, n: int, r: int) -> bool:
    """Whether transformers' LiltModel builds and gives finite outputs for this shape."""
    try:
        cfg = transformers.LiltConfig(
            vocab_size=20, hidden_size=h, num_attention_heads=n, channel_shrink_ratio=r, num_hidden_layers=1,
            intermediate_size=8, max_position_embeddings=16, max_2d_position_embeddings=16,
        )  # fmt: skip
        model = transformers.LiltModel(cfg).eval()
        with torch.no_grad():
            out = model(input_ids=torch.tensor([[3, 4, 5]]), bbox=torch.tensor([[[1, 2, 3, 4]] * 3]))
        return bool(torch.isfinite(out.last_hidden_state).all())
    except (ValueError, RuntimeError, AssertionError):
        return False


def test_lilt_shape_validation_accepts_exactly_what_the_oracle_runs():
    torch.manual_seed(0)
    disagree = []
    for h, n, r in itertools.product((8, 12, 18, 24, 36), (1, 2, 3, 6), (1, 2, 4, 5, 7)):
        try:
            LiltConfig(
                vocab_size=20, hidden_size=h, num_attention_heads=n, channel_shrink_ratio=r, num_hidden_layers=1,
                intermediate_size=8, max_position_embeddings=16, max_2d_position_embeddings=16,
            )  # fmt: skip
            ours = True
        except ValueError:
            ours = False
        if ours != _oracle_runs(h, n, r):
            disagree.append((h, n, r, ours))
    assert not disagree, f"(hidden, heads, ratio, ours accepts) where the oracle disagrees: {disagree}"


def test_pad_token_outside_the_position_table_is_impossible_for_the_oracle_too():
    kw = dict(vocab_size=20, hidden_size=24, num_attention_heads=2, max_position_embeddings=16)
    with pytest.raises((AssertionError, IndexError, RuntimeError)):
        transformers.LiltModel(transformers.LiltConfig(pad_token_id=16, **kw))
    with pytest.raises(ValueError, match="pad_token_id"):
        LiltConfig(pad_token_id=16, **kw)
