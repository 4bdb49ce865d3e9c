"""Golden files and isolation for the original LiLT heads (issue 24: "golden works for both new
heads, and compare isolates their blocks").

The checkpoints are the tests' independent torch implementation of the original heads
(tests/_original_lilt.py, on transformers' LiltModel), saved as the original saves them, with
the bundled lilt-tiny tokenizer so that JSON cases run through ``refimpl golden --inputs``.
Expected values come from that torch implementation: logits, loss and predicted relations of
the golden file, and the module calls a forward hook on every one of its modules sees.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from _oracle import randomize_, tiny_lilt_config
from _original_lilt import RelationExtractor, TokenClassifier

import refimpl
from refimpl import golden
from refimpl.cli import main
from refimpl.config import CheckpointWarning
from refimpl.data import path as bundled_path

#: the checkpoints are the original's (model_type "liltrobertalike"): each load says so, as it should
pytestmark = pytest.mark.filterwarnings("ignore::refimpl.config.CheckpointWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = {
    "token": (TokenClassifier, "LiLTRobertaLikeForTokenClassification"),
    "relation": (RelationExtractor, "LiLTRobertaLikeForRelationExtraction"),
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)

#: a padded batch of two pages: the first with three entities (one gold relation), the
#: second with two (the original decodes its stand-in instead)
PAGES = [
    {
        "words": ["Name:", "Ada", "Date:", "today", "Total:", "12"],
        "boxes": [
            [10, 10, 60, 20],
            [70, 10, 120, 20],
            [10, 30, 60, 40],
            [70, 30, 120, 40],
            [10, 50, 60, 60],
            [70, 50, 90, 60],
        ],  # fmt: skip
        "labels": [3, 4, 3, 4, 1, 2],
        "entities": {"start": [1, 3, 5, 7], "end": [3, 5, 7, 9], "label": [1, 2, 1, 2]},
        "relations": {"head": [0, 1], "tail": [1, 3]},
    },
    {
        "words": ["Invoice", "number:", "7"],
        "boxes": [[10, 10, 60, 20], [70, 10, 120, 20], [130, 10, 140, 20]],
        "labels": [1, 3, 4],
        "entities": {"start": [1, 2], "end": [2, 4], "label": [1, 2]},
        "relations": {"head": [0], "tail": [1]},
    },
]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def config():
    """Tiny LiLT sizes with the bundled tokenizer's vocabulary and the 0-1000 box grid."""
    vocab = json.load(open(bundled_path("lilt-tiny", "config.json"), encoding="utf-8"))["vocab_size"]
    return tiny_lilt_config(vocab_size=vocab, max_position_embeddings=64, max_2d_position_embeddings=1024)


def make_checkpoint(head: str, out, seed: int = 7) -> tuple[torch.nn.Module, str]:
    """The torch reference head, randomized, saved as the original saves it (its keys,
    ``model_type: "liltrobertalike"``, its class name), with the bundled tokenizer files."""
    cls, arch = HEADS[head]
    torch.manual_seed(seed)
    theirs = cls(config())
    randomize_(theirs, seed=seed, std=0.08)
    theirs = theirs.to(torch.float64).eval()
    os.makedirs(out, exist_ok=True)
    d = config().to_dict()
    d.update(model_type="liltrobertalike", architectures=[arch])
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(d, f)
    torch.save(theirs.state_dict(), os.path.join(out, "pytorch_model.bin"))
    for name in TOKENIZER_FILES:
        src = bundled_path("lilt-tiny", name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(out, name))
    return theirs, str(out)


def case_file(path, head: str, pages=PAGES) -> str:
    """A JSON case: a padded batch of ``pages`` (relation extraction: with their entities)."""
    keep = ("words", "boxes", "labels") if head == "token" else ("words", "boxes", "entities", "relations")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"pages": [{k: p[k] for k in keep} for p in pages]}, f)
    return str(path)


def torch_inputs(g) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v)) for k, v in g.inputs.items() if k != "labels"}


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """Per head: (torch reference, checkpoint, golden file written by ``refimpl golden`` from a JSON case)."""
    d = tmp_path_factory.mktemp("original-golden")
    out = {}
    for head in HEADS:
        theirs, ckpt = make_checkpoint(head, d / head)
        g = d / f"{head}.safetensors"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CheckpointWarning)
            assert (
                main(["golden", ckpt, "--inputs", case_file(d / f"{head}.json", head), "--out", str(g), "-q"])
                == 0
            )
        out[head] = (theirs, ckpt, g)
    return out


