"""The gradient oracle (tests/_grad_oracle.py) checked on its own, so that the model-level
gradient tests can trust it.

* Its names are refimpl's trace names: every oracle name that the traced forward of the same
  checkpoint also records holds the same forward value (1e-10 in float64), and the names the
  trace gives per call (``@lang`` / ``@visn``, ``.left`` / ``.right``) and to tuple elements
  (``lilt.encoder.layer.0.layout``, ``...attention.self.context``) are among them.
* Its gradients are derivatives: central finite differences of the torch model (float64,
  fourth-order stencil, see tests/_finite_diff.py) agree to 1e-6 relative on sampled entries
  of parameters, of module outputs (perturbed through a forward hook on the right call and
  tuple position) and of the float inputs.
* The float32 total of ``LxmertForPreTraining``'s loss: the loss is float32 after ``.double()``,
  and the gradients are the same with a float64 total.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _finite_diff import central_difference
from _grad_oracle import golden_name, oracle_gradients
from _oracle import build, save, tiny_lilt_config, tiny_lxmert_config
from transformers import LiltForTokenClassification, LiltModel, LxmertForPreTraining

import refimpl
from refimpl import trace

RTOL = 1e-6


def lilt_inputs(rng, b=2, s=7, vocab=60):
    ids = rng.integers(3, vocab, (b, s))
    ids[:, 0], ids[1, 5:] = 0, 1  # <s>, and padding (id 1) in row 1
    mask = np.ones((b, s), np.int64)
    mask[1, 5:] = 0
    x0, y0 = rng.integers(0, 60, (b, s)), rng.integers(0, 60, (b, s))
    bbox = np.stack([x0, y0, x0 + rng.integers(0, 60, (b, s)), y0 + rng.integers(0, 60, (b, s))], -1)
    return {"input_ids": ids, "bbox": bbox, "attention_mask": mask}


def lxmert_inputs(rng, b=2, s=6, o=4, with_labels=False):
    ids = rng.integers(1, 50, (b, s))
    am = np.ones((b, s), np.int64)
    am[1, 4:] = 0
    ids[1, 4:] = 0
    vm = np.ones((b, o), np.int64)
    vm[0, 3:] = 0
    inputs = {
        "input_ids": ids,
        "attention_mask": am,
        "token_type_ids": np.zeros((b, s), np.int64),
        "visual_feats": rng.normal(size=(b, o, 12)),
        "visual_pos": rng.uniform(size=(b, o, 4)),
        "visual_attention_mask": vm,
    }
    if with_labels:
        labels = rng.integers(0, 50, (b, s))
        labels[rng.random((b, s)) < 0.5] = -100
        obj = rng.integers(0, 7, (b, o))
        obj[0, 0] = -100
        inputs.update(
            labels=labels,
            matched_label=rng.integers(0, 2, b),
            ans=rng.integers(0, 5, b),
            obj_labels={
                "obj": (obj, rng.random((b, o))),
                "attr": (rng.integers(0, 3, (b, o)), rng.random((b, o))),
                "feat": (rng.normal(size=(b, o, 12)), rng.random((b, o))),
            },
        )
    return inputs


@pytest.fixture(scope="module")
def lilt_token(tmp_path_factory):
    cfg = tiny_lilt_config(
        hidden_size=24,
        num_attention_heads=2,
        intermediate_size=40,
        position_embedding_type="relative_key_query",
    )
    model = build(LiltForTokenClassification, cfg, seed=21, std=0.2)
    d = save(model, tmp_path_factory.mktemp("lilt-tok"))
    inputs = lilt_inputs(np.random.default_rng(21))
    labels = np.random.default_rng(22).integers(0, cfg.num_labels, inputs["input_ids"].shape)
    labels[1, 5:] = -100
    inputs["labels"] = labels
    inputs["head_mask"] = np.array([[1.0, 0.0], [0.5, 1.0]])
    return model, d, inputs


@pytest.fixture(scope="module")
def lxmert_pre(tmp_path_factory):
    model = build(
        LxmertForPreTraining, tiny_lxmert_config(hidden_size=16, intermediate_size=24), seed=23, std=0.2
    )
    d = save(model, tmp_path_factory.mktemp("lxmert-pre"))
    return model, d, lxmert_inputs(np.random.default_rng(23), with_labels=True)


def _traced(directory, inputs):
    model = refimpl.from_pretrained(directory, dtype="float64")
    with trace.tracing() as rec:
        model(**inputs, output_attentions=True, output_hidden_states=True)
    return rec.tensors


@pytest.mark.parametrize(
    "case, expected",
    [
        (
            "lilt_token",
            [
                "lilt.layout_embeddings.x_position_embeddings.left",
                "lilt.layout_embeddings.x_position_embeddings.right",
                "lilt.layout_embeddings.y_position_embeddings.lower",
                "lilt.encoder.layer.0",
                "lilt.encoder.layer.0.layout",
                "lilt.encoder.layer.1.attention.self.context",
                "lilt.encoder.layer.1.attention.self.layout_context",
                "lilt.encoder.layer.1.attention.self.attention_probs",
                "lilt.encoder.layer.0.attention.self.distance_embedding",
                "classifier",
            ],
        ),
        (
            "lxmert_pre",
            [
                "lxmert.encoder.x_layers.0.visual_attention.att.query@lang",
                "lxmert.encoder.x_layers.0.visual_attention.att.query@visn",
                "lxmert.encoder.x_layers.1.visual_attention.att.context@visn",
                "lxmert.encoder.x_layers.1.visual_attention.att.attention_probs@lang",
                "lxmert.encoder.x_layers.1.visual_attention.output@lang",
                "lxmert.encoder.layer.0.attention.self.context",
                "lxmert.encoder.r_layers.0.attention.self.attention_probs",
                "obj_predict_head.decoder_dict.feat",
                "answer_head.logit_fc.1",
            ],
        ),
    ],
)
def test_oracle_names_are_trace_names(case, expected, request):
    """Every oracle name the trace also records holds the same forward value; the per-call and
    tuple-element names are among them."""
    model, directory, inputs = request.getfixturevalue(case)
    grads = oracle_gradients(model, inputs)
    traced = _traced(directory, inputs)
    shared = sorted(set(grads.activations) & set(traced))
    for name in expected:
        assert name in grads.modules, f"the oracle has no {name!r}"
        assert name in traced or name.startswith("obj_predict_head"), f"the trace has no {name!r}"
    assert len(shared) > 40, shared
    for name in shared:
        ours, theirs = traced[name], grads.activations[name]
        assert ours.shape == theirs.shape, f"{name}: trace {ours.shape} != oracle {theirs.shape}"
        err = float(np.abs(ours - theirs).max())
        assert err <= 1e-10, f"{name}: the trace's value differs from the oracle's by {err:.2e}"


def _torch_inputs(model, inputs):
    from _grad_oracle import _to_torch

    dtype = next(model.parameters()).dtype
    return {k: _to_torch(v, dtype) for k, v in inputs.items()}


def _loss_fn(model, inputs, upstream=None, perturb=None, float64_loss=True):
    """The scalar L of the oracle, re-evaluated without gradients (float64 total for LXMERT)."""
    kw = _torch_inputs(model, inputs)

    def loss():
        with torch.no_grad(), _maybe_default_f64(float64_loss):
            out = model(**kw, output_attentions=True, output_hidden_states=True)
        if upstream is None:
            return float(out.loss)
        return float(sum((out[f] * torch.tensor(g)).sum() for f, g in upstream.items()))

    return loss, kw


def _maybe_default_f64(on):
    import contextlib

    from _grad_oracle import _default_dtype

    return _default_dtype(torch.float64) if on else contextlib.nullcontext()


def _fd_params(model, loss, grads, names, rng, per=2):
    worst = 0.0
    params = dict(model.named_parameters())
    for key in names:
        p = params[key]
        g = grads.params[key]
        gmax = float(np.abs(g).max())
        picks = [np.unravel_index(int(np.argmax(np.abs(g))), g.shape)]
        picks += [np.unravel_index(int(i), g.shape) for i in rng.choice(g.size, per, replace=False)]
        array = p.data.numpy()  # shares memory: perturbing it perturbs the model
        for idx in picks:
            fd = central_difference(loss, array, tuple(int(i) for i in idx))
            scale = max(abs(float(g[idx])), 1e-3 * gmax)
            rel = abs(fd - float(g[idx])) / scale
            worst = max(worst, rel)
            assert rel <= RTOL, f"{key}{list(idx)}: fd {fd!r} vs oracle {float(g[idx])!r} ({rel:.1e})"
    return worst


def test_parameter_gradients_match_finite_differences_lilt(lilt_token):
    """LiltForTokenClassification with labels (some -100), relative_key_query, a head mask with a
    zero: the loss's parameter gradients, on a few entries of one tensor of each kind."""
    model, _, inputs = lilt_token
    grads = oracle_gradients(model, inputs)
    # what the loss does not reach: the absolute position table (relative_key_query), and the last
    # layer's layout values and everything after them (the head reads the text stream only)
    assert "lilt.embeddings.position_embeddings.weight" in grads.unused
    assert "lilt.encoder.layer.1.attention.self.layout_value.weight" in grads.unused
    for key in grads.unused:
        assert key == "lilt.embeddings.position_embeddings.weight" or (
            key.startswith("lilt.encoder.layer.1.") and ".layout_" in key and "layout_query" not in key
        ), key
        assert not grads.params[key].any()
    loss, _ = _loss_fn(model, inputs)
    assert abs(loss() - grads.loss) <= 1e-14 * max(1.0, abs(grads.loss))
    names = [
        "lilt.embeddings.word_embeddings.weight",
        "lilt.layout_embeddings.x_position_embeddings.weight",
        "lilt.layout_embeddings.box_position_embeddings.weight",
        "lilt.encoder.layer.0.attention.self.layout_key.weight",
        "lilt.encoder.layer.0.attention.self.distance_embedding.weight",
        "lilt.encoder.layer.1.attention.output.LayerNorm.weight",
        "lilt.encoder.layer.0.layout_intermediate.dense.bias",
        "classifier.weight",
    ]
    _fd_params(model, loss, grads, names, np.random.default_rng(0))
    # padding rows: the lookup gives them nothing (nn.Embedding(padding_idx=pad_token_id))
    pad = model.config.pad_token_id
    for key in ("lilt.embeddings.word_embeddings.weight", "lilt.embeddings.position_embeddings.weight"):
        assert not grads.params[key][pad].any(), key


