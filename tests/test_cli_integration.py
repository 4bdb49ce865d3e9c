"""Command-line items of issues 21 and 24 that span commands:

* ``--strict`` on ``golden`` and ``demo``, ``--strict-checkpoint`` on ``compare --checkpoint``:
  ``from_pretrained(strict=True)``, refusing weights the model does not use;
* answers by name in ``demo`` and ``inspect`` where the answer head's width is a known
  vocabulary's (checked against transformers' own scores and the bundled VQA file), indices
  otherwise, and the plain statement that the bundled weights are random;
* the golden manifest's ``mode`` (``refimpl.switch.mode()``);
* ``compare --report`` through the project's one atomic writer and destination check.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
from _oracle import build, save, tiny_lilt_config, tiny_lxmert_config
from safetensors.numpy import load_file, save_file
from transformers import LiltForTokenClassification, LxmertForQuestionAnswering

import refimpl
import refimpl.files.writing
from refimpl import golden
from refimpl.cli import demo as demo_cli
from refimpl.cli import main
from refimpl.data import path as bundled_path
from refimpl.files import CheckpointError

STRICT_SAYS = "refuse weights the model does not use"


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def lilt_inputs(s: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 60, (1, s))
    x0, y0 = rng.integers(0, 60, (1, s)), rng.integers(0, 60, (1, s))
    return {"input_ids": ids, "bbox": np.stack([x0, y0, x0 + 5, y0 + 5], -1), "attention_mask": np.ones((1, s), np.int64)}  # fmt: skip


@pytest.fixture(scope="module")
def leftover(tmp_path_factory):
    """A LiltForTokenClassification checkpoint that also carries a text model's ``lm_head.*``
    (what the original LiLT recipe keeps): transformers ignores it, refimpl too unless strict."""
    d = tmp_path_factory.mktemp("leftover")
    ckpt = save(build(LiltForTokenClassification, tiny_lilt_config(), seed=4), d / "ckpt")
    sd = load_file(os.path.join(ckpt, "model.safetensors"))
    sd["lm_head.bias"] = np.zeros(60, np.float64)
    sd["lm_head.dense.weight"] = np.zeros((48, 48), np.float64)
    save_file(sd, os.path.join(ckpt, "model.safetensors"))
    np.savez(d / "inputs.npz", **lilt_inputs())
    return d, ckpt


# ------------------------------------------------------------------------------- --strict
def test_golden_strict_refuses_the_unused_weights_naming_them(leftover, capsys):
    d, ckpt = leftover
    with pytest.warns(refimpl.config.CheckpointWarning, match="does not use 2 checkpoint weights"):
        rc, _, err = run(
            capsys, "golden", ckpt, "--inputs", d / "inputs.npz", "--out", d / "loose.safetensors"
        )
    assert rc == 0, err
    rc, _, err = run(
        capsys, "golden", ckpt, "--inputs", d / "inputs.npz", "--out", d / "strict.safetensors", "--strict"
    )
    assert rc == 2 and err.count("\n") == 1
    assert "does not fit the model" in err and "lm_head.bias" in err and "lm_head.dense.weight" in err
    assert not (d / "strict.safetensors").exists()


def test_compare_strict_checkpoint_refuses_them_in_isolation(leftover, capsys):
    d, ckpt = leftover
    with pytest.warns(refimpl.config.CheckpointWarning):
        g = golden.write_case(
            d / "case.safetensors",
            refimpl.from_pretrained(ckpt, dtype="float64"),
            lilt_inputs(),
            checkpoint=ckpt,
        )
        rc, out, err = run(capsys, "compare", g.path, g.path, "--checkpoint", ckpt)
    assert rc == 0 and out.splitlines()[-1].startswith("ok: "), err
    rc, out, err = run(capsys, "compare", g.path, g.path, "--checkpoint", ckpt, "--strict-checkpoint")
    assert rc == 2 and err.count("\n") == 1 and "lm_head.bias" in err and "does not fit the model" in err
    rc, _, err = run(capsys, "compare", g.path, g.path, "--strict-checkpoint")
    assert rc == 2 and "give --checkpoint DIR too" in err


def test_demo_strict_loads_every_bundled_checkpoint_strictly(tmp_path, capsys, monkeypatch):
    seen = []

    def loading(path, **kw):
        seen.append((os.path.basename(path), kw.get("strict")))
        return refimpl.from_pretrained(path, **kw)

    monkeypatch.setattr(demo_cli, "from_pretrained", loading)
    rc, _, err = run(capsys, "demo", "--out", tmp_path, "-q", "--strict")
    assert rc == 0, err
    assert seen == [("lilt-tiny", True), ("lilt-tiny", True), ("lxmert-tiny", True), ("lilt-tiny", True)]
    seen.clear()
    assert run(capsys, "demo", "--out", tmp_path, "-q")[0] == 0
    assert {s for _, s in seen} == {False}


@pytest.mark.parametrize(
    ("command", "flag"), [("golden", "--strict"), ("demo", "--strict"), ("compare", "--strict-checkpoint")]
)
def test_help_says_what_strict_refuses(capsys, command, flag):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert flag in text and STRICT_SAYS in text and "lm_head" in text


# ------------------------------------------------------------------------------- answers by name
@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    """A tiny LxmertForQuestionAnswering whose answer head is VQA-sized (3129), with the
    bundled lxmert-tiny tokenizer, and a golden file of one question."""
    d = tmp_path_factory.mktemp("vqa")
    vocab = json.load(open(bundled_path("lxmert-tiny", "config.json"), encoding="utf-8"))["vocab_size"]
    oracle = build(
        LxmertForQuestionAnswering, tiny_lxmert_config(vocab_size=vocab, num_qa_labels=3129), seed=8
    )
    ckpt = save(oracle, d / "ckpt")
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if os.path.exists(bundled_path("lxmert-tiny", f)):
            shutil.copy(bundled_path("lxmert-tiny", f), os.path.join(ckpt, f))
    rng = np.random.default_rng(2)
    np.save(d / "feats.npy", rng.normal(size=(4, 12)))
    np.save(d / "boxes.npy", rng.uniform(size=(4, 4)))
    (d / "q.json").write_text(
        json.dumps({"question": "what is it?", "features": "feats.npy", "boxes": "boxes.npy"})
    )
    assert main(["golden", ckpt, "--inputs", str(d / "q.json"), "--out", str(d / "g.safetensors"), "-q"]) == 0
    return oracle, ckpt, d / "g.safetensors"


def vqa_answers() -> list[str]:
    """The bundled VQA answer list, read here as a plain JSON list (label i is element i)."""
    return json.load(open(bundled_path("lxmert-vocab", "vqa_trainval_label2ans.json"), encoding="utf-8"))


def test_inspect_names_the_top_answers_of_a_vqa_sized_head(vqa, capsys):
    oracle, _, path = vqa
    g = golden.read(path)
    with torch.no_grad():
        scores = oracle(
            **{k: torch.from_numpy(np.asarray(v)) for k, v in g.inputs.items()}
        ).question_answering_score
    top = torch.argsort(scores[0], descending=True, stable=True)[:3].tolist()
    words = vqa_answers()
    rc, out, _ = run(capsys, "inspect", path)
    assert rc == 0
    (line,) = [ln for ln in out.splitlines() if ln.startswith("answers ")]
    want = ", ".join(f"{words[i]!r} {float(scores[0, i]):.3f}" for i in top)
    assert line == f"answers     top answers (VQA vocabulary, 3129): {want}"
    assert "random" not in out  # not the bundled weights


def test_inspect_of_the_checkpoint_says_which_vocabulary_its_head_decodes(vqa, capsys):
    _, ckpt, _ = vqa
    rc, out, _ = run(capsys, "inspect", ckpt)
    assert rc == 0
    assert "answers     3129 labels: the VQA vocabulary (refimpl.lxmert.vocabulary('vqa'))" in out
    assert "random" not in out


def test_the_bundled_random_weights_are_said_plainly_and_their_head_has_no_vocabulary(tmp_path, capsys):
    rc, out, _ = run(capsys, "demo", "--out", tmp_path)
    assert rc == 0
    assert "note: the bundled tiny checkpoints' weights are random" in out
    g = golden.read(tmp_path / "lxmert-question.safetensors")
    scores = np.asarray(g.tensors["outputs.question_answering_score"])[0]
    top = np.argsort(-scores, kind="stable")[:3]
    want = ", ".join(f"{int(i)} ({scores[i]:.3f})" for i in top)
    assert (
        f"top answer indices (no known vocabulary for a head 10 wide): {want} (random weights, meaningless)"
        in out
    )
    rc, out, _ = run(capsys, "inspect", tmp_path / "lxmert-question.safetensors")
    assert "note        the bundled tiny checkpoints' weights are random" in out
    assert f"answers     top answer indices (no known vocabulary for a head 10 wide): {want}" in out
    rc, out, _ = run(capsys, "inspect", bundled_path("lxmert-tiny"))
    assert "10 labels: no known vocabulary for a head 10 wide" in out and "weights are random" in out


# ------------------------------------------------------------------------------- the manifest's mode
def test_the_golden_manifest_records_the_mode(tmp_path):
    model = refimpl.from_pretrained(bundled_path("lilt-tiny"), dtype="float64")
    inputs = {k: v[:, :7] for k, v in lilt_inputs().items()}
    inputs["input_ids"] = inputs["input_ids"] % 500
    with refimpl.reference():
        ref = golden.write_case(tmp_path / "ref.safetensors", model, inputs)
    fast = golden.write_case(tmp_path / "fast.safetensors", model, inputs)
    assert golden.read(ref.path).manifest["mode"] == "reference"
    assert golden.read(fast.path).manifest["mode"] == refimpl.switch.mode() == "fast"
    # the same numbers either way here (float64): the files differ in their mode only
    np.testing.assert_allclose(
        ref.tensors["outputs.logits"], fast.tensors["outputs.logits"], rtol=0, atol=1e-12
    )
    # optional for files written before it was recorded; a value it cannot hold is refused
    m = dict(golden.read(ref.path).manifest)
    del m["mode"]
    old = golden.write(tmp_path / "old.safetensors", dict(ref.tensors), m)
    assert "mode" not in golden.read(old).manifest
    with pytest.raises(CheckpointError, match="golden manifest field mode must be"):
        golden.write(tmp_path / "bad.safetensors", dict(ref.tensors), {**m, "mode": "turbo"})
        golden.read(tmp_path / "bad.safetensors")


# ------------------------------------------------------------------------------- compare --report
@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A golden file of the bundled LiLT (a compare of it with itself is ok)."""
    d = tmp_path_factory.mktemp("report")
    assert main(["demo", "--out", str(d), "-q"]) == 0
    return d / "lilt-form.safetensors"


