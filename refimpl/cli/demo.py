"""``refimpl demo``: both bundled tiny models on the bundled examples, a step-through summary
and their golden files."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import data, from_pretrained, golden
from ..compare import compare
from ..files import check_destination
from .answers import RANDOM_WEIGHTS, answer_lines
from .cases import _batched, _tokenizer, encode_case
from .common import CliError

__all__ = ["DEMO_FILES", "run_demo", "cmd_demo"]


def _id_to_token(tok: Any, i: int) -> str:
    for getter in (
        getattr(tok, "id_to_token", None),
        getattr(getattr(tok, "backend", None), "id_to_token", None),
    ):
        if getter is not None:
            t = getter(int(i))
            if t is not None:
                return t.replace("\u0120", "_")
    return str(int(i))


def _top_attention(probs: np.ndarray, q_names: list[str], k_names: list[str], q_keep, k_keep) -> str:
    """'a' -> 'b' (p): the strongest off-diagonal entry of the head-mean probabilities [q, k]."""
    a = probs.mean(axis=0).copy()  # [heads, q, k] -> [q, k]
    a[~np.asarray(q_keep, bool), :] = -1.0
    a[:, ~np.asarray(k_keep, bool)] = -1.0
    if a.shape[0] == a.shape[1] and q_names is k_names:
        np.fill_diagonal(a, -1.0)
    q, k = np.unravel_index(int(np.argmax(a)), a.shape)
    return f"{q_names[q]!r} -> {k_names[k]!r} ({a[q, k]:.2f})"


def _stat_row(label: str, x: np.ndarray, keep: np.ndarray) -> str:
    rows = x[0][np.asarray(keep, bool)]  # [kept tokens, hidden]
    shape = "x".join(map(str, x.shape))
    return f"  {label:<22} {shape:<12} mean {rows.mean():+.4f}  norm {np.linalg.norm(rows):8.4f}"


#: the golden files ``refimpl demo`` writes into ``--out``.
DEMO_FILES = (
    "lilt-form.safetensors",
    "lilt-forms-padded.safetensors",
    "lxmert-question.safetensors",
    "lilt-form-grads.safetensors",
)


def _demo_case(
    kind: str,
    example: str,
    out_dir: str,
    dtype: str,
    description: str,
    force: bool = False,
    strict: bool = False,
    grads: bool = False,
):
    """Load the bundled ``<kind>-tiny`` model (``strict``: `refimpl.from_pretrained`'s), encode
    ``example/<example>`` with its tokenizer and write the golden file
    ``<kind>-<example stem>.safetensors`` (with ``grads``, ``<kind>-<example stem>-grads.safetensors``,
    holding the gradients too, as ``refimpl golden --grads`` writes them).

    Returns:
        ``(model, case, inputs, tokenizer, path, golden case)``.
    """
    ckpt, case_file = data.path(f"{kind}-tiny"), data.path("example", example)
    model = from_pretrained(ckpt, dtype=dtype, strict=strict)
    with open(case_file, encoding="utf-8") as f:
        case = json.load(f)
    inputs, tok = encode_case(case, ckpt, kind, os.path.dirname(case_file))
    stem = os.path.splitext(example)[0] + ("-grads" if grads else "")
    path = os.path.join(out_dir, f"{kind}-{stem}.safetensors")
    g = golden.write_case(
        path,
        model,
        inputs,
        checkpoint=ckpt,
        inputs_source={"kind": "json", "path": f"example/{example}", "description": description},
        force=force,
        grads=grads,
    )
    return model, case, inputs, tok, path, g


def _demo_lilt(
    out_dir: str, dtype: str, say: Callable[[str], None], force: bool = False, strict: bool = False
) -> str:
    model, case, inputs, tok, path, g = _demo_case(
        "lilt", "form.json", out_dir, dtype, "bundled example form page, lilt-tiny tokenizer", force, strict
    )
    t = g.tensors
    ids = inputs["input_ids"][0]
    keep = inputs["attention_mask"][0] != 0
    names = [_id_to_token(tok, i) for i in ids]
    say(f"== LiLT: {type(model).__name__} (bundled lilt-tiny, {dtype}) on example/form.json")
    say(f"   {len(case['words'])} words -> {len(ids)} tokens: {' '.join(names)}")
    n_layers = model.config.num_hidden_layers
    for i in range(n_layers + 1):
        label = "embeddings" if i == 0 else f"layer {i - 1}"
        line = _stat_row(label + " (text)", t[f"outputs.hidden_states.{i}"], keep)
        if i > 0:
            line += "  top attention " + _top_attention(
                t[f"outputs.attentions.{i - 1}"][0], names, names, keep, keep
            )
        say(line)
        if f"outputs.layout_hidden_states.{i}" in t:
            say(_stat_row(label + " (layout)", t[f"outputs.layout_hidden_states.{i}"], keep))
    if "outputs.logits" in t:
        id2label = model.config.id2label
        pred = t["outputs.logits"][0].argmax(-1)
        shown = [f"{names[j]}={id2label[int(pred[j])]}" for j in range(len(ids)) if keep[j]][1:9]
        say(f"   predictions (random weights, meaningless): {' '.join(shown)} ...")
    if "outputs.loss" in t:
        say(f"   loss {float(np.asarray(t['outputs.loss']).reshape(-1)[0]):.6f}")
    say(f"   wrote {path}: {len(t)} tensors ({len(g.intermediates)} intermediates)")
    return path


def _demo_padded(
    out_dir: str, dtype: str, say: Callable[[str], None], force: bool = False, strict: bool = False
) -> str:
    """LiLT on the bundled padded batch (``example/forms.json``: a form and a shorter receipt,
    tokenized together): the golden file carries mask specs, and comparing skips padded positions."""
    ckpt, case_file = data.path("lilt-tiny"), data.path("example", "forms.json")
    model = from_pretrained(ckpt, dtype=dtype, strict=strict)
    with open(case_file, encoding="utf-8") as f:
        pages = json.load(f)["pages"]
    tok = _tokenizer(ckpt, "lilt")
    enc = tok(
        [p["words"] for p in pages],
        boxes=[p["boxes"] for p in pages],
        word_labels=[p["labels"] for p in pages],
        padding=True,
        return_tensors="np",
    )
    inputs = _batched(enc)
    path = os.path.join(out_dir, "lilt-forms-padded.safetensors")
    g = golden.write_case(
        path,
        model,
        inputs,
        checkpoint=ckpt,
        inputs_source={
            "kind": "json",
            "path": "example/forms.json",
            "description": "bundled batch of two pages, the second padded; lilt-tiny tokenizer",
        },
        force=force,
    )
    real = inputs["attention_mask"].sum(axis=1).tolist()
    masked = sum(1 for e in g.manifest["tensors"] if e["masks"])
    say(
        f"== LiLT, padded batch (example/forms.json): rows of {real} real tokens, padded to {inputs['input_ids'].shape[1]}"
    )
    say(
        f"   {masked} of {len(g.tensors)} tensors carry mask specs: compare skips the padded rows (and the "
        f"padded query rows / key columns of attention)"
    )
    say(f"   wrote {path}")
    return path


def _demo_grads(
    out_dir: str, dtype: str, say: Callable[[str], None], force: bool = False, strict: bool = False
) -> str:
    """LiLT's token classifier on ``example/form.json`` with its labels, with gradients
    (``refimpl golden --grads``): ``L`` is the loss, and the file holds ``grad.<checkpoint
    key>`` for every weight and ``grad.<name>`` for every floating tensor."""
    *_, path, g = _demo_case(
        "lilt",
        "form.json",
        out_dir,
        dtype,
        "bundled example form page with its labels, lilt-tiny tokenizer",
        force,
        strict,
        grads=True,
    )
    n_par = len(g.manifest["gradients"]["parameters"])
    key = "lilt.encoder.layer.0.attention.self.query.weight"
    gq = g.tensors[f"grad.{key}"]
    say(
        f"== LiLT gradients (example/form.json with labels): L = the loss {float(g.tensors['outputs.loss']):.6f}"
    )
    say(
        f"   {n_par} parameter gradients under checkpoint keys (grad.{key}: {'x'.join(map(str, gq.shape))}, "
        f"norm {np.linalg.norm(gq):.4f}) and {len(g.gradients) - n_par} tensor gradients (grad.<name>)"
    )
    say(f"   wrote {path}")
    return path


def _stream_rows(t, stream: str, n_own: int, names, other, keep, other_keep, say) -> None:
    """One line per hidden state of an LXMERT stream (``"language"`` or ``"vision"``): its own
    ``n_own`` layers, then the cross layers, each with its strongest (cross-)attention."""
    tag, cross = {
        "language": ("lang", "cross_encoder_attentions"),
        "vision": ("vision", "cross_encoder_vision_attentions"),
    }[stream]
    keys = sorted(
        (k for k in t if k.startswith(f"outputs.{stream}_hidden_states.")),
        key=lambda k: int(k.rsplit(".", 1)[1]),
    )
    for i, k in enumerate(keys):
        stage = f"{stream} layer {i}" if i < n_own else f"cross layer {i - n_own} ({tag})"
        line = _stat_row(stage, t[k], keep)
        if i < n_own and f"outputs.{stream}_attentions.{i}" in t:
            line += "  top attention " + _top_attention(
                t[f"outputs.{stream}_attentions.{i}"][0], names, names, keep, keep
            )
        elif f"outputs.{cross}.{i - n_own}" in t:
            a = t[f"outputs.{cross}.{i - n_own}"][0]
            line += "  top cross-attention " + _top_attention(a, names, other, keep, other_keep)
        say(line)


def _demo_lxmert(
    out_dir: str, dtype: str, say: Callable[[str], None], force: bool = False, strict: bool = False
) -> str:
    model, case, inputs, tok, path, g = _demo_case(
        "lxmert",
        "question.json",
        out_dir,
        dtype,
        "bundled example question + region features, lxmert-tiny tokenizer",
        force,
        strict,
    )
    t = g.tensors
    ids = inputs["input_ids"][0]
    words = [_id_to_token(tok, i) for i in ids]
    n_reg = inputs["visual_feats"].shape[1]
    regions = [f"region{j}" for j in range(n_reg)]
    lkeep, vkeep = inputs["attention_mask"][0] != 0, np.ones(n_reg, bool)
    cfg = model.config
    say(f"== LXMERT: {type(model).__name__} (bundled lxmert-tiny, {dtype}) on example/question.json")
    say(
        f"   question -> {len(ids)} tokens: {' '.join(words)}; {n_reg} regions x {inputs['visual_feats'].shape[2]} features"
    )
    _stream_rows(t, "language", cfg.l_layers, words, regions, lkeep, vkeep, say)
    _stream_rows(t, "vision", cfg.r_layers, regions, words, vkeep, lkeep, say)
    if "outputs.cross_relationship_score" in t:
        say(f"   image-text match score {t['outputs.cross_relationship_score'][0].tolist()} (random weights)")
    if "outputs.question_answering_score" in t:
        for line in answer_lines(t["outputs.question_answering_score"]):
            say(f"   {line} (random weights, meaningless)")
    say(f"   wrote {path}: {len(t)} tensors ({len(g.intermediates)} intermediates)")
    return path


def run_demo(
    out_dir: str = "refimpl-demo",
    dtype: str = "float64",
    quiet: bool = False,
    force: bool = False,
    strict: bool = False,
) -> int:
    """Run both bundled models on the bundled example, print a step-through summary and write
    the golden files ``lilt-form.safetensors``, ``lilt-forms-padded.safetensors`` (a padded
    batch of two pages), ``lxmert-question.safetensors`` and ``lilt-form-grads.safetensors``
    (the form with its labels and the gradients of the loss: ``refimpl golden --grads``) to
    ``out_dir``.

    The bundled weights are random, and the summary says so; LXMERT's answers are named where
    the answer head's width is a known vocabulary's (`refimpl.cli.answers.answer_lines`: the
    bundled head is 10 wide, so its indices are shown). ``strict`` loads the checkpoints with
    ``from_pretrained(strict=True)``.

    Each destination is checked before any work (`refimpl.files.check_destination`): an
    existing file of those names is replaced only when it is a golden file or with ``force``.
    """
    t0 = time.perf_counter()
    say: Callable[[str], None] = (lambda s: None) if quiet else print
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise CliError(f"--out {out_dir}: is not a directory")
    for name in DEMO_FILES:
        check_destination(
            os.path.join(out_dir, name), force=force, ours=golden.is_golden_file, what="--out file",
            kind="a golden file refimpl wrote",
        )  # fmt: skip
    os.makedirs(out_dir, exist_ok=True)
    say(f"note: {RANDOM_WEIGHTS}; they show the shapes, the steps and the golden files")
    paths = [
        _demo_lilt(out_dir, dtype, say, force, strict),
        _demo_padded(out_dir, dtype, say, force, strict),
        _demo_lxmert(out_dir, dtype, say, force, strict),
        _demo_grads(out_dir, dtype, say, force, strict),
    ]
    for p in paths:  # the files read back and compare equal to themselves' reference layout
        if not compare(p, p).ok:
            raise CliError(f"{p} does not read back")
    say(
        f"done in {time.perf_counter() - t0:.2f}s. Next: refimpl inspect {paths[0]}  |  refimpl compare {paths[0]} YOUR_PORT.safetensors"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``refimpl demo``: `run_demo` with the command's options."""
    return run_demo(
        out_dir=args.out,
        dtype=args.dtype,
        quiet=args.quiet,
        force=args.force,
        strict=getattr(args, "strict", False),
    )
