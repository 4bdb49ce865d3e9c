"""LXMERT's hand-written backward (refimpl.lxmert.backward, refimpl.lxmert.modeling_backward)
against torch autograd on transformers 4.56.2 (tests/_grad_oracle.py), and against central
finite differences of our own forward.

For each model class and case, every gradient is compared:

* every parameter, under each checkpoint key (the tied ``cls.predictions.decoder.weight`` and
  ``lxmert.embeddings.word_embeddings.weight`` included: each holds the full gradient);
* every floating tensor the forward records, named as a golden file names it
  (`refimpl.golden.capture`): the trace's intermediates, ``outputs.<field>`` and the float
  inputs ``inputs.visual_feats``, ``inputs.visual_pos``, ``inputs.inputs_embeds``;

within ``1e-10 * max(1, max|torch|)`` in float64 and ``1e-4 * max(1, max|torch|)`` in float32.

Where each tensor's autograd counterpart comes from:

* module outputs (forward hooks), ``outputs.*`` and ``inputs.*``: `oracle_gradients`;
* ``attention_scores`` and ``attention_probs`` inside every attention module, which are no
  module's output (and the cross layers' self-attention probabilities are not even returned):
  `attention_steps` names the input and the output of each softmax the oracle computes, by
  the module that computes it (a global forward pre-hook / hook pair keeps the module path
  and its call number, a `torch.overrides.TorchFunctionMode` sees the softmax). Its input is
  the scaled scores plus the additive mask, whose gradient is the scaled scores' (the mask is
  a constant that is added);
* the loss terms (``loss``, ``loss.masked_lm``, ``loss.visual.obj``, ...): first principles,
  ``dL/d term = 1``, since ``L`` is their sum.
"""

from __future__ import annotations

import contextlib
import copy
import re
import tempfile

import numpy as np
import pytest
import torch
from _finite_diff import check_gradients
from _grad_oracle import call_suffix, oracle_gradients
from _oracle import build, save, tiny_lxmert_config
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode
from transformers import LxmertConfig
from transformers import LxmertForPreTraining as OraclePreTraining
from transformers import LxmertForQuestionAnswering as OracleQuestionAnswering
from transformers import LxmertModel as OracleModel

import refimpl
from refimpl import trace
from refimpl.golden.capture import flatten_outputs, prepare_inputs, trace_forward

F64, F32 = 1e-10, 1e-4
LOSS_TERM = re.compile(r"^(outputs\.)?loss(\.[\w.]+)?$")


# --------------------------------------------------------------------------------------------
# the oracle's tensors that are no module's output
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def attention_steps(model: torch.nn.Module):
    """Name every softmax the oracle ``model`` computes: its input ``<module>.attention_scores``
    and its output ``<module>.attention_probs``, with the per-call suffix of a module called
    twice (``...visual_attention.att.attention_scores@visn``), each kept with ``retain_grad``.

    Yields:
        name -> torch tensor (read ``.grad`` after the backward; ``None`` means 0).
    """
    paths = {id(m): p for p, m in model.named_modules() if p}
    stack: list[tuple[str, int]] = []
    calls: dict[str, int] = {}
    captured: dict[str, torch.Tensor] = {}

    def enter(module, args):
        path = paths.get(id(module))
        if path is not None:
            calls[path] = calls.get(path, 0) + 1
            stack.append((path, calls[path] - 1))

    def leave(module, args, output):
        if id(module) in paths:
            stack.pop()

    class Softmax(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.nn.functional.softmax and stack:
                path, call = stack[-1]
                own, at = call_suffix(path, call)
                for step, tensor in (("attention_scores", args[0]), ("attention_probs", out)):
                    name = f"{path}{own}.{step}{at}"
                    assert name not in captured, f"two softmax calls named {name!r}"
                    tensor.retain_grad()
                    captured[name] = tensor
            return out

    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(enter),
        torch.nn.modules.module.register_module_forward_hook(leave),
    ]
    try:
        with Softmax():
            yield captured
    finally:
        for h in handles:
            h.remove()