def _perturbing(model, source, index, delta):
    """A forward hook that adds ``delta`` to element ``index`` of one module output (its call
    and tuple position from the oracle's ``sources``)."""
    path, call, position = source
    module = dict(model.named_modules())[path]
    count = {"n": 0}

    def add(value, pos):
        if not pos:
            value = value.clone()
            value[index] += delta
            return value
        items = list(value)
        items[pos[0]] = add(items[pos[0]], pos[1:])
        return type(value)(items)

    def hook(m, args, output):
        k = count["n"]
        count["n"] += 1
        return add(output, position) if k == call else output

    return module.register_forward_hook(hook)


def _fd_module_output(model, loss, grads, name, rng, per=2):
    g = grads.modules[name]
    gmax = float(np.abs(g).max())
    assert gmax > 0, f"{name}: zero gradient"
    picks = [np.unravel_index(int(np.argmax(np.abs(g))), g.shape)]
    picks += [np.unravel_index(int(i), g.shape) for i in rng.choice(g.size, per, replace=False)]
    x = grads.activations[name]
    for idx in picks:
        idx = tuple(int(i) for i in idx)
        h = 2.0 ** np.round(np.log2(2.0**-13 * max(1.0, abs(float(x[idx])))))
        values = []
        for k in (2, 1, -1, -2):
            handle = _perturbing(model, grads.sources[name], idx, k * h)
            try:
                values.append(loss())
            finally:
                handle.remove()
        fd = (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * h)
        scale = max(abs(float(g[idx])), 1e-3 * gmax)
        rel = abs(fd - float(g[idx])) / scale
        assert rel <= RTOL, f"{name}{list(idx)}: fd {fd!r} vs oracle {float(g[idx])!r} ({rel:.1e})"