# --------------------------------------------------------------------------------------------
# golden files of both heads from a JSON case
# --------------------------------------------------------------------------------------------


def test_token_classification_golden_from_a_json_case_equals_the_reference(heads):
    theirs, _, path = heads["token"]
    g = golden.read(path)
    assert g.manifest["architecture"] == "LiLTRobertaLikeForTokenClassification"
    assert g.manifest["inputs_json"] == {} and g.manifest["outputs_json"] == {}
    with torch.no_grad():
        loss, logits = theirs(labels=torch.from_numpy(g.inputs["labels"]), **torch_inputs(g))
    np.testing.assert_allclose(g.tensors["outputs.logits"], logits.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g.tensors["outputs.loss"], loss.numpy(), rtol=0, atol=1e-10)
    d = g.tensors["dropout"]  # the joined streams, [b, s, h + h / r]
    assert d.shape[-1] == 48 + 12 and "classifier" in g.tensors


def test_relation_extraction_golden_records_its_documents_and_equals_the_reference(heads):
    theirs, _, path = heads["relation"]
    g = golden.read(path)
    m = g.manifest
    assert m["architecture"] == "LiLTRobertaLikeForRelationExtraction"
    # the case's entities and relations, one dict per page, are in the manifest as given
    assert m["inputs_json"] == {
        "entities": [p["entities"] for p in PAGES],
        "relations": [p["relations"] for p in PAGES],
    }
    assert not any(n.startswith("inputs.entities") or n.startswith("outputs.pred") for n in g.tensors)
    with torch.no_grad():
        loss, logits, pred, used = theirs(
            entities=m["inputs_json"]["entities"], relations=m["inputs_json"]["relations"], **torch_inputs(g)
        )
    np.testing.assert_allclose(g.tensors["outputs.logits"], logits.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g.tensors["outputs.loss"], loss.numpy(), rtol=0, atol=1e-10)
    # the predicted relations in JSON (tuples become lists), and the stand-in of page 2
    as_json = json.loads(json.dumps(pred))
    assert m["outputs_json"]["pred_relations"] == as_json
    assert m["outputs_json"]["entities"] == used and used[1]["label"] == [0, 0]
    assert {f"extractor.rel_classifier@doc{b}" for b in (0, 1)} <= set(g.tensors)


