"""LiLT end to end against the oracle (transformers 4.56.2) on randomized checkpoints.

Every weight is random (tests/_oracle.py ``build``), checkpoints are written by the oracle's
own ``save_pretrained`` (safetensors and ``pytorch_model.bin``) and read back through
``refimpl.from_pretrained``. Every output field and every tuple element is compared:
float64 within 1e-10, float32 within 1e-5.
"""

from __future__ import annotations

import atexit
import copy
import functools
import os
import tempfile

import numpy as np
import pytest
import torch
import transformers
from _oracle import assert_close, build, save, to_numpy
from hypothesis import given, settings
from hypothesis import strategies as st

import refimpl
from refimpl import trace
from refimpl.lilt import (
    LiltForQuestionAnswering,
    LiltForSequenceClassification,
    LiltForTokenClassification,
    LiltModel,
)
from refimpl.ops import ACT2FN

ARCHS = [
    "LiltModel",
    "LiltForSequenceClassification",
    "LiltForTokenClassification",
    "LiltForQuestionAnswering",
]
OURS = {
    "LiltModel": LiltModel,
    "LiltForSequenceClassification": LiltForSequenceClassification,
    "LiltForTokenClassification": LiltForTokenClassification,
    "LiltForQuestionAnswering": LiltForQuestionAnswering,
}
ATOL = {"float64": 1e-10, "float32": 1e-5}
VOCAB, MAX_POS, MAX_2D = 40, 45, 64

_TMP = tempfile.TemporaryDirectory(prefix="refimpl-lilt-")
atexit.register(_TMP.cleanup)