def test_module_output_gradients_match_finite_differences_lilt(lilt_token):
    """dL/d(module output), perturbing exactly that output: the second call of a twice-used table,
    tuple elements the trace names (text and layout outputs of a layer, the contexts). (Not the
    returned attention probabilities: the module used them for its context before returning
    them, so perturbing the returned tensor cannot reach the loss; their gradient is checked
    through the op-level BiACM tests.)"""
    model, _, inputs = lilt_token
    grads = oracle_gradients(model, inputs)
    loss, _ = _loss_fn(model, inputs)
    rng = np.random.default_rng(1)
    for name in (
        "lilt.layout_embeddings.x_position_embeddings.right",
        "lilt.layout_embeddings.y_position_embeddings.upper",
        "lilt.encoder.layer.0",
        "lilt.encoder.layer.0.layout",
        "lilt.encoder.layer.0.attention.self.layout_context",
        "lilt.encoder.layer.1.attention.self.context",
        "lilt.encoder.layer.0.attention.self.distance_embedding",
        "lilt.embeddings.LayerNorm",
    ):
        _fd_module_output(model, loss, grads, name, rng)


def test_lxmert_pretraining_loss_is_float32_and_gradients_are_not(lxmert_pre):
    """Every label of LxmertForPreTraining: the oracle's loss is a float32 tensor after .double()
    (torch.tensor(0.0) takes the default dtype; the in-place adds keep it); with a float64
    default the total is float64, equal to the float32 one at float32 precision, and every
    gradient is the same to the last bit."""
    model, _, inputs = lxmert_pre
    kw = _torch_inputs(model, inputs)
    with torch.no_grad():
        out = model(**kw)
    assert next(model.parameters()).dtype == torch.float64
    assert out.loss.dtype == torch.float32 and out.prediction_logits.dtype == torch.float64
    g32 = oracle_gradients(model, inputs)
    g64 = oracle_gradients(model, inputs, float64_loss=True)
    assert g32.loss != g64.loss or np.float32(g64.loss) == g64.loss
    assert abs(g32.loss - g64.loss) <= 2 * np.finfo(np.float32).eps * abs(g64.loss)
    assert g32.params.keys() == g64.params.keys() and not g32.unused
    for key in g32.params:
        np.testing.assert_array_equal(g32.params[key], g64.params[key], err_msg=key)
    for name in g32.modules:
        np.testing.assert_array_equal(g32.modules[name], g64.modules[name], err_msg=name)
    # tied weights: both keys hold the full gradient, padding row 0 included (the decoder reaches it)
    tied = ("cls.predictions.decoder.weight", "lxmert.embeddings.word_embeddings.weight")
    np.testing.assert_array_equal(g32.params[tied[0]], g32.params[tied[1]])
    assert g32.params[tied[1]][0].any()
    assert not g32.params["lxmert.embeddings.position_embeddings.weight"][0].any()


