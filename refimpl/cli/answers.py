"""Answers by name: the lines ``refimpl demo`` and ``refimpl inspect`` print for an LXMERT
answer head, the top answers named from the bundled vocabularies
(`refimpl.lxmert.labels.vocabulary_for`, `refimpl.lxmert.labels.decode_top`) when the head's
width is a known vocabulary's, its top indices otherwise, and whether the weights are the
bundled random ones."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import data
from ..checkpoints import weight_files
from ..files import sha256_file
from ..lxmert.labels import HEADS, VOCABULARY_SIZES, decode_top, vocabulary_for

__all__ = ["BUNDLED_CHECKPOINTS", "RANDOM_WEIGHTS", "answer_lines", "head_vocabulary_line", "bundled_weights"]

#: the tiny checkpoints shipped with refimpl; their weights are random.
BUNDLED_CHECKPOINTS = ("lilt-tiny", "lxmert-tiny")
#: what the commands say about them.
RANDOM_WEIGHTS = (
    "the bundled tiny checkpoints' weights are random: their predictions and answers mean nothing"
)

#: the vocabularies' names as the commands print them.
_TITLES = {"vqa": "VQA", "gqa": "GQA", "pretrain": "LXMERT pre-training", "objects": "Visual Genome object", "attributes": "Visual Genome attribute"}  # fmt: skip


def answer_lines(scores: Any, head: str = "answer", k: int = 3) -> list[str]:
    """One line per batch row naming the ``k`` best labels of a head's scores.

    Args:
        scores: ``[batch, n]`` (an answer head's ``question_answering_score``), or ``[n]``.
        head: ``"answer"``, ``"obj"`` or ``"attr"`` (see `refimpl.lxmert.labels.vocabulary_for`).
        k: labels per row (at most ``n``).

    Returns:
        ``"top answers (VQA vocabulary, 3129): 'yes' 7.100, 'no' 2.300, ..."`` when ``n`` is a
        known vocabulary's size; otherwise ``"top answer indices (no known vocabulary for a head
        10 wide): 7 (0.120), 3 (0.110), ..."``. A batch of several rows prefixes ``row <r>:``.
    """
    arr = np.asarray(scores, dtype=np.float64)
    rows = arr.reshape(-1, arr.shape[-1])
    n = rows.shape[-1]
    k = max(1, min(k, n))
    what = "answer" if head == "answer" else {"obj": "object", "attr": "attribute"}[head]
    name = vocabulary_for(n, head)
    lines = []
    if name is not None:
        for top in decode_top(rows, name, k):
            shown = ", ".join(f"{w!r} {s:.3f}" for w, s in top)
            lines.append(f"top {what}s ({_TITLES[name]} vocabulary, {n}): {shown}")
    else:
        order = np.argsort(-rows, axis=-1, kind="stable")[:, :k]
        for r in range(rows.shape[0]):
            shown = ", ".join(f"{int(j)} ({rows[r, j]:.3f})" for j in order[r])
            lines.append(f"top {what} indices (no known vocabulary for a head {n} wide): {shown}")
    if len(lines) > 1:
        lines = [f"row {r}: {ln}" for r, ln in enumerate(lines)]
    return lines


def head_vocabulary_line(width: int, head: str = "answer") -> str:
    """What a checkpoint's head of ``width`` labels decodes to: ``"3129 labels: the VQA
    vocabulary"`` or ``"10 labels: no known vocabulary for a head 10 wide (indices only)"``."""
    name = vocabulary_for(int(width), head)
    if name is None:
        known = ", ".join(f"{_TITLES[v]} {s}" for v, s in VOCABULARY_SIZES.items() if HEADS[v] == head)
        return f"{width} labels: no known vocabulary for a head {width} wide (indices only; known: {known})"
    return f"{width} labels: the {_TITLES[name]} vocabulary (refimpl.lxmert.vocabulary({name!r}))"


@functools.cache
def _bundled() -> frozenset[tuple[int, str]]:
    """``(bytes, sha256)`` of every weight file of the bundled checkpoints."""
    out = set()
    for name in BUNDLED_CHECKPOINTS:
        for p in weight_files(data.path(name)):
            if not p.endswith(".json"):
                out.add((os.path.getsize(p), sha256_file(p)))
    return frozenset(out)


def bundled_weights(weights: Any) -> bool:
    """Whether a golden manifest's ``weights`` (``[{"file", "bytes", "sha256"}]``) or a
    checkpoint directory (a path) are the weights of a bundled tiny checkpoint (random). A
    directory's files are hashed only when their sizes are a bundled file's (a real checkpoint
    is never read through for this)."""
    sizes = {n for n, _ in _bundled()}
    if isinstance(weights, (str, os.PathLike)):
        try:
            files = [p for p in weight_files(weights) if not p.endswith(".json")]
            if not files or any(os.path.getsize(p) not in sizes for p in files):
                return False
            entries = [(os.path.getsize(p), sha256_file(p)) for p in files]
        except (OSError, ValueError):
            return False
    else:
        entries = [(w.get("bytes"), w.get("sha256")) for w in weights or [] if isinstance(w, Mapping)]
    return bool(entries) and all(e in _bundled() for e in entries)
