"""Blocks: the units of a forward pass that isolation recomputes on their own.

Each family lists its blocks beside its own forward (`refimpl.lilt.blocks`,
`refimpl.lxmert.blocks`): a block reads named tensors of a golden case, writes named tensors,
and runs that family's layer functions on whatever float64 inputs it is given.
`refimpl.compare.isolate` walks the list. This module holds what both lists share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .attention import extended_attention_mask

__all__ = ["Block", "BlockNamesError", "model_prefix", "additive_mask", "ids_and_token_types"]


class BlockNamesError(ValueError):
    """A golden case holds none of a family's block names, so no block can be isolated."""


@dataclass
class Block:
    """A block: reads tensors ``inputs`` (golden names, or ``inputs.*``) and writes ``outputs``.

    ``run`` maps the non-``inputs.*`` tensors it reads (name -> float64 array) to its outputs,
    one array per name of ``outputs``, in that order.
    """

    name: str
    inputs: list[str]
    outputs: list[str]
    run: Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def model_prefix(names, base: str) -> str | None:
    """How a golden case names a family's blocks: ``base + "."`` (a head model's names,
    ``lilt.encoder.layer.0``), ``""`` (a base model's, ``encoder.layer.0``), or ``None`` when
    ``names`` holds neither."""
    for p in (base + ".", ""):
        if p + "encoder.layer.0" in names or p + "embeddings.LayerNorm" in names or p + "embeddings" in names:
            return p
    return None


def ids_and_token_types(inputs) -> tuple[np.ndarray, np.ndarray]:
    """A case's ``input_ids [b, s]`` and its ``token_type_ids [b, s]`` (zeros where it has none)."""
    ids = inputs["input_ids"]
    tt = inputs.get("token_type_ids")
    return ids, (np.zeros_like(ids) if tt is None else tt)


def additive_mask(mask: np.ndarray | None) -> np.ndarray | None:
    """0/1 keep-mask ``[b, s]`` -> additive ``[b, 1, 1, s]`` float64 (``None`` stays ``None``)."""
    if mask is None:
        return None
    return extended_attention_mask(np.asarray(mask, dtype=np.float64), np.float64)
