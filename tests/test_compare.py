"""``refimpl compare``: never passes on nothing, name hints and maps, candidate formats,
dtype-aware tolerances and rules, and isolation of a culprit block from accumulated drift.

Isolation candidates are built with the oracle (transformers 4.56.2), block by block: each
block's output gets a bounded perturbation and the perturbed value is what the next oracle
block reads, as in a reduced-precision port.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
import torch
from _oracle import build, save, tiny_lilt_config, tiny_lxmert_config
from transformers import LiltForTokenClassification, LxmertForPreTraining

import refimpl
from refimpl import compare as C
from refimpl import golden
from refimpl.cli import main
from refimpl.data import path as bundled_path

LILT_LAYERS = 4


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lilt(tmp_path_factory):
    """A 4-layer random-weight oracle LiLT, its checkpoint, and our float64 golden file of it."""
    d = tmp_path_factory.mktemp("lilt")
    cfg = tiny_lilt_config(num_hidden_layers=LILT_LAYERS)
    oracle = build(LiltForTokenClassification, cfg, seed=21)
    save(oracle, d / "ckpt")
    rng = np.random.default_rng(0)
    s = 9
    ids = rng.integers(3, 60, (1, s))
    ids[0, 0] = 0
    x0, y0 = rng.integers(0, 60, (1, s)), rng.integers(0, 60, (1, s))
    bbox = np.stack([x0, y0, x0 + rng.integers(0, 60, (1, s)), y0 + rng.integers(0, 60, (1, s))], -1)
    inputs = {"input_ids": ids, "bbox": bbox, "attention_mask": np.ones((1, s), np.int64)}
    model = refimpl.from_pretrained(d / "ckpt", dtype="float64")
    g = golden.write_case(d / "case.safetensors", model, inputs, checkpoint=d / "ckpt")
    return oracle, d, g


@pytest.fixture(scope="module")
def lxmert(tmp_path_factory):
    """A random-weight oracle LxmertForPreTraining (2 language, 1 relationship, 3 cross layers)."""
    d = tmp_path_factory.mktemp("lxmert")
    cfg = tiny_lxmert_config(x_layers=3)
    oracle = build(LxmertForPreTraining, cfg, seed=22)
    save(oracle, d / "ckpt")
    rng = np.random.default_rng(1)
    inputs = {
        "input_ids": rng.integers(0, 50, (1, 7)),
        "token_type_ids": np.zeros((1, 7), np.int64),
        "attention_mask": np.ones((1, 7), np.int64),
        "visual_feats": rng.normal(size=(1, 5, 12)),
        "visual_pos": rng.uniform(size=(1, 5, 4)),
    }
    model = refimpl.from_pretrained(d / "ckpt", dtype="float64")
    g = golden.write_case(d / "case.safetensors", model, inputs, checkpoint=d / "ckpt")
    return oracle, d, g


def _t(x):
    return torch.from_numpy(np.asarray(x))


class _Noise:
    """A fixed +-delta pattern per shape: added at every block output, it accumulates coherently."""

    def __init__(self, delta: float, seed: int = 5):
        self.delta, self.rng, self.sign = delta, np.random.default_rng(seed), {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.sign:
            self.sign[shape] = torch.from_numpy(self.rng.choice([-1.0, 1.0], size=shape))
        return x + self.delta * self.sign[shape]


@torch.no_grad()
def lilt_candidate(oracle, g, delta, bug=None):
    """Block outputs of the oracle LiLT, each perturbed by ``delta`` and fed to the next block.

    ``bug``: ``("relu", i)`` uses ReLU for GELU in layer i's text feed-forward; ``("eps", i)``
    gives layer i's layout output LayerNorm eps 1e-1 (the config says 1e-5)."""
    noise = _Noise(delta)
    lilt = oracle.lilt
    pos = _t(g.tensors["lilt.embeddings.position_ids"])
    ids, bbox, mask = (_t(g.inputs[k]) for k in ("input_ids", "bbox", "attention_mask"))
    layers = [lilt.encoder.layer[i] for i in range(LILT_LAYERS)]
    saved = [(m.intermediate.intermediate_act_fn, m.layout_output.LayerNorm.eps) for m in layers]
    if bug and bug[0] == "relu":
        layers[bug[1]].intermediate.intermediate_act_fn = torch.nn.ReLU()
    if bug and bug[0] == "eps":
        layers[bug[1]].layout_output.LayerNorm.eps = 1e-1
    try:
        out = {}
        text = noise(
            lilt.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids), position_ids=pos)[0]
        )
        layout = noise(lilt.layout_embeddings(bbox=bbox, position_ids=pos))
        out["lilt.embeddings.LayerNorm"], out["lilt.layout_embeddings.LayerNorm"] = text, layout
        ext = lilt.get_extended_attention_mask(mask, ids.shape)
        for i, layer in enumerate(layers):
            text, layout = layer(text, layout, ext)[0]
            text, layout = noise(text), noise(layout)
            out[f"lilt.encoder.layer.{i}"], out[f"lilt.encoder.layer.{i}.layout"] = text, layout
        out["classifier"] = noise(oracle.classifier(text))
    finally:
        for m, (act, eps) in zip(layers, saved, strict=True):
            m.intermediate.intermediate_act_fn, m.layout_output.LayerNorm.eps = act, eps
    return {k: v.numpy() for k, v in out.items()}