def oracle_with_steps(model, inputs, upstream):
    """`oracle_gradients` plus the attention steps: ``(OracleGradients, name -> dL/d step)``."""
    with attention_steps(model) as steps:
        oracle = oracle_gradients(model, inputs, upstream)
    grads = {
        k: (t.grad if t.grad is not None else torch.zeros_like(t)).detach().numpy().copy()
        for k, t in steps.items()
    }
    return oracle, grads


def oracle_tensor(name: str, like: np.ndarray, oracle, steps) -> np.ndarray:
    """The autograd gradient of the tensor ``name`` (see the module docstring)."""
    for source in (steps, oracle.modules, oracle.outputs, oracle.inputs):
        if name in source:
            return source[name]
    if LOSS_TERM.match(name):  # L is the sum of the loss terms
        return np.ones(like.shape, like.dtype)
    raise AssertionError(f"the oracle has no gradient for {name!r}")


def relative_error(ours, theirs) -> float:
    """``max|ours - theirs| / max(1, max|theirs|)``."""
    theirs = np.asarray(theirs, np.float64)
    if theirs.size == 0:
        return 0.0
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / max(1.0, np.abs(theirs).max()))


def compare(ours, oracle, steps, tol: float) -> tuple[float, float]:
    """Every parameter and every tensor gradient of ``ours`` (a `refimpl.gradients.Gradients`)
    against autograd; fails naming the first one off. Returns the worst errors (params, tensors)."""
    assert set(ours.params) == set(oracle.params)
    worst_params = 0.0
    for key, theirs in oracle.params.items():
        mine = ours.params[key]
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype, key
        err = relative_error(mine, theirs)
        assert err <= tol, f"grad.{key}: relative error {err:.2e} > {tol:g}"
        worst_params = max(worst_params, err)
    worst_tensors = 0.0
    assert len(ours.tensors) > 40
    assert sorted(set(steps) - set(ours.tensors)) == [], "attention steps the backward does not name"
    for name, mine in ours.tensors.items():
        theirs = oracle_tensor(name, np.asarray(mine), oracle, steps)
        assert np.shape(mine) == theirs.shape, f"grad.{name}: shape {np.shape(mine)} != {theirs.shape}"
        err = relative_error(mine, theirs)
        assert err <= tol, f"grad.{name}: relative error {err:.2e} > {tol:g}"
        worst_tensors = max(worst_tensors, err)
    return worst_params, worst_tensors


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------

CLASSES = {"model": OracleModel, "pretraining": OraclePreTraining, "qa": OracleQuestionAnswering}


def lxmert_case(
    rng, c, kind: str, b=2, s=6, o=4, labels=True, embeds=False, visual_mask=True, token_types="full"
) -> dict:
    """Inputs (padding, both masks, token types 0 and 1) and, for ``labels``, every label the
    class takes: masked-LM ids with some -100, all three object kinds with confidence weights,
    matched_label and ans (pre-training); answer ids with a -100 (question answering).
    ``token_types``: ``"full"`` ``[b, s]``, ``"row"`` one ``[1, s]`` row broadcast over the batch,
    or ``None`` (the default zeros)."""
    ids = rng.integers(1, c.vocab_size, (b, s))
    mask = np.ones((b, s), np.int64)
    if b > 1 and s > 2:
        ids[1, -2:], mask[1, -2:] = 0, 0
    inputs = {
        "attention_mask": mask,
        "token_type_ids": rng.integers(0, c.type_vocab_size, (b if token_types == "full" else 1, s)),
        "visual_feats": rng.normal(size=(b, o, c.visual_feat_dim)),
        "visual_pos": rng.uniform(size=(b, o, c.visual_pos_dim)),
    }
    if token_types is None:
        del inputs["token_type_ids"]
    if embeds:
        inputs["inputs_embeds"] = rng.normal(size=(b, s, c.hidden_size))
    else:
        inputs["input_ids"] = ids
    if visual_mask:
        vm = np.ones((b, o), np.int64)
        vm[0, -1] = 0 if o > 1 else 1
        inputs["visual_attention_mask"] = vm
    if labels and kind == "pretraining":
        lm = rng.integers(0, c.vocab_size, (b, s))
        lm[rng.random((b, s)) < 0.4] = -100
        obj = rng.integers(0, c.num_object_labels, (b, o))
        obj[0, 0] = -100
        matched = rng.integers(0, 2, b)
        matched[-1] = -100 if b > 2 else matched[-1]
        inputs.update(
            labels=lm,
            matched_label=matched,
            ans=rng.integers(0, c.num_qa_labels, b),
            obj_labels={
                "obj": (obj, rng.random((b, o))),
                "attr": (rng.integers(0, c.num_attr_labels, (b, o)), rng.random((b, o))),
                "feat": (rng.normal(size=(b, o, c.visual_feat_dim)), rng.random((b, o))),
            },
        )
    elif labels and kind == "qa":
        ans = rng.integers(0, c.num_qa_labels, b)
        ans[-1] = -100 if b > 1 else ans[-1]
        inputs["labels"] = ans
    return inputs