def test_the_case_is_reproducible_from_the_file_alone(heads):
    """The tensors' inputs, the forward flags and inputs_json are the whole call: rerunning it
    gives the stored outputs, and the inputs hash covers the documents."""
    _, ckpt, path = heads["relation"]
    g = golden.read(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        model = refimpl.from_pretrained(ckpt, dtype="float64")
    kwargs = {**dict(g.inputs), **g.manifest["forward_kwargs"], **g.manifest["inputs_json"]}
    out = model(**kwargs)
    np.testing.assert_array_equal(out.logits, g.tensors["outputs.logits"])
    assert json.loads(json.dumps(out.pred_relations)) == g.manifest["outputs_json"]["pred_relations"]
    arrays, flags = golden.prepare_inputs(model, kwargs)
    assert golden.inputs_hash(arrays, flags) == g.manifest["inputs_sha256"]
    other = json.loads(json.dumps(g.manifest["inputs_json"]))
    other["relations"][0]["head"] = [1]
    assert golden.inputs_hash(arrays, {**flags, **other}) != g.manifest["inputs_sha256"]


def test_the_format_page_example_runs_through_golden(heads, tmp_path, capsys):
    """The JSON case on the original-LiLT page, run as written."""
    text = open(os.path.join(ROOT, "docs", "original-lilt.md"), encoding="utf-8").read()
    block = text[text.index("## Golden files and isolation") :]
    block = block[block.index("```json\n") + 8 :]
    (tmp_path / "case.json").write_text(block[: block.index("```")], encoding="utf-8")
    _, ckpt, _ = heads["relation"]
    rc, _, err = run(
        capsys, "golden", ckpt, "--inputs", tmp_path / "case.json", "--out", tmp_path / "g.safetensors"
    )
    assert rc == 0, err
    assert golden.read(tmp_path / "g.safetensors").manifest["inputs_json"]["relations"] == [
        {"head": [0], "tail": [1]}
    ]


@pytest.mark.parametrize(
    ("head", "change", "says"),
    [
        ("relation", lambda p: p.pop("entities"), "needs 'entities' on every page"),
        ("token", lambda p: p.update(entities=PAGES[0]["entities"]), "is an input of LiLTRobertaLikeForRelationExtraction"),
        ("relation", lambda p: p["entities"].update(start=[1, "x", 5, 7]), "case field 'entities' must be an object"),
        ("relation", lambda p: p["entities"].update(start=[1, 3, 5, 70]), "entities[0]['start'][3] = 70 is outside the allowed range"),
    ],
    ids=["missing", "wrong-head", "not-int", "out-of-range"],
)  # fmt: skip
def test_bad_documents_in_a_case_are_named(heads, tmp_path, capsys, head, change, says):
    pages = json.loads(json.dumps(PAGES))
    change(pages[0])
    keep = ("words", "boxes", "labels", "entities", "relations")
    (tmp_path / "c.json").write_text(
        json.dumps({"pages": [{k: p[k] for k in keep if k in p} for p in pages]})
    )
    _, ckpt, _ = heads[head]
    rc, _, err = run(
        capsys, "golden", ckpt, "--inputs", tmp_path / "c.json", "--out", tmp_path / "g.safetensors"
    )
    assert rc == 2 and says in err, err
    assert not (tmp_path / "g.safetensors").exists()


# --------------------------------------------------------------------------------------------
# the manifest's module calls: what hooks on every module of the reference see
# --------------------------------------------------------------------------------------------


def leaves(o):
    if isinstance(o, torch.Tensor):
        return [o]
    if isinstance(o, dict):
        o = list(o.values())
    return [t for x in o for t in leaves(x)] if isinstance(o, (tuple, list)) else []


def hook_calls(theirs, g, head):
    """``(module path, output tensors)`` per call of every module of the reference, in hook order."""
    seen = []
    hooks = [
        m.register_forward_hook(
            lambda m, a, o, n=n: seen.append((n, [t.detach().numpy() for t in leaves(o)]))
        )
        for n, m in theirs.named_modules()
    ]
    kw = dict(torch_inputs(g), output_attentions=True, output_hidden_states=True)
    docs = g.manifest["inputs_json"]
    try:
        with torch.no_grad():
            if head == "token":
                theirs(labels=torch.from_numpy(g.inputs["labels"]), **kw)
            else:
                theirs(entities=docs["entities"], relations=docs["relations"], **kw)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("head", list(HEADS))
def test_the_manifest_module_calls_are_what_hooks_on_the_reference_see(heads, head):
    """Every call of every module, in hook order, but the outputs the manifest leaves out by
    design: the root's (the reference's is a plain tuple; the original's record, for relation
    extraction, holds documents) and the relation decoder's own."""
    theirs, _, path = heads[head]
    g = golden.read(path)
    unlisted = ("", "extractor")
    seen = [(n, outs) for n, outs in hook_calls(theirs, g, head) if n not in unlisted]
    calls = [c for c in g.manifest["modules"] if c["module"] not in unlisted]
    assert [c["module"] for c in calls] == [n for n, _ in seen]
    for c, (name, outs) in zip(calls, seen, strict=True):
        if "ignored" in c:
            assert type(theirs.get_submodule(name)).__name__ == "Dropout"
            continue
        assert len(c["outputs"]) == len(outs), name
        for want, t in zip(c["outputs"], outs, strict=True):
            np.testing.assert_allclose(t, g.tensors[want], rtol=0, atol=1e-10, err_msg=f"{name} -> {want}")


# --------------------------------------------------------------------------------------------
# compare: the file against itself, and a port with a bug in the biaffine classifier
# --------------------------------------------------------------------------------------------

#: blocks: text and layout embeddings, two layers of two streams, then the head's
ENCODER_BLOCKS = 2 + 2 * 2


@pytest.mark.parametrize(
    ("head", "blocks"), [("token", ENCODER_BLOCKS + 2), ("relation", ENCODER_BLOCKS + 1 + 2 * 5)]
)
def test_a_golden_file_of_each_head_compared_with_itself_is_ok(heads, capsys, head, blocks):
    _, ckpt, path = heads[head]
    rc, out, err = run(capsys, "compare", path, path, "--checkpoint", ckpt)
    assert rc == 0, out + err
    assert out.splitlines()[-1].startswith(f"ok: {blocks} blocks checked locally")
    rows = [ln.split()[0] for ln in out.splitlines() if ln.endswith("local ok")]
    if head == "token":
        assert rows[-2:] == ["dropout", "classifier"]
    else:
        docs = [
            f"extractor.{n}"
            for b in (0, 1)
            for n in (f"entity_emb@doc{b}_head", f"entity_emb@doc{b}_tail", f"ffnn_head@doc{b}", f"ffnn_tail@doc{b}", f"rel_classifier@doc{b}")
        ]  # fmt: skip
        assert rows[ENCODER_BLOCKS:] == ["dropout", *docs]


def per_call_dump(theirs, g, path) -> None:
    """A hook on every module of the torch port, each call saved as ``name#<call>`` (further
    tensors ``name#<call>.<k>``): every per-document call of the decoder is kept."""
    saved, count = {}, {}
    for name, outs in hook_calls(theirs, g, "relation"):
        c = count[name] = count.get(name, -1) + 1
        for k, t in enumerate(outs):
            saved[f"{name}#{c}" + (f".{k}" if k else "")] = t
    np.savez(path, **saved)


def test_a_bug_in_rel_classifier_is_named_the_culprit(heads, tmp_path, capsys):
    """A torch port whose biaffine term reads its arguments swapped (``x2^T W x1``, i.e. W
    transposed): the plain comparison and isolation both point at the first document's
    rel_classifier, every block before it is locally fine."""
    theirs, ckpt, path = heads["relation"]
    g = golden.read(path)
    rc = theirs.extractor.rel_classifier
    rc.forward = lambda x1, x2: rc.bilinear(x2, x1) + rc.linear(torch.cat([x1, x2], dim=-1))
    try:
        per_call_dump(theirs, g, tmp_path / "port.npz")
    finally:
        del rc.forward
    rc_, out, err = run(capsys, "compare", path, tmp_path / "port.npz", "--checkpoint", ckpt)
    assert rc_ == 1, out + err
    verdict = out.splitlines()[-1]
    assert verdict.startswith("culprit: extractor.rel_classifier@doc0 ("), verdict
    marked = [ln for ln in out.splitlines() if ln.endswith("<== culprit")]
    assert len(marked) == 1 and marked[0].split()[0] == "extractor.rel_classifier@doc0"
    before = out[: out.index(marked[0])].split("isolation (local")[1].splitlines()[3:]
    assert before and all(re.search(r"local ok$", ln) for ln in before), before
    # the culprit's own steps: the bilinear term is off, the linear term is not
    assert re.search(r"extractor\.rel_classifier\.bilinear@doc0 .*FAIL", out)
    assert not re.search(r"extractor\.rel_classifier\.linear@doc0 .*FAIL", out)


@pytest.mark.parametrize("head", list(HEADS))
def test_a_blocks_selection_keeps_the_heads_blocks_and_isolates_them(heads, tmp_path, capsys, head):
    """``--select blocks`` keeps the joined streams and the head's blocks (per document for
    relation extraction), enough for isolation."""
    _, ckpt, _ = heads[head]
    out = tmp_path / "blocks.safetensors"
    rc, _, err = run(
        capsys,
        "golden",
        ckpt,
        "--inputs",
        case_file(tmp_path / "c.json", head),
        "--out",
        out,
        "--select",
        "blocks",
    )
    assert rc == 0, err
    g = golden.read(out)
    kept = [n for n in g.tensors if not n.startswith(("lilt.", "inputs.", "outputs."))]
    if head == "token":
        assert kept == ["dropout", "classifier", "loss"]
    else:
        per_doc = ["entity_emb@doc{b}_head", "entity_emb@doc{b}_tail", "ffnn_head@doc{b}", "ffnn_tail@doc{b}", "rel_classifier@doc{b}"]  # fmt: skip
        docs = [f"extractor.{n.format(b=b)}" for b in (0, 1) for n in per_doc]
        assert kept == ["dropout", *docs, "extractor.loss_fct", "loss"]
    rc, text, err = run(capsys, "compare", out, out, "--checkpoint", ckpt)
    assert rc == 0 and text.splitlines()[-1].startswith(
        f"ok: {ENCODER_BLOCKS + (2 if head == 'token' else 11)} blocks"
    )