@torch.no_grad()
def lxmert_candidate(oracle, g, delta, bug_x_layer=None):
    """Block outputs of the oracle LXMERT, perturbed and propagated; ``bug_x_layer`` uses ReLU for
    GELU in that cross layer's language feed-forward."""
    noise = _Noise(delta)
    lx, c = oracle.lxmert, oracle.config
    ids, tt, mask = (_t(g.inputs[k]) for k in ("input_ids", "token_type_ids", "attention_mask"))
    feats, pos = _t(g.inputs["visual_feats"]), _t(g.inputs["visual_pos"])
    ext = (1.0 - mask[:, None, None, :].to(torch.float64)) * torch.finfo(torch.float64).min
    xl = lx.encoder.x_layers
    saved = [m.lang_inter.intermediate_act_fn for m in xl]
    if bug_x_layer is not None:
        xl[bug_x_layer].lang_inter.intermediate_act_fn = torch.nn.ReLU()
    try:
        out = {}
        lang = out["lxmert.embeddings"] = noise(lx.embeddings(ids, tt))
        visn = out["lxmert.encoder.visn_fc"] = noise(lx.encoder.visn_fc(feats, pos))
        for i in range(c.l_layers):
            lang = out[f"lxmert.encoder.layer.{i}.output"] = noise(lx.encoder.layer[i](lang, ext)[0])
        for i in range(c.r_layers):
            visn = out[f"lxmert.encoder.r_layers.{i}.output"] = noise(lx.encoder.r_layers[i](visn, None)[0])
        for i in range(c.x_layers):
            lang, visn = xl[i](lang, ext, visn, None)[:2]
            lang = out[f"lxmert.encoder.x_layers.{i}.lang_output"] = noise(lang)
            visn = out[f"lxmert.encoder.x_layers.{i}.visn_output"] = noise(visn)
        pooled = out["lxmert.pooler"] = noise(lx.pooler(lang))
        out["cls.predictions"] = noise(oracle.cls.predictions(lang))
        out["cls.seq_relationship"] = noise(oracle.cls.seq_relationship(pooled))
        out["answer_head"] = noise(oracle.answer_head(pooled))
    finally:
        for m, act in zip(xl, saved, strict=True):
            m.lang_inter.intermediate_act_fn = act
    return {k: v.numpy() for k, v in out.items()}