#: case -> (class, input options)
CASES = {
    "model": ("model", dict(labels=False)),
    "model-embeds": ("model", dict(labels=False, embeds=True, visual_mask=False, token_types="row")),
    "pretraining": ("pretraining", dict()),
    "pretraining-upstream": ("pretraining", dict(labels=False)),
    "qa": ("qa", dict(token_types=None)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """class -> (oracle float64 model, checkpoint dir), tiny, every weight random."""
    cfg = tiny_lxmert_config(hidden_size=16, intermediate_size=24, num_attention_heads=2)
    out = {}
    for i, (kind, cls) in enumerate(CLASSES.items()):
        model = build(cls, cfg, seed=40 + i, std=0.2)
        out[kind] = (model, save(model, tmp_path_factory.mktemp(f"lxmert-{kind}")))
    return out


def run_case(checkpoints, case: str, dtype: str, seed=7):
    """(ours, oracle, steps, inputs) for one case: our backward, then autograd on the same ``L``."""
    kind, options = CASES[case]
    torch_model, directory = checkpoints[kind]
    if dtype == "float32":
        torch_model = copy.deepcopy(torch_model).float()
    model = refimpl.from_pretrained(directory, dtype=dtype)
    inputs = lxmert_case(np.random.default_rng(seed), model.config, kind, **options)
    ours = model.backward(tensor_grads=True, seed=seed, **inputs)
    oracle, steps = oracle_with_steps(torch_model, inputs, ours.upstream or None)
    return ours, oracle, steps, inputs


# --------------------------------------------------------------------------------------------
# parity with autograd
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_float64_gradients_equal_autograd(checkpoints, case, mode):
    """Every parameter and every floating tensor within 1e-10 * max(1, max|torch|), in the fast
    and the reference mode."""
    ours, oracle, steps, _ = run_case(checkpoints, case, "float64")
    compare(ours, oracle, steps, F64)
    if ours.loss is not None:
        # the pre-training loss is a float32 sum in the oracle (and in ours): float32 precision
        assert ours.loss.dtype == (np.float32 if case == "pretraining" else np.float64)
        eps = np.finfo(ours.loss.dtype).eps
        assert abs(float(ours.loss) - oracle.loss) <= 2 * eps * max(1.0, abs(oracle.loss))
    else:
        fields = {k.removeprefix("outputs.") for k in oracle.outputs if k.count(".") == 1}  # no tuples
        assert set(ours.upstream) == fields


@pytest.mark.parametrize("case", ["model", "pretraining", "qa"])
def test_float32_gradients_equal_autograd(checkpoints, case):
    """float32: within 1e-4 * max(1, max|torch|)."""
    ours, oracle, steps, _ = run_case(checkpoints, case, "float32")
    assert all(g.dtype == np.float32 for g in ours.params.values())
    compare(ours, oracle, steps, F32)


def golden_float_names(model, inputs: dict) -> dict[str, np.ndarray]:
    """The floating tensors a golden file of this case holds, as `refimpl.golden.capture.trace_forward`
    names them (``inputs.<kw>``, the trace, ``outputs.<field>``), with the per-layer tuples off
    as ``backward`` runs. ``obj_labels`` (which the writer does not take yet) goes to the model
    beside the writer's arrays: labels and weights, no gradient."""
    extra = {k: inputs[k] for k in ("obj_labels",) if k in inputs}
    arrays, flags = prepare_inputs(model, {k: v for k, v in inputs.items() if k not in extra})
    with trace.tracing() as rec:
        out = model(**arrays, **flags, **extra, output_attentions=False, output_hidden_states=False)
    tensors = {f"inputs.{k}": v for k, v in arrays.items()}
    tensors.update(rec.tensors)
    tensors.update(flatten_outputs(out))
    return {k: np.asarray(v) for k, v in tensors.items() if np.asarray(v).dtype.kind == "f"}


@pytest.mark.parametrize("case", list(CASES))
def test_every_floating_forward_tensor_gets_its_gradient(checkpoints, case):
    """The gradients' names are exactly the golden file's floating names, each gradient with its
    tensor's shape and dtype."""
    kind, options = CASES[case]
    model = refimpl.from_pretrained(checkpoints[kind][1], dtype="float64")
    inputs = lxmert_case(np.random.default_rng(3), model.config, kind, **options)
    forward = golden_float_names(model, inputs)
    if "obj_labels" not in inputs:  # the helper is the golden writer's own capture
        tensors, _ = trace_forward(model, inputs, output_attentions=False, output_hidden_states=False)
        assert set(forward) == {k for k, v in tensors.items() if v.dtype.kind == "f"}
    grads = model.backward(tensor_grads=True, **inputs).tensors
    assert sorted(set(forward) - set(grads)) == [], "forward tensors without a gradient"
    assert sorted(set(grads) - set(forward)) == [], "gradients of no forward tensor"
    for name, x in forward.items():
        g = np.asarray(grads[name])
        assert g.shape == x.shape and g.dtype == x.dtype, (
            f"{name}: {g.shape} {g.dtype} vs {x.shape} {x.dtype}"
        )


def test_tied_decoder_padding_rows_and_the_deprecated_label_name(checkpoints):
    """Both tied keys hold the decoder's gradient plus the lookup's (counted once each); the
    lookups give rows 0 nothing (padding_idx=0 for words, positions and token types), so the
    word table's row 0 holds the decoder's part only. ``masked_lm_labels`` gives what
    ``labels`` gives."""
    model = refimpl.from_pretrained(checkpoints["pretraining"][1], dtype="float64")
    inputs = lxmert_case(np.random.default_rng(5), model.config, "pretraining")
    g = model.backward(tensor_grads=True, **inputs)
    words, decoder = (
        g.params["lxmert.embeddings.word_embeddings.weight"],
        g.params["cls.predictions.decoder.weight"],
    )
    np.testing.assert_array_equal(words, decoder)
    # the decoder's own part, dW = dlogits^T h summed over every position, row 0 included
    with trace.tracing() as rec:
        model(**inputs)
    h = rec.tensors["cls.predictions.transform"]  # [b, s, hidden]
    d_logits = g.tensors["cls.predictions.decoder"]  # [b, s, vocab]
    decoder_part = d_logits.reshape(-1, d_logits.shape[-1]).T @ h.reshape(-1, h.shape[-1])
    np.testing.assert_allclose(words[0], decoder_part[0], rtol=0, atol=1e-12)
    assert np.abs(words[1:] - decoder_part[1:]).max() > 1e-6  # the lookups reach the other rows
    for key in ("position_embeddings", "token_type_embeddings"):
        table = g.params[f"lxmert.embeddings.{key}.weight"]
        assert not table[0].any() and table[1].any(), key
    labels = inputs.pop("labels")
    with pytest.warns(FutureWarning, match="masked_lm_labels"):
        alias = model.backward(masked_lm_labels=labels, **inputs)
    for key, value in g.params.items():
        np.testing.assert_array_equal(alias.params[key], value, err_msg=key)


# --------------------------------------------------------------------------------------------
# finite differences: an independent check of the calculus
# --------------------------------------------------------------------------------------------

#: one array of every op kind: lookups (rows 1.. : row 0 is a padding row, whose gradient is 0 by
#: convention), LayerNorms, self- and cross-attention projections (the shared key of both calls),
#: GELU and tanh through the dense layers before them, the tied decoder, and every head
FD_KEYS = [
    "lxmert.embeddings.word_embeddings.weight",
    "lxmert.embeddings.position_embeddings.weight",
    "lxmert.embeddings.token_type_embeddings.weight",
    "lxmert.embeddings.LayerNorm.weight",
    "lxmert.encoder.visn_fc.visn_fc.weight",
    "lxmert.encoder.visn_fc.box_layer_norm.bias",
    "lxmert.encoder.layer.0.attention.self.query.weight",
    "lxmert.encoder.r_layers.0.attention.self.value.bias",
    "lxmert.encoder.x_layers.0.visual_attention.att.key.weight",
    "lxmert.encoder.x_layers.1.visual_attention.output.LayerNorm.weight",
    "lxmert.encoder.x_layers.0.lang_inter.dense.weight",
    "lxmert.encoder.x_layers.1.visn_output.dense.bias",
    "lxmert.pooler.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.bias",
    "cls.seq_relationship.weight",
    "obj_predict_head.transform.LayerNorm.bias",
    "obj_predict_head.decoder_dict.obj.weight",
    "obj_predict_head.decoder_dict.attr.bias",
    "obj_predict_head.decoder_dict.feat.weight",
    "answer_head.logit_fc.0.weight",
    "answer_head.logit_fc.2.weight",
    "answer_head.logit_fc.3.bias",
]
LOSS_PARTS = re.compile(r"^loss\.(masked_lm|matched|answer|visual\.\w+)$")


def test_finite_differences_of_our_forward(checkpoints):
    """Central differences (float64, fourth order) of our own forward's loss agree with the
    backward to 1e-6 relative on sampled entries of one array of every op kind and of the
    float inputs. The loss is re-added in float64 from its recorded terms (the model's total
    is a float32 sum, as the oracle's)."""
    loaded = refimpl.from_pretrained(checkpoints["pretraining"][1], dtype="float64")
    copies: dict[int, np.ndarray] = {}  # writable copies, the tied weights still one array
    params = {k: copies.setdefault(id(v), np.array(v)) for k, v in loaded.params.items()}
    model = type(loaded)(loaded.config, params, dtype="float64")
    inputs = lxmert_case(np.random.default_rng(11), model.config, "pretraining")
    g = model.backward(tensor_grads=True, **inputs)

    def loss() -> float:
        with trace.tracing(copy=False) as rec:
            model(**inputs)
        return float(sum(v for k, v in rec.tensors.items() if LOSS_PARTS.match(k)))

    assert abs(loss() - float(g.loss)) <= 1e-6 * abs(loss())  # the same L, in float64
    arrays, grads = {}, {}
    for key in FD_KEYS:
        rows = slice(1, None) if "embeddings" in key and key.endswith("embeddings.weight") else slice(None)
        arrays[key], grads[key] = model.params[key][rows], g.params[key][rows]  # views: perturbs the model
    for key in ("visual_feats", "visual_pos"):
        arrays[f"inputs.{key}"], grads[f"inputs.{key}"] = inputs[key], g.tensors[f"inputs.{key}"]
    worst = check_gradients(loss, arrays, grads, samples=3, rng=np.random.default_rng(0))
    assert worst <= 1e-6


# --------------------------------------------------------------------------------------------
# tiny configs drawn by hypothesis
# --------------------------------------------------------------------------------------------


@st.composite
def lxmert_configs(draw):
    heads = draw(st.integers(1, 3))
    l_layers, r_layers, x_layers = (draw(st.integers(0, 2)) for _ in range(3))
    if x_layers == 0:  # the oracle needs a last layer in each stream
        l_layers, r_layers = max(l_layers, 1), max(r_layers, 1)
    flags = {
        k: draw(st.booleans())
        for k in (
            "task_mask_lm", "task_obj_predict", "task_matched", "task_qa",
            "visual_obj_loss", "visual_attr_loss", "visual_feat_loss",
        )
    }  # fmt: skip
    # hidden_size >= 3. A LayerNorm's input gradient is rstd * (g - mean(g) - x_hat mean(g x_hat)):
    # over 2 features x_hat = +-1 and the two terms cancel (the exact gradient is ~eps/var, 0 over
    # 1 feature), so both programs return rounding noise times rstd (up to 1e6), not a gradient
    return LxmertConfig(
        vocab_size=draw(st.integers(3, 20)),
        hidden_size=heads * draw(st.integers(-(-3 // heads), 4)),
        num_attention_heads=heads,
        intermediate_size=draw(st.integers(1, 12)),
        l_layers=l_layers,
        r_layers=r_layers,
        x_layers=x_layers,
        hidden_act=draw(st.sampled_from(["gelu", "gelu", "relu", "tanh"])),
        max_position_embeddings=8,
        type_vocab_size=draw(st.integers(1, 3)),
        visual_feat_dim=draw(st.integers(1, 6)),
        visual_pos_dim=draw(st.integers(1, 5)),
        num_qa_labels=draw(st.integers(1, 4)),
        num_object_labels=draw(st.integers(1, 4)),
        num_attr_labels=draw(st.integers(1, 4)),
        visual_loss_normalizer=draw(st.floats(0.5, 8.0)),
        **flags,
    )


@settings(max_examples=12)
@given(
    config=lxmert_configs(),
    kind=st.sampled_from(list(CLASSES)),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 4)),
    options=st.fixed_dictionaries(
        {
            "labels": st.booleans(),
            "embeds": st.booleans(),
            "visual_mask": st.booleans(),
            "token_types": st.sampled_from(["full", "row", None]),
        }
    ),
    seed=st.integers(0, 2**16),
)
def test_float64_gradients_equal_autograd_on_drawn_configs(config, kind, shape, options, seed):
    """Drawn tiny configs (layer counts down to 0, task and visual-loss switches, activations),
    classes, shapes and inputs: every gradient within 1e-10 * max(1, max|torch|)."""
    b, s, o = shape
    torch_model = build(CLASSES[kind], config, seed=seed, std=0.3)
    with tempfile.TemporaryDirectory() as directory:
        model = refimpl.from_pretrained(save(torch_model, directory), dtype="float64")
    inputs = lxmert_case(np.random.default_rng(seed), model.config, kind, b, s, o, **options)
    if "inputs_embeds" in inputs:  # the oracle's visual loss reads input_ids.device (AttributeError)
        inputs.pop("obj_labels", None)
    ours = model.backward(tensor_grads=True, seed=seed, **inputs)
    if ours.loss is not None and not _loss_reaches_weights(config, kind, inputs):
        # labels of switched-off tasks only: the oracle's loss is the constant float32 0
        assert float(ours.loss) == 0.0 and not any(v.any() for v in ours.params.values())
        return
    oracle, steps = oracle_with_steps(torch_model, inputs, ours.upstream or None)
    compare(ours, oracle, steps, F64)


def _loss_reaches_weights(config, kind: str, inputs: dict) -> bool:
    """Whether the loss depends on the weights: some label's task is on and has a term."""
    if kind != "pretraining":
        return True
    c = config
    visual = c.visual_obj_loss or c.visual_attr_loss or c.visual_feat_loss
    return (
        ("labels" in inputs and c.task_mask_lm)
        or ("matched_label" in inputs and c.task_matched)
        or ("ans" in inputs and c.task_qa)
        or ("obj_labels" in inputs and c.task_obj_predict and visual)
    )
