"""Making golden files as the porting guide says: every bundled example case runs through
``refimpl golden --inputs``; LXMERT's ``ans`` goes only where the architecture takes it; a
checkpoint without a tokenizer gets told how to give it one."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from _oracle import build, save, tiny_lxmert_config
from transformers import LxmertForPreTraining, LxmertForQuestionAnswering, LxmertModel

from refimpl import golden
from refimpl.cli import main
from refimpl.data import path as bundled_path

EXAMPLES = sorted(f for f in os.listdir(bundled_path("example")) if f.endswith(".json"))


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_bundled_example_runs_through_golden_inputs(tmp_path, capsys, example):
    case = json.load(open(bundled_path("example", example), encoding="utf-8"))
    ckpt = bundled_path("lxmert-tiny" if "features" in case else "lilt-tiny")
    rc, out, err = run(
        capsys,
        "golden",
        ckpt,
        "--inputs",
        bundled_path("example", example),
        "--out",
        tmp_path / "g.safetensors",
    )
    assert rc == 0, err
    g = golden.read(tmp_path / "g.safetensors")
    if "pages" in case:  # a padded batch: one row per page, the shorter one padded
        mask = g.inputs["attention_mask"]
        assert mask.shape[0] == len(case["pages"]) and (mask == 0).any()
        assert any(e["masks"] for e in g.manifest["tensors"])


def test_the_example_schema_list_is_the_documented_one():
    assert set(EXAMPLES) == {"form.json", "forms.json", "question.json"}


def _lxmert_ckpt(cls, d):
    """A random ``cls`` checkpoint that shares the bundled lxmert-tiny's tokenizer (and vocabulary size)."""
    vocab = json.load(open(os.path.join(bundled_path("lxmert-tiny"), "config.json"), encoding="utf-8"))[
        "vocab_size"
    ]
    ckpt = save(build(cls, tiny_lxmert_config(vocab_size=vocab), seed=3), d / cls.__name__)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        src = os.path.join(bundled_path("lxmert-tiny"), f)
        if os.path.exists(src):
            open(os.path.join(ckpt, f), "wb").write(open(src, "rb").read())
    return ckpt


def _question(d, **extra):
    np.save(d / "feats.npy", np.random.default_rng(0).normal(size=(4, 12)))
    np.save(d / "boxes.npy", np.random.default_rng(1).uniform(size=(4, 4)))
    (d / "q.json").write_text(
        json.dumps({"question": "what is it?", "features": "feats.npy", "boxes": "boxes.npy", **extra})
    )
    return d / "q.json"


def test_ans_goes_where_the_architecture_takes_it(tmp_path, capsys):
    q = _question(tmp_path, ans=2)
    qa = _lxmert_ckpt(LxmertForQuestionAnswering, tmp_path)
    rc, _, err = run(capsys, "golden", qa, "--inputs", q, "--out", tmp_path / "qa.safetensors")
    assert rc == 0, err
    g = golden.read(tmp_path / "qa.safetensors")
    assert g.inputs["labels"].tolist() == [2] and "ans" not in g.inputs and "outputs.loss" in g.tensors
    pt = _lxmert_ckpt(LxmertForPreTraining, tmp_path)
    assert run(capsys, "golden", pt, "--inputs", q, "--out", tmp_path / "pt.safetensors")[0] == 0
    assert golden.read(tmp_path / "pt.safetensors").inputs["ans"].tolist() == [2]
    base = _lxmert_ckpt(LxmertModel, tmp_path)
    rc, _, err = run(capsys, "golden", base, "--inputs", q, "--out", tmp_path / "b.safetensors")
    assert rc == 2 and "'ans' is a target of LxmertForPreTraining or LxmertForQuestionAnswering" in err
    assert "this checkpoint is LxmertModel" in err


def test_a_checkpoint_without_a_tokenizer_is_told_how_to_get_one(tmp_path, capsys):
    ckpt = save(build(LxmertModel, tiny_lxmert_config(), seed=3), tmp_path / "fresh")
    rc, _, err = run(
        capsys, "golden", ckpt, "--inputs", _question(tmp_path), "--out", tmp_path / "g.safetensors"
    )
    assert rc == 2 and err.count("\n") == 1
    assert "tokenizer.save_pretrained(DIR)" in err and "--inputs as an .npz" in err


def test_the_format_page_shows_the_schema_golden_help_prints():
    from refimpl.cli.cases import CASE_SCHEMA

    text = open(
        os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "golden-format.md"), encoding="utf-8"
    ).read()
    block = text[text.index("```text\n.json   one case") + 8 :]
    block = block[: block.index("```")]

    def squash(t):
        return " ".join(t.split())

    assert squash(block) in squash(CASE_SCHEMA)
