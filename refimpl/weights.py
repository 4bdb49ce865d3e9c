"""Checkpoint weights: read, upcast, and match keys strictly.

INTERIM: this first version reads a single ``model.safetensors``. The foundation issue
extends it (memory mapping, shards, ``pytorch_model.bin`` through a restricted unpickler,
fp16/bf16, corrupt-file errors); the two public functions below keep their signatures.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

__all__ = ["CheckpointError", "load_state_dict", "match_state_dict", "subtree"]


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: lists every missing, unexpected and misshaped key."""


def load_state_dict(path: str | os.PathLike, dtype=np.float32) -> dict[str, np.ndarray]:
    """Read every tensor of a checkpoint directory (or weight file) as NumPy arrays of ``dtype``.

    Args:
        path: checkpoint directory or a weight file.
        dtype: float dtype to cast floating tensors to (integer tensors keep theirs).

    Returns:
        checkpoint key -> array.
    """
    from safetensors.numpy import load_file

    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "model.safetensors")
    state = load_file(p)
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in state.items()}


def match_state_dict(
    state: dict[str, Any],
    expected: dict[str, tuple[int, ...]],
    prefix: str = "",
    is_base_model: bool = False,
    tied: dict[str, str] | None = None,
    ignored_unexpected: tuple[str, ...] = (),
    source: str = "checkpoint",
) -> dict[str, Any]:
    """Map checkpoint keys onto the model's expected keys, strictly.

    The model's keys are those ``save_pretrained`` of the oracle's class writes: a base
    model's are unprefixed (``embeddings.word_embeddings.weight``), a head model's carry the
    base prefix (``lilt.embeddings...``) beside the head's own (``classifier.dense.weight``).
    As in transformers, a checkpoint saved from the other kind of class is accepted: its
    prefix is added or removed. A base model loaded from a head checkpoint ignores the head's
    weights (they belong to another class).

    Args:
        state: checkpoint key -> array.
        expected: model key -> shape.
        prefix: the base-model prefix ("lilt" / "lxmert").
        is_base_model: whether the model is the base class.
        tied: model key -> model key it is tied to (filled from the source when absent).
        ignored_unexpected: regexes of checkpoint keys the oracle ignores.
        source: path used in the error message.

    Returns:
        model key -> array, exactly the keys of ``expected``.

    Raises:
        CheckpointError: naming every missing, unexpected and misshaped key at once.
    """
    tied = tied or {}
    pre = prefix + "." if prefix else ""
    has_prefixed = any(k.startswith(pre) for k in state) if pre else False
    renamed: dict[str, Any] = {}
    dropped_head: list[str] = []
    for k, v in state.items():
        if is_base_model and pre:
            if k.startswith(pre):
                renamed[k[len(pre) :]] = v
            elif has_prefixed:
                dropped_head.append(k)  # a head weight of a head-model checkpoint
            else:
                renamed[k] = v
        elif pre and not has_prefixed and (pre + k) in expected:
            renamed[pre + k] = v  # a base-model checkpoint loaded into a head model
        else:
            renamed[k] = v

    params: dict[str, Any] = {}
    missing, unexpected, misshaped = [], [], []
    for k, shape in expected.items():
        if k in renamed:
            v = renamed[k]
            if tuple(v.shape) != tuple(shape):
                misshaped.append(f"{k}: checkpoint {tuple(v.shape)} != model {tuple(shape)}")
            params[k] = v
        elif k not in tied:
            missing.append(k)
    for k, src in tied.items():
        if k in expected and src in params:
            params[k] = params[src]  # tied as the oracle ties: the source wins
    ignore = [re.compile(p) for p in ignored_unexpected]
    for k in renamed:
        if k not in expected and not any(p.search(k) for p in ignore):
            unexpected.append(k)
    if missing or unexpected or misshaped:
        lines = [f"checkpoint {source} does not fit the model:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshaped)):
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines.extend(f"    {k}" for k in keys)
        raise CheckpointError("\n".join(lines))
    return params


def subtree(params: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The weights under ``prefix`` with the prefix removed: ``subtree(p, "lilt.pooler")["dense.weight"]``."""
    pre = prefix.rstrip(".") + "."
    return {k[len(pre) :]: v for k, v in params.items() if k.startswith(pre)}
