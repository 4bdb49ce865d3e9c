"""Golden files at scale (issue 13): every tensor once (aliases), streamed writing, selection,
batch runs (shard, resume, progress), version 1 files, and hostile golden files."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refimpl
from refimpl import cli, golden
from refimpl.checkpoints import CheckpointError, save_safetensors
from refimpl.compare import compare
from refimpl.data import path as bundled_path

LILT_TINY = bundled_path("lilt-tiny")


@pytest.fixture(scope="module")
def model():
    return refimpl.from_pretrained(LILT_TINY, dtype="float64")


def _inputs(seed=0, batch=2, seq=7):
    rng = np.random.default_rng(seed)
    x0, y0 = rng.integers(0, 800, (batch, seq, 1)), rng.integers(0, 800, (batch, seq, 1))
    bbox = np.concatenate([x0, y0, x0 + 40, y0 + 20], -1)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq - 2 :] = 0
    return {"input_ids": rng.integers(3, 200, (batch, seq)), "bbox": bbox, "attention_mask": mask}


@pytest.fixture(scope="module")
def case(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("scale")
    g = golden.write_case(d / "all.safetensors", model, _inputs(), checkpoint=LILT_TINY)
    return d, g


def _header(path):
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return raw, n, json.loads(raw[8 : 8 + n])


# ------------------------------------------------------------------------------ every tensor once
def test_bit_identical_tensors_are_stored_once_and_every_name_reads(case):
    d, g = case
    _, _, header = _header(d / "all.safetensors")
    stored = set(header) - {"__metadata__"}
    assert g.manifest["format_version"] == 2 and g.aliases
    assert stored.isdisjoint(g.aliases) and set(g.aliases.values()) <= stored
    for alias, target in g.aliases.items():  # an alias reads as its stored tensor, bit for bit
        a, t = g.tensors[alias], g.tensors[target]
        assert a.dtype == t.dtype and a.tobytes() == t.tobytes()
    # no two stored tensors are bit-identical (same dtype and shape)
    seen = {}
    for n in stored:
        a = g.tensors[n]
        key = (a.dtype.str, a.shape, a.tobytes())
        assert key not in seen, f"{n} duplicates {seen[key]}"
        seen[key] = n
    # the copies: LiLT's layout probs, outputs.attentions/layout_attentions, hidden states
    p = "lilt.encoder.layer.0.attention.self."
    one = {g.aliases.get(n, n) for n in (p + "attention_probs", p + "layout_attention_probs",
                                         "outputs.attentions.0", "outputs.layout_attentions.0")}  # fmt: skip
    assert len(one) == 1 and one <= stored
    assert g.aliases.get(p + "layout_attention_scores") == p + "attention_scores"
    assert g.aliases["outputs.hidden_states.1"] == "lilt.encoder.layer.0.output.LayerNorm"


def test_a_hash_collision_is_caught_by_the_byte_compare(model, tmp_path, monkeypatch):
    class Same:  # every tensor hashes alike: only the byte compare tells them apart
        def __init__(self, *a, **k):
            pass

        def digest(self):
            return b"x" * 16

    ref = golden.write_case(tmp_path / "r.safetensors", model, _inputs(), checkpoint=LILT_TINY)
    monkeypatch.setattr(golden.writer.hashlib, "blake2b", Same)
    g = golden.write_case(tmp_path / "c.safetensors", model, _inputs(), checkpoint=LILT_TINY)
    assert g.aliases == ref.aliases  # the same tensors alias, no more
    assert compare(g, ref).ok


def test_write_recomputes_aliases_so_a_changed_copy_is_stored_alone(case, tmp_path):
    d, g = case
    t = dict(g.tensors)
    name = "outputs.attentions.1"
    t[name] = t[name] + 1.0
    golden.write(tmp_path / "w.safetensors", t, g.manifest)
    w = golden.read(tmp_path / "w.safetensors")
    assert name not in w.aliases and "outputs.layout_attentions.1" in w.aliases
    np.testing.assert_array_equal(w.tensors[name], t[name])
    res = compare(g, w)
    assert [r.name for r in res.failed] == [name]


# ------------------------------------------------------------------------------ streamed writing
def test_writer_keeps_no_tensor_in_memory_and_leaves_no_spill_files(model, tmp_path):
    w = golden.GoldenWriter(tmp_path / "s.safetensors")
    with refimpl.trace.tracing(recorder=w):
        model(**_inputs())
    assert w.tensors == {} and len(w.meta) > 40 and w.aliases
    w.abort()
    assert os.listdir(tmp_path) == []

    class Boom(Exception):
        pass

    def broken(**kw):
        refimpl.trace.record("first", np.ones(3))
        raise Boom

    broken.dtype, broken.config = np.float64, None
    with pytest.raises(Boom):
        golden.write_case(tmp_path / "x.safetensors", broken, {"input_ids": np.ones((1, 2), np.int64)})
    assert os.listdir(tmp_path) == []  # nothing half-written


def test_data_is_aligned_for_a_zero_copy_memory_map(case):
    d, _ = case
    raw, n, header = _header(d / "all.safetensors")
    assert (8 + n) % 8 == 0
    for name, e in header.items():
        if name != "__metadata__":
            item = {"F64": 8, "I64": 8, "F32": 4, "BOOL": 1}[e["dtype"]]
            assert e["data_offsets"][0] % item == 0, name


# ------------------------------------------------------------------------------ selection
@pytest.mark.parametrize(
    "select, kept, dropped",
    [
        ("blocks", ["lilt.encoder.layer.1", "lilt.layout_embeddings.LayerNorm", "classifier", "outputs.logits",
                    "outputs.hidden_states.2", "inputs.bbox", "lilt.encoder.layer.0.layout"],
         ["lilt.encoder.layer.0.attention.self.query", "outputs.attentions.0",
          "lilt.encoder.layer.0.attention.self.attention_probs"]),
        ("modules", ["lilt.encoder.layer.0.attention.self.query", "lilt.encoder.layer.0.intermediate.dense"],
         ["lilt.encoder.layer.0.attention.self.attention_scores", "outputs.layout_attentions.1",
          "lilt.encoder.layer.0.attention.self.tmp_layout_attention_scores"]),
        (["blocks", "*.attention.self.query"], ["lilt.encoder.layer.1.attention.self.query", "outputs.logits"],
         ["lilt.encoder.layer.1.attention.self.key"]),
    ],
)  # fmt: skip
def test_select_presets_and_globs(model, tmp_path, case, select, kept, dropped):
    g = golden.write_case(tmp_path / "s.safetensors", model, _inputs(), checkpoint=LILT_TINY, select=select)
    for n in kept:
        assert n in g.tensors and g.is_selected(n), n
    for n in dropped:
        assert n not in g.tensors and not golden.is_selected(g.manifest, n), n
    assert g.selection["select"] == ([select] if isinstance(select, str) else select)
    # what was kept equals the full file's tensors
    full = case[1]
    res = compare(g, full.tensors)
    assert res.ok and {r.name for r in res.rows} == set(g.tensors)
    # a version 1 manifest (no selection) selects everything
    assert golden.is_selected({}, "anything.at.all")


def test_select_blocks_runs_without_attention_outputs(model, tmp_path):
    g = golden.write_case(tmp_path / "b.safetensors", model, _inputs(), checkpoint=LILT_TINY, select="blocks")
    assert g.manifest["forward_kwargs"]["output_attentions"] is False
    with pytest.raises(ValueError, match=r"select\[1\]"):
        golden.selection_spec(["blocks", ""])


# ------------------------------------------------------------------------------ format version 1
def test_version_1_files_still_read(case, tmp_path):
    d, g = case
    # the version 1 layout: every name stored, no alias table, no selection
    tensors = {n: np.ascontiguousarray(g.tensors[n]) for n in g.tensors}
    m = {k: v for k, v in g.manifest.items() if k not in ("aliases", "selection", "inputs_sha256")}
    m["format_version"] = 1
    save_safetensors(tmp_path / "v1.safetensors", tensors, metadata={golden.MANIFEST_KEY: json.dumps(m)})
    v1 = golden.read(tmp_path / "v1.safetensors")
    assert v1.aliases == {} and v1.is_selected("whatever") and list(v1.tensors) == list(g.tensors)
    res = compare(v1, g)
    assert res.ok and len(res.rows) == len(g.tensors)
    m["format_version"] = 3
    save_safetensors(tmp_path / "v3.safetensors", tensors, metadata={golden.MANIFEST_KEY: json.dumps(m)})
    with pytest.raises(CheckpointError, match=r"v3.safetensors.*format_version"):
        golden.read(tmp_path / "v3.safetensors")


# ------------------------------------------------------------------------------ hostile files
def _with_manifest(src, dst, edit):
    raw, n, header = _header(src)
    m = json.loads(header["__metadata__"][golden.MANIFEST_KEY])
    m = edit(m)
    header["__metadata__"][golden.MANIFEST_KEY] = json.dumps(m)
    hb = json.dumps(header).encode()
    hb += b" " * (-(8 + len(hb)) % 8)
    with open(dst, "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb + raw[8 + n :])
    return dst


def _set(path, value):
    def edit(m):
        obj = m
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
        return m

    return edit


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda m: [m], "refimpl_manifest must be a JSON object"),
        (_set(["format"], "other"), "field format"),
        (_set(["format_version"], "2"), "field format_version"),
        (_set(["tensors"], {}), "field tensors must be a list"),
        (_set(["tensors", 0, "shape"], [99]), r"tensors\[0\] \('inputs.input_ids'\).shape"),
        (_set(["tensors", 0, "dtype"], "float32"), r"tensors\[0\] \('inputs.input_ids'\).dtype"),
        (_set(["tensors", 5, "atol"], "tiny"), r"tensors\[5\].*atol"),
        (_set(["aliases", "outputs.attentions.0"], "no.such.tensor"), r"aliases\['outputs.attentions.0'\]"),
        (lambda m: {**m, "tensors": m["tensors"][1:]}, "field tensors must be a list naming every tensor"),
        (lambda m: {**m, "tensors": m["tensors"] + [m["tensors"][0]]}, "must be unique"),
        (
            _set(["selection"], {"terms": [{"include": ["("], "exclude": []}]}),
            r"selection.terms\[0\].include",
        ),
        (_set(["tensors", 8, "masks"], [{"input": "inputs.bbox", "axes": [0, 1]}]), r"masks\[0\].input"),
        (_set(["config"], "text"), "field config"),
    ],
)
def test_a_manifest_that_does_not_fit_the_file_is_refused_naming_file_and_field(case, tmp_path, edit, field):
    d, _ = case
    bad = _with_manifest(d / "all.safetensors", tmp_path / "bad.safetensors", edit)
    with pytest.raises(CheckpointError, match=f"bad.safetensors.*{field}"):
        golden.read(bad)


_FIELDS = ["format", "format_version", "tensors", "aliases", "selection", "config", "default_tolerance"]
_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**6), st.text(max_size=8), st.lists(st.integers(0, 4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)  # fmt: skip


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_manifests_read_or_raise_checkpoint_error(case, tmp_path_factory, data):
    d, g = case
    n_entries = len(g.manifest["tensors"])
    where = data.draw(st.sampled_from(["top", "entry", "alias"]))
    if where == "top":
        edit = _set([data.draw(st.sampled_from(_FIELDS))], data.draw(_JUNK))
    elif where == "entry":
        i = data.draw(st.integers(0, n_entries - 1))
        key = data.draw(st.sampled_from(["name", "shape", "dtype", "atol", "rtol", "depth", "masks"]))
        edit = _set(["tensors", i, key], data.draw(_JUNK))
    else:
        edit = _set(["aliases", data.draw(st.sampled_from(list(g.aliases)))], data.draw(_JUNK))
    out = tmp_path_factory.mktemp("fuzz") / "f.safetensors"
    _with_manifest(d / "all.safetensors", out, edit)
    try:
        r = golden.read(out)
    except CheckpointError as e:
        assert "f.safetensors" in str(e)
        return
    for n in list(r.tensors)[:3]:  # what reads, reads whole
        assert r.tensors[n].shape == tuple(r.entry(n)["shape"])


# ------------------------------------------------------------------------------ batch runs
@pytest.fixture()
def jsonl(tmp_path):
    case = json.load(open(bundled_path("example", "form.json")))
    lines = [{"words": case["words"][: 3 + i], "boxes": case["boxes"][: 3 + i]} for i in range(5)]
    p = tmp_path / "cases.jsonl"
    p.write_text("\n".join(json.dumps(c) for c in lines) + "\n")
    return p


def test_shards_split_a_corpus_and_reruns_resume(jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    for i in range(2):
        assert (
            cli.main(["golden", LILT_TINY, "--inputs", str(jsonl), "--out", str(out), "--shard", f"{i}/2"])
            == 0
        )
    assert sorted(os.listdir(out)) == [f"case-{i:04d}.safetensors" for i in range(5)]
    text = capsys.readouterr().out
    assert "3 cases (shard 0/2): wrote 3" in text and "2 cases (shard 1/2): wrote 2" in text
    before = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    os.unlink(out / "case-0003.safetensors")  # an interrupted run
    assert cli.main(["golden", LILT_TINY, "--inputs", str(jsonl), "--out", str(out)]) == 0
    assert "5 cases: wrote 1, skipped 4 up to date" in capsys.readouterr().out
    assert all(os.stat(out / n).st_mtime_ns == t for n, t in before.items() if n != "case-0003.safetensors")
    # another selection is not the same case: rewritten
    assert (
        cli.main(["golden", LILT_TINY, "--inputs", str(jsonl), "--out", str(out), "--select", "blocks"]) == 0
    )
    assert "wrote 5, skipped 0" in capsys.readouterr().out
    for bad in ("2/2", "x", "1/0"):
        assert cli.main(["golden", LILT_TINY, "--inputs", str(jsonl), "--out", str(out), "--shard", bad]) == 2
        assert "--shard" in capsys.readouterr().err


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_count_rate_and_eta_on_a_terminal_only():
    tty = _Tty()
    bar = cli.golden._Progress(4, stream=tty)
    bar.update(1, "case-0000")
    bar.update(2, "case-0001", skipped=1)
    bar.close()
    text = tty.getvalue()
    assert "2/4" in text and "cases/s" in text and "ETA" in text and "case-0001" in text
    for quiet, stream in ((True, _Tty()), (False, io.StringIO())):
        bar = cli.golden._Progress(4, quiet=quiet, stream=stream)
        bar.update(1)
        bar.close()
        assert stream.getvalue() == ""


# ------------------------------------------------------------------------------ padded example
def test_demo_writes_a_padded_batch_whose_masks_and_values_match_the_oracle(tmp_path):
    import torch
    from transformers import AutoTokenizer, LiltForTokenClassification

    assert cli.main(["demo", "-q", "--out", str(tmp_path)]) == 0
    g = golden.read(tmp_path / "lilt-forms-padded.safetensors")
    pages = json.load(open(bundled_path("example", "forms.json")))["pages"]
    hf_tok = AutoTokenizer.from_pretrained(LILT_TINY)
    enc = hf_tok(
        [p["words"] for p in pages],
        boxes=[p["boxes"] for p in pages],
        word_labels=[p["labels"] for p in pages],
        padding=True,
        return_tensors="np",
    )
    for k in ("input_ids", "bbox", "attention_mask", "labels"):
        np.testing.assert_array_equal(g.inputs[k], enc[k], err_msg=k)
    mask = g.inputs["attention_mask"]
    assert mask.shape[0] == 2 and mask[0].all() and not mask[1].all()  # the second row is padded
    assert g.entry("lilt.encoder.layer.0.output.LayerNorm")["masks"] == [
        {"input": "inputs.attention_mask", "axes": [0, 1]}
    ]
    hf = LiltForTokenClassification.from_pretrained(LILT_TINY, dtype=torch.float64).eval()
    with torch.no_grad():
        want = hf(**{k: torch.tensor(enc[k]) for k in ("input_ids", "bbox", "attention_mask", "labels")})
    keep = mask.astype(bool)
    assert np.abs(g.outputs["logits"][keep] - want.logits.numpy()[keep]).max() <= 1e-10
