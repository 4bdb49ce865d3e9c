"""Golden gradients (``refimpl golden --grads``) against torch autograd on transformers 4.56.2.

Each case saves a tiny random oracle model with ``save_pretrained``, writes an ``.npz`` case
(every label the architecture takes, as members), runs the command line, and reads the file
back. Expected values come from the oracle (tests/_grad_oracle.py, tests/_lilt_grad_oracle.py:
one forward and one ``backward`` of the same ``L``), never from refimpl:

* ``grad.<checkpoint key>`` for every parameter and ``grad.<name>`` for every tensor the oracle
  names (module outputs, the self-attention's steps, ``outputs.<field>[.<i>]``, the float inputs)
  within ``1e-10 * max(1, max|torch|)`` in float64 (``1e-4`` in float32);
* ``L``: the loss with labels, else ``sum X * G_X`` with ``G_X`` drawn again here from the seed
  in the manifest (``numpy.random.default_rng(seed).standard_normal``, field after field);
* LiLT's ``attention_probs`` and ``layout_attention_probs``: equal forward values, different
  gradients (each stream's own);
* bad labels refused before any work, naming the member, the position and the allowed range;
* ``--select`` keeps the gradients of what it keeps;
* ``refimpl compare`` judges gradients: the oracle's, under golden names, pass; a nudged one fails.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import transformers
from _grad_oracle import oracle_gradients
from _lilt_grad_oracle import lilt_oracle_gradients
from _oracle import build, save, tiny_lxmert_config

from refimpl import golden
from refimpl.cli import main
from refimpl.compare import compare

VOCAB, MAX_POS, MAX_2D = 50, 40, 100
TOL = {"float64": 1e-10, "float32": 1e-4}


def lilt_config(**changes):
    return transformers.LiltConfig(
        vocab_size=VOCAB,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=MAX_POS,
        max_2d_position_embeddings=MAX_2D,
        pad_token_id=1,
        channel_shrink_ratio=4,
        **{"num_labels": 3, **changes},
    )


@pytest.fixture(scope="module")
def lilt_ckpts(tmp_path_factory):
    """arch -> (oracle float64 model, checkpoint dir)."""
    out = {}
    for i, (arch, changes) in enumerate(
        {
            "LiltModel": {},
            "LiltForTokenClassification": {"position_embedding_type": "relative_key_query"},
        }.items()
    ):
        model = build(getattr(transformers, arch), lilt_config(**changes), seed=10 + i, std=0.2)
        out[arch] = (model, save(model, tmp_path_factory.mktemp(arch)))
    return out


@pytest.fixture(scope="module")
def lxmert_ckpt(tmp_path_factory):
    cfg = tiny_lxmert_config(hidden_size=16, intermediate_size=24, num_attention_heads=2, x_layers=1)
    model = build(transformers.LxmertForPreTraining, cfg, seed=3, std=0.2)
    return model, save(model, tmp_path_factory.mktemp("lxmert-pt"))


def lilt_inputs(seed: int = 0, b: int = 2, s: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (b, s))
    ids[:, 0] = 0
    mask = np.ones((b, s), np.int64)
    ids[-1, -2:], mask[-1, -2:] = 1, 0  # a padded row
    x0, y0 = rng.integers(0, 50, (b, s)), rng.integers(0, 50, (b, s))
    bbox = np.stack([x0, y0, x0 + rng.integers(0, 50, (b, s)), y0 + rng.integers(0, 50, (b, s))], -1)
    return {"input_ids": ids, "bbox": bbox, "attention_mask": mask}


def lxmert_inputs(cfg, seed: int = 0, b: int = 2, s: int = 6, o: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    lm = rng.integers(0, cfg.vocab_size, (b, s))
    lm[rng.random((b, s)) < 0.4] = -100
    obj = rng.integers(0, cfg.num_object_labels, (b, o))
    obj[0, 0] = -100
    return {
        "input_ids": rng.integers(0, cfg.vocab_size, (b, s)),
        "attention_mask": np.ones((b, s), np.int64),
        "visual_feats": rng.normal(size=(b, o, cfg.visual_feat_dim)),
        "visual_pos": rng.uniform(size=(b, o, cfg.visual_pos_dim)),
        "labels": lm,
        "matched_label": np.array([1, 0]),
        "ans": rng.integers(0, cfg.num_qa_labels, b),
        "obj_labels.obj": obj,
        "obj_labels.obj.weights": rng.random((b, o)),
        "obj_labels.attr": rng.integers(0, cfg.num_attr_labels, (b, o)),
        "obj_labels.attr.weights": rng.random((b, o)),
        "obj_labels.feat": rng.normal(size=(b, o, cfg.visual_feat_dim)),
        "obj_labels.feat.weights": rng.random((b, o)),
    }


def oracle_kwargs(case: dict) -> dict:
    """The ``.npz`` members as transformers takes them (``obj_labels={kind: (targets, weights)}``)."""
    out = {k: v for k, v in case.items() if not k.startswith("obj_labels.")}
    kinds = sorted({k.split(".")[1] for k in case if k.startswith("obj_labels.")})
    if kinds:
        out["obj_labels"] = {k: (case[f"obj_labels.{k}"], case[f"obj_labels.{k}.weights"]) for k in kinds}
    return out


def write(tmp_path, ckpt: str, case: dict, *extra, name: str = "g") -> golden.Golden:
    npz = tmp_path / f"{name}.npz"
    np.savez(npz, **case)
    out = tmp_path / f"{name}.safetensors"
    rc = main(["golden", ckpt, "--inputs", str(npz), "--out", str(out), "--grads", "-q", *map(str, extra)])
    assert rc == 0
    return golden.read(out)


def refused(capsys, tmp_path, ckpt: str, case: dict) -> str:
    npz = tmp_path / "bad.npz"
    np.savez(npz, **case)
    out = tmp_path / "bad.safetensors"
    rc = main(["golden", ckpt, "--inputs", str(npz), "--out", str(out), "--grads", "-q"])
    assert rc == 2 and not out.exists()
    return capsys.readouterr().err


def err(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"shape {ours.shape} != torch {theirs.shape}"
    return float(np.abs(ours - theirs).max(initial=0.0)) / max(1.0, float(np.abs(theirs).max(initial=0.0)))


def check_against(g: golden.Golden, oracle, tol: float, extra: dict | None = None) -> int:
    """Every ``grad.<key>`` against torch's parameter gradients, and every ``grad.<name>`` the
    oracle has a tensor for; returns how many tensor gradients were checked."""
    grads = g.gradients
    params = g.manifest["gradients"]["parameters"]
    assert sorted(params) == sorted(oracle.params), "one grad.<key> per checkpoint key"
    for k in params:
        e = err(grads[k], oracle.params[k])
        assert e <= tol, f"grad.{k}: {e:.2e} > {tol:g} * max(1, max|torch|)"
    theirs = {**oracle.modules, **oracle.outputs, **oracle.inputs, **(extra or {})}
    checked = 0
    for name in grads:
        if name in theirs and name not in params:
            e = err(grads[name], theirs[name])
            assert e <= tol, f"grad.{name}: {e:.2e} > {tol:g} * max(1, max|torch|)"
            checked += 1
    return checked


# --------------------------------------------------------------------------------------------
# L = the loss: LiLT token classification, labels with -100, relative_key_query, head mask


def test_lilt_labels_and_head_mask_equal_autograd(tmp_path, lilt_ckpts):
    oracle_model, ckpt = lilt_ckpts["LiltForTokenClassification"]
    case = lilt_inputs(1)
    labels = np.random.default_rng(2).integers(0, 3, case["input_ids"].shape)
    labels[0, 0], labels[1, -2:] = -100, -100
    case.update(labels=labels, head_mask=np.array([[1.0, 0.0], [0.5, 1.0]]))
    g = write(tmp_path, ckpt, case)
    sec = g.manifest["gradients"]
    assert sec["L"] == "loss" and sec["seed"] is None and not g.upstream
    oracle = lilt_oracle_gradients(oracle_model, oracle_kwargs(case))
    assert abs(float(g.tensors["outputs.loss"]) - oracle.loss) <= 1e-10 * max(1.0, abs(oracle.loss))
    checked = check_against(g, oracle, TOL["float64"])
    assert checked > 50, f"only {checked} tensor gradients had an oracle counterpart"
    assert float(g.gradients["outputs.loss"]) == 1.0  # dL/dL
    # every floating forward tensor has its gradient; integer inputs, masks and labels none
    for name in g.tensors:
        if name.startswith(("grad.", "upstream.")) or g.info(name)[0].kind != "f":
            continue
        assert (name in g.gradients) != name.startswith("inputs."), name
    # gradient entries carry the gradient tolerance: tol * max(1, max|g|), rtol 0
    e = g.manifest["tensors"][[x["name"] for x in g.manifest["tensors"]].index("grad.classifier.weight")]
    gw = g.tensors["grad.classifier.weight"]
    assert e["role"] == "gradient" and e["rtol"] == 0.0
    assert e["atol"] == pytest.approx(1e-10 * max(1.0, float(np.abs(gw).max())))


# --------------------------------------------------------------------------------------------
# L = sum X * G_X: LiltModel, seeded upstream (layout_last_hidden_state included)


def test_lilt_upstream_from_seed_and_two_attention_gradients(tmp_path, lilt_ckpts):
    oracle_model, ckpt = lilt_ckpts["LiltModel"]
    case = lilt_inputs(3)
    g = write(tmp_path, ckpt, case, "--seed", 7)
    sec = g.manifest["gradients"]
    assert sec["L"] != "loss" and sec["seed"] == 7 and "outputs.loss" not in g.tensors
    fields = ["last_hidden_state", "pooler_output", "layout_last_hidden_state"]
    assert sec["upstream"] == [f"outputs.{f}" for f in fields]
    rng = np.random.default_rng(7)  # the documented draw, field after field in the record's order
    for f in fields:
        want = rng.standard_normal(g.tensors[f"outputs.{f}"].shape)
        np.testing.assert_array_equal(g.upstream[f"outputs.{f}"], want)
    up = {f: g.upstream[f"outputs.{f}"] for f in fields[:2]}
    layout = {"encoder.layer.1.layout": g.upstream["outputs.layout_last_hidden_state"]}
    oracle = lilt_oracle_gradients(oracle_model, case, up, upstream_modules=layout)
    assert check_against(g, oracle, TOL["float64"]) > 50
    # dL/dX of an output differs from its G where it feeds another output (the pooler)
    assert not np.allclose(g.gradients["outputs.last_hidden_state"], g.upstream["outputs.last_hidden_state"])
    # one forward array, two gradients: each stream's probabilities get their own
    for i in range(2):
        text, lay = (
            f"encoder.layer.{i}.attention.self.attention_probs",
            f"encoder.layer.{i}.attention.self.layout_attention_probs",
        )
        np.testing.assert_array_equal(g.tensors[text], g.tensors[lay])
        gt, gl = g.gradients[text], g.gradients[lay]
        assert np.abs(gt - gl).max() > 1e-3 * np.abs(gt).max(), f"layer {i}: the two gradients are equal"
        assert "grad." + lay not in g.aliases and g.aliases.get("grad." + lay) != "grad." + text
        assert err(gt, oracle.modules[text]) <= 1e-10 and err(gl, oracle.modules[lay]) <= 1e-10
        # the per-layer outputs: attentions are the text probabilities, layout_attentions the layout's
        assert err(g.gradients[f"outputs.attentions.{i}"], oracle.outputs[f"outputs.attentions.{i}"]) <= 1e-10
        np.testing.assert_array_equal(g.gradients[f"outputs.layout_attentions.{i}"], gl)


def test_float32_gradients_within_1e_4(tmp_path, lilt_ckpts):
    oracle_model, ckpt = lilt_ckpts["LiltModel"]
    case = lilt_inputs(4)
    g = write(tmp_path, ckpt, case, "--dtype", "float32")
    assert g.gradients["pooler.dense.weight"].dtype == np.float32
    up = {f: g.upstream[f"outputs.{f}"].astype(np.float64) for f in ("last_hidden_state", "pooler_output")}
    layout = {"encoder.layer.1.layout": g.upstream["outputs.layout_last_hidden_state"].astype(np.float64)}
    oracle = lilt_oracle_gradients(oracle_model, case, up, upstream_modules=layout)
    check_against(g, oracle, TOL["float32"])
    e = next(x for x in g.manifest["tensors"] if x["name"] == "grad.pooler.dense.weight")
    assert e["atol"] == pytest.approx(
        1e-4 * max(1.0, float(np.abs(g.tensors["grad.pooler.dense.weight"]).max()))
    )


# --------------------------------------------------------------------------------------------
# LXMERT pre-training with every label, obj_labels as .npz members


def test_lxmert_every_label_equal_autograd(tmp_path, lxmert_ckpt):
    oracle_model, ckpt = lxmert_ckpt
    case = lxmert_inputs(oracle_model.config)
    g = write(tmp_path, ckpt, case)
    assert g.manifest["gradients"]["L"] == "loss"
    for k in ("obj_labels.obj", "obj_labels.feat.weights", "labels", "matched_label", "ans"):
        np.testing.assert_array_equal(g.inputs[k], case[k])
    oracle = oracle_gradients(oracle_model, oracle_kwargs(case))
    # the oracle sums the pre-training loss in float32: the loss at float32 precision only
    assert abs(float(g.tensors["outputs.loss"]) - oracle.loss) <= 1e-5 * max(1.0, abs(oracle.loss))
    assert check_against(g, oracle, TOL["float64"]) > 40
    assert err(g.gradients["inputs.visual_feats"], oracle.inputs["inputs.visual_feats"]) <= 1e-10
    # tied keys each hold the full gradient of the shared tensor
    np.testing.assert_array_equal(
        g.gradients["cls.predictions.decoder.weight"], g.gradients["lxmert.embeddings.word_embeddings.weight"]
    )


# --------------------------------------------------------------------------------------------
# refusals, selection, compare


def test_bad_labels_refused_naming_member_position_and_range(tmp_path, capsys, lilt_ckpts, lxmert_ckpt):
    _, tok_ckpt = lilt_ckpts["LiltForTokenClassification"]
    case = lilt_inputs(5)
    labels = np.zeros(case["input_ids"].shape, np.int64)
    labels[1, 4] = 3  # num_labels = 3
    msg = refused(capsys, tmp_path, tok_ckpt, {**case, "labels": labels})
    assert "'labels'[1, 4] = 3" in msg and "[0, 2]" in msg and "-100" in msg
    msg = refused(capsys, tmp_path, tok_ckpt, {**case, "labels": labels[:, :3]})
    assert "'labels' has shape [2, 3]" in msg and "[2, 7]" in msg
    msg = refused(capsys, tmp_path, tok_ckpt, {**case, "start_positions": np.array([0, 1])})
    assert "'start_positions' is not an input of LiltForTokenClassification" in msg
    msg = refused(capsys, tmp_path, tok_ckpt, {**case, "head_mask": np.ones((3, 2))})
    assert "head_mask has shape (3, 2)" in msg

    model, lx_ckpt = lxmert_ckpt
    cfg = model.config
    good = lxmert_inputs(cfg)
    bad = dict(good)
    bad["obj_labels.attr"] = good["obj_labels.attr"].copy()
    bad["obj_labels.attr"][1, 2] = cfg.num_attr_labels
    msg = refused(capsys, tmp_path, lx_ckpt, bad)
    assert (
        f"'obj_labels.attr'[1, 2] = {cfg.num_attr_labels}" in msg and f"[0, {cfg.num_attr_labels - 1}]" in msg
    )
    msg = refused(
        capsys, tmp_path, lx_ckpt, {k: v for k, v in good.items() if k != "obj_labels.feat.weights"}
    )
    assert "'obj_labels.feat.weights'" in msg
    msg = refused(capsys, tmp_path, lx_ckpt, {**good, "matched_label": np.array([1, 2])})
    assert "'matched_label'[1] = 2" in msg and "[0, 1]" in msg
    feat = good["obj_labels.feat"].copy()
    feat[0, 1, 2] = np.nan
    msg = refused(capsys, tmp_path, lx_ckpt, {**good, "obj_labels.feat": feat})
    assert "'obj_labels.feat'[0, 1, 2]" in msg and "not finite" in msg
    msg = refused(capsys, tmp_path, lx_ckpt, {**good, "head_mask": np.ones(2)})
    assert "LXMERT takes no head mask" in msg


def test_select_filters_gradients(tmp_path, lilt_ckpts):
    _, ckpt = lilt_ckpts["LiltModel"]
    case = lilt_inputs(6)
    g = write(tmp_path, ckpt, case, "--select", "*.attention.self.query", name="q")
    grads = set(g.gradients)
    assert grads == {f"encoder.layer.{i}.attention.self.query" for i in range(2)}
    assert {n for n in g.intermediates} == grads
    assert len(g.upstream) == 3  # G_X always stay: L cannot be rebuilt without them
    g = write(tmp_path, ckpt, case, "--select", "grad.*.weight", name="w")
    assert not g.intermediates and not g.outputs
    assert set(g.gradients) == {k for k in g.manifest["gradients"]["parameters"] if k.endswith(".weight")}
    g = write(tmp_path, ckpt, case, "--select", "blocks", name="b")
    assert "outputs.last_hidden_state" in g.gradients and "encoder.layer.0" in g.gradients
    assert not any(k.endswith("attention_probs") for k in g.gradients)


def test_compare_judges_gradients(tmp_path, lilt_ckpts):
    oracle_model, ckpt = lilt_ckpts["LiltForTokenClassification"]
    case = lilt_inputs(7)
    case["labels"] = np.random.default_rng(8).integers(0, 3, case["input_ids"].shape)
    g = write(tmp_path, ckpt, case, "--select", "grad.*", name="c")
    oracle = lilt_oracle_gradients(oracle_model, oracle_kwargs(case))
    # what a porter dumps: loss.backward(), then {f"grad.{k}": p.grad} under checkpoint keys
    port = {f"grad.{k}": v for k, v in oracle.params.items()}
    port.update({f"grad.{k}": v for k, v in oracle.modules.items() if f"grad.{k}" in g.tensors})
    result = compare(g, port)
    rows = {r.name: r for r in result.rows}
    assert all(rows[f"grad.{k}"].ok for k in oracle.params), result.table()
    nudged = dict(port)
    key = "grad.lilt.encoder.layer.0.attention.self.query.weight"
    nudged[key] = port[key] + 1e-6 * max(1.0, float(np.abs(port[key]).max()))
    rows = {r.name: r for r in compare(g, nudged).rows}
    assert rows[key].status == "FAIL"


def porting_recipe():
    """The ``grad_dump`` recipe of docs/porting.md, as the page shows it."""
    text = open(
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "porting.md"), encoding="utf-8"
    ).read()
    block = text[text.index("<!-- tests/test_golden_grads.py runs this block") :]
    block = block[block.index("```python\n") + 10 :]
    namespace: dict = {}
    exec(block[: block.index("```")], namespace)
    return namespace["grad_dump"]


def test_the_porting_recipe_dumps_gradients_compare_accepts(tmp_path, lilt_ckpts, lxmert_ckpt):
    grad_dump = porting_recipe()
    oracle_model, ckpt = lilt_ckpts["LiltForTokenClassification"]
    case = lilt_inputs(9)
    case["labels"] = np.random.default_rng(9).integers(0, 3, case["input_ids"].shape)
    g = write(tmp_path, ckpt, case, name="lilt")
    grad_dump(oracle_model, g.path, tmp_path / "dump.npz")
    result = compare(g, str(tmp_path / "dump.npz"))
    compared = [r for r in result.rows if r.status != "missing"]
    assert result.ok and len(compared) > 100, result.table()
    assert all(f"grad.{k}" in {r.name for r in compared} for k in g.manifest["gradients"]["parameters"])

    oracle_model, ckpt = lxmert_ckpt  # L = sum X * G_X from the file's G_X, and visual_feats' gradient
    case = {
        k: v
        for k, v in lxmert_inputs(oracle_model.config, 2).items()
        if k in ("input_ids", "visual_feats", "visual_pos")
    }
    g = write(tmp_path, ckpt, case, name="lx")
    assert g.upstream
    grad_dump(oracle_model, g.path, tmp_path / "lx.npz")
    result = compare(g, str(tmp_path / "lx.npz"))
    names = {r.name for r in result.rows if r.status != "missing"}
    assert (
        result.ok and "grad.inputs.visual_feats" in names and "grad.cls.predictions.decoder.weight" in names
    )
    nudged = dict(np.load(tmp_path / "lx.npz"))
    nudged["grad.inputs.visual_pos"] = nudged["grad.inputs.visual_pos"] * (1 + 1e-8)
    assert not compare(g, nudged).ok


def test_the_format_page_shows_the_npz_schema_golden_help_prints():
    from refimpl.cli.cases import CASE_SCHEMA

    text = open(
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "golden-format.md"), encoding="utf-8"
    ).read()
    block = text[text.index("```text\n.npz    one case") + 8 :]
    block = block[: block.index("```")]
    assert " ".join(block.split()) in " ".join(CASE_SCHEMA.split())


@pytest.mark.parametrize(
    "arch, labels",
    [
        (
            "LiltForSequenceClassification",
            {"labels": np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])},
        ),  # multi-label
        (
            "LiltForQuestionAnswering",
            {"start_positions": np.array([2, 40]), "end_positions": np.array([-3, 5])},
        ),
    ],
)
def test_other_lilt_heads_with_labels_equal_autograd(tmp_path, arch, labels):
    cfg = lilt_config(position_embedding_type="relative_key", num_labels=2 if "Question" in arch else 3)
    model = build(getattr(transformers, arch), cfg, seed=20, std=0.2)
    ckpt = save(model, tmp_path / "ckpt")
    case = {**lilt_inputs(11), **labels}
    g = write(tmp_path, ckpt, case)
    assert g.manifest["gradients"]["L"] == "loss"
    oracle = lilt_oracle_gradients(model, case)
    assert abs(float(g.tensors["outputs.loss"]) - oracle.loss) <= 1e-10 * max(1.0, abs(oracle.loss))
    assert check_against(g, oracle, TOL["float64"]) > 50


def test_seed_needs_grads_and_is_non_negative(tmp_path, capsys, lilt_ckpts):
    _, ckpt = lilt_ckpts["LiltModel"]
    npz = tmp_path / "c.npz"
    np.savez(npz, **lilt_inputs(12))
    out = tmp_path / "o.safetensors"
    assert main(["golden", ckpt, "--inputs", str(npz), "--out", str(out), "--seed", "1"]) == 2
    assert "--seed" in capsys.readouterr().err and not out.exists()
    assert main(["golden", ckpt, "--inputs", str(npz), "--out", str(out), "--grads", "--seed", "-1"]) == 2
    assert "non-negative" in capsys.readouterr().err and not out.exists()


def test_a_batch_resumes_only_files_with_the_same_gradients(tmp_path, capsys):
    from refimpl import data

    ckpt = data.path("lilt-tiny")
    page = open(data.path("example", "form.json"), encoding="utf-8").read().replace("\n", " ")
    cases = tmp_path / "cases.jsonl"
    cases.write_text(page + "\n" + page + "\n", encoding="utf-8")
    out = tmp_path / "out"

    def run(*extra):
        assert main(["golden", ckpt, "--inputs", str(cases), "--out", str(out), *extra]) == 0
        return capsys.readouterr().out

    assert "wrote 2, skipped 0" in run("--grads")
    assert "wrote 0, skipped 2" in run("--grads")
    assert "wrote 0, skipped 2" in run("--grads", "--seed", "5")  # L is the loss: the seed is unused
    assert "wrote 2, skipped 0" in run()  # a forward-only run rewrites the gradient files
    assert "wrote 2, skipped 0" in run("--grads")
    assert golden.read(out / "case-0000.safetensors").manifest["gradients"]["L"] == "loss"
