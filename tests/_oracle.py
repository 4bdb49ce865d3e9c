"""Helpers to build oracle (transformers 4.56.2) models with every weight randomized, and save them
as real-format checkpoints. Only tests and benchmarks import this (it imports torch)."""

from __future__ import annotations

import os

import numpy as np
import torch


def tiny_lilt_config(**changes):
    """The small LiLT config the golden-file and compare tests share (``changes`` override)."""
    from transformers import LiltConfig

    sizes = dict(
        vocab_size=60,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=1,
        pad_token_id=1,
        layer_norm_eps=1e-5,
        channel_shrink_ratio=4,
        max_2d_position_embeddings=128,
        num_labels=5,
    )
    return LiltConfig(**{**sizes, **changes})


def tiny_lxmert_config(**changes):
    """The small LXMERT config the golden-file and compare tests share (``changes`` override)."""
    from transformers import LxmertConfig

    sizes = dict(
        vocab_size=50,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=48,
        l_layers=2,
        x_layers=2,
        r_layers=1,
        max_position_embeddings=40,
        visual_feat_dim=12,
        num_qa_labels=5,
        num_object_labels=7,
        num_attr_labels=3,
    )
    return LxmertConfig(**{**sizes, **changes})


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Overwrite every parameter (LayerNorm weights and biases, every bias, padding rows included)
    with seeded random values. LayerNorm/affine weights are drawn around 1, the rest around 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64) * std
            if (
                name.endswith("LayerNorm.weight")
                or name.endswith("layer_norm.weight")
                or "norm.weight" in name
            ):
                noise = noise + 1.0
            p.copy_(noise.to(p.dtype))
    return model


def build(cls, config, seed: int = 0, std: float = 0.05, dtype=torch.float64) -> torch.nn.Module:
    """Instantiate ``cls(config)``, randomize every weight, cast to ``dtype``, eval mode."""
    torch.manual_seed(seed)
    model = cls(config)
    randomize_(model, seed=seed, std=std)
    return model.to(dtype).eval()


def save(model: torch.nn.Module, directory: str | os.PathLike, safe: bool = True) -> str:
    """``save_pretrained`` in safetensors (``safe=True``) or ``pytorch_model.bin`` form; returns the dir."""
    model.save_pretrained(os.fspath(directory), safe_serialization=safe)
    return os.fspath(directory)


def to_numpy(x):
    """Torch tensor (or nested tuple of them) -> NumPy, float64 kept as is."""
    if x is None:
        return None
    if isinstance(x, (tuple, list)):
        return type(x)(to_numpy(v) for v in x)
    return x.detach().cpu().numpy()


def assert_close(name: str, ours, theirs, atol: float, rtol: float = 0.0) -> None:
    """Fail loudly, naming the tensor, when ``ours`` and ``theirs`` differ by more than ``atol + rtol*|theirs|``."""
    ours = np.asarray(ours)
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{name}: shape {ours.shape} != oracle {theirs.shape}"
    if ours.size == 0:
        return
    both_nan = np.isnan(ours) & np.isnan(theirs)
    diff = np.where(both_nan, 0.0, np.abs(ours.astype(np.float64) - theirs.astype(np.float64)))
    bound = atol + rtol * np.where(both_nan, 0.0, np.abs(theirs.astype(np.float64)))  # NaN == NaN passes
    bad = ~(diff <= bound)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(
            f"{name}: max |diff| {np.nanmax(diff):.3e} > atol {atol:g}; first at {idx}: "
            f"ours {ours[idx]!r} vs oracle {theirs[idx]!r}"
        )
