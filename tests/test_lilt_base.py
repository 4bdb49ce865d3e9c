"""LiLT at the size of SCUT-DLVCLab/lilt-roberta-en-base, float32, one full 512-token page.

Random weights in the published checkpoint's shapes (vocab 50265, 514 positions, one token
type, pad id 1, eps 1e-5, 12 x 768 with 12 heads, intermediate 3072, shrink 4, 1024 box
positions), saved by the oracle's ``save_pretrained``. Every output within 1e-4, with the fast
kernels and with the plain formulas only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from _oracle import assert_close, save, to_numpy
from transformers.modeling_utils import no_init_weights

import refimpl
from refimpl import switch

BASE = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    type_vocab_size=1,
    pad_token_id=1,
    layer_norm_eps=1e-5,
    channel_shrink_ratio=4,
    max_2d_position_embeddings=1024,
)


def random_float32_oracle(config: dict, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """tests/_oracle.build's recipe (every weight random, LayerNorm weights around 1), but in float32
    straight from NumPy and without transformers' own initialisation: 130M weights in ~1 s, not ~30 s."""
    with no_init_weights():
        model = transformers.LiltModel(transformers.LiltConfig(**config))
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = rng.standard_normal(tuple(p.shape), dtype=np.float32) * np.float32(std)
            if name.endswith("LayerNorm.weight"):
                noise += 1.0
            p.copy_(torch.from_numpy(noise))
    return model.to(torch.float32).eval()


@pytest.mark.slow
def test_base_size_float32_matches_oracle(tmp_path):
    oracle = random_float32_oracle(BASE)
    save(oracle, tmp_path)
    model = refimpl.from_pretrained(tmp_path, dtype="float32")

    rng = np.random.default_rng(0)
    s = 512  # the longest page: position ids reach pad + 512 = 513, the last row of the table
    ids = rng.integers(3, BASE["vocab_size"], (1, s))
    ids[0, 0], ids[0, -1] = 0, 2  # <s> ... </s>
    x0 = rng.integers(0, 1000, (1, s))
    y0 = rng.integers(0, 1000, (1, s))
    bbox = np.stack(
        [x0, y0, np.minimum(x0 + rng.integers(0, 80, (1, s)), 1023), np.minimum(y0 + 12, 1023)], -1
    )
    mask = np.ones((1, s), dtype=np.int64)
    mask[0, 500:] = 0

    with torch.no_grad():
        ref = oracle(
            input_ids=torch.from_numpy(ids),
            bbox=torch.from_numpy(bbox),
            attention_mask=torch.from_numpy(mask),
            output_hidden_states=True,
            output_attentions=True,
        )
    for use in (switch.fast, switch.reference):  # the fast kernels, then the plain formulas only
        with use():
            out = model(
                input_ids=ids,
                bbox=bbox,
                attention_mask=mask,
                output_hidden_states=True,
                output_attentions=True,
            )
        worst = 0.0
        for name in ref.keys():
            theirs = to_numpy(ref[name])
            pairs = (
                [(f"{name}[{i}]", a, b) for i, (a, b) in enumerate(zip(out[name], theirs, strict=True))]
                if isinstance(theirs, tuple)
                else [(name, out[name], theirs)]
            )
            for label, a, b in pairs:
                assert a.dtype == np.float32, label
                assert_close(f"{use.__name__}: {label}", a, b, 1e-4)
                worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
        print(f"\nLiLT base float32 ({use.__name__}) worst |diff| vs oracle: {worst:.3e}")
