"""LXMERT end to end against the oracle (transformers 4.56.2) on randomized checkpoints.

Every weight is random (tests/_oracle.py ``build``); checkpoints are written by the oracle's own
``save_pretrained`` (safetensors and ``pytorch_model.bin``) and read back through
``refimpl.from_pretrained``. Every output field and every tuple element is compared (float64
within 1e-10, float32 within 1e-5), and every traced name is compared with a forward hook on the
oracle module of that path (the shared cross-attention's two calls as ``@lang`` / ``@visn``).
"""

from __future__ import annotations

import atexit
import copy
import math
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
from refimpl import switch, trace
from refimpl.config import LxmertConfig
from refimpl.lxmert import LxmertForPreTraining, LxmertForQuestionAnswering, LxmertModel
from refimpl.ops import ACT2FN

ARCHS = ["LxmertModel", "LxmertForPreTraining", "LxmertForQuestionAnswering"]
OURS = {
    "LxmertModel": LxmertModel,
    "LxmertForPreTraining": LxmertForPreTraining,
    "LxmertForQuestionAnswering": LxmertForQuestionAnswering,
}
ATOL = {"float64": 1e-10, "float32": 1e-5}
TORCH_DTYPE = {"float64": torch.float64, "float32": torch.float32}
EXTRA = (
    "cross_encoder_vision_attentions",
    "cross_encoder_language_self_attentions",
    "cross_encoder_vision_self_attentions",
)
TASKS = (
    "task_mask_lm",
    "task_matched",
    "task_obj_predict",
    "task_qa",
    "visual_obj_loss",
    "visual_attr_loss",
    "visual_feat_loss",
)

_TMP = tempfile.TemporaryDirectory(prefix="refimpl-lxmert-")
atexit.register(_TMP.cleanup)
_COUNT = [0]

