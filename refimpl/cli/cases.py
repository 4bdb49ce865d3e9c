"""Input cases of ``refimpl golden --inputs``: ``.npz`` (arrays named as the forward keywords),
``.json`` (one case, tokenized with the checkpoint's tokenizer) or ``.jsonl`` (one per line)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..files import read_bytes, read_json, read_npy, read_npz, sha256_file, short_repr
from ..lilt.tokenization import LiltTokenizer
from ..lxmert.tokenization import LxmertTokenizer
from .common import CliError, _need_file, _one_line

__all__ = ["CASE_SCHEMA", "MAX_INPUT_BYTES", "encode_case", "read_cases"]


#: the ``refimpl golden --inputs`` case schema (also in docs/golden-format.md, "Porting guide").
CASE_SCHEMA = """\
--inputs formats (chosen by extension):
  .npz    one case: arrays named as the forward keywords (input_ids, bbox, attention_mask, ...)
  .json   one case, tokenized with the checkpoint's tokenizer ("description": optional str, ignored):
            LiLT:   {"words": ["Name:", "Ada"], "boxes": [[x0, y0, x1, y1], ...] (0-1000, one per word),
                     "question": "optional str (QA: question first)", "labels": [optional int per word]}
              or a padded batch: {"pages": [page, page, ...]}, each page as above
            LXMERT: {"question": "str", "features": "feats.npy" ([boxes, feat_dim] or [1, boxes, feat_dim]),
                     "boxes": "boxes.npy" ([boxes, 4], 0-1),
                     "matched_label": optional int (LxmertForPreTraining),
                     "ans": optional int, the answer index (LxmertForPreTraining's ans,
                            LxmertForQuestionAnswering's labels)}
            (.npy paths are relative to the JSON file)
  .jsonl  one such JSON case per line; --out is then a directory or a pattern with {index}
"""


#: The most bytes an ``--inputs`` file (or a ``.npy`` it names, or one ``.npz`` member) may hold.
MAX_INPUT_BYTES = 1 << 30


def _load_npz(path: str) -> dict[str, np.ndarray]:
    return read_npz(path, "inputs file", MAX_INPUT_BYTES)


def _load_npy(path: str, what: str) -> np.ndarray:
    _need_file(path, what)
    return read_npy(path, what, MAX_INPUT_BYTES)


def _tokenizer(checkpoint: str, model_type: str):
    """The checkpoint's tokenizer (refimpl.lilt.LiltTokenizer / refimpl.lxmert.LxmertTokenizer)."""
    if model_type == "lilt":
        Tok = LiltTokenizer
    elif model_type == "lxmert":
        Tok = LxmertTokenizer
    else:
        raise CliError(f"no tokenizer for model_type {model_type!r}")
    try:
        return Tok.from_pretrained(checkpoint)
    except (OSError, ValueError) as e:
        raise CliError(
            f"cannot read the tokenizer of {checkpoint}: {_one_line(e)}. A checkpoint saved by save_pretrained "
            "has no tokenizer files: copy them from the model it was initialised from (tokenizer.save_pretrained(DIR), "
            "or its tokenizer.json / vocab files), or give --inputs as an .npz of token ids"
        ) from None


def _batched(enc: Any) -> dict[str, np.ndarray]:
    """Tokenizer output -> forward keywords with a batch axis, NumPy arrays."""
    items = enc.items() if hasattr(enc, "items") else dict(enc).items()
    out = {}
    for k, v in items:
        if v is None or k in (
            "offset_mapping",
            "special_tokens_mask",
            "overflow_to_sample_mapping",
            "word_ids",
        ):
            continue
        a = np.asarray(v)
        if a.dtype == object:
            continue
        if k in ("input_ids", "attention_mask", "token_type_ids", "labels", "position_ids") and a.ndim == 1:
            a = a[None]
        elif k == "bbox" and a.ndim == 2:
            a = a[None]
        if a.dtype.kind in "iub":
            a = a.astype(np.int64)
        out[k] = a
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need_type(value: Any, field: str, ok: Callable[[Any], bool], want: str) -> None:
    """Raise `CliError` naming the case field unless ``ok(value)``."""
    if not ok(value):
        raise CliError(f"case field {field!r} must be {want}, got {short_repr(value)}")


def _lilt_page(case: dict[str, Any], at: str = "") -> None:
    """Check one LiLT page: ``words``, ``boxes`` (one per word), optional ``question`` and ``labels``."""
    for key in ("words", "boxes"):
        if key not in case:
            raise CliError(f"LiLT case{at} needs {key!r} (has {sorted(case)})")
    words, boxes = case["words"], case["boxes"]
    _need_type(
        words,
        "words",
        lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v),
        "a list of strings",
    )
    _need_type(
        boxes,
        "boxes",
        lambda v: (
            isinstance(v, list)
            and all(isinstance(b, list) and len(b) == 4 and all(_is_int(c) for c in b) for b in v)
        ),
        "a list of [x0, y0, x1, y1] integer lists",
    )
    _need_type(case.get("question"), "question", lambda v: v is None or isinstance(v, str), "a string")
    _need_type(
        case.get("labels"),
        "labels",
        lambda v: v is None or (isinstance(v, list) and all(_is_int(x) for x in v)),
        "a list of integers",
    )
    _need_type(case.get("description"), "description", lambda v: v is None or isinstance(v, str), "a string")
    if len(words) != len(boxes):
        raise CliError(f"LiLT case{at}: {len(words)} words but {len(boxes)} boxes")


def _encode_lilt(case: dict[str, Any], tok: Any) -> dict[str, np.ndarray]:
    """One page, or a padded batch of ``pages``, tokenized together."""
    if "pages" in case:
        pages = case["pages"]
        if not isinstance(pages, list) or not pages or not all(isinstance(p, dict) for p in pages):
            raise CliError("LiLT case field 'pages' must be a non-empty list of page objects")
        for i, page in enumerate(pages):
            _lilt_page(page, f" pages[{i}]")
        questions = [p.get("question") for p in pages]
        if any(questions) and not all(questions):
            raise CliError("LiLT case 'pages': give every page a question, or none")
        labels = [p.get("labels") for p in pages]
        if any(x is not None for x in labels) and not all(x is not None for x in labels):
            raise CliError("LiLT case 'pages': give every page labels, or none")
        kwargs: dict[str, Any] = {"boxes": [p["boxes"] for p in pages], "padding": True}
        if labels[0] is not None:
            kwargs["word_labels"] = labels
        words = [p["words"] for p in pages]
        enc = (
            tok(questions, words, return_tensors="np", **kwargs)
            if all(questions)
            else tok(words, return_tensors="np", **kwargs)
        )
        return _batched(enc)
    _lilt_page(case)
    kwargs = {"boxes": case["boxes"]}
    if case.get("labels") is not None:
        kwargs["word_labels"] = case["labels"]
    if case.get("question"):
        enc = tok(case["question"], case["words"], return_tensors="np", **kwargs)
    else:
        enc = tok(case["words"], return_tensors="np", **kwargs)
    return _batched(enc)


#: LXMERT case fields that are training targets: field -> {architecture: forward keyword}.
_LXMERT_TARGETS = {
    "matched_label": {"LxmertForPreTraining": "matched_label"},
    "ans": {"LxmertForPreTraining": "ans", "LxmertForQuestionAnswering": "labels"},
}


def encode_case(
    case: dict[str, Any],
    checkpoint: str,
    model_type: str,
    base_dir: str,
    tok: Any = None,
    architecture: str | None = None,
):
    """Turn one JSON case into forward keywords with the checkpoint's tokenizer.

    LiLT: ``{"words": [...], "boxes": [[x0, y0, x1, y1], ...] (0-1000), "question"?: str,
    "labels"?: [int per word]}``, or a padded batch ``{"pages": [page, ...]}``. LXMERT:
    ``{"question": str, "features": "feats.npy" ([boxes, feat_dim] or [1, boxes,
    feat_dim]), "boxes": "boxes.npy" ([boxes, 4], 0-1), "matched_label"?: int, "ans"?: int}``,
    paths relative to ``base_dir``; ``matched_label`` and ``ans`` only where ``architecture``
    takes them (``ans`` is ``LxmertForQuestionAnswering``'s ``labels``). Any case may carry a
    ``"description"`` string.

    Returns:
        (forward keywords -> arrays with a batch axis of 1, the tokenizer used).
    """
    if not isinstance(case, dict):
        raise CliError(f"a case must be a JSON object, got {type(case).__name__}")
    tok = tok or _tokenizer(checkpoint, model_type)
    if model_type == "lilt":
        return _encode_lilt(case, tok), tok
    if model_type == "lxmert":
        for key in ("question", "features", "boxes"):
            if key not in case:
                raise CliError(f"LXMERT case needs {key!r} (has {sorted(case)})")
        for key in ("question", "features", "boxes"):
            _need_type(case[key], key, lambda v: isinstance(v, str), "a string")
        known = {"question", "features", "boxes", "description", *_LXMERT_TARGETS}
        if set(case) - known:
            raise CliError(
                f"LXMERT case: unknown field(s) {sorted(set(case) - known)} (known: {sorted(known)})"
            )
        feats = _load_npy(os.path.join(base_dir, case["features"]), "features file")
        boxes = _load_npy(os.path.join(base_dir, case["boxes"]), "boxes file")
        feats = feats[None] if feats.ndim == 2 else feats
        boxes = boxes[None] if boxes.ndim == 2 else boxes
        if feats.ndim != 3 or boxes.ndim != 3 or feats.shape[:2] != boxes.shape[:2] or boxes.shape[2] != 4:
            raise CliError(
                f"LXMERT case: features {feats.shape} and boxes {boxes.shape} must be [boxes, feat_dim] and [boxes, 4]"
            )
        enc = _batched(tok(case["question"], return_tensors="np"))
        enc["visual_feats"] = feats.astype(np.float64)
        enc["visual_pos"] = boxes.astype(np.float64)
        for key, by_arch in _LXMERT_TARGETS.items():  # optional pre-training / QA targets: one int each
            if case.get(key) is not None:
                if not isinstance(case[key], int) or isinstance(case[key], bool):
                    raise CliError(f"LXMERT case: {key!r} must be an integer, got {case[key]!r}")
                kw = by_arch.get(architecture or "LxmertForPreTraining")
                if kw is None:
                    raise CliError(
                        f"LXMERT case field {key!r} is a target of {' or '.join(by_arch)}; this checkpoint is "
                        f"{architecture}: leave it out"
                    )
                enc[kw] = np.array([case[key]], dtype=np.int64)
        return enc, tok
    raise CliError(f"model_type {model_type!r} has no JSON input format")


def read_cases(
    path: str, checkpoint: str, model_type: str, architecture: str | None = None
) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """Read ``--inputs``: ``.npz`` (one case, arrays named as forward keywords), ``.json`` (one
    case, tokenized) or ``.jsonl`` (one JSON case per line).

    Returns:
        a list of (forward keywords -> arrays, provenance for the manifest).
    """
    _need_file(path, "inputs file")
    ext = os.path.splitext(path)[1].lower()
    src = {"path": os.path.basename(path), "sha256": sha256_file(path)}
    if ext == ".npz":
        return [
            (_load_npz(path), {"kind": "npz", **src, "description": "arrays named as the forward keywords"})
        ]
    base = os.path.dirname(os.path.abspath(path))
    if ext == ".json":
        case = read_json(path, path, max_bytes=MAX_INPUT_BYTES)
        inputs, _ = encode_case(case, checkpoint, model_type, base, architecture=architecture)
        return [(inputs, {"kind": "json", **src, "description": f"{model_type} tokenizer of the checkpoint"})]
    if ext == ".jsonl":
        cases = []
        tok = None
        lines = read_bytes(path, "inputs file", MAX_INPUT_BYTES).split(b"\n")
        for i, ln in enumerate(lines):
            if not ln.strip():
                continue
            case = read_json(ln, f"{path} line {i + 1}", max_bytes=MAX_INPUT_BYTES)
            inputs, tok = encode_case(case, checkpoint, model_type, base, tok, architecture)
            cases.append(
                (inputs, {"kind": "jsonl", **src, "line": i + 1, "description": f"{model_type} tokenizer"})
            )
        if not cases:
            raise CliError(f"{path} holds no cases")
        return cases
    raise CliError(f"--inputs must be .npz, .json or .jsonl, got {path!r}")