def test_parameter_and_input_gradients_match_finite_differences_lxmert(lxmert_pre):
    model, _, inputs = lxmert_pre
    grads = oracle_gradients(model, inputs, float64_loss=True)
    loss, kw = _loss_fn(model, inputs)
    names = [
        "lxmert.embeddings.word_embeddings.weight",  # tied with the decoder
        "lxmert.encoder.visn_fc.box_fc.weight",
        "lxmert.encoder.x_layers.0.visual_attention.att.key.weight",  # used by both cross-attention calls
        "lxmert.encoder.r_layers.0.output.LayerNorm.bias",
        "obj_predict_head.decoder_dict.feat.weight",
        "obj_predict_head.decoder_dict.attr.bias",
        "answer_head.logit_fc.2.weight",
        "cls.seq_relationship.weight",
    ]
    _fd_params(model, loss, grads, names, np.random.default_rng(2))
    rng = np.random.default_rng(3)
    for key in ("visual_feats", "visual_pos"):
        g = grads.inputs[f"inputs.{key}"]
        array = kw[key].numpy()  # the tensors the loss closure feeds the model
        for i in rng.choice(g.size, 3, replace=False):
            idx = tuple(int(j) for j in np.unravel_index(int(i), g.shape))
            fd = central_difference(loss, array, idx)
            rel = abs(fd - g[idx]) / max(abs(g[idx]), 1e-3 * np.abs(g).max())
            assert rel <= RTOL, f"inputs.{key}{list(idx)}: fd {fd!r} vs oracle {g[idx]!r}"
    for name in (
        "lxmert.encoder.x_layers.1.visual_attention.att.query@visn",
        "lxmert.encoder.x_layers.0.visual_attention.output@lang",
        "lxmert.encoder.r_layers.0.attention.self.context",
    ):
        _fd_module_output(model, loss, grads, name, rng)