#: worst |ours - oracle| seen per dtype, printed at the end of the module (pytest -s)
WORST: dict[str, float] = {"float64": 0.0, "float32": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    print(f"\nLiLT worst |diff| vs oracle: {WORST}")


def tiny_config(
    layers=2,
    heads=2,
    head_size=6,
    shrink=2,
    pet="absolute",
    act="gelu",
    pad=1,
    type_vocab=2,
    intermediate=20,
    num_labels=2,
    problem_type=None,
) -> dict:
    """Keyword arguments of a tiny LiltConfig (the same for the oracle and ``config.json``)."""
    return dict(
        vocab_size=VOCAB,
        hidden_size=heads * head_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act=act,
        max_position_embeddings=MAX_POS,
        type_vocab_size=type_vocab,
        layer_norm_eps=1e-5,
        pad_token_id=pad,
        position_embedding_type=pet,
        channel_shrink_ratio=shrink,
        max_2d_position_embeddings=MAX_2D,
        num_labels=num_labels,
        problem_type=problem_type,
    )


@functools.lru_cache(maxsize=16)
def checkpoint(arch: str, cfg_items: tuple, safe: bool = True, seed: int = 0):
    """Build, randomize and save an oracle model; return (oracle float64, oracle float32, checkpoint dir)."""
    cfg = dict(cfg_items)
    oracle = build(getattr(transformers, arch), transformers.LiltConfig(**cfg), seed=seed)
    d = tempfile.mkdtemp(dir=_TMP.name)
    save(oracle, d, safe=safe)
    oracle32 = copy.deepcopy(oracle).to(torch.float32)
    return oracle, oracle32, d


@functools.lru_cache(maxsize=16)
def ours(arch: str, cfg_items: tuple, safe: bool, dtype: str, seed: int = 0):
    _, _, d = checkpoint(arch, cfg_items, safe, seed)
    return refimpl.from_pretrained(d, dtype=dtype)


def key(cfg: dict) -> tuple:
    return tuple(sorted(cfg.items()))


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def random_boxes(rng, b: int, s: int) -> np.ndarray:
    """Valid boxes: corners in [0, MAX_2D - 1] with x0 <= x1, y0 <= y1, extremes included."""
    x0 = rng.integers(0, MAX_2D, (b, s))
    y0 = rng.integers(0, MAX_2D, (b, s))
    x1 = x0 + (rng.random((b, s)) * (MAX_2D - x0)).astype(np.int64)
    y1 = y0 + (rng.random((b, s)) * (MAX_2D - y0)).astype(np.int64)
    box = np.stack([x0, y0, x1, y1], axis=-1)
    box[0, 0] = [0, 0, MAX_2D - 1, MAX_2D - 1]  # the table edges
    return box


def random_inputs(rng, cfg: dict, b: int, s: int, flags: dict) -> dict:
    """Model inputs (NumPy) for one example; ``flags`` picks the optional features."""
    pad = cfg["pad_token_id"]
    ids = rng.integers(0, VOCAB, (b, s))
    ids[rng.random((b, s)) < 0.15] = pad  # pad ids inside sequences
    mask = np.ones((b, s), dtype=np.int64)
    for i in range(b):  # right padding of random length
        n = int(rng.integers(0, s + 1)) if flags["padding"] else s
        ids[i, n:] = pad
        mask[i, n:] = 0
    if flags["empty_row"]:
        mask[-1] = 0  # a fully padded row
    inputs = {"input_ids": ids, "bbox": random_boxes(rng, b, s), "attention_mask": mask}
    if flags["mask3d"]:
        inputs["attention_mask"] = (rng.random((b, s, s)) < 0.8).astype(np.int64)
    if flags["token_types"]:
        inputs["token_type_ids"] = rng.integers(0, cfg["type_vocab_size"], (b, s))
    if flags["position_ids"]:
        inputs["position_ids"] = rng.integers(0, MAX_POS, (b, s))
    if flags["head_mask"]:
        shape = (
            (cfg["num_attention_heads"],)
            if rng.random() < 0.5
            else (cfg["num_hidden_layers"], cfg["num_attention_heads"])
        )
        hm = rng.random(shape)
        hm[rng.random(shape) < 0.3] = 0.0
        hm[rng.random(shape) < 0.3] = 1.0
        inputs["head_mask"] = hm
    if flags["embeds"]:
        inputs["inputs_embeds"] = rng.normal(size=(b, s, cfg["hidden_size"]))
        del inputs["input_ids"]
    if flags["no_bbox"]:
        del inputs["bbox"]
    return inputs


def random_labels(rng, arch: str, cfg: dict, b: int, s: int, kind: str) -> dict:
    """Labels of each head's loss kinds (regression / single / multi; -100; out-of-range QA positions)."""
    n = cfg["num_labels"]
    if arch == "LiltForSequenceClassification":
        if kind == "regression":
            return {"labels": rng.normal(size=(b,)) if n == 1 else rng.normal(size=(b, n))}
        if kind == "single":
            return {"labels": rng.integers(0, n, (b,))}
        return {"labels": (rng.random((b, n)) < 0.5).astype(np.float64)}
    if arch == "LiltForTokenClassification":
        labels = rng.integers(0, n, (b, s))
        labels[rng.random((b, s)) < 0.3] = -100
        return {"labels": labels}
    if arch == "LiltForQuestionAnswering":
        # in range, one past the end (ignored), far out (clamped, ignored) and negative (clamped to 0)
        return {
            "start_positions": rng.integers(-3, s + 4, (b,)),
            "end_positions": rng.integers(-3, s + 4, (b,)),
        }
    return {}


def to_torch(inputs: dict, dtype: torch.dtype) -> dict:
    out = {}
    for k, v in inputs.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.to(dtype) if t.is_floating_point() and k != "labels" else t
    if "labels" in out and out["labels"].is_floating_point():
        out["labels"] = out["labels"].to(dtype)
    return out


# --------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------


def compare(ref, out, atol: float, dtype: str) -> None:
    """Every field of the oracle's output (and every tuple element) against ours, by name."""
    assert set(ref.keys()) <= set(out.keys()), f"fields missing: {set(ref.keys()) - set(out.keys())}"
    for name in ref.keys():
        theirs = to_numpy(ref[name])
        mine = out[name]
        if isinstance(theirs, tuple):
            assert isinstance(mine, tuple) and len(mine) == len(theirs), (
                f"{name}: {len(mine)} items != {len(theirs)}"
            )
            pairs = [(f"{name}[{i}]", a, b) for i, (a, b) in enumerate(zip(mine, theirs, strict=True))]
        else:
            pairs = [(name, mine, theirs)]
        for label, a, b in pairs:
            a = np.asarray(a)
            assert a.dtype == np.dtype(dtype), f"{label}: dtype {a.dtype} != {dtype}"
            assert_close(label, a, b, atol)
            if a.size:
                both_nan = np.isnan(a) & np.isnan(b)
                WORST[dtype] = max(
                    WORST[dtype], float(np.max(np.where(both_nan, 0, np.abs(a - b.astype(np.float64)))))
                )


class LayoutHooks:
    """Forward hooks on the oracle's layout LayerNorms: the layout stream it computes but does not return."""

    def __init__(self, model: torch.nn.Module):
        self.outputs: list = []
        base = model.lilt if hasattr(model, "lilt") else model
        mods = [base.layout_embeddings.LayerNorm] + [
            layer.layout_output.LayerNorm for layer in base.encoder.layer
        ]
        self.handles = [m.register_forward_hook(lambda m, i, o: self.outputs.append(o)) for m in mods]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def run_both(arch, cfg, inputs, labels, dtype, safe=True):
    oracle64, oracle32, _ = checkpoint(arch, key(cfg), safe)
    oracle = oracle64 if dtype == "float64" else oracle32
    oracle.config.problem_type = cfg["problem_type"]  # the oracle caches its first choice in its config
    tdtype = torch.float64 if dtype == "float64" else torch.float32
    with LayoutHooks(oracle) as hooks, torch.no_grad():
        ref = oracle(
            **to_torch({**inputs, **labels}, tdtype), output_attentions=True, output_hidden_states=True
        )
    model = ours(arch, key(cfg), safe, dtype)
    out = model(**inputs, **labels, output_attentions=True, output_hidden_states=True)
    return ref, out, [to_numpy(h) for h in hooks.outputs]


# --------------------------------------------------------------------------------------------
# property test: all four classes, random configs and inputs, both dtypes and formats
# --------------------------------------------------------------------------------------------


@st.composite
def configs(draw):
    shrink = draw(st.sampled_from([1, 2, 4]))
    heads = draw(st.sampled_from([1, 2, 3, 4]))
    sizes = [d for d in range(shrink, 49, shrink) if 12 <= heads * d <= 48 and (heads * d) % 6 == 0]
    arch = draw(st.sampled_from(ARCHS))
    seq_labels = draw(st.sampled_from([1, 2, 3]))
    cfg = tiny_config(
        layers=draw(st.integers(1, 3)),
        heads=heads,
        head_size=draw(st.sampled_from(sizes)),
        shrink=shrink,
        pet=draw(st.sampled_from(["absolute", "relative_key", "relative_key_query"])),
        act=draw(st.sampled_from(sorted(ACT2FN))),
        pad=draw(st.sampled_from([0, 1])),
        type_vocab=draw(st.integers(1, 3)),
        intermediate=draw(st.integers(8, 40)),
        num_labels={"LiltForSequenceClassification": seq_labels, "LiltForTokenClassification": 3}.get(
            arch, 2
        ),
    )
    return arch, cfg


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@settings(max_examples=int(os.environ.get("LILT_EXAMPLES", "80")))
@given(
    spec=configs(),
    b=st.integers(1, 3),
    s=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    flags=st.fixed_dictionaries(
        {
            k: st.booleans()
            for k in (
                "padding",
                "empty_row",
                "mask3d",
                "token_types",
                "position_ids",
                "head_mask",
                "embeds",
                "no_bbox",
            )
        }
    ),
    kind=st.sampled_from(["regression", "single", "multi"]),
    dtype=st.sampled_from(["float64", "float32"]),
    safe=st.booleans(),
    with_labels=st.booleans(),
)
def test_matches_oracle(spec, b, s, seed, flags, kind, dtype, safe, with_labels):
    arch, cfg = spec
    if arch == "LiltForSequenceClassification" and cfg["num_labels"] == 1:
        kind = "regression"
    rng = np.random.default_rng(seed)
    inputs = random_inputs(rng, cfg, b, s, flags)
    labels = random_labels(rng, arch, cfg, b, s, kind) if with_labels else {}
    ref, out, layout_states = run_both(arch, cfg, inputs, labels, dtype, safe)
    compare(ref, out, ATOL[dtype], dtype)
    if with_labels and arch != "LiltModel":
        assert out.loss is not None and out.loss.shape == ()
    # the layout stream the oracle computes but does not return
    assert len(out.layout_hidden_states) == cfg["num_hidden_layers"] + 1
    for i, (mine, theirs) in enumerate(zip(out.layout_hidden_states, layout_states, strict=True)):
        assert_close(f"layout_hidden_states[{i}]", mine, theirs, ATOL[dtype])
    if arch == "LiltModel":
        assert_close("layout_last_hidden_state", out.layout_last_hidden_state, layout_states[-1], ATOL[dtype])
    # both streams use one set of probabilities (the oracle's two softmaxes see identical sums)
    for i, (p, q) in enumerate(zip(out.attentions, out.layout_attentions, strict=True)):
        assert np.array_equal(p, q), f"layout_attentions[{i}] differs from attentions[{i}]"


def test_float32_oracle_in_float32_and_float64_checkpoint():
    """The float32 path is compared with the oracle run in float32 on the same (rounded) weights."""
    cfg = tiny_config(layers=3, heads=3, head_size=8, shrink=4, pet="relative_key_query", act="gelu")
    rng = np.random.default_rng(1)
    inputs = random_inputs(
        rng,
        cfg,
        3,
        33,
        dict.fromkeys(("padding", "empty_row", "token_types", "head_mask"), True)
        | dict.fromkeys(("mask3d", "position_ids", "embeds", "no_bbox"), False),
    )
    labels = random_labels(rng, "LiltForTokenClassification", {**cfg, "num_labels": 2}, 3, 33, "single")
    ref, out, _ = run_both("LiltForTokenClassification", cfg, inputs, labels, "float32")
    compare(ref, out, 1e-5, "float32")


@pytest.mark.parametrize("kind", ["regression", "single", "multi"])
@pytest.mark.parametrize("num_labels", [1, 3])
def test_sequence_classification_losses(kind, num_labels):
    """Every problem-type branch (chosen from num_labels and the labels' dtype, or fixed in the config)."""
    problem_type = (
        {"regression": "regression", "single": None, "multi": None}[kind] if num_labels > 1 else None
    )
    if num_labels == 1 and kind != "regression":
        problem_type = {"single": "single_label_classification", "multi": "multi_label_classification"}[kind]
    cfg = tiny_config(layers=1, num_labels=num_labels, problem_type=problem_type)
    rng = np.random.default_rng(num_labels)
    b, s = 3, 6
    inputs = {"input_ids": rng.integers(0, VOCAB, (b, s)), "bbox": random_boxes(rng, b, s)}
    if kind == "single":
        labels = {"labels": rng.integers(0, num_labels, (b,))}
    elif kind == "multi":
        labels = {"labels": (rng.random((b, num_labels)) < 0.5).astype(np.float64)}
    else:
        labels = {"labels": rng.normal(size=(b,) if num_labels == 1 else (b, num_labels))}
    for dtype in ("float64", "float32"):
        ref, out, _ = run_both("LiltForSequenceClassification", cfg, inputs, labels, dtype)
        compare(ref, out, ATOL[dtype], dtype)
        assert np.isfinite(out.loss)


@pytest.mark.filterwarnings("ignore:invalid value encountered")
def test_token_and_qa_losses_ignore_what_the_oracle_ignores():
    cfg = tiny_config(layers=1)
    rng = np.random.default_rng(5)
    b, s = 3, 7
    inputs = {"input_ids": rng.integers(0, VOCAB, (b, s)), "bbox": random_boxes(rng, b, s)}
    labels = {"labels": np.array([[-100] * s, [0, 1, -100, 1, 0, 0, 1], [-100] * s])}
    ref, out, _ = run_both("LiltForTokenClassification", cfg, inputs, labels, "float64")
    compare(ref, out, 1e-10, "float64")
    # every label ignored: NaN, as torch
    ref, out, _ = run_both(
        "LiltForTokenClassification", cfg, inputs, {"labels": np.full((b, s), -100)}, "float64"
    )
    assert np.isnan(out.loss) and np.isnan(to_numpy(ref.loss))
    # QA: s (ignored), > s (clamped to s, ignored), < 0 (clamped to 0, counted), in range
    pos = {"start_positions": np.array([s, 100, -5]), "end_positions": np.array([[2], [s], [-1]])}
    ref, out, _ = run_both("LiltForQuestionAnswering", cfg, inputs, pos, "float64")
    compare(ref, out, 1e-10, "float64")
    assert np.isfinite(out.loss)


def test_broadcast_inputs_are_accepted_like_the_oracle():
    """[1, s] position ids, [s] token types, [1, s, 4] boxes and a [1, s] mask broadcast over the batch."""
    cfg = tiny_config(layers=1, type_vocab=3)
    rng = np.random.default_rng(7)
    b, s = 2, 9
    inputs = {
        "input_ids": rng.integers(0, VOCAB, (b, s)),
        "bbox": random_boxes(rng, 1, s),
        "position_ids": rng.integers(0, MAX_POS, (1, s)),
        "token_type_ids": rng.integers(0, 3, (s,)),
        "attention_mask": (rng.random((1, s)) < 0.7).astype(np.int64),
        "head_mask": np.ones((1,)) * 0.5,
    }
    ref, out, _ = run_both("LiltModel", cfg, inputs, {}, "float64")
    compare(ref, out, 1e-10, "float64")


# --------------------------------------------------------------------------------------------
# checkpoints: formats, key sets, architecture choice
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pet", ["absolute", "relative_key"])
def test_expected_shapes_equal_the_oracles_saved_keys(arch, pet):
    cfg = tiny_config(layers=2, pet=pet)
    oracle = getattr(transformers, arch)(transformers.LiltConfig(**cfg))
    persistent = {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
    for name, _ in oracle.named_buffers():
        persistent.pop(name, None)  # non-persistent (position_ids)
    ours_shapes = OURS[arch].expected_shapes(refimpl.config.LiltConfig(**cfg))
    assert ours_shapes == persistent


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("arch", ARCHS)
def test_from_pretrained_picks_the_class_and_reads_both_formats(arch, safe):
    cfg = tiny_config(layers=1, pet="relative_key_query", act="relu")
    _, _, d = checkpoint(arch, key(cfg), safe)
    model = refimpl.from_pretrained(d, dtype="float64")
    assert type(model) is OURS[arch]
    rng = np.random.default_rng(0)
    inputs = {"input_ids": rng.integers(0, VOCAB, (2, 5)), "bbox": random_boxes(rng, 2, 5)}
    ref, out, _ = run_both(arch, cfg, inputs, {}, "float64", safe)
    compare(ref, out, 1e-10, "float64")


def test_unknown_architecture_is_an_error(tmp_path):
    cfg = tiny_config(layers=1)
    _, _, d = checkpoint("LiltModel", key(cfg))
    import json
    import shutil

    shutil.copytree(d, tmp_path / "ckpt")
    conf = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    conf["architectures"] = ["LiltForMagic"]
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(ValueError, match="LiltForMagic"):
        refimpl.from_pretrained(tmp_path / "ckpt")


# --------------------------------------------------------------------------------------------
# traces: every weight-owning module's output equals a forward hook on the oracle's module
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch,pet",
    [
        ("LiltModel", "absolute"),
        ("LiltForTokenClassification", "relative_key"),
        ("LiltForSequenceClassification", "relative_key_query"),
        ("LiltForQuestionAnswering", "absolute"),
    ],
)
def test_trace_names_and_values_equal_forward_hooks(arch, pet):
    cfg = tiny_config(layers=2, pet=pet, num_labels=2)
    oracle, _, _ = checkpoint(arch, key(cfg))
    seen: dict[str, list] = {}
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append(o))
        for n, m in oracle.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ]
    rng = np.random.default_rng(3)
    inputs = {"input_ids": rng.integers(0, VOCAB, (2, 8)), "bbox": random_boxes(rng, 2, 8)}
    try:
        with torch.no_grad():
            oracle(**to_torch(inputs, torch.float64))
    finally:
        for h in handles:
            h.remove()
    with trace.tracing() as rec:
        ours(arch, key(cfg), True, "float64")(**inputs)
    twice = {"x_position_embeddings": ("left", "right"), "y_position_embeddings": ("upper", "lower")}
    for name, outs in seen.items():
        leaf = name.rsplit(".", 1)[-1]
        names = [f"{name}.{suffix}" for suffix in twice[leaf]] if leaf in twice else [name]
        assert len(names) == len(outs), f"{name} called {len(outs)} times"
        for n, o in zip(names, outs, strict=True):
            assert n in rec.tensors, f"trace lacks {n}"
            assert_close(f"trace {n}", rec.tensors[n], to_numpy(o), 1e-10)
    # inner steps carry a suffix on their module's path
    p = "" if arch == "LiltModel" else "lilt."
    for step in (
        "attention_scores",
        "layout_attention_probs",
        "attention_probs",
        "context",
        "layout_context",
    ):
        assert f"{p}encoder.layer.1.attention.self.{step}" in rec.tensors


