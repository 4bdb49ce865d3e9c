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
from refimpl import trace
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
WORST: dict[str, float] = {"float64": 0.0, "float32": 0.0}


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


@settings(max_examples=25)
@given(**_case("LxmertForPreTraining"))
def test_pretraining_matches_oracle(cfg, b, s, n, seed, flags, which, safe, outs):
    _property("LxmertForPreTraining", cfg, b, s, n, seed, flags, which, safe, outs)


@settings(max_examples=12)
@given(**_case("LxmertModel"))
def test_model_matches_oracle(cfg, b, s, n, seed, flags, which, safe, outs):
    _property("LxmertModel", cfg, b, s, n, seed, flags, which, safe, outs)


@settings(max_examples=12)
@given(**_case("LxmertForQuestionAnswering"))
def test_question_answering_matches_oracle(cfg, b, s, n, seed, flags, which, safe, outs):
    _property("LxmertForQuestionAnswering", cfg, b, s, n, seed, flags, which, safe, outs)
