"""LXMERT's label vocabularies: answer and Visual Genome class indices -> strings.

LXMERT's heads output indices: ``question_answering_score`` is ``[batch, num_qa_labels]``
(3129 VQA answers, 1842 GQA answers, or the 9500 pre-training answers), and the visual
object head scores 1600 Visual Genome objects and 400 attributes per region. The public
files that name those indices are bundled under ``refimpl/data/lxmert-vocab/`` with their
source commits, licences and sha256 (its ``README.md``):

    from refimpl.lxmert import vocabulary, decode_top
    vocabulary("vqa")[425]                      # 'yes'
    decode_top(out.question_answering_score, "vqa", k=3)
    # [[('yes', 7.1), ('no', 2.3), ('2', 0.4)], ...]   one list per batch row

Names and label orders (see that README for the original code each follows):

* ``"vqa"``, ``"gqa"``: airsplay/lxmert's ``trainval_label2ans.json``, a list; label i is
  element i (VQA label 0 is the empty answer ``""``);
* ``"pretrain"``: airsplay/lxmert's ``all_ans.json`` records in file order, ``record["ans"]``
  (the order ``AnswerTable`` builds in the original pre-training code);
* ``"objects"``, ``"attributes"``: py-bottom-up-attention's ``objects_vocab.txt`` /
  ``attributes_vocab.txt``, line i named by its first comma-separated synonym, lower-cased
  and stripped, as the original demo does (LXMERT's labels skip the detector's background
  class, so label i is line i).
"""

from __future__ import annotations

import functools
import math
import numbers
import zlib
from typing import Any

import numpy as np

from .. import data
from ..backend import to_numpy
from ..files import MAX_JSON_BYTES, CheckpointError, read_bytes, read_json

__all__ = ["VOCABULARIES", "VOCABULARY_SIZES", "vocabulary", "vocabulary_for", "decode_top"]

#: the vocabularies `vocabulary` knows, in the order the docs list them.
VOCABULARIES = ("vqa", "gqa", "pretrain", "objects", "attributes")

#: entries of each vocabulary (the width of the head it decodes).
VOCABULARY_SIZES = {"vqa": 3129, "gqa": 1842, "pretrain": 9500, "objects": 1600, "attributes": 400}

#: which head each vocabulary decodes: an answer head (``question_answering_score``) or a
#: decoder of the visual object head (``obj_predict_head.decoder_dict.obj`` / ``.attr``).
HEADS = {"vqa": "answer", "gqa": "answer", "pretrain": "answer", "objects": "obj", "attributes": "attr"}

_FILES = {
    "vqa": "vqa_trainval_label2ans.json",
    "gqa": "gqa_trainval_label2ans.json",
    "pretrain": "lxmert_all_ans.json.gz",
    "objects": "objects_vocab.txt",
    "attributes": "attributes_vocab.txt",
}


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or name not in VOCABULARIES:
        raise ValueError(
            f"vocabulary name={name!r} is unknown; allowed: {', '.join(map(repr, VOCABULARIES))}"
        )
    return name