#: worst |ours - oracle| seen per dtype, printed at the end of the module (pytest -s)
WORST: dict[str, float] = {"float64": 0.0, "float32": 0.0, "float32 base size": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _report_worst():
    yield
    print(f"\nLXMERT worst |diff| vs oracle: {WORST}")


def tiny_config(**kw) -> dict:
    """Keyword arguments of a tiny LxmertConfig (the same for the oracle and ``config.json``)."""
    cfg = dict(
        vocab_size=50, hidden_size=12, num_attention_heads=3, intermediate_size=10, max_position_embeddings=12,
        type_vocab_size=2, l_layers=1, x_layers=1, r_layers=1, visual_feat_dim=6, visual_pos_dim=4,
        num_qa_labels=4, num_object_labels=5, num_attr_labels=3, hidden_act="gelu",
    )  # fmt: skip
    cfg.update(kw)
    return cfg


def checkpoint(arch: str, cfg: dict, safe: bool = True, seed: int = 0):
    """(oracle model in float64, directory of its saved checkpoint)."""
    oracle = build(getattr(transformers, arch), transformers.LxmertConfig(**cfg), seed=seed)
    _COUNT[0] += 1
    d = os.path.join(_TMP.name, f"ckpt{_COUNT[0]}")
    save(oracle, d, safe=safe)
    return oracle, d


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def random_mask(rng, b: int, n: int) -> np.ndarray:
    """0/1 mask with padding at the end of rows, and sometimes a fully masked row."""
    m = np.ones((b, n))
    for i in range(b):
        m[i, int(rng.integers(0, n + 1)) :] = 0 if rng.random() < 0.5 else 1
    if b > 1 and n and rng.random() < 0.4:
        m[int(rng.integers(0, b))] = 0
    return m


def random_inputs(rng, cfg: dict, b: int, s: int, n: int, flags: dict) -> dict:
    x = {
        "visual_feats": rng.normal(size=(b, n, cfg["visual_feat_dim"])),
        "visual_pos": rng.random((b, n, cfg["visual_pos_dim"])),
    }
    if flags["embeds"]:
        x["inputs_embeds"] = rng.normal(size=(b, s, cfg["hidden_size"]))
    else:
        x["input_ids"] = rng.integers(0, cfg["vocab_size"], (b, s))
    if flags["mask"]:
        x["attention_mask"] = random_mask(rng, b, s)
    if flags["vmask"]:
        x["visual_attention_mask"] = random_mask(rng, b, n)
    if flags["types"]:
        x["token_type_ids"] = rng.integers(0, cfg["type_vocab_size"], (b, s))
    return x


def _ids(rng, shape, n_classes):
    y = rng.integers(0, n_classes, shape)
    y[rng.random(shape) < 0.3] = -100
    return y


def random_labels(rng, arch: str, cfg: dict, b: int, s: int, n: int, which: dict) -> dict:
    """Labels of every kind (with -100 positions); ``which`` says which are given."""
    if arch == "LxmertForQuestionAnswering":
        return {"labels": _ids(rng, (b,), cfg["num_qa_labels"])} if which["labels"] else {}
    if arch != "LxmertForPreTraining":
        return {}
    y = {}
    if which["labels"]:
        y["labels"] = _ids(rng, (b, s), cfg["vocab_size"])
    if which["matched"]:
        y["matched_label"] = _ids(rng, (b,), 2)
    if which["ans"]:
        y["ans"] = _ids(rng, (b,), cfg["num_qa_labels"])
    if which["obj"]:
        y["obj_labels"] = {
            "obj": (_ids(rng, (b, n), cfg["num_object_labels"]), rng.random((b, n))),
            "attr": (_ids(rng, (b, n), cfg["num_attr_labels"]), rng.random((b, n))),
            "feat": (rng.normal(size=(b, n, cfg["visual_feat_dim"])), rng.random((b, n))),
        }
    return y


def to_torch(x, dtype: torch.dtype):
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: to_torch(v, dtype) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(to_torch(v, dtype) for v in x)
    t = torch.from_numpy(np.asarray(x))
    return t.to(dtype) if t.is_floating_point() else t


def cast(x, dtype: str):
    """Float arrays (also inside obj_labels) to ``dtype``, as a caller of the float32 model would pass them."""
    if isinstance(x, dict):
        return {k: cast(v, dtype) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(cast(v, dtype) for v in x)
    return x.astype(dtype) if x.dtype.kind == "f" else x


# ---------------------------------------------------------------------------------------------
# comparing with the oracle
# ---------------------------------------------------------------------------------------------


class Hooks:
    """Forward hooks on every oracle module (dropouts aside): ``outputs[path]`` lists each call's output."""

    def __init__(self, model: torch.nn.Module):
        self.outputs: dict[str, list] = {}
        self.handles = []
        for name, m in model.named_modules():
            if name and not isinstance(m, torch.nn.Dropout):
                self.handles.append(
                    m.register_forward_hook(lambda m, i, o, n=name: self.outputs.setdefault(n, []).append(o))
                )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def named(self) -> dict:
        """Trace name -> oracle value for every hooked call that produced tensors.

        One call: the bare module path; the shared cross-attention's two calls: ``@lang`` then
        ``@visn``. An attention module's (context, probs) tuple gives ``<path>.context`` and
        ``<path>.attention_probs``.
        """
        out = {}
        for path, calls in self.outputs.items():
            if len(calls) == 1:
                sfx = [""]
            else:
                assert ".visual_attention" in path and len(calls) == 2, f"{path} called {len(calls)} times"
                sfx = ["@lang", "@visn"]
            for s, o in zip(sfx, calls, strict=True):
                if isinstance(o, torch.Tensor):
                    out[path + s] = to_numpy(o)
                elif path.endswith((".self", ".att")) and isinstance(o, tuple):
                    out[f"{path}.context{s}"] = to_numpy(o[0])
                    if len(o) > 1:
                        out[f"{path}.attention_probs{s}"] = to_numpy(o[1])
        return out


def close(name: str, ours, theirs, dtype: str) -> None:
    atol = ATOL[dtype]
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if ours.size:
        diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
        diff = diff[~(np.isnan(ours) & np.isnan(theirs))]
        if diff.size:
            WORST[dtype] = max(WORST[dtype], float(np.nanmax(diff)))
    assert_close(name, ours, theirs, atol)


def compare(ref, out, dtype: str) -> None:
    """Every field the oracle returns, tuples element by element; our extra fields are None
    exactly when the oracle's attention fields are."""
    for k in type(ref).__dataclass_fields__:
        a, b = ref[k] if k in ref else None, getattr(out, k)
        if a is None:
            assert b is None, f"{k}: oracle None, ours {type(b).__name__}"
            continue
        assert b is not None, f"{k}: oracle returns it, ours is None"
        if isinstance(a, tuple):
            assert isinstance(b, tuple) and len(a) == len(b), f"{k}: {len(b)} items, oracle {len(a)}"
            for i, (x, y) in enumerate(zip(b, a, strict=True)):
                close(f"{k}[{i}]", x, to_numpy(y), dtype)
        else:
            close(k, b, to_numpy(a), dtype)
            assert np.asarray(b).dtype == to_numpy(a).dtype, (
                f"{k}: dtype {np.asarray(b).dtype} != oracle {a.dtype}"
            )
    for k in EXTRA:
        assert (getattr(out, k) is None) == (ref.cross_encoder_attentions is None), k


def _ref_probs(q, k, mask, n_head: int):
    """softmax(q k^T / sqrt(d) + mask) from the oracle's hooked projections, in torch."""
    b, lq, h = q.shape
    d = h // n_head
    qh = q.view(b, lq, n_head, d).transpose(1, 2)
    kh = k.view(b, k.shape[1], n_head, d).transpose(1, 2)
    s = torch.matmul(qh, kh.transpose(-1, -2)) / math.sqrt(d)
    if mask is not None:
        s = s + mask
    return torch.softmax(s, dim=-1)


def check_hidden_probs(out, hooks: Hooks, prefix: str, cfg: dict, x: dict, dtype: str) -> None:
    """Our extra attention fields (the oracle computes but hides them) against softmax(q k^T)
    rebuilt in torch from the oracle's hooked query/key projections and its own additive masks."""
    if out.cross_encoder_vision_attentions is None:
        return
    td = TORCH_DTYPE[dtype]
    b, s = (x["input_ids"] if "input_ids" in x else x["inputs_embeds"]).shape[:2]
    am = (
        torch.ones(b, s, dtype=td)
        if "attention_mask" not in x
        else torch.from_numpy(x["attention_mask"]).to(td)
    )
    lang_mask = (1.0 - am[:, None, None, :]) * torch.finfo(td).min
    vis_mask = None
    if "visual_attention_mask" in x:
        vm = torch.from_numpy(x["visual_attention_mask"]).to(td)
        vis_mask = (1.0 - vm[:, None, None, :]) * torch.finfo(td).min
    for i in range(cfg["x_layers"]):
        p = f"{prefix}encoder.x_layers.{i}"
        calls = hooks.outputs
        ref = _ref_probs(
            calls[f"{p}.visual_attention.att.query"][1],
            calls[f"{p}.visual_attention.att.key"][1],
            lang_mask,
            cfg["num_attention_heads"],
        )
        close(
            f"cross_encoder_vision_attentions[{i}]",
            out.cross_encoder_vision_attentions[i],
            to_numpy(ref),
            dtype,
        )
        for field, mod, mask in (
            ("language", "lang_self_att", lang_mask),
            ("vision", "visn_self_att", vis_mask),
        ):
            ref = _ref_probs(
                calls[f"{p}.{mod}.self.query"][0],
                calls[f"{p}.{mod}.self.key"][0],
                mask,
                cfg["num_attention_heads"],
            )
            close(
                f"cross_encoder_{field}_self_attentions[{i}]",
                getattr(out, f"cross_encoder_{field}_self_attentions")[i],
                to_numpy(ref),
                dtype,
            )


def check_trace(rec, hooks: Hooks, dtype: str) -> None:
    """Every hooked tensor equals our trace under the same name, and every traced name is a
    hooked module or one of the documented inner steps."""
    named = hooks.named()
    for name, ref in named.items():
        assert name in rec.tensors, f"trace lacks {name!r} (oracle module output)"
        close(f"trace {name}", rec.tensors[name], ref, dtype)
    inner = (".attention_scores", ".attention_probs", ".context")
    for name in rec.tensors:
        base = name.split("@")[0]
        assert name in named or base.endswith(inner) or name == "loss" or name.startswith("loss."), (
            f"unexpected trace name {name!r}"
        )


def run_both(arch, oracle, ckpt, x, y, dtype, cfg, trace_on=False, output_flags=(True, True)):
    """Run the oracle (cast to ``dtype``) and ours (loaded in ``dtype``) on the same inputs; compare all."""
    td = TORCH_DTYPE[dtype]
    om = copy.deepcopy(oracle).to(td) if dtype == "float32" else oracle
    ours = refimpl.from_pretrained(ckpt, dtype=dtype)
    assert type(ours) is OURS[arch]
    oa, oh = output_flags
    with Hooks(om) as hooks, torch.no_grad():
        ref = om(**to_torch(x, td), **to_torch(y, td), output_attentions=oa, output_hidden_states=oh)
    with trace.tracing() as rec:
        out = ours(**cast(x, dtype), **cast(y, dtype), output_attentions=oa, output_hidden_states=oh)
    compare(ref, out, dtype)
    prefix = "" if arch == "LxmertModel" else "lxmert."
    check_hidden_probs(out, hooks, prefix, cfg, x, dtype)
    if trace_on:
        check_trace(rec, hooks, dtype)
    return ref, out, rec


# ---------------------------------------------------------------------------------------------
# property tests against the oracle
# ---------------------------------------------------------------------------------------------


@st.composite
def configs(draw, arch: str):
    hidden = draw(st.sampled_from([8, 12, 16, 24, 32]))
    heads = draw(st.sampled_from([k for k in (1, 2, 3, 4, 8) if hidden % k == 0]))
    l_layers, x_layers, r_layers = (draw(st.integers(0, 3)) for _ in range(3))
    if x_layers == 0:  # the oracle has no output stream otherwise (see test_zero_layer_combos)
        l_layers, r_layers = max(l_layers, 1), max(r_layers, 1)
    cfg = tiny_config(
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=draw(st.integers(4, 24)),
        vocab_size=draw(st.integers(30, 60)),
        max_position_embeddings=draw(st.integers(6, 14)),
        type_vocab_size=draw(st.integers(1, 3)),
        l_layers=l_layers,
        x_layers=x_layers,
        r_layers=r_layers,
        visual_feat_dim=draw(st.integers(3, 16)),
        visual_pos_dim=draw(st.sampled_from([4, 4, 2, 5])),
        num_qa_labels=draw(st.integers(2, 6)),
        num_object_labels=draw(st.integers(2, 6)),
        num_attr_labels=draw(st.integers(2, 5)),
        hidden_act=draw(st.sampled_from(sorted(ACT2FN))),
        visual_loss_normalizer=draw(st.sampled_from([6.67, 1.0, 0.3])),
        layer_norm_eps=draw(st.sampled_from([1e-12, 1e-5, 0.1])),  # ignored by the oracle
    )
    if arch == "LxmertForPreTraining":
        cfg.update({t: draw(st.booleans()) for t in TASKS})
    return cfg


def _case(arch):
    return dict(
        cfg=configs(arch),
        b=st.integers(1, 3),
        s=st.integers(1, 6),
        n=st.sampled_from([0, 1, 2, 3, 5, 5]),
        seed=st.integers(0, 2**16),
        flags=st.fixed_dictionaries({k: st.booleans() for k in ("embeds", "mask", "vmask", "types")}),
        which=st.fixed_dictionaries({k: st.booleans() for k in ("labels", "matched", "ans", "obj")}),
        safe=st.booleans(),
        outs=st.sampled_from([(True, True), (False, False), (True, False)]),
    )


def _property(arch, cfg, b, s, n, seed, flags, which, safe, outs):
    rng = np.random.default_rng(seed)
    s = min(s, cfg["max_position_embeddings"])
    x = random_inputs(rng, cfg, b, s, n, flags)
    if flags["embeds"]:
        which = {**which, "obj": False}  # the oracle crashes there (test_obj_labels_with_inputs_embeds)
    y = random_labels(rng, arch, cfg, b, s, n, which)
    oracle, ckpt = checkpoint(arch, cfg, safe=safe, seed=seed)
    for dtype in ("float64", "float32"):
        run_both(arch, oracle, ckpt, x, y, dtype, cfg, trace_on=True, output_flags=outs)


@settings(max_examples=100)
@given(**_case("LxmertForPreTraining"))
def test_pretraining_matches_oracle(cfg, b, s, n, seed, flags, which, safe, outs):
    _property("LxmertForPreTraining", cfg, b, s, n, seed, flags, which, safe, outs)


@settings(max_examples=40)
@given(**_case("LxmertModel"))
def test_model_matches_oracle(cfg, b, s, n, seed, flags, which, safe, outs):
    _property("LxmertModel", cfg, b, s, n, seed, flags, which, safe, outs)


@settings(max_examples=40)
@given(**_case("LxmertForQuestionAnswering"))
def test_question_answering_matches_oracle(cfg, b, s, n, seed, flags, which, safe, outs):
    _property("LxmertForQuestionAnswering", cfg, b, s, n, seed, flags, which, safe, outs)


# ---------------------------------------------------------------------------------------------
# checkpoint keys and loading
# ---------------------------------------------------------------------------------------------

FLAG_CASES = [
    {},
    {"task_obj_predict": False, "task_qa": False},
    {"visual_obj_loss": False, "visual_feat_loss": False},
    {"visual_obj_loss": False, "visual_attr_loss": False, "visual_feat_loss": False},
    {"tie_word_embeddings": False, "l_layers": 0, "r_layers": 2},
    {"x_layers": 0, "l_layers": 2, "r_layers": 1, "task_mask_lm": False, "task_matched": False},
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "flags", FLAG_CASES, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "default"
)
def test_expected_shapes_equal_the_oracles_saved_keys(arch, flags):
    """expected_shapes = the oracle's state_dict (= what .bin holds); safetensors drops only the tied decoder."""
    cfg = tiny_config(**flags)
    oracle = build(getattr(transformers, arch), transformers.LxmertConfig(**cfg))
    ours = OURS[arch].expected_shapes(LxmertConfig(**cfg))
    theirs = {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
    assert ours == theirs
    from safetensors import safe_open

    d = save(oracle, os.path.join(_TMP.name, f"keys-{arch}-{len(os.listdir(_TMP.name))}"), safe=True)
    with safe_open(os.path.join(d, "model.safetensors"), "np") as f:
        saved = set(f.keys())
    assert set(ours) - saved == set(OURS[arch].tied_keys)


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("tie", [True, False])
def test_tied_decoder_loads_from_both_formats(safe, tie):
    """The LM decoder is the word-embedding matrix (tied structurally, whatever tie_word_embeddings says)."""
    cfg = tiny_config(tie_word_embeddings=tie)
    oracle, d = checkpoint("LxmertForPreTraining", cfg, safe=safe)
    ours = refimpl.from_pretrained(d, dtype="float64")
    w = oracle.lxmert.embeddings.word_embeddings.weight
    assert oracle.cls.predictions.decoder.weight is w
    np.testing.assert_array_equal(ours.params["cls.predictions.decoder.weight"], to_numpy(w))
    rng = np.random.default_rng(1)
    x = random_inputs(rng, cfg, 2, 5, 3, dict(embeds=False, mask=True, vmask=True, types=True))
    run_both("LxmertForPreTraining", oracle, d, x, {}, "float64", cfg)


@pytest.mark.parametrize("head", ["LxmertForPreTraining", "LxmertForQuestionAnswering"])
def test_base_model_from_a_head_checkpoint(head):
    """LxmertModel.from_pretrained on a head model's checkpoint takes the lxmert.* weights, as the oracle."""
    cfg = tiny_config(x_layers=2)
    _, d = checkpoint(head, cfg)
    oracle = transformers.LxmertModel.from_pretrained(d, dtype=torch.float64).eval()
    ours = LxmertModel.from_pretrained(d, dtype="float64")
    rng = np.random.default_rng(2)
    x = random_inputs(rng, cfg, 2, 4, 3, dict(embeds=False, mask=True, vmask=False, types=False))
    with torch.no_grad():
        ref = oracle(**to_torch(x, torch.float64), output_attentions=True, output_hidden_states=True)
    compare(ref, ours(**x, output_attentions=True, output_hidden_states=True), "float64")


# ---------------------------------------------------------------------------------------------
# the oracle's quirks, one by one
# ---------------------------------------------------------------------------------------------


def _pretraining(cfg, seed=0):
    oracle, d = checkpoint("LxmertForPreTraining", cfg, seed=seed)
    return oracle, refimpl.from_pretrained(d, dtype="float64"), d


def _oracle_out(oracle, x, y=None, **kw):
    with torch.no_grad():
        return oracle(**to_torch(x, torch.float64), **to_torch(y or {}, torch.float64), **kw)


def test_hidden_states_leave_out_the_embeddings():
    """language: l_layers + x_layers items; vision: r_layers + x_layers items; no embedding output."""
    cfg = tiny_config(l_layers=2, x_layers=3, r_layers=1)
    oracle, ours, d = _pretraining(cfg)
    x = random_inputs(
        np.random.default_rng(3), cfg, 2, 4, 3, dict(embeds=False, mask=True, vmask=True, types=True)
    )
    ref = _oracle_out(oracle, x, output_hidden_states=True, output_attentions=True)
    out = ours(**x, output_hidden_states=True, output_attentions=True)
    assert len(ref.language_hidden_states) == len(out.language_hidden_states) == 5
    assert len(ref.vision_hidden_states) == len(out.vision_hidden_states) == 4
    assert len(out.cross_encoder_attentions) == len(out.cross_encoder_vision_attentions) == 3
    assert out.cross_encoder_attentions[0].shape == (2, 3, 4, 3)  # language queries over boxes
    assert out.cross_encoder_vision_attentions[0].shape == (2, 3, 3, 4)  # box queries over tokens
    compare(ref, out, "float64")


def test_layer_norm_eps_in_config_is_ignored():
    """Every LayerNorm uses eps 1e-12: a config eps of 0.5 changes nothing, in the oracle and here."""
    cfg = tiny_config(layer_norm_eps=0.5)
    oracle, ours, d = _pretraining(cfg)
    x = random_inputs(
        np.random.default_rng(4), cfg, 2, 4, 3, dict(embeds=False, mask=False, vmask=False, types=False)
    )
    compare(_oracle_out(oracle, x), ours(**x), "float64")


def test_without_task_qa_the_answer_score_is_one_scalar():
    cfg = tiny_config(task_qa=False)
    oracle, ours, d = _pretraining(cfg)
    x = random_inputs(
        np.random.default_rng(5), cfg, 2, 4, 3, dict(embeds=False, mask=True, vmask=True, types=False)
    )
    ref = _oracle_out(oracle, x, ans=torch.tensor([0, 1]))
    out = ours(**x, ans=np.array([0, 1]))
    assert out.question_answering_score.shape == () == tuple(ref.question_answering_score.shape)
    base = LxmertModel.from_pretrained(d, dtype="float64")(**x)
    assert out.question_answering_score == base.pooled_output[0, 0]
    # ans is then ignored, but its presence makes the loss a float32 zero
    assert out.loss.dtype == np.float32 and float(out.loss) == 0.0 == float(ref.loss)


def test_loss_is_summed_in_float32_even_for_float64_models():
    cfg = tiny_config()
    oracle, ours, d = _pretraining(cfg)
    rng = np.random.default_rng(6)
    x = random_inputs(rng, cfg, 2, 5, 3, dict(embeds=False, mask=True, vmask=True, types=True))
    y = random_labels(
        rng, "LxmertForPreTraining", cfg, 2, 5, 3, dict(labels=True, matched=True, ans=True, obj=True)
    )
    with trace.tracing() as rec:
        out = ours(**x, **y)
    ref = _oracle_out(oracle, x, y)
    assert ref.loss.dtype == torch.float32 and out.loss.dtype == np.float32
    assert float(out.loss) == float(ref.loss)
    parts = [rec.tensors[k] for k in ("loss.masked_lm", "loss.matched", "loss.visual", "loss.answer")]
    assert all(p.dtype == np.float64 for p in parts[:2] + parts[3:])
    # the float64 sum differs from the float32 accumulation the oracle does (first principles)
    acc = np.float32(0)
    for p in parts:
        acc = np.float32(np.float64(acc) + np.float64(p))
    assert acc == out.loss


@pytest.mark.parametrize("task", ["task_mask_lm", "task_matched", "task_obj_predict", "task_qa"])
def test_labels_of_a_disabled_task_add_nothing(task):
    cfg = tiny_config(**{task: False})
    oracle, ours, d = _pretraining(cfg)
    rng = np.random.default_rng(7)
    x = random_inputs(rng, cfg, 2, 4, 3, dict(embeds=False, mask=True, vmask=True, types=False))
    kind = {"task_mask_lm": "labels", "task_matched": "matched", "task_obj_predict": "obj", "task_qa": "ans"}[
        task
    ]
    y = random_labels(
        rng, "LxmertForPreTraining", cfg, 2, 4, 3, {k: k == kind for k in ("labels", "matched", "ans", "obj")}
    )
    ref, out = _oracle_out(oracle, x, y), ours(**x, **y)
    assert float(ref.loss) == float(out.loss) == 0.0


def test_masked_lm_labels_is_a_deprecated_alias_that_wins():
    cfg = tiny_config()
    oracle, ours, d = _pretraining(cfg)
    rng = np.random.default_rng(8)
    x = random_inputs(rng, cfg, 2, 4, 3, dict(embeds=False, mask=True, vmask=False, types=False))
    good, other = _ids(rng, (2, 4), cfg["vocab_size"]), _ids(rng, (2, 4), cfg["vocab_size"])
    with pytest.warns(FutureWarning, match="masked_lm_labels"):
        out = ours(**x, labels=other, masked_lm_labels=good)
    with pytest.warns(FutureWarning):
        ref = _oracle_out(oracle, x, labels=torch.from_numpy(other), masked_lm_labels=torch.from_numpy(good))
    compare(ref, out, "float64")
    assert float(out.loss) == float(ours(**x, labels=good).loss)


def test_obj_labels_with_inputs_embeds():
    """The oracle crashes (``input_ids.device`` on None); we compute what it computes from the ids."""
    cfg = tiny_config()
    oracle, ours, d = _pretraining(cfg)
    rng = np.random.default_rng(9)
    x = random_inputs(rng, cfg, 2, 4, 3, dict(embeds=False, mask=True, vmask=True, types=True))
    y = random_labels(
        rng, "LxmertForPreTraining", cfg, 2, 4, 3, dict(labels=True, matched=True, ans=True, obj=True)
    )
    emb = {**x, "inputs_embeds": ours.params["lxmert.embeddings.word_embeddings.weight"][x["input_ids"]]}
    del emb["input_ids"]
    with pytest.raises(AttributeError):
        _oracle_out(oracle, emb, y)
    ref = _oracle_out(oracle, x, y)
    compare(ref, ours(**emb, **y), "float64")


def test_missing_obj_labels_key_is_named():
    cfg = tiny_config(visual_attr_loss=True)
    oracle, ours, d = _pretraining(cfg)
    rng = np.random.default_rng(10)
    x = random_inputs(rng, cfg, 2, 4, 3, dict(embeds=False, mask=False, vmask=False, types=False))
    y = random_labels(
        rng, "LxmertForPreTraining", cfg, 2, 4, 3, dict(labels=False, matched=False, ans=False, obj=True)
    )
    del y["obj_labels"]["attr"]
    with pytest.raises(KeyError):
        _oracle_out(oracle, x, y)
    with pytest.raises(ValueError, match=r"obj_labels\['attr'\] is missing"):
        ours(**x, **y)


def test_extra_obj_labels_keys_are_ignored():
    cfg = tiny_config(visual_obj_loss=False, visual_feat_loss=False)
    oracle, ours, d = _pretraining(cfg)
    rng = np.random.default_rng(11)
    x = random_inputs(rng, cfg, 2, 4, 3, dict(embeds=False, mask=False, vmask=True, types=False))
    y = random_labels(
        rng, "LxmertForPreTraining", cfg, 2, 4, 3, dict(labels=False, matched=False, ans=False, obj=True)
    )
    compare(_oracle_out(oracle, x, y), ours(**x, **y), "float64")


@pytest.mark.parametrize("l_layers,x_layers,r_layers", [(0, 0, 0), (0, 0, 2), (2, 0, 0)])
def test_zero_layer_combos_without_an_output_stream(l_layers, x_layers, r_layers):
    """x_layers = 0 needs both l_layers and r_layers: the oracle fails with IndexError, we say why."""
    cfg = tiny_config(l_layers=l_layers, x_layers=x_layers, r_layers=r_layers)
    oracle, d = checkpoint("LxmertModel", cfg)
    x = random_inputs(
        np.random.default_rng(12), cfg, 2, 4, 3, dict(embeds=False, mask=False, vmask=False, types=False)
    )
    with pytest.raises(IndexError):
        _oracle_out(oracle, x)
    with pytest.raises(ValueError, match="x_layers = 0"):
        refimpl.from_pretrained(d)(**x)


def test_output_flags_default_to_the_config():
    cfg = tiny_config(output_attentions=True, output_hidden_states=True)
    oracle, d = checkpoint("LxmertForQuestionAnswering", cfg)
    ours = refimpl.from_pretrained(d, dtype="float64")
    x = random_inputs(
        np.random.default_rng(13), cfg, 2, 4, 3, dict(embeds=False, mask=True, vmask=True, types=False)
    )
    ref, out = _oracle_out(oracle, x), ours(**x)
    assert out.language_attentions is not None and out.vision_hidden_states is not None
    compare(ref, out, "float64")


def test_zero_boxes():
    """No regions: the oracle runs (empty softmax rows), the visual losses are NaN."""
    cfg = tiny_config(r_layers=2)
    oracle, ours, d = _pretraining(cfg)
    rng = np.random.default_rng(14)
    x = random_inputs(rng, cfg, 2, 4, 0, dict(embeds=False, mask=True, vmask=True, types=False))
    y = random_labels(
        rng, "LxmertForPreTraining", cfg, 2, 4, 0, dict(labels=True, matched=True, ans=True, obj=True)
    )
    ref, out = _oracle_out(oracle, x, y, output_attentions=True), ours(**x, **y, output_attentions=True)
    assert np.isnan(out.loss)
    compare(ref, out, "float64")


def test_tracing_off_records_nothing():
    cfg = tiny_config()
    _, ours, _ = _pretraining(cfg)
    x = random_inputs(
        np.random.default_rng(15), cfg, 1, 3, 2, dict(embeds=False, mask=False, vmask=False, types=False)
    )
    ours(**x)
    assert trace.active() is None


# ---------------------------------------------------------------------------------------------
# bad input: ValueError naming the argument
# ---------------------------------------------------------------------------------------------

_ERR_CFG = tiny_config(max_position_embeddings=8)


def _valid(rng=None):
    rng = rng or np.random.default_rng(20)
    x = random_inputs(rng, _ERR_CFG, 2, 4, 3, dict(embeds=False, mask=True, vmask=True, types=True))
    y = random_labels(
        rng, "LxmertForPreTraining", _ERR_CFG, 2, 4, 3, dict(labels=True, matched=True, ans=True, obj=True)
    )
    return {**x, **y}


def _with(**changes):
    def f(kw):
        kw = dict(kw)
        for k, v in changes.items():
            if v is _DROP:
                kw.pop(k)
            else:
                kw[k] = v(kw) if callable(v) else v
        return kw

    return f


_DROP = object()
_nan = np.full((2, 3, 6), np.nan)
BAD = {
    "no visual_feats": (_with(visual_feats=_DROP), "visual_feats"),
    "no visual_pos": (_with(visual_pos=_DROP), "visual_pos"),
    "no text": (_with(input_ids=_DROP), "input_ids or inputs_embeds"),
    "ids and embeds": (_with(inputs_embeds=np.zeros((2, 4, 12))), "both input_ids and inputs_embeds"),
    "feats rank": (_with(visual_feats=np.zeros((2, 18))), "visual_feats must have shape"),
    "feats size": (
        _with(visual_feats=np.zeros((2, 3, 7))),
        r"visual_feats must have shape \[batch, boxes, visual_feat_dim=6\]",
    ),
    "pos size": (_with(visual_pos=np.zeros((2, 3, 3))), "visual_pos_dim=4"),
    "feats batch": (
        _with(visual_feats=np.zeros((3, 3, 6))),
        "visual_feats has batch size 3 but input_ids has 2",
    ),
    "box count": (_with(visual_pos=np.zeros((2, 2, 4))), "visual_pos has 2 boxes but visual_feats has 3"),
    "feats nan": (_with(visual_feats=_nan), r"visual_feats\[0, 0, 0\] = .*not finite"),
    "pos inf": (
        _with(visual_pos=lambda kw: np.where(np.arange(4) == 2, np.inf, kw["visual_pos"])),
        r"visual_pos\[0, 0, 2\]",
    ),
    "embeds nan": (_with(input_ids=_DROP, inputs_embeds=np.full((2, 4, 12), np.nan)), "inputs_embeds"),
    "embeds size": (_with(input_ids=_DROP, inputs_embeds=np.zeros((2, 4, 5))), "hidden_size=12"),
    "id too big": (
        _with(input_ids=lambda kw: np.where(np.arange(4) == 3, 50, kw["input_ids"])),
        r"input_ids\[0, 3\] = 50 .*\[0, 49\]",
    ),
    "id negative": (_with(input_ids=lambda kw: -np.ones_like(kw["input_ids"])), r"input_ids\[0, 0\] = -1"),
    "float ids": (_with(input_ids=np.zeros((2, 4))), "input_ids must hold integers"),
    "ids rank": (_with(input_ids=np.zeros(4, dtype=int)), r"input_ids must have shape \[batch, seq\]"),
    "too long": (_with(input_ids=np.zeros((2, 9), dtype=int)), "max_position_embeddings = 8"),
    "token type": (_with(token_type_ids=np.full((2, 4), 2)), r"token_type_ids\[0, 0\] = 2 .*\[0, 1\]"),
    "token type shape": (_with(token_type_ids=np.zeros((2, 5), dtype=int)), "token_type_ids has shape"),
    "mask shape": (_with(attention_mask=np.ones((2, 5))), r"attention_mask has shape \(2, 5\)"),
    "mask rank": (_with(attention_mask=np.ones((2, 4, 4))), "attention_mask has shape"),
    "visual mask shape": (_with(visual_attention_mask=np.ones((2, 4))), "visual_attention_mask has shape"),
    "mlm label": (_with(labels=np.full((2, 4), 50)), r"labels\[0, 0\] = 50 .*\[0, 49\]"),
    "mlm label size": (_with(labels=np.zeros((2, 5), dtype=int)), "labels has shape"),
    "matched label": (_with(matched_label=np.array([0, 2])), r"matched_label\[1\] = 2 .*\[0, 1\]"),
    "ans": (_with(ans=np.array([4, 0])), r"ans\[0\] = 4 .*\[0, 3\]"),
    "float ans": (_with(ans=np.eye(2, 4)), "ans must hold integers"),
    "obj label": (
        _with(obj_labels=lambda kw: {**kw["obj_labels"], "obj": (np.full((2, 3), 5), np.ones((2, 3)))}),
        r"obj_labels\['obj'\]\[0\]\[0, 0\] = 5 .*\[0, 4\]",
    ),
    "attr label": (
        _with(obj_labels=lambda kw: {**kw["obj_labels"], "attr": (np.full((2, 3), -2), np.ones((2, 3)))}),
        r"obj_labels\['attr'\]\[0\]",
    ),
    "feat label shape": (
        _with(obj_labels=lambda kw: {**kw["obj_labels"], "feat": (np.zeros((2, 3, 5)), np.ones((2, 3)))}),
        r"obj_labels\['feat'\]\[0\] has shape",
    ),
    "conf size": (
        _with(
            obj_labels=lambda kw: {**kw["obj_labels"], "obj": (np.zeros((2, 3), dtype=int), np.ones((2, 2)))}
        ),
        r"obj_labels\['obj'\]\[1\]",
    ),
    "not a pair": (
        _with(obj_labels=lambda kw: {**kw["obj_labels"], "obj": np.zeros((2, 3), dtype=int)}),
        "pair",
    ),
    "not a dict": (_with(obj_labels=[1, 2]), "obj_labels must be a dict"),
}


@pytest.fixture(scope="module")
def err_model():
    _, d = checkpoint("LxmertForPreTraining", _ERR_CFG)
    return refimpl.from_pretrained(d, dtype="float64")


def test_valid_error_case_base_runs(err_model):
    out = err_model(**_valid())
    assert np.isfinite(out.loss)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_value_error_naming_the_argument(err_model, case):
    mutate, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        err_model(**mutate(_valid()))


def test_unknown_keyword_is_a_type_error(err_model):
    with pytest.raises(TypeError):
        err_model(**_valid(), head_mask=np.ones(3))


def test_empty_text_is_rejected(err_model):
    with pytest.raises(ValueError, match="at least one"):
        err_model(**_with(input_ids=np.zeros((2, 0), dtype=int), labels=_DROP)(_valid()))


def test_broadcast_masks_and_types_are_accepted_like_the_oracle():
    """Size-1 mask / token-type axes broadcast in the oracle, so they are valid input here too."""
    cfg = tiny_config()
    oracle, ours, d = _pretraining(cfg)
    x = random_inputs(
        np.random.default_rng(21), cfg, 2, 4, 3, dict(embeds=False, mask=False, vmask=False, types=False)
    )
    x.update(
        attention_mask=np.array([[1, 1, 1, 0]]),
        visual_attention_mask=np.array([[1], [0]]),
        token_type_ids=np.array([0, 1, 1, 0]),
    )
    compare(_oracle_out(oracle, x, output_attentions=True), ours(**x, output_attentions=True), "float64")


# ---------------------------------------------------------------------------------------------
# base size, once
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_base_size_pretraining_float32():
    """The published LXMERT shape (9/5/5 layers, hidden 768, 2048-d regions, vocab 30522):
    batch 2, 20 tokens, 36 boxes, float32, every output within 1e-4 of the oracle, with the
    fast kernels and with the plain formulas only."""
    cfg = dict(num_qa_labels=9500)  # transformers' defaults are the base model
    oracle = build(transformers.LxmertForPreTraining, transformers.LxmertConfig(**cfg), dtype=torch.float32)
    d = save(oracle, os.path.join(_TMP.name, "base"), safe=True)
    ours = refimpl.from_pretrained(d, dtype="float32")
    rng = np.random.default_rng(30)
    full = dict(vocab_size=30522, type_vocab_size=2, visual_feat_dim=2048, visual_pos_dim=4, hidden_size=768)
    x = random_inputs(rng, full, 2, 20, 36, dict(embeds=False, mask=True, vmask=True, types=True))
    x = cast(x, "float32")
    with torch.no_grad():
        ref = oracle(**to_torch(x, torch.float32), output_attentions=True, output_hidden_states=True)
    for use in (switch.fast, switch.reference):  # the fast kernels, then the plain formulas only
        with use():
            out = ours(**x, output_attentions=True, output_hidden_states=True)
        for k in ref.keys():
            a, b = ref[k], getattr(out, k)
            for i, (ai, bi) in enumerate(zip(a, b, strict=True) if isinstance(a, tuple) else [(a, b)]):
                diff = float(np.abs(bi.astype(np.float64) - to_numpy(ai)).max())
                WORST["float32 base size"] = max(WORST["float32 base size"], diff)
                assert_close(f"{use.__name__}: {k}[{i}]", bi, to_numpy(ai), 1e-4)


def test_explicit_output_attentions_false_beats_the_config():
    """The oracle crashes here (IndexError: tuples made from the config flag); we honour the argument."""
    cfg = tiny_config(output_attentions=True)
    oracle, d = checkpoint("LxmertModel", cfg)
    x = random_inputs(
        np.random.default_rng(16), cfg, 1, 3, 2, dict(embeds=False, mask=False, vmask=False, types=False)
    )
    with pytest.raises(IndexError):
        _oracle_out(oracle, x, output_attentions=False)
    out = refimpl.from_pretrained(d, dtype="float64")(**x, output_attentions=False)
    assert out.language_attentions is None and out.cross_encoder_vision_attentions is None
    assert refimpl.from_pretrained(d, dtype="float64")(**x).language_attentions is not None


def test_question_answering_from_a_pretraining_checkpoint():
    """The oracle loads lxmert.* and answer_head.* and leaves out cls.* / obj_predict_head.*; so do we."""
    cfg = tiny_config()
    _, d = checkpoint("LxmertForPreTraining", cfg)
    oracle = transformers.LxmertForQuestionAnswering.from_pretrained(d, dtype=torch.float64).eval()
    ours = LxmertForQuestionAnswering.from_pretrained(d, dtype="float64")
    x = random_inputs(
        np.random.default_rng(17), cfg, 2, 4, 3, dict(embeds=False, mask=True, vmask=True, types=True)
    )
    compare(
        _oracle_out(oracle, x, labels=torch.tensor([1, 3])), ours(**x, labels=np.array([1, 3])), "float64"
    )
    _, d = checkpoint("LxmertForPreTraining", tiny_config(task_qa=False))
    with pytest.raises(refimpl.checkpoints.CheckpointError, match="answer_head"):
        LxmertForQuestionAnswering.from_pretrained(d)
