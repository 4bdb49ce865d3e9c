"""Matching checkpoint keys to the model's, strictly, as transformers does."""

from __future__ import annotations

import re
from typing import Any

from ..files import CheckpointError

__all__ = ["match_state_dict", "subtree"]


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
    for k, v in state.items():
        if is_base_model and pre:
            if k.startswith(pre):
                new = k[len(pre) :]
            elif has_prefixed:
                continue  # a head weight of a head-model checkpoint: another class's
            else:
                new = k
        elif pre and not has_prefixed and (pre + k) in expected:
            new = pre + k  # a base-model checkpoint loaded into a head model
        else:
            new = k
        renamed[new] = v

    params: dict[str, Any] = {}
    misshaped = []
    for k, shape in expected.items():
        if k in renamed:
            v = renamed[k]
            if tuple(v.shape) != tuple(shape):
                misshaped.append(f"{k}: checkpoint {tuple(v.shape)} != model {tuple(shape)}")
            params[k] = v
    for k, src in tied.items():
        if k in expected and src in params:
            params[k] = params[src]  # tied as the oracle ties: the source wins
    missing = [k for k in expected if k not in params]  # a tied key whose source is missing, too
    ignore = [re.compile(p) for p in ignored_unexpected]
    unexpected = [k for k in renamed if k not in expected and not any(p.search(k) for p in ignore)]
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