def _gunzip(blob: bytes, what: str, max_bytes: int) -> bytes:
    """One gzip member, inflated in a stream capped at ``max_bytes`` (a bomb is refused)."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(blob, max_bytes + 1)
    except zlib.error as e:
        raise CheckpointError(f"{what}: not a readable gzip file: {e}") from None
    if len(out) > max_bytes:
        raise CheckpointError(f"{what}: inflates to more than the limit of {max_bytes} bytes")
    if not d.eof or d.unused_data:
        raise CheckpointError(f"{what}: truncated gzip data, or data after its end")
    return out


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CheckpointError(f"{what}: expected a JSON list of strings")
    return value


def _answers(records: Any, what: str) -> list[str]:
    """``all_ans.json`` -> its answers in file order (``AnswerTable(None)`` of the original)."""
    if not isinstance(records, list):
        raise CheckpointError(f"{what}: expected a JSON list of {{'ans': ..., 'dsets': [...]}} records")
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("ans"), str):
            raise CheckpointError(f"{what}: record {i} is not an {{'ans': <string>, ...}} object")
        out.append(r["ans"])
    return out


def _first_synonyms(text: str) -> list[str]:
    """One name per line: the first comma-separated synonym, lower-cased and stripped."""
    return [line.split(",")[0].lower().strip() for line in text.splitlines()]


@functools.cache
def _load(name: str) -> tuple[str, ...]:
    path = data.path("lxmert-vocab", _FILES[name])
    if name in ("vqa", "gqa"):
        words = _strings(read_json(path, what=path), path)
    elif name == "pretrain":
        blob = _gunzip(read_bytes(path, "vocabulary file", MAX_JSON_BYTES), path, MAX_JSON_BYTES)
        words = _answers(read_json(blob, what=path), path)
    else:
        raw = read_bytes(path, "vocabulary file", MAX_JSON_BYTES)
        try:
            words = _first_synonyms(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{path}: not UTF-8 text (offset {e.start})") from None
    if len(words) != VOCABULARY_SIZES[name]:
        raise CheckpointError(f"{path}: {len(words)} entries, expected {VOCABULARY_SIZES[name]}")
    return tuple(words)


def vocabulary(name: str) -> list[str]:
    """The strings of one LXMERT label vocabulary, in label order (read once, then cached).

    Args:
        name: ``"vqa"`` (3129 answers), ``"gqa"`` (1842), ``"pretrain"`` (9500),
            ``"objects"`` (1600 Visual Genome objects) or ``"attributes"`` (400).

    Returns:
        a new list of ``VOCABULARY_SIZES[name]`` strings: entry i names label i. Objects and
        attributes are named by their first synonym (``"stop sign,stopsign"`` -> ``"stop sign"``).

    Raises:
        ValueError: an unknown ``name`` (the message lists the allowed ones).
        CheckpointError: a bundled file is damaged (names the file).
    """
    return list(_load(_check_name(name)))


def vocabulary_for(width: int, head: str = "answer") -> str | None:
    """The vocabulary whose size equals a head's width, or None when none does.

    For ``refimpl demo`` / ``inspect`` style reporting: a head of a known size is decoded,
    any other (the bundled tiny checkpoint's 10 answers, a fine-tuned head) is not.

    Args:
        width: the head's last dimension (``config.num_qa_labels``, ``num_object_labels``,
            ``num_attr_labels``).
        head: ``"answer"`` (``question_answering_score``), ``"obj"`` or ``"attr"`` (the
            visual object head's decoders).

    Returns:
        ``"vqa"``, ``"gqa"``, ``"pretrain"``, ``"objects"``, ``"attributes"`` or None.
    """
    if head not in ("answer", "obj", "attr"):
        raise ValueError(f"head={head!r} must be 'answer', 'obj' or 'attr'")
    for name, size in VOCABULARY_SIZES.items():
        if HEADS[name] == head and size == width:
            return name
    return None


def decode_top(scores: Any, name: str, k: int = 5) -> list:
    """The ``k`` best-scoring labels of each row of ``scores``, as (string, score) pairs.

    Works on any head output whose last axis is the vocabulary: ``question_answering_score``
    ``[batch, num_qa_labels]`` with ``"vqa"``, ``"gqa"`` or ``"pretrain"``, and the visual
    object head's ``obj`` ``[batch, boxes, 1600]`` / ``attr`` ``[batch, boxes, 400]`` with
    ``"objects"`` / ``"attributes"``. Scores are ranked as given (logits rank as their softmax
    does); equal scores keep label order.

    Args:
        scores: a NumPy or CuPy array ``[..., n]`` whose ``n`` equals the vocabulary's size.
        name: the vocabulary, one of ``VOCABULARIES`` (see ``vocabulary``).
        k: how many labels per row, ``1 <= k <= n``.

    Returns:
        nested lists shaped like ``scores.shape[:-1]``, each leaf a list of ``k``
        ``(label string, float score)`` pairs, best first: for an answer head ``[batch, n]``,
        one list of ``k`` pairs per row; for a visual head ``[batch, boxes, n]``, one per box;
        for a single row ``[n]``, the list of ``k`` pairs itself.

    Raises:
        ValueError: an unknown ``name``; a rank-0 array; a last axis that is not the
            vocabulary's size (the message names both sizes: a head of another size, such as
            the bundled tiny checkpoint's, has no known vocabulary); ``k`` out of range; a
            NaN score (names its position).
    """
    words = _load(_check_name(name))
    arr = np.asarray(to_numpy(scores))
    if arr.ndim == 0:
        raise ValueError(f"scores must be [..., {len(words)}] for vocabulary {name!r}, got a 0-d array")
    n = arr.shape[-1]
    if n != len(words):
        raise ValueError(
            f"scores have {n} labels on their last axis (shape {arr.shape}), but vocabulary {name!r} "
            f"has {len(words)}; a head of width {n} has no known vocabulary"
        )
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n:
        raise ValueError(f"k={k!r} must be an integer in [1, {n}]")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"scores must be real numbers, got dtype {arr.dtype}")
    rows = arr.reshape(-1, n)
    bad = np.argwhere(np.isnan(rows))
    if bad.size:
        where = [int(i) for i in np.unravel_index(int(bad[0][0]), arr.shape[:-1])] if arr.ndim > 1 else []
        raise ValueError(f"scores{where + [int(bad[0][1])]} is NaN; cannot rank it")
    # best first; a stable sort of the negated scores keeps label order among equal scores
    order = np.argsort(-rows.astype(np.float64), axis=-1, kind="stable")[:, :k]  # [rows, k]
    flat = [[(words[j], float(rows[r, j])) for j in order[r]] for r in range(rows.shape[0])]
    return _nest(flat, arr.shape[:-1])


def _nest(flat: list, shape: tuple[int, ...]) -> list:
    """A flat list of per-row results -> nested lists shaped like ``shape`` (``()`` -> the row)."""
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