def test_tracing_off_leaves_nothing_behind():
    cfg = tiny_config(layers=1)
    model = ours("LiltModel", key(cfg), True, "float64")
    assert trace.active() is None
    out = model(input_ids=np.array([[3, 4, 5]]))
    assert out.last_hidden_state.shape == (1, 3, 12) and out.hidden_states is None and out.attentions is None


def test_a_head_checkpoint_has_no_pooler_for_lilt_model():
    """Head models are built without a pooler; transformers would draw a random one, we refuse by name."""
    cfg = tiny_config(layers=1)
    _, _, d = checkpoint("LiltForTokenClassification", key(cfg))
    with pytest.raises(
        refimpl.checkpoints.CheckpointError,
        match=r"missing \(2\):\n\s+pooler.dense.weight\n\s+pooler.dense.bias",
    ):
        LiltModel.from_pretrained(d)


@pytest.mark.parametrize("mask", ["none", "padded"])
def test_decoder_config_adds_the_causal_mask(mask):
    """``is_decoder=True`` in config.json makes the oracle's extended mask causal (2-d masks only)."""
    cfg = {**tiny_config(layers=2), "is_decoder": True}
    rng = np.random.default_rng(11)
    b, s = 2, 7
    inputs = {"input_ids": rng.integers(0, VOCAB, (b, s)), "bbox": random_boxes(rng, b, s)}
    if mask == "padded":
        inputs["attention_mask"] = np.array([[1] * 7, [1] * 4 + [0] * 3])
    ref, out, _ = run_both("LiltModel", cfg, inputs, {}, "float64")
    compare(ref, out, 1e-10, "float64")
    assert np.all(np.triu(out.attentions[0][0, 0], 1) == 0)
