"""Golden files against the oracle: every weight-owning module's output (a PyTorch forward hook
on transformers 4.56.2) equals the golden tensor of the same name to 1e-10 in float64; the
manifest carries the real weight hashes; compare() passes identical files, fails perturbed
ones naming the tensor, and skips exactly the masked positions."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from _oracle import build, save, tiny_lilt_config, tiny_lxmert_config, to_numpy
from transformers import LiltForTokenClassification, LxmertForPreTraining

import refimpl
from refimpl import golden
from refimpl.checkpoints import CheckpointError
from refimpl.compare import compare

ATOL64 = 1e-10


def lilt_config():
    return tiny_lilt_config()


def lxmert_config():
    return tiny_lxmert_config()


def lilt_inputs(rng, b=2, s=9):
    ids = rng.integers(3, 60, (b, s))
    ids[:, 0], ids[1, 6:] = 0, 1  # <s> ... and padding (id 1) in row 1
    mask = np.ones((b, s), np.int64)
    mask[1, 6:] = 0
    x0 = rng.integers(0, 60, (b, s))
    y0 = rng.integers(0, 60, (b, s))
    bbox = np.stack([x0, y0, x0 + rng.integers(0, 60, (b, s)), y0 + rng.integers(0, 60, (b, s))], -1)
    labels = rng.integers(0, 5, (b, s))
    labels[1, 6:] = -100
    return {"input_ids": ids, "bbox": bbox, "attention_mask": mask, "labels": labels}


def lxmert_inputs(rng, b=2, s=7, o=5):
    ids = rng.integers(0, 50, (b, s))
    am = np.ones((b, s), np.int64)
    am[1, 5:] = 0
    vm = np.ones((b, o), np.int64)
    vm[0, 4:] = 0
    return {
        "input_ids": ids,
        "attention_mask": am,
        "token_type_ids": np.zeros((b, s), np.int64),
        "visual_feats": rng.normal(size=(b, o, 12)),
        "visual_pos": rng.uniform(size=(b, o, 4)),
        "visual_attention_mask": vm,
    }


def hooked_oracle_run(model, inputs):
    """Forward the oracle with a hook on every module that owns parameters directly.

    Returns (outputs, {module path: hook output}, {module path: number of calls})."""
    calls, outs, handles = {}, {}, []
    for name, mod in model.named_modules():
        if list(mod.parameters(recurse=False)):

            def hook(m, i, o, name=name):
                calls[name] = calls.get(name, 0) + 1
                outs[name] = o

            handles.append(mod.register_forward_hook(hook))
    kw = {k: torch.tensor(v) for k, v in inputs.items()}
    try:
        with torch.no_grad():
            out = model(**kw, output_attentions=True, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, outs, calls


@pytest.fixture(scope="module")
def lilt_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("lilt")
    oracle = build(LiltForTokenClassification, lilt_config(), seed=11)
    save(oracle, d / "ckpt")
    inputs = lilt_inputs(np.random.default_rng(0))
    model = refimpl.from_pretrained(d / "ckpt", dtype="float64")
    g = golden.write_case(d / "case.safetensors", model, inputs, checkpoint=d / "ckpt")
    return oracle, inputs, d, g


@pytest.fixture(scope="module")
def lxmert_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("lxmert")
    oracle = build(LxmertForPreTraining, lxmert_config(), seed=12)
    save(oracle, d / "ckpt")
    inputs = lxmert_inputs(np.random.default_rng(1))
    model = refimpl.from_pretrained(d / "ckpt", dtype="float64")
    g = golden.write_case(d / "case.safetensors", model, inputs, checkpoint=d / "ckpt")
    return oracle, inputs, d, g


@pytest.mark.parametrize("case", ["lilt_case", "lxmert_case"])
def test_every_hooked_module_equals_its_golden_tensor(case, request):
    oracle, inputs, d, g = request.getfixturevalue(case)
    g = golden.read(d / "case.safetensors")  # what a porter reads back
    out, hooked, calls = hooked_oracle_run(oracle, inputs)
    once = {n for n, c in calls.items() if c == 1}
    assert len(once) > 20
    missing = sorted(once - set(g.tensors))
    assert not missing, f"weight-owning modules without a golden tensor: {missing}"
    for name in sorted(once):
        ours = g.tensors[name]
        theirs = to_numpy(hooked[name])
        assert ours.shape == theirs.shape, f"{name}: {ours.shape} != oracle {theirs.shape}"
        err = np.abs(ours - theirs).max()
        assert err <= ATOL64, f"{name}: max |diff| {err:.3e} > {ATOL64}"
    # modules called more than once (LiLT's x/y tables, LXMERT's cross-attention) have one
    # suffixed golden tensor per call
    for name in sorted(set(calls) - once):
        per_call = [k for k in g.tensors if k.startswith(name + ".") or k.startswith(name + "@")]
        assert len(per_call) >= calls[name], f"{name} called {calls[name]}x, golden has {per_call}"
    # the outputs too, under outputs.<field>[.<i>]
    flat = {}
    for field in out.keys():
        v = out[field]
        if isinstance(v, tuple):
            flat.update({f"outputs.{field}.{i}": t for i, t in enumerate(v)})
        else:
            flat[f"outputs.{field}"] = v
    for name, v in flat.items():
        theirs = to_numpy(v)
        assert g.tensors[name].shape == theirs.shape, (
            f"{name}: {g.tensors[name].shape} != oracle {theirs.shape}"
        )
        np.testing.assert_allclose(g.tensors[name], theirs, rtol=0, atol=ATOL64, err_msg=name)


def test_layout_of_a_golden_file(lilt_case):
    _, inputs, d, g = lilt_case
    r = golden.read(d / "case.safetensors")
    names = list(r.tensors)
    m = r.manifest
    # forward order: inputs, then intermediates, then outputs; manifest lists them in that order
    assert names == [e["name"] for e in m["tensors"]]
    roles = [e["role"] for e in m["tensors"]]
    assert roles == sorted(roles, key=["input", "intermediate", "output"].index)
    assert names.index("lilt.embeddings.word_embeddings") < names.index(
        "lilt.encoder.layer.0.attention.self.query"
    )
    assert names.index("lilt.encoder.layer.0.output.LayerNorm") < names.index(
        "lilt.encoder.layer.1.attention.self.query"
    )
    for k, v in inputs.items():
        np.testing.assert_array_equal(r.tensors[f"inputs.{k}"], v)
        assert r.tensors[f"inputs.{k}"].dtype == np.int64
    assert r.tensors["outputs.loss"].shape == ()
    assert "outputs.hidden_states.0" in r.tensors and "outputs.attentions.1" in r.tensors
    assert m["format"] == golden.FORMAT and m["format_version"] == golden.FORMAT_VERSION
    assert m["refimpl_version"] == refimpl.__version__ and m["numpy_version"] == np.__version__
    assert m["model_type"] == "lilt" and m["architecture"] == "LiltForTokenClassification"
    assert m["config"]["hidden_size"] == 48 and m["dtype"] == "float64" and m["device"] == "cpu"
    assert m["forward_kwargs"] == {"output_attentions": True, "output_hidden_states": True}
    e = r.entry("lilt.encoder.layer.1.attention.self.attention_probs")
    assert e["atol"] == 1e-10 and e["shape"] == [2, 4, 9, 9]
    assert e["masks"] == [
        {"input": "inputs.attention_mask", "axes": [0, 2]},
        {"input": "inputs.attention_mask", "axes": [0, 3]},
    ]
    assert r.entry("lilt.encoder.layer.0.output.LayerNorm")["masks"] == [
        {"input": "inputs.attention_mask", "axes": [0, 1]}
    ]
    assert r.entry("outputs.loss")["masks"] == [] and r.entry("inputs.input_ids")["atol"] == 0.0


def test_manifest_carries_the_weight_hashes(lilt_case, lxmert_case):
    for _, _, d, _g in (lilt_case, lxmert_case):
        m = golden.read(d / "case.safetensors").manifest
        files = {w["file"]: w for w in m["weights"]}
        assert "model.safetensors" in files
        data = (d / "ckpt" / "model.safetensors").read_bytes()
        assert files["model.safetensors"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert files["model.safetensors"]["bytes"] == len(data)


def test_manifest_is_plain_json_in_the_safetensors_header(lilt_case):
    _, _, d, _ = lilt_case
    raw = (d / "case.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    manifest = json.loads(header["__metadata__"][golden.MANIFEST_KEY])
    assert header["inputs.input_ids"]["dtype"] == "I64"
    assert header["lilt.embeddings.LayerNorm"]["dtype"] == "F64"
    stored = set(header) - {"__metadata__"}
    aliases = manifest["aliases"]
    # every listed name is stored once or is an alias of a stored tensor (format version 2)
    assert {e["name"] for e in manifest["tensors"]} == stored | set(aliases)
    assert not stored & set(aliases) and set(aliases.values()) <= stored
    # the oracle's bit-identical copies are aliases, not second copies
    probs = "lilt.encoder.layer.1.attention.self.attention_probs"
    assert aliases["outputs.attentions.1"] in (probs, aliases.get(probs))
    # a layer's output is its output.LayerNorm, and hidden_states[i + 1] is layer i's output
    assert aliases["lilt.encoder.layer.1"] == "lilt.encoder.layer.1.output.LayerNorm"
    assert aliases["outputs.hidden_states.2"] == "lilt.encoder.layer.1.output.LayerNorm"


def test_compare_identical_passes_and_perturbed_fails_naming_the_tensor(lilt_case, tmp_path):
    _, _, d, g = lilt_case
    ref = d / "case.safetensors"
    res = compare(ref, ref)
    assert res.ok and res.first_divergent is None and all(r.status == "ok" for r in res.rows)
    assert [r.name for r in res.rows] == list(g.tensors)

    target = "lilt.encoder.layer.1.attention.self.query"
    t = dict(g.tensors)
    t[target] = t[target].copy()
    t[target][0, 2, 5] += 1e-6
    later = "outputs.logits"
    t[later] = t[later] + 1e-3
    bad = compare(ref, t)
    assert not bad.ok
    assert bad.first_divergent.name == target
    assert {r.name for r in bad.failed} == {target, later}
    row = next(r for r in bad.rows if r.name == target)
    assert row.max_abs == pytest.approx(1e-6, rel=1e-6) and row.status == "FAIL"
    assert "first divergence" in bad.table() and target in bad.summary()

    # a looser tolerance than the perturbation passes it
    assert compare(ref, t, atol=1e-2).ok


def test_compare_skips_masked_positions_only(lilt_case):
    _, _, d, g = lilt_case
    ref = d / "case.safetensors"
    probs = "lilt.encoder.layer.0.attention.self.attention_probs"  # [b=2, h, q=9, k=9]; row 1 pads 6..8
    hid = "lilt.encoder.layer.0.output.LayerNorm"  # [b, s, hidden]
    t = dict(g.tensors)
    t[probs] = t[probs].copy()
    t[probs][1, :, 7, :] += 1.0  # a padded query row
    t[probs][1, :, :, 8] += 1.0  # a padded key column
    t[hid] = t[hid].copy()
    t[hid][1, 6:, :] = np.nan  # padded token rows
    res = compare(ref, t)
    assert res.ok, res.table(only_failed=True)
    row = next(r for r in res.rows if r.name == probs)
    assert row.compared == 4 * (9 * 9 + 6 * 6) and row.skipped == 4 * (9 * 9 - 6 * 6)
    # the same change in an unpadded row (0) or a kept column of row 1 is caught
    t[probs][0, :, 7, :] += 1e-9
    t[probs][1, 0, 2, 3] += 1e-9
    res = compare(ref, t)
    assert [r.name for r in res.failed] == [probs]
    assert next(r for r in res.rows if r.name == probs).detail.startswith("37 of ")  # 4 heads x 9 keys + 1


def test_compare_reports_missing_and_shape(lilt_case):
    _, _, d, g = lilt_case
    t = {k: v for k, v in g.tensors.items() if not k.startswith("lilt.layout_embeddings")}
    t["outputs.logits"] = t["outputs.logits"][:, :3]
    t["something.extra"] = np.zeros(2)
    res = compare(d / "case.safetensors", t)
    missing = {r.name for r in res.missing}
    assert "lilt.layout_embeddings.LayerNorm" in missing
    assert res.extra == ["something.extra"]
    assert [r.name for r in res.failed] == ["outputs.logits"] and res.failed[0].status == "shape"
    assert not compare(d / "case.safetensors", t, strict=True).ok
    ok_but_missing = compare(
        d / "case.safetensors", {k: v for k, v in g.tensors.items() if "layout" not in k}
    )
    assert ok_but_missing.ok and ok_but_missing.missing
    assert not compare(
        d / "case.safetensors", {k: v for k, v in g.tensors.items() if "layout" not in k}, strict=True
    ).ok


def test_lxmert_masks_follow_each_stream(lxmert_case):
    _, inputs, d, g = lxmert_case
    m = golden.read(d / "case.safetensors")
    L, V = "inputs.attention_mask", "inputs.visual_attention_mask"
    cross = "lxmert.encoder.x_layers.0.visual_attention.att.attention_probs@lang"
    assert m.entry(cross)["masks"] == [{"input": L, "axes": [0, 2]}, {"input": V, "axes": [0, 3]}]
    assert m.entry("outputs.vision_attentions.0")["masks"] == [
        {"input": V, "axes": [0, 2]},
        {"input": V, "axes": [0, 3]},
    ]
    assert m.entry("outputs.vision_hidden_states.1")["masks"] == [{"input": V, "axes": [0, 1]}]
    assert m.entry("outputs.language_hidden_states.2")["masks"] == [{"input": L, "axes": [0, 1]}]
    assert m.entry("outputs.cross_relationship_score")["masks"] == []
    assert compare(m, m).ok


def test_mask_specs_when_both_streams_have_the_same_length():
    masks = {"inputs.attention_mask": (2, 6), "inputs.visual_attention_mask": (2, 6)}
    L = {"input": "inputs.attention_mask"}
    V = {"input": "inputs.visual_attention_mask"}
    spec = golden.mask_specs_for
    x = "lxmert.encoder.x_layers.0.visual_attention.att."
    assert spec(x + "key@lang", (2, 6, 8), masks) == [{**V, "axes": [0, 1]}]
    assert spec(x + "query@lang", (2, 6, 8), masks) == [{**L, "axes": [0, 1]}]
    assert spec(x + "attention_probs@visn", (2, 4, 6, 6), masks) == [
        {**V, "axes": [0, 2]},
        {**L, "axes": [0, 3]},
    ]
    assert spec("outputs.cross_encoder_attentions.0", (2, 4, 6, 6), masks) == [
        {**L, "axes": [0, 2]},
        {**V, "axes": [0, 3]},
    ]
    assert spec("lxmert.encoder.r_layers.0.attention.self.value", (2, 6, 8), masks) == [{**V, "axes": [0, 1]}]
    assert spec("lxmert.encoder.layer.0.attention.self.value", (2, 6, 8), masks) == [{**L, "axes": [0, 1]}]
    # a name that does not say: not masked (stricter, never looser)
    assert spec("mystery", (2, 6, 8), masks) == []
    # 2-D tensors (pooled, sequence logits) are never masked, nor inputs
    assert spec("outputs.pooled_output", (2, 6), masks) == []
    assert spec("inputs.input_ids", (2, 6, 1), masks) == []


def test_keep_mask_from_first_principles():
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    keep = golden.keep_mask(
        (2, 2, 3, 3),
        [{"input": "m", "axes": [0, 2]}, {"input": "m", "axes": [0, 3]}],
        {"m": mask},
    )
    expected = mask[:, None, :, None].astype(bool) & mask[:, None, None, :].astype(bool)
    np.testing.assert_array_equal(keep, np.broadcast_to(expected, (2, 2, 3, 3)))


def test_recommended_tolerances():
    assert golden.recommended_tolerance(np.float64, 12) == (1e-10, 1e-10)
    a0, _ = golden.recommended_tolerance(np.float32, 0)
    a12, r = golden.recommended_tolerance(np.float32, 12)
    assert a0 == 1e-5 and a12 == pytest.approx(4e-5) and a12 <= 1e-4 and r == 1e-5
    assert golden.recommended_tolerance(np.int64, 3) == (0.0, 0.0)


def test_float32_golden_is_within_its_tolerance_of_float64(lilt_case, tmp_path):
    _, inputs, d, g64 = lilt_case
    m32 = refimpl.from_pretrained(d / "ckpt", dtype="float32")
    g32 = golden.write_case(tmp_path / "f32.safetensors", m32, inputs, checkpoint=d / "ckpt")
    assert g32.manifest["dtype"] == "float32"
    assert g32.tensors["lilt.embeddings.LayerNorm"].dtype == np.float32
    depth = {e["name"]: e["depth"] for e in g32.manifest["tensors"]}
    assert depth["lilt.embeddings.LayerNorm"] == 0 and depth["lilt.encoder.layer.1.output.LayerNorm"] == 2
    res = compare(g32, g64.tensors)  # the float64 run is the better answer
    assert res.ok, res.table(only_failed=True)
    assert max(r.max_abs for r in res.rows) > 1e-9  # float32 really is coarser
    # a float32 port against the float64 golden file: held to float32's tolerance by depth
    res = compare(g64, g32.tensors)
    assert res.ok, res.table(only_failed=True)
    row = next(r for r in res.rows if r.name == "lilt.encoder.layer.1.output.LayerNorm")
    assert row.atol == pytest.approx(1.5e-5) and row.rtol == 1e-5
    # ... but not when the port claims float64
    assert not compare(
        g64, {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in g32.tensors.items()}
    ).ok


def test_read_rejects_non_golden_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        golden.read(tmp_path / "nope.safetensors")
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="x.safetensors.*truncated"):
        golden.read(tmp_path / "x.safetensors")
