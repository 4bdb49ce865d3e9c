"""refimpl fuse-lilt: the original LiLT recipe (gen_weight_roberta_like.py) without torch.

A RoBERTa text checkpoint and a layout-only LiLT checkpoint are fused; the result must load in
transformers 4.56.2 with no missing or unexpected keys, hold exactly the merged state dict
(text keys renamed roberta. -> lilt., layout weights winning clashes), and refimpl must equal
the oracle LiltModel on it to 1e-10 in float64."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _oracle import build, save, to_numpy
from safetensors.torch import save_file
from transformers import LiltConfig, LiltModel, RobertaConfig, RobertaForMaskedLM, RobertaModel

import refimpl
from refimpl.cli import main
from refimpl.lilt.merge_checkpoints import fuse_lilt

SIZES = dict(
    vocab_size=60,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    type_vocab_size=1,
    pad_token_id=1,
    layer_norm_eps=1e-5,
)
LAYOUT_PARTS = (
    "layout_embeddings.",
    ".layout_",
    "attention.layout_output.",
    "layout_intermediate.",
    "layout_output.",
)


def layout_ckpt(directory, seed: int, extra_keys=(), channel_shrink_ratio=2, max_2d=256):
    """A lilt-only checkpoint: the layout weights of a randomized LiltModel, keys prefixed lilt."""
    cfg = LiltConfig(**SIZES, channel_shrink_ratio=channel_shrink_ratio, max_2d_position_embeddings=max_2d)
    full = build(LiltModel, cfg, seed=seed)
    sd = full.state_dict()
    keep = {
        f"lilt.{k}": v.contiguous()
        for k, v in sd.items()
        if any(p in k for p in LAYOUT_PARTS) or k in extra_keys
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file(keep, str(directory / "model.safetensors"), metadata={"format": "pt"})
    cfg.to_json_file(str(directory / "config.json"))
    return keep, cfg


def inputs(rng, b=2, s=8):
    ids = rng.integers(3, 60, (b, s))
    ids[1, 6:] = 1
    mask = (ids != 1).astype(np.int64)
    x0, y0 = rng.integers(0, 100, (b, s)), rng.integers(0, 100, (b, s))
    bbox = np.stack([x0, y0, x0 + rng.integers(0, 100, (b, s)), y0 + rng.integers(0, 100, (b, s))], -1)
    return {"input_ids": ids, "bbox": bbox, "attention_mask": mask}


def check_against_oracle(out_dir, merged_unprefixed):
    """transformers loads the fused dir cleanly with exactly the merged weights, and refimpl
    equals the oracle on them."""
    hf, info = LiltModel.from_pretrained(str(out_dir), dtype=torch.float64, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf_sd = hf.state_dict()
    assert set(hf_sd) == set(merged_unprefixed)
    for k, v in merged_unprefixed.items():
        assert torch.equal(hf_sd[k], v.to(hf_sd[k].dtype)), k

    oracle = LiltModel(LiltConfig.from_pretrained(str(out_dir))).to(torch.float64).eval()
    oracle.load_state_dict(merged_unprefixed, strict=True)
    x = inputs(np.random.default_rng(5))
    with torch.no_grad():
        want = oracle(**{k: torch.tensor(v) for k, v in x.items()})
    ours = refimpl.from_pretrained(out_dir, dtype="float64")(**x)
    for field in ("last_hidden_state", "pooler_output"):
        err = np.abs(getattr(ours, field) - to_numpy(getattr(want, field))).max()
        assert err <= 1e-10, f"{field}: {err:.3e}"


def test_fuse_masked_lm_text_with_layout_only(tmp_path):
    text = build(RobertaForMaskedLM, RobertaConfig(**SIZES), seed=21)
    save(text, tmp_path / "text", safe=False)  # roberta-base ships pytorch_model.bin: roberta.* + lm_head.*
    (tmp_path / "text" / "vocab.json").write_text('{"<s>": 0}')
    (tmp_path / "text" / "merges.txt").write_text("#version: 0.2\n")
    # RobertaForMaskedLM has no pooler: the layout checkpoint brings it, and one clashing key
    layout, _ = layout_ckpt(
        tmp_path / "layout",
        seed=22,
        extra_keys=("pooler.dense.weight", "pooler.dense.bias", "embeddings.LayerNorm.weight"),
    )
    rc = main(
        [
            "fuse-lilt",
            "--text",
            str(tmp_path / "text"),
            "--layout",
            str(tmp_path / "layout"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0

    text_sd = text.state_dict()
    merged = {"lilt." + k[len("roberta.") :]: v for k, v in text_sd.items() if k.startswith("roberta.")}
    assert not torch.equal(
        merged["lilt.embeddings.LayerNorm.weight"], layout["lilt.embeddings.LayerNorm.weight"]
    )
    merged.update(layout)  # layout wins
    unprefixed = {k[len("lilt.") :]: v for k, v in merged.items()}
    check_against_oracle(tmp_path / "out", unprefixed)

    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "lilt" and cfg["architectures"] == ["LiltModel"]
    assert (
        cfg["channel_shrink_ratio"] == 2 and cfg["max_2d_position_embeddings"] == 256
    )  # from the layout config
    assert cfg["vocab_size"] == 60 and cfg["layer_norm_eps"] == 1e-5  # the rest from the text config
    assert (tmp_path / "out" / "vocab.json").read_text() == '{"<s>": 0}'
    assert (tmp_path / "out" / "merges.txt").exists()


def test_fuse_bare_roberta_model_and_defaults(tmp_path):
    text = build(RobertaModel, RobertaConfig(**SIZES), seed=31)  # unprefixed keys, with pooler
    save(text, tmp_path / "text", safe=True)
    layout, _ = layout_ckpt(tmp_path / "layout", seed=32, channel_shrink_ratio=4, max_2d=1024)
    (tmp_path / "layout" / "config.json").unlink()  # no layout config: the recipe's 4 and 1024
    report = fuse_lilt(tmp_path / "text", tmp_path / "layout", tmp_path / "out")
    assert report.n_fused == len(text.state_dict()) + len(layout) and not report.layout_won
    merged = {k: v for k, v in text.state_dict().items()}
    merged.update({k[len("lilt.") :]: v for k, v in layout.items()})
    check_against_oracle(tmp_path / "out", merged)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["channel_shrink_ratio"] == 4 and cfg["max_2d_position_embeddings"] == 1024


def test_fuse_refuses_an_incomplete_result(tmp_path, capsys):
    text = build(RobertaForMaskedLM, RobertaConfig(**SIZES), seed=41)  # no pooler anywhere
    save(text, tmp_path / "text")
    layout_ckpt(tmp_path / "layout", seed=42)
    rc = main(
        [
            "fuse-lilt",
            "--text",
            str(tmp_path / "text"),
            "--layout",
            str(tmp_path / "layout"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "pooler.dense.weight" in err and "missing" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("which", ["text", "layout"])
def test_fuse_missing_checkpoint_is_a_usage_error(tmp_path, capsys, which):
    (tmp_path / "text").mkdir()
    (tmp_path / "layout").mkdir()
    args = {"text": str(tmp_path / "text"), "layout": str(tmp_path / "layout")}
    args[which] = str(tmp_path / "nope")
    rc = main(["fuse-lilt", "--text", args["text"], "--layout", args["layout"], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "not found" in err and err.count("\n") == 1