def test_upstream_mode_lilt_model_with_the_layout_output():
    """LiltModel without labels: L = sum(last_hidden_state * G1) + sum(pooler_output * G2) +
    sum(layout output of the last layer * G3) (refimpl's layout_last_hidden_state)."""
    cfg = tiny_lilt_config(hidden_size=24, num_attention_heads=2, intermediate_size=40)
    model = build(LiltModel, cfg, seed=31, std=0.2)
    inputs = lilt_inputs(np.random.default_rng(31))
    rng = np.random.default_rng(32)
    upstream = {
        "last_hidden_state": rng.standard_normal((2, 7, 24)),
        "pooler_output": rng.standard_normal((2, 24)),
    }
    layout = {"encoder.layer.1.layout": rng.standard_normal((2, 7, 6))}
    grads = oracle_gradients(model, inputs, upstream, upstream_modules=layout)
    # last_hidden_state feeds the pooler: its gradient is G plus the pooler's share
    lhs = grads.outputs["outputs.last_hidden_state"]
    assert np.abs(lhs - upstream["last_hidden_state"]).max() > 1e-3
    np.testing.assert_array_equal(lhs[:, 1:], upstream["last_hidden_state"][:, 1:])  # only token 0 is pooled
    np.testing.assert_array_equal(grads.modules["encoder.layer.1.layout"], layout["encoder.layer.1.layout"])
    assert "outputs.attentions.1" in grads.outputs and "outputs.hidden_states.2" in grads.outputs

    kw = _torch_inputs(model, inputs)

    def loss():
        with torch.no_grad():
            out = model(**kw)
        total = sum(float((out[f] * torch.tensor(g)).sum()) for f, g in upstream.items())
        return total

    # the layout term through a hook on the last layer (the oracle's own bookkeeping is what is tested)
    captured = {}
    handle = dict(model.named_modules())["encoder.layer.1"].register_forward_hook(
        lambda m, a, o: captured.__setitem__("layout", o[0][1])
    )
    try:

        def full_loss():
            value = loss()
            return value + float((captured["layout"] * torch.tensor(layout["encoder.layer.1.layout"])).sum())

        _fd_params(
            model,
            full_loss,
            grads,
            [
                "embeddings.word_embeddings.weight",
                "encoder.layer.1.layout_output.LayerNorm.weight",
                "pooler.dense.bias",
            ],
            np.random.default_rng(4),
        )
    finally:
        handle.remove()


def test_float32_model_gives_float32_gradients(lilt_token):
    model, _, inputs = lilt_token
    model32 = build(LiltForTokenClassification, model.config, seed=21, std=0.2, dtype=torch.float32)
    g32 = oracle_gradients(model32, inputs)
    g64 = oracle_gradients(model, inputs)
    for key, g in g32.params.items():
        assert g.dtype == np.float32, key
        err = float(np.abs(g - g64.params[key]).max())
        assert err <= 1e-4 * max(1.0, float(np.abs(g64.params[key]).max())), key


def test_golden_name_rules():
    assert golden_name("lxmert.encoder.x_layers.0.visual_attention.att", 1, (0,)) == (
        "lxmert.encoder.x_layers.0.visual_attention.att.context@visn"
    )
    assert golden_name("lilt.encoder.layer.2", 0, (0, 1)) == "lilt.encoder.layer.2.layout"
    assert golden_name("lilt.encoder.layer.2.attention", 0, (0, 1)) == "lilt.encoder.layer.2.attention.0.1"
    assert golden_name("lilt.layout_embeddings.y_position_embeddings", 1, ()) == (
        "lilt.layout_embeddings.y_position_embeddings.lower"
    )
    with pytest.raises(ValueError, match="called 2 times"):
        golden_name("lilt.encoder.layer.0.output.dense", 1, ())
    with pytest.raises(ValueError, match="no loss"):
        oracle_gradients(build(LiltModel, tiny_lilt_config(), seed=1), lilt_inputs(np.random.default_rng(0)))