def write_bf16_safetensors(path, tensors):
    """A safetensors file with every float tensor stored as BF16 (round to nearest even from
    float32, written by hand: numpy has no bfloat16), integers as I64."""
    header, blobs, off = {}, [], 0
    for k, v in tensors.items():
        v = np.asarray(v)
        if v.dtype.kind == "f":
            bits = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
            b = (
                (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
            ).astype("<u2")
            code = "BF16"
        else:
            b, code = np.ascontiguousarray(v, dtype="<i8"), "I64"
        raw = b.tobytes()
        header[k] = {"dtype": code, "shape": list(v.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def rounded(g, dtype):
    """The reference with every float tensor rounded to ``dtype``."""
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in g.tensors.items()}


# ------------------------------------------------------------------------------- never passes on nothing
def test_empty_candidate_fails_and_reports_coverage(lilt, tmp_path, capsys):
    _, d, g = lilt
    np.savez(tmp_path / "empty.npz")
    rc, out, _ = run(capsys, "compare", d / "case.safetensors", tmp_path / "empty.npz")
    assert rc == 1
    assert f"coverage: 0 compared of {len(g.tensors)} in reference" in out
    assert "NOTHING COMPARED" in out and "NOT OK" in out


def test_misnamed_candidate_fails_with_the_prefix_hint_and_the_option_fixes_it(lilt, tmp_path, capsys):
    _, d, g = lilt
    t = {(k[5:] if k.startswith("lilt.") else k): v for k, v in g.tensors.items()}
    np.savez(tmp_path / "noprefix.npz", **t)
    rc, out, _ = run(capsys, "compare", d / "case.safetensors", tmp_path / "noprefix.npz")
    assert rc == 1
    first = out.splitlines()[0]
    assert first.startswith("name hint: candidate names look like reference names without the prefix 'lilt.'")
    assert first.endswith("use --add-prefix lilt.")
    assert "NAMES DIFFER" in out and "first divergence: classifier" not in out
    rc, out, _ = run(
        capsys, "compare", d / "case.safetensors", tmp_path / "noprefix.npz", "--add-prefix", "lilt."
    )
    assert rc == 0, out
    assert f"coverage: {len(g.tensors)} compared of {len(g.tensors)} in reference; 0 missing" in out


def test_slash_names_and_suffix_hints_and_a_json_name_map(lilt, tmp_path, capsys):
    _, d, g = lilt
    ref = d / "case.safetensors"
    np.savez(tmp_path / "slash.npz", **{k.replace(".", "/"): v for k, v in g.tensors.items()})
    rc, out, _ = run(capsys, "compare", ref, tmp_path / "slash.npz")
    assert rc == 1 and "uses '.': use --slash-to-dot" in out.splitlines()[0]
    assert run(capsys, "compare", ref, tmp_path / "slash.npz", "--slash-to-dot")[0] == 0
    np.savez(tmp_path / "sfx.npz", **{k + ":0": v for k, v in g.tensors.items()})
    rc, out, _ = run(capsys, "compare", ref, tmp_path / "sfx.npz")
    assert rc == 1 and out.splitlines()[0].endswith("use --strip-suffix :0")
    assert run(capsys, "compare", ref, tmp_path / "sfx.npz", "--strip-suffix", ":0")[0] == 0
    # a JSON map renames what no rule explains
    t = dict(g.tensors)
    t["my_logits"] = t.pop("outputs.logits")
    np.savez(tmp_path / "m.npz", **t)
    (tmp_path / "map.json").write_text(json.dumps({"my_logits": "outputs.logits"}))
    rc, out, _ = run(capsys, "compare", ref, tmp_path / "m.npz", "--strict")
    assert rc == 1 and "1 missing in candidate" in out
    rc, out, _ = run(
        capsys, "compare", ref, tmp_path / "m.npz", "--strict", "--name-map", tmp_path / "map.json"
    )
    assert rc == 0, out


def test_strict_fails_on_a_missing_tensor(lilt, tmp_path, capsys):
    _, d, g = lilt
    t = dict(g.tensors)
    del t["lilt.encoder.layer.1"]
    np.savez(tmp_path / "c.npz", **t)
    assert run(capsys, "compare", d / "case.safetensors", tmp_path / "c.npz")[0] == 0
    rc, out, _ = run(capsys, "compare", d / "case.safetensors", tmp_path / "c.npz", "--strict")
    assert rc == 1 and "1 missing in candidate" in out


def test_a_weights_file_or_a_dump_as_reference_is_refused(lilt, tmp_path, capsys):
    _, d, g = lilt
    rc, out, err = run(capsys, "compare", d / "ckpt" / "model.safetensors", d / "case.safetensors")
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "is not a golden file" in err and "refimpl_manifest" in err
    np.savez(tmp_path / "c.npz", **g.tensors)
    rc, _, err = run(capsys, "compare", tmp_path / "c.npz", d / "case.safetensors")
    assert rc == 2 and "safetensors" in err and err.count("\n") == 1


def test_unknown_candidate_format_is_a_clear_error(lilt, tmp_path, capsys):
    _, d, _ = lilt
    (tmp_path / "x.safetensors").write_bytes(b"GGUF\x03\x00\x00\x00 not a tensor file")
    rc, _, err = run(capsys, "compare", d / "case.safetensors", tmp_path / "x.safetensors")
    assert rc == 2 and "not a safetensors file, an .npz or a directory of .npy files" in err
    np.save(tmp_path / "one.npy", np.zeros(3))
    rc, _, err = run(capsys, "compare", d / "case.safetensors", tmp_path / "one.npy")
    assert rc == 2 and "single .npy" in err
    (tmp_path / "emptydir").mkdir()
    rc, _, err = run(capsys, "compare", d / "case.safetensors", tmp_path / "emptydir")
    assert rc == 2 and "no .npy files" in err


def test_different_models_are_said_first(lilt, lxmert, capsys):
    _, d, _ = lilt
    _, dx, _ = lxmert
    rc, out, _ = run(capsys, "compare", d / "case.safetensors", dx / "case.safetensors")
    assert rc == 1
    first = out.splitlines()[0]
    assert (
        first.startswith("DIFFERENT MODELS:")
        and "LiltForTokenClassification vs LxmertForPreTraining" in first
    )


# ------------------------------------------------------------------------------- formats
def test_npz_and_npy_dir_and_safetensors_without_manifest_round_trip(lilt, tmp_path, capsys):
    from safetensors.numpy import save_file

    _, d, g = lilt
    ref = d / "case.safetensors"
    np.savez(tmp_path / "c.bin", **g.tensors)  # the extension does not matter: content does
    (tmp_path / "npy").mkdir()
    for k, v in g.tensors.items():
        np.save(tmp_path / "npy" / f"{k}.npy", v)
    save_file({k: np.ascontiguousarray(v) for k, v in g.tensors.items()}, str(tmp_path / "plain.dat"))
    for cand, fmt in (
        (tmp_path / "c.bin.npz", "npz"),
        (tmp_path / "npy", "npy-dir"),
        (tmp_path / "plain.dat", "safetensors"),
    ):
        c = C.read_candidate(cand)
        assert c.format == fmt and set(c.tensors) == set(g.tensors)
        assert all(np.array_equal(c.tensors[k], v, equal_nan=True) for k, v in g.tensors.items())
        rc, out, _ = run(capsys, "compare", ref, cand, "--strict")
        assert rc == 0 and f"{len(g.tensors)}/{len(g.tensors)} tensors within tolerance" in out
    # a dotted name survives the .npy file name; one wrong value is found there
    bad = np.load(tmp_path / "npy" / "lilt.encoder.layer.0.npy")
    bad[0, 3, 7] += 1e-6
    np.save(tmp_path / "npy" / "lilt.encoder.layer.0.npy", bad)
    rc, out, _ = run(capsys, "compare", ref, tmp_path / "npy")
    assert rc == 1 and "first divergence: lilt.encoder.layer.0 " in out


# ------------------------------------------------------------------------------- dtypes and rules
@pytest.mark.parametrize("rule", C.RULES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_the_rounding_of_the_reference_passes_and_a_planted_error_fails(lilt, tmp_path, dtype, rule):
    _, d, g = lilt
    ref = d / "case.safetensors"
    if dtype == "bfloat16":
        path = tmp_path / "c.safetensors"
        write_bf16_safetensors(path, g.tensors)
    else:
        path = tmp_path / "c.npz"
        np.savez(path, **rounded(g, dtype))
    res = C.compare(ref, path, rule=rule)
    assert res.ok, res.report(only_failed=True)
    floats = [r for r in res.rows if g.tensors[r.name].dtype.kind == "f"]
    assert {r.dtype for r in floats} == {dtype}
    atol, rtol = C.dtype_tolerance(dtype, 0)
    assert min(r.rtol for r in floats) == rtol and f"{dtype} (" in res.tolerances()
    # the rounding is not exact: the check sees it, within tolerance
    assert max(r.max_abs for r in floats) > 0
    # a planted error beyond the dtype's precision: the tensor's sign flipped
    name = "lilt.encoder.layer.1"
    t = dict(g.tensors)
    t[name] = -t[name]
    if dtype == "bfloat16":
        write_bf16_safetensors(path, t)
    else:
        np.savez(path, **{k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in t.items()})
    bad = C.compare(ref, path, rule=rule)
    assert not bad.ok and bad.first_divergent.name == name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_small_planted_error_beyond_the_dtype_precision_fails_max_abs(lilt, tmp_path, dtype, capsys):
    _, d, g = lilt
    name = "lilt.encoder.layer.2.layout"
    atol, rtol = C.dtype_tolerance(dtype, 3)
    t = rounded(g, "float32")
    t[name] = t[name].copy()
    t[name][0, 4, 5] += 2 * (atol + rtol * abs(t[name][0, 4, 5]))  # twice the bound at that position
    path = tmp_path / "c.safetensors"
    if dtype == "bfloat16":
        write_bf16_safetensors(path, t)
    else:
        from safetensors.numpy import save_file

        save_file(
            {k: np.ascontiguousarray(v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in t.items()},
            str(path),
        )
    rc, out, _ = run(capsys, "compare", d / "case.safetensors", path)
    assert rc == 1 and f"first divergence: {name} " in out
    assert f"candidate dtypes and tolerances (rule max_abs): int64 (4): exact; {dtype} (" in out
    # --atol / --rtol still override
    assert run(capsys, "compare", d / "case.safetensors", path, "--atol", "1", "--rtol", "1")[0] == 0


def test_dtype_tolerance_formula():
    assert C.dtype_tolerance("float16", 0) == (16 * 2.0**-11, 16 * 2.0**-11)
    assert C.dtype_tolerance("bfloat16", 4) == (2 * 16 * 2.0**-8, 16 * 2.0**-8)
    assert C.dtype_tolerance("float32", 8) == pytest.approx((3e-5, 1e-5), rel=1e-12)  # the float32 floor
    assert C.dtype_tolerance("float64", 8) == (1e-10, 1e-10) and C.dtype_tolerance("int64", 3) == (0.0, 0.0)


# ------------------------------------------------------------------------------- isolation
ISO = ("--atol", "1e-3", "--rtol", "0")
DELTA = 6e-4  # per-block perturbation: under atol 1e-3 locally, over it once accumulated


def test_isolation_on_exact_oracle_blocks_is_ok(lilt, tmp_path, capsys):
    oracle, d, g = lilt
    np.savez(tmp_path / "c.npz", **lilt_candidate(oracle, g, 0.0))
    rc, out, _ = run(
        capsys, "compare", d / "case.safetensors", tmp_path / "c.npz", "--checkpoint", d / "ckpt"
    )
    assert rc == 0, out
    assert out.splitlines()[-1].startswith(f"ok: {2 * LILT_LAYERS + 3} blocks checked locally")


def test_isolation_says_drift_when_every_block_is_locally_fine(lilt, tmp_path, capsys):
    oracle, d, g = lilt
    np.savez(tmp_path / "c.npz", **lilt_candidate(oracle, g, DELTA))
    rc, out, _ = run(capsys, "compare", d / "case.safetensors", tmp_path / "c.npz", *ISO)
    assert rc == 1 and "first divergence: lilt.encoder.layer.0 " in out  # plain: blames layer 0
    rc, out, _ = run(
        capsys, "compare", d / "case.safetensors", tmp_path / "c.npz", *ISO, "--checkpoint", d / "ckpt"
    )
    assert rc == 1
    assert out.splitlines()[-1].startswith(
        "accumulated drift: all 11 checked blocks are locally within tolerance"
    )
    assert "culprit" not in out


@pytest.mark.parametrize(
    ("bug", "culprit"),
    [(("relu", 3), "lilt.encoder.layer.3"), (("eps", 2), "lilt.encoder.layer.2.layout")],
    ids=["text-relu-layer3", "layout-eps-layer2"],
)
def test_isolation_names_the_buggy_layer_that_plain_comparison_misses(lilt, tmp_path, capsys, bug, culprit):
    oracle, d, g = lilt
    np.savez(tmp_path / "c.npz", **lilt_candidate(oracle, g, DELTA, bug))
    res = C.compare(d / "case.safetensors", tmp_path / "c.npz", atol=1e-3, rtol=0)
    assert res.first_divergent.name == "lilt.encoder.layer.0"  # plain comparison blames an earlier layer
    rc, out, _ = run(
        capsys, "compare", d / "case.safetensors", tmp_path / "c.npz", *ISO, "--checkpoint", d / "ckpt"
    )
    assert rc == 1
    verdict = out.splitlines()[-1]
    assert verdict.startswith(f"culprit: {culprit} (") and "first diverged at lilt.encoder.layer.0" in verdict
    marked = [ln for ln in out.splitlines() if ln.endswith("<== culprit")]
    assert len(marked) == 1 and marked[0].split()[0] == culprit and "LOCAL FAIL" in marked[0]


def test_isolation_lxmert_drift_and_a_cross_layer_bug(lxmert, tmp_path, capsys):
    oracle, d, g = lxmert
    ref = d / "case.safetensors"
    np.savez(tmp_path / "drift.npz", **lxmert_candidate(oracle, g, DELTA))
    iso = C.isolate(ref, tmp_path / "drift.npz", d / "ckpt", atol=1e-3, rtol=0)
    assert iso.verdict == "drift" and not iso.plain.ok
    assert all(r.local is not None and r.local.ok for r in iso.rows) and len(iso.rows) == 15

    np.savez(tmp_path / "bug.npz", **lxmert_candidate(oracle, g, DELTA, bug_x_layer=2))
    rc, out, _ = run(capsys, "compare", ref, tmp_path / "bug.npz", *ISO, "--checkpoint", d / "ckpt")
    assert rc == 1
    assert "first divergence: lxmert.encoder.layer.0.output " in out
    assert out.splitlines()[-1].startswith("culprit: lxmert.encoder.x_layers.2.lang_output (")


def test_isolation_with_reduced_precision_blocks_and_default_tolerances(lilt, tmp_path, capsys):
    """A float16 port: the oracle's block outputs rounded to float16 and propagated. The default
    float16 tolerances pass it; the same port with ReLU in layer 3 is caught there."""
    oracle, d, g = lilt
    for bug, want in ((None, 0), (("relu", 3), 1)):
        c = lilt_candidate(oracle, g, 0.0, bug)
        chain = {k: v.astype(np.float16) for k, v in c.items()}
        np.savez(tmp_path / "c.npz", **chain)
        rc, out, _ = run(
            capsys, "compare", d / "case.safetensors", tmp_path / "c.npz", "--checkpoint", d / "ckpt"
        )
        assert rc == want, out
    assert out.splitlines()[-1].startswith("culprit: lilt.encoder.layer.3 (")


def test_isolation_usage_errors(lilt, lxmert, capsys):
    _, d, _ = lilt
    _, dx, _ = lxmert
    rc, _, err = run(
        capsys, "compare", d / "case.safetensors", d / "case.safetensors", "--checkpoint", dx / "ckpt"
    )
    assert rc == 2 and err.count("\n") == 1 and "is not the one the golden file was made from" in err
    rc, _, err = run(
        capsys, "compare", d / "case.safetensors", d / "case.safetensors", "--checkpoint", d / "nope"
    )
    assert rc == 2 and "checkpoint directory not found" in err


def test_the_bundled_demo_isolates_cleanly(tmp_path, capsys):
    assert run(capsys, "demo", "--out", tmp_path, "-q")[0] == 0
    for case, ckpt in (("lilt-form", "lilt-tiny"), ("lxmert-question", "lxmert-tiny")):
        p = tmp_path / f"{case}.safetensors"
        rc, out, _ = run(capsys, "compare", p, p, "--checkpoint", bundled_path(ckpt))
        assert rc == 0 and out.splitlines()[-1].startswith("ok: ")


# ------------------------------------------------------------------------------- issue 20: compare's inputs
def test_compare_checkpoint_refuses_other_weights_naming_both_hashes(lilt, tmp_path, capsys):
    """Same config, other weights: one line naming both sha256, not a 'culprit' on a bit-exact candidate."""
    _, d, _ = lilt
    other = build(LiltForTokenClassification, tiny_lilt_config(num_hidden_layers=LILT_LAYERS), seed=99)
    save(other, tmp_path / "other")
    rc, out, err = run(
        capsys, "compare", d / "case.safetensors", d / "case.safetensors", "--checkpoint", tmp_path / "other"
    )
    assert rc == 2 and out == "" and err.count("\n") == 1
    here = golden.weight_entries(tmp_path / "other")[0]["sha256"][:16]
    there = golden.read(d / "case.safetensors").manifest["weights"][0]["sha256"][:16]
    assert f"sha256 {here}... here" in err and f"sha256 {there}... in the golden manifest" in err


def test_compare_checkpoint_that_cannot_be_used_is_one_line(lilt, tmp_path, capsys):
    _, d, g = lilt
    # a golden file made without a checkpoint (no hashes): a base-model checkpoint is refused by architecture
    t = golden.write(tmp_path / "nohash.safetensors", dict(g.tensors), {**g.manifest, "weights": []})
    base = build(refimpl_transformers("LiltModel"), tiny_lilt_config(num_hidden_layers=LILT_LAYERS), seed=21)
    save(base, tmp_path / "base")
    rc, _, err = run(capsys, "compare", t, t, "--checkpoint", tmp_path / "base")
    assert (
        rc == 2
        and err.count("\n") == 1
        and "is a LiltModel; the reference was made by a LiltForTokenClassification" in err
    )
    (tmp_path / "empty").mkdir()
    rc, _, err = run(
        capsys, "compare", d / "case.safetensors", d / "case.safetensors", "--checkpoint", tmp_path / "empty"
    )
    assert rc == 2 and err.count("\n") == 1 and "matmul" not in err and "missing key" not in err


def refimpl_transformers(name):
    import transformers

    return getattr(transformers, name)


@pytest.mark.parametrize("side", ["candidate", "reference"])
def test_a_fifo_is_refused_at_once_naming_it(lilt, tmp_path, side):
    """A FIFO as candidate or reference: refused before anything opens it (no hang), named."""
    import subprocess
    import sys

    _, d, _ = lilt
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    args = [d / "case.safetensors", fifo] if side == "candidate" else [fifo, d / "case.safetensors"]
    r = subprocess.run(
        [sys.executable, "-m", "refimpl.cli", "compare", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and str(fifo) in r.stderr and "FIFO" in r.stderr and r.stderr.count("\n") == 1, (
        r.stderr
    )


def test_a_complex_candidate_is_refused(lilt, tmp_path, capsys):
    _, d, g = lilt
    t = {k: v for k, v in g.tensors.items()}
    t["outputs.logits"] = t["outputs.logits"] + 1e6j
    np.savez(tmp_path / "c.npz", **t)
    for rule in C.RULES:
        rc, out, err = run(capsys, "compare", d / "case.safetensors", tmp_path / "c.npz", "--rule", rule)
        assert (
            rc == 2
            and out == ""
            and "'outputs.logits' is complex128; complex tensors are not supported" in err
        )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b'{"a": "outputs.logits", "a": "classifier"}', "duplicate"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b'{"a": "\xff"}', "not UTF-8"),
    ],
    ids=["duplicate-keys", "deep", "bad-utf8"],
)
def test_name_map_is_read_strictly_naming_the_file(lilt, tmp_path, capsys, text, says):
    _, d, _ = lilt
    (tmp_path / "map.json").write_bytes(text)
    rc, out, err = run(
        capsys, "compare", d / "case.safetensors", d / "case.safetensors", "--name-map", tmp_path / "map.json"
    )
    assert (
        rc == 2 and out == "" and err.count("\n") == 1 and str(tmp_path / "map.json") in err and says in err
    ), err


def test_an_npz_reference_and_swapped_arguments_are_said_plainly(lilt, tmp_path, capsys):
    _, d, g = lilt
    np.savez(tmp_path / "dump.npz", **g.tensors)
    rc, _, err = run(capsys, "compare", tmp_path / "dump.npz", d / "case.safetensors")
    assert rc == 2 and "header length" not in err
    assert (
        f"reference {tmp_path / 'dump.npz'} is an .npz (a zip archive), not a golden .safetensors file" in err
    )
    assert f"the candidate {d / 'case.safetensors'} looks like one: swapped arguments?" in err


@pytest.mark.parametrize("rule", C.RULES)
def test_an_exact_copy_passes_every_rule_and_isolation_uses_the_rule(lilt, capsys, rule):
    _, d, _ = lilt
    ref = d / "case.safetensors"
    res = C.compare(ref, ref, rule=rule)
    assert res.ok, res.report(only_failed=True)
    rc, out, _ = run(capsys, "compare", ref, ref, "--rule", rule, "--checkpoint", d / "ckpt")
    assert rc == 0 and out.splitlines()[-1].startswith("ok: 11 blocks checked locally")
    assert f"(rule {rule})" in out


def test_isolation_judges_by_the_rule(lilt, tmp_path, capsys):
    """--rule nmse: the ReLU layer fails locally by nmse, not by max_abs (whose tolerance is set
    out of reach), and is the culprit; the drift of the other blocks is not."""
    oracle, d, g = lilt
    np.savez(tmp_path / "c.npz", **lilt_candidate(oracle, g, 0.0, ("relu", 3)))
    rc, out, _ = run(capsys, "compare", d / "case.safetensors", tmp_path / "c.npz", "--checkpoint", d / "ckpt",
                     "--rule", "nmse", "--rtol", "1e-3", "--atol", "1e9")  # fmt: skip
    assert rc == 1 and out.splitlines()[-1].startswith("culprit: lilt.encoder.layer.3 (")
    row = [ln for ln in out.splitlines() if ln.endswith("<== culprit")][0]
    assert "LOCAL FAIL (tolerance)" in row
    assert (
        "(nmse "
        in [ln for ln in out.splitlines() if ln.startswith("lilt.encoder.layer.3 ") and "FAIL (" in ln][0]
    )


def test_drift_with_later_blocks_missing_is_inconclusive(lilt, tmp_path, capsys):
    oracle, d, g = lilt
    c = lilt_candidate(oracle, g, DELTA)
    del c[f"lilt.encoder.layer.{LILT_LAYERS - 1}"], c[f"lilt.encoder.layer.{LILT_LAYERS - 1}.layout"]
    np.savez(tmp_path / "c.npz", **c)
    rc, out, _ = run(
        capsys, "compare", d / "case.safetensors", tmp_path / "c.npz", *ISO, "--checkpoint", d / "ckpt"
    )
    last = LILT_LAYERS - 1
    assert rc == 3
    assert out.splitlines()[-1] == (
        "inconclusive: no checked block is wrong, but 2 block(s) between the first divergence "
        f"(lilt.encoder.layer.0) and the end could not be checked: lilt.encoder.layer.{last} (missing "
        f"lilt.encoder.layer.{last}, lilt.encoder.layer.{last}.layout), classifier (missing lilt.encoder.layer.{last})"
    )


def test_precision_is_detected_or_stated(lilt, tmp_path, capsys):
    _, d, g = lilt
    from refimpl.compare.precision import round_to

    t = {
        k: (round_to(v, "bfloat16").astype(np.float32) if v.dtype.kind == "f" else v)
        for k, v in g.tensors.items()
    }
    np.savez(tmp_path / "c.npz", **t)
    rc, out, _ = run(capsys, "compare", d / "case.safetensors", tmp_path / "c.npz")
    assert rc == 0 and "candidate values are bfloat16 stored as float32 (" in out
    assert "bfloat16 (" in [ln for ln in out.splitlines() if ln.startswith("candidate dtypes")][0]
    np.savez(tmp_path / "f32.npz", **rounded(g, "float32"))
    rc, out, _ = run(
        capsys, "compare", d / "case.safetensors", tmp_path / "f32.npz", "--candidate-dtype", "float16"
    )
    assert rc == 0 and "every float tensor is judged as float16 (--candidate-dtype)" in out
    assert "stored as" not in out


def test_a_hook_dump_under_a_prefix_gets_the_hint_and_add_prefix_keeps_reference_names(
    lilt, tmp_path, capsys
):
    _, d, g = lilt
    ref = d / "case.safetensors"
    hooks = {"model." + k: v for k, v in g.tensors.items() if not k.startswith(("inputs.", "outputs."))}
    hooks["model.lilt.encoder.layer.1.1"] = hooks.pop("model.lilt.encoder.layer.1.layout")  # a hook name
    np.savez(tmp_path / "c.npz", **hooks)
    rc, out, _ = run(capsys, "compare", ref, tmp_path / "c.npz")
    assert rc == 1 and "NOTHING COMPARED" in out
    assert out.splitlines()[0].startswith(
        "name hint: candidate names look like reference names with an extra prefix 'model.'"
    )
    assert out.splitlines()[0].endswith("use --strip-prefix model.")
    rc, out, _ = run(capsys, "compare", ref, tmp_path / "c.npz", "--strip-prefix", "model.")
    assert rc == 0, out
    # --strip-prefix model. --add-prefix lilt.: names that are reference names once stripped (classifier) stay
    short = {
        ("model." + k[len("model.lilt.") :] if k.startswith("model.lilt.") else k): v
        for k, v in hooks.items()
    }
    np.savez(tmp_path / "s.npz", **short)
    rc, out, _ = run(
        capsys,
        "compare",
        ref,
        tmp_path / "s.npz",
        "--strip-prefix",
        "model.",
        "--add-prefix",
        "lilt.",
        "--explain-names",
    )
    assert rc == 0, out
    assert "  model.classifier -> classifier (renamed to classifier by the name options; exact)" in out
    assert "lilt.classifier" not in out


def test_compare_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    for code, word in (("0", "ok"), ("1", "fail"), ("2", "usage"), ("3", "inconclusive")):
        assert f"  {code}  {word}" in out
