"""The refimpl command line: golden/compare/inspect/convert/demo/models, and its error paths
(a missing file, a bad flag, a bad dtype, an unreadable checkpoint: exit 2 and one line on
stderr, never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _oracle import build, save, to_numpy
from transformers import LiltConfig, LiltForTokenClassification

import refimpl
from refimpl import golden
from refimpl.cli import main
from refimpl.data import path as bundled_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LILT_TINY = bundled_path("lilt-tiny")
LXMERT_TINY = bundled_path("lxmert-tiny")
EXAMPLE = bundled_path("example")


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_usage_error(rc, err, *needles):
    assert rc == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), repr(err)
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


# ------------------------------------------------------------------------------- golden + compare
def test_golden_from_npz_then_compare(tmp_path, capsys):
    x = {
        "input_ids": np.array([[0, 40, 41, 42, 2, 1, 1]]),
        "bbox": np.array([[[0, 0, 0, 0]] + [[10, 20, 30, 40]] * 3 + [[0, 0, 0, 0]] * 3]),
        "attention_mask": np.array([[1, 1, 1, 1, 1, 0, 0]]),
    }
    np.savez(tmp_path / "in.npz", **x)
    rc, out, err = run(
        capsys, "golden", LILT_TINY, "--inputs", tmp_path / "in.npz", "--out", tmp_path / "g.safetensors"
    )
    assert rc == 0, err
    g = golden.read(tmp_path / "g.safetensors")
    assert g.manifest["dtype"] == "float64" and g.manifest["inputs_source"]["kind"] == "npz"
    np.testing.assert_array_equal(g.inputs["input_ids"], x["input_ids"])
    # the same numbers as the library
    model = refimpl.from_pretrained(LILT_TINY, dtype="float64")
    np.testing.assert_array_equal(g.outputs["logits"], model(**x).logits)

    rc, out, _ = run(capsys, "compare", tmp_path / "g.safetensors", tmp_path / "g.safetensors")
    assert rc == 0 and "first divergence" not in out and "NOT OK" not in out

    t = dict(g.tensors)
    name = "lilt.encoder.layer.1.attention.self.layout_value"
    t[name] = t[name] + 1e-7
    golden.write(tmp_path / "bad.safetensors", t, g.manifest)
    rc, out, _ = run(capsys, "compare", tmp_path / "g.safetensors", tmp_path / "bad.safetensors")
    assert rc == 1
    marked = [ln for ln in out.splitlines() if "first divergence" in ln and "<==" in ln]
    assert len(marked) == 1 and marked[0].startswith(name)
    assert "NOT OK" in out
    rc, out, _ = run(
        capsys, "compare", tmp_path / "g.safetensors", tmp_path / "bad.safetensors", "--atol", "1e-6"
    )
    assert rc == 0


def test_golden_from_json_uses_the_checkpoints_tokenizer(tmp_path, capsys):
    from refimpl.lilt.tokenization import LiltTokenizer

    form = os.path.join(EXAMPLE, "form.json")
    rc, _, err = run(
        capsys,
        "golden",
        LILT_TINY,
        "--inputs",
        form,
        "--out",
        tmp_path / "f.safetensors",
        "--dtype",
        "float32",
    )
    assert rc == 0, err
    g = golden.read(tmp_path / "f.safetensors")
    case = json.load(open(form))
    enc = LiltTokenizer.from_pretrained(LILT_TINY)(
        case["words"], boxes=case["boxes"], word_labels=case["labels"], return_tensors="np"
    )
    for k in ("input_ids", "bbox", "attention_mask", "labels"):
        np.testing.assert_array_equal(g.inputs[k], enc[k])
    assert g.manifest["dtype"] == "float32" and g.tensors["outputs.logits"].dtype == np.float32
    assert g.tensors["outputs.loss"].shape == ()

    rc, _, err = run(
        capsys,
        "golden",
        LXMERT_TINY,
        "--inputs",
        os.path.join(EXAMPLE, "question.json"),
        "--out",
        tmp_path / "q.safetensors",
    )
    assert rc == 0, err
    q = golden.read(tmp_path / "q.safetensors")
    feats = np.load(os.path.join(EXAMPLE, "feats.npy"))
    np.testing.assert_array_equal(q.inputs["visual_feats"][0], feats.astype(np.float64))
    assert q.inputs["input_ids"].shape[0] == 1 and "outputs.cross_relationship_score" in q.tensors

    # optional targets: matched_label / ans become [1] int64 inputs, and the loss parts are traced
    case = json.load(open(os.path.join(EXAMPLE, "question.json")))
    case.update(features=os.path.join(EXAMPLE, "feats.npy"), boxes=os.path.join(EXAMPLE, "boxes.npy"))
    (tmp_path / "qa.json").write_text(json.dumps({**case, "matched_label": 1, "ans": 3}))
    rc, _, err = run(
        capsys, "golden", LXMERT_TINY, "--inputs", tmp_path / "qa.json", "--out", tmp_path / "qa.safetensors"
    )
    assert rc == 0, err
    qa = golden.read(tmp_path / "qa.safetensors")
    assert qa.inputs["ans"].tolist() == [3] and qa.inputs["matched_label"].tolist() == [1]
    assert {"loss", "loss.matched", "loss.answer"} <= set(qa.tensors)
    (tmp_path / "bad.json").write_text(json.dumps({**case, "ans": "three"}))
    rc, _, err = run(
        capsys, "golden", LXMERT_TINY, "--inputs", tmp_path / "bad.json", "--out", tmp_path / "x.safetensors"
    )
    assert_usage_error(rc, err, "'ans' must be an integer")


def test_golden_from_jsonl_writes_one_file_per_case(tmp_path, capsys):
    case = json.load(open(os.path.join(EXAMPLE, "form.json")))
    lines = [
        case,
        {"words": case["words"][:3], "boxes": case["boxes"][:3]},
        {"question": "what is the total?", **case},
    ]
    (tmp_path / "cases.jsonl").write_text("\n".join(json.dumps(c) for c in lines) + "\n")
    rc, out, err = run(
        capsys, "golden", LILT_TINY, "--inputs", tmp_path / "cases.jsonl", "--out", tmp_path / "dir"
    )
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "dir")) == [f"case-{i:04d}.safetensors" for i in range(3)]
    assert "3/3" not in err  # stderr is not a terminal here: no progress bar (test_golden_scale shows one)
    assert "wrote 3, skipped 0" in out
    g1 = golden.read(tmp_path / "dir" / "case-0001.safetensors")
    assert (
        g1.inputs["input_ids"].shape[1]
        < golden.read(tmp_path / "dir" / "case-0000.safetensors").inputs["input_ids"].shape[1]
    )
    assert g1.manifest["inputs_source"]["line"] == 2
    rc, _, err = run(
        capsys,
        "golden",
        LILT_TINY,
        "--inputs",
        tmp_path / "cases.jsonl",
        "--out",
        tmp_path / "p" / "c{index:02d}.safetensors",
    )
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path / "p")) == ["c00.safetensors", "c01.safetensors", "c02.safetensors"]
    rc, _, err = run(
        capsys,
        "golden",
        LILT_TINY,
        "--inputs",
        tmp_path / "cases.jsonl",
        "--out",
        tmp_path / "one.safetensors",
    )
    assert_usage_error(rc, err, "{index}")


# ------------------------------------------------------------------------------- inspect, models, version
def test_inspect_checkpoint_and_golden(tmp_path, capsys):
    rc, out, _ = run(capsys, "inspect", LILT_TINY)
    assert rc == 0
    n = refimpl.from_pretrained(LILT_TINY).num_parameters()
    assert (
        "LiltForTokenClassification" in out
        and f"{n:,}" in out
        and "F32" in out
        and "model.safetensors" in out
    )
    rc, out, _ = run(capsys, "inspect", LXMERT_TINY)
    assert rc == 0 and "LxmertForPreTraining" in out and "visual_feat_dim" in out
    run(
        capsys,
        "golden",
        LXMERT_TINY,
        "--inputs",
        os.path.join(EXAMPLE, "question.json"),
        "--out",
        tmp_path / "q.safetensors",
    )
    rc, out, _ = run(capsys, "inspect", tmp_path / "q.safetensors")
    assert rc == 0
    assert (
        "refimpl-golden" in out
        and "sha256" in out
        and "lxmert.encoder.x_layers.0.visual_attention.att.attention_probs@lang" in out
    )


def test_models_and_version(capsys):
    rc, out, _ = run(capsys, "models")
    assert rc == 0 and all(a in out for a in refimpl.SUPPORTED_ARCHITECTURES)
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and refimpl.__version__ in capsys.readouterr().out


# ------------------------------------------------------------------------------- convert
def test_convert_bin_without_torch_matches_the_oracle(tmp_path, capsys):
    cfg = LiltConfig(
        vocab_size=40,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=20,
        max_2d_position_embeddings=64,
        channel_shrink_ratio=2,
        num_labels=3,
    )
    oracle = build(LiltForTokenClassification, cfg, seed=7)
    save(oracle, tmp_path / "bin", safe=False)
    (tmp_path / "st").mkdir()
    rc, out, err = run(
        capsys, "convert", tmp_path / "bin" / "pytorch_model.bin", tmp_path / "st" / "model.safetensors"
    )
    assert rc == 0, err
    (tmp_path / "st" / "config.json").write_text((tmp_path / "bin" / "config.json").read_text())
    ids = np.array([[0, 5, 6, 7, 2]])
    bbox = np.array([[[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [0, 0, 0, 0]]])
    with torch.no_grad():
        want = to_numpy(oracle(input_ids=torch.tensor(ids), bbox=torch.tensor(bbox)).logits)
    got = refimpl.from_pretrained(tmp_path / "st", dtype="float64")(input_ids=ids, bbox=bbox).logits
    assert np.abs(got - want).max() <= 1e-10
    rc, _, err = run(capsys, "convert", tmp_path / "nope.bin", tmp_path / "x.safetensors")
    assert_usage_error(rc, err, "not found")


# ------------------------------------------------------------------------------- demo
def test_demo_runs_in_seconds(tmp_path, capsys):
    t0 = time.perf_counter()
    rc, out, err = run(capsys, "demo", "--out", tmp_path / "demo")
    elapsed = time.perf_counter() - t0
    assert rc == 0, err
    assert elapsed < 10
    assert sorted(os.listdir(tmp_path / "demo")) == [
        "lilt-form-grads.safetensors",
        "lilt-form.safetensors",
        "lilt-forms-padded.safetensors",
        "lxmert-question.safetensors",
    ]
    assert "top attention" in out and "layer 1" in out and "cross layer 0" in out
    g = golden.read(tmp_path / "demo" / "lxmert-question.safetensors")
    assert g.manifest["architecture"] == "LxmertForPreTraining" and g.manifest["dtype"] == "float64"
    g = golden.read(tmp_path / "demo" / "lilt-form-grads.safetensors")  # the gradient golden file
    assert g.manifest["gradients"]["L"] == "loss" and "lilt.embeddings.word_embeddings.weight" in g.gradients
    rc, out, err = run(capsys, "inspect", tmp_path / "demo" / "lilt-form-grads.safetensors")
    assert rc == 0 and "gradients   163: 80 parameters" in out and "\ngradients:\n" in out


# ------------------------------------------------------------------------------- error paths
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["golden", "NOPE_DIR", "--inputs", "x.npz", "--out", "o.safetensors"], "not found"),
        (["golden", LILT_TINY, "--inputs", "NOPE.npz", "--out", "o.safetensors"], "not found"),
        (
            [
                "golden",
                LILT_TINY,
                "--inputs",
                os.path.join(EXAMPLE, "form.json"),
                "--out",
                "o.safetensors",
                "--dtype",
                "float16",
            ],
            "--dtype",
        ),
        (
            [
                "golden",
                LILT_TINY,
                "--inputs",
                os.path.join(EXAMPLE, "form.json"),
                "--out",
                "o.safetensors",
                "--device",
                "tpu",
            ],
            "--device",
        ),
        (["golden", LILT_TINY, "--out", "o.safetensors"], "--inputs"),
        (["golden", LILT_TINY, "--inputs", "x.npz", "--out", "o", "--bogus"], "--bogus"),
        (["compare", "NOPE.safetensors", "NOPE2.safetensors"], "not found"),
        (["compare", "a"], "candidate"),
        (["compare", "a", "b", "--atol", "tiny"], "--atol"),
        (["inspect", "NOPE"], "not found"),
        (["frobnicate"], "frobnicate"),
        (["demo", "--dtype", "int8"], "--dtype"),
    ],
)
def test_usage_errors_are_one_line_exit_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors exit through our one-line parser
        rc = e.code
    err = capsys.readouterr().err
    assert_usage_error(rc, err, needle)


def test_unreadable_checkpoint_and_inputs(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    form = os.path.join(EXAMPLE, "form.json")
    rc, _, err = run(capsys, "golden", bad, "--inputs", form, "--out", tmp_path / "o.safetensors")
    assert_usage_error(rc, err, "not valid JSON")

    (bad / "config.json").write_text((open(os.path.join(LILT_TINY, "config.json"))).read())
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken header!!}")
    rc, _, err = run(capsys, "golden", bad, "--inputs", form, "--out", tmp_path / "o.safetensors")
    assert_usage_error(rc, err)
    rc, _, err = run(capsys, "inspect", bad)
    assert_usage_error(rc, err)

    (tmp_path / "in.npz").write_bytes(b"not a zip")
    rc, _, err = run(
        capsys, "golden", LILT_TINY, "--inputs", tmp_path / "in.npz", "--out", tmp_path / "o.safetensors"
    )
    assert_usage_error(rc, err, "npz")
    (tmp_path / "in.txt").write_text("x")
    rc, _, err = run(
        capsys, "golden", LILT_TINY, "--inputs", tmp_path / "in.txt", "--out", tmp_path / "o.safetensors"
    )
    assert_usage_error(rc, err, ".npz, .json or .jsonl")
    (tmp_path / "w.json").write_text(json.dumps({"words": ["a", "b"], "boxes": [[0, 0, 1, 1]]}))
    rc, _, err = run(
        capsys, "golden", LILT_TINY, "--inputs", tmp_path / "w.json", "--out", tmp_path / "o.safetensors"
    )
    assert_usage_error(rc, err, "2 words but 1 boxes")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    rc, _, err = run(capsys, "compare", tmp_path / "junk.safetensors", tmp_path / "junk.safetensors")
    assert_usage_error(rc, err, "safetensors")


def test_console_entry_point_in_a_real_process(tmp_path):
    """What a user's shell sees: exit codes and no traceback, through `python -m refimpl.cli`."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "refimpl.cli", "inspect", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    p = subprocess.run(
        [sys.executable, "-m", "refimpl.cli", "demo", "-q", "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "d" / "lilt-form.safetensors").exists()


# ------------------------------------------------------------------------------- bundled data
def test_bundled_checkpoints_and_tokenizers_equal_the_oracle(tmp_path, capsys):
    from transformers import AutoTokenizer, LxmertForPreTraining

    rc, _, err = run(capsys, "demo", "-q", "--out", tmp_path)
    assert rc == 0, err
    form = json.load(open(os.path.join(EXAMPLE, "form.json")))
    g = golden.read(tmp_path / "lilt-form.safetensors")
    hf_tok = AutoTokenizer.from_pretrained(LILT_TINY)
    enc = hf_tok(form["words"], boxes=form["boxes"], word_labels=form["labels"], return_tensors="np")
    for k in ("input_ids", "bbox", "attention_mask", "labels"):
        np.testing.assert_array_equal(g.inputs[k], enc[k], err_msg=k)
    hf = LiltForTokenClassification.from_pretrained(LILT_TINY, dtype=torch.float64).eval()
    with torch.no_grad():
        want = hf(**{k: torch.tensor(g.inputs[k]) for k in ("input_ids", "bbox", "attention_mask", "labels")})
    assert np.abs(g.outputs["logits"] - to_numpy(want.logits)).max() <= 1e-10
    assert abs(float(g.outputs["loss"]) - float(want.loss)) <= 1e-10

    q = golden.read(tmp_path / "lxmert-question.safetensors")
    question = json.load(open(os.path.join(EXAMPLE, "question.json")))["question"]
    hf_ids = AutoTokenizer.from_pretrained(LXMERT_TINY)(question, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(q.inputs["input_ids"], hf_ids)
    hf = LxmertForPreTraining.from_pretrained(LXMERT_TINY, dtype=torch.float64).eval()
    with torch.no_grad():
        want = hf(**{k: torch.tensor(v) for k, v in q.inputs.items()})
    for field in ("prediction_logits", "cross_relationship_score", "question_answering_score"):
        assert np.abs(q.outputs[field] - to_numpy(getattr(want, field))).max() <= 1e-10, field


def test_bundled_data_is_what_make_bundled_writes(tmp_path):
    """refimpl/data is generated, never hand-edited: a fresh build gives the same weights, configs,
    vocabularies and example. Weights, configs, vocab.txt and the example are compared byte for
    byte; vocab.json / merges.txt by content (their serialisation belongs to the installed
    tokenizers); tokenizer.json / tokenizer_config.json are left out for the same reason."""
    import filecmp
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_bundled", os.path.join(ROOT, "scripts", "make_bundled.py")
    )
    mb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mb)
    mb.build(str(tmp_path))
    data = bundled_path()
    checked = 0
    for sub in ("lilt-tiny", "lxmert-tiny", "example"):
        assert sorted(os.listdir(tmp_path / sub)) == sorted(os.listdir(os.path.join(data, sub))), sub
        for name in os.listdir(tmp_path / sub):
            fresh, bundled = tmp_path / sub / name, os.path.join(data, sub, name)
            if name in ("tokenizer.json", "tokenizer_config.json"):
                continue
            if name == "vocab.json":
                assert json.loads(fresh.read_text()) == json.load(open(bundled)), f"{sub}/{name}"
            elif name == "merges.txt":
                merges = [ln for ln in fresh.read_text().splitlines() if ln and not ln.startswith("#")]
                assert merges == [
                    ln for ln in open(bundled).read().splitlines() if ln and not ln.startswith("#")
                ]
            else:
                assert filecmp.cmp(fresh, bundled, shallow=False), f"{sub}/{name}"
            checked += 1
    assert checked == 14  # incl. example/forms.json (the padded batch)
    sizes = [
        os.path.getsize(os.path.join(data, s, "model.safetensors")) for s in ("lilt-tiny", "lxmert-tiny")
    ]
    assert max(sizes) < 2_000_000