def test_report_never_overwrites_an_input_or_a_foreign_file_without_force(case, tmp_path, capsys):
    cand = tmp_path / "cand.safetensors"
    shutil.copy(case, cand)
    before = case.read_bytes(), cand.read_bytes()
    for dest in (case, cand):
        rc, out, err = run(capsys, "compare", case, cand, "--report", dest, "--force")
        assert rc == 2 and out == "" and "is an input of this command" in err  # refused before any work
    assert (case.read_bytes(), cand.read_bytes()) == before
    notes = tmp_path / "notes.html"
    notes.write_text("my notes")
    rc, out, err = run(capsys, "compare", case, cand, "--report", notes)
    assert rc == 2 and out == "" and "is not a report page refimpl wrote" in err and "--force" in err
    assert notes.read_text() == "my notes"
    rc, _, err = run(capsys, "compare", case, cand, "--report", notes, "--force")
    assert rc == 0, err
    assert notes.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    # its own report page is replaced without --force; no temp file is left behind
    assert run(capsys, "compare", case, cand, "--report", notes)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["cand.safetensors", "notes.html"]
    os.mkfifo(tmp_path / "fifo")
    rc, _, err = run(capsys, "compare", case, cand, "--report", tmp_path / "fifo", "--force")
    assert rc == 2 and "FIFO" in err


def test_report_is_written_atomically(case, tmp_path, capsys, monkeypatch):
    """A full disk while the page is written: the old page keeps its bytes, the error names it,
    no temp file is left."""
    page = tmp_path / "report.html"
    assert run(capsys, "compare", case, case, "--report", page)[0] == 0
    old = page.read_bytes()

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(refimpl.files.writing, "_write", full)
    rc, _, err = run(capsys, "compare", case, case, "--report", page, "--atol", "1")
    assert rc == 2 and f"no space left on device while writing {page}" in err
    assert page.read_bytes() == old and os.listdir(tmp_path) == ["report.html"]
