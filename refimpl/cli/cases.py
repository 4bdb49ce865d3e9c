"""Input cases of ``refimpl golden --inputs``: ``.npz`` (arrays named as the forward keywords),
``.json`` (one case, tokenized with the checkpoint's tokenizer) or ``.jsonl`` (one per line).

Every input is bounded as a whole and checked before any work (docs/loading.md, "Limits"):
an ``.npz`` by the declared sizes of all its members together (``MAX_INPUT_BYTES``), a JSON
case by ``MAX_CASE_BYTES``, a case's text by its characters before it is tokenized
(`max_text_chars`), every sequence by the config's ``max_position_embeddings``, and every
integer of a JSON case (box coordinates, labels, ids) by the int64 it becomes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from ..files import open_regular, read_json, read_npy, read_npz, sha256_file, short_repr
from ..lilt.tokenization import LiltTokenizer
from ..lxmert.tokenization import LxmertTokenizer
from .common import CliError, _need_file, _one_line
from .npz_case import check_npz_case

__all__ = [
    "CASE_SCHEMA",
    "MAX_INPUT_BYTES",
    "MAX_CASE_BYTES",
    "MAX_CHARS_PER_TOKEN",
    "encode_case",
    "read_cases",
    "max_text_chars",
    "check_sequence_lengths",
]


#: the ``refimpl golden --inputs`` case schema (also in docs/golden-format.md, "Porting guide").
CASE_SCHEMA = """\
--inputs formats (chosen by extension):
  .npz    one case: arrays named as the forward keywords (input_ids, bbox, attention_mask, ...), and
          any label the architecture takes (checked before any work: shape, dtype, range):
            LiLT:   head_mask ([heads] or [layers, heads]); labels (token classification: [batch, seq]
                    ids, -100 ignored; sequence classification: [batch] ids, or float [batch, num_labels]
                    multi-label / [batch] regression targets); start_positions, end_positions ([batch])
            LXMERT: LxmertForPreTraining: labels or masked_lm_labels ([batch, seq]), matched_label
                    ([batch], 0/1), ans ([batch]), obj_labels.<kind> and obj_labels.<kind>.weights for
                    kind in obj, attr ([batch, boxes] ids), feat ([batch, boxes, visual_feat_dim]),
                    weights [batch, boxes]; LxmertForQuestionAnswering: labels ([batch] answer ids)
  .json   one case, tokenized with the checkpoint's tokenizer ("description": optional str, ignored):
            LiLT:   {"words": ["Name:", "Ada"], "boxes": [[x0, y0, x1, y1], ...] (0-1000, one per word),
                     "question": "optional str (QA: question first)", "labels": [optional int per word],
                     "entities": {"start": [...], "end": [...], "label": [...]},
                     "relations": {"head": [...], "tail": [...]}}
                    (entities, and optionally relations: LiLTRobertaLikeForRelationExtraction only, the
                     original LiLT's format for this page: start/end token positions of the tokenized
                     page, label 0 HEADER / 1 QUESTION / 2 ANSWER, head/tail entity indices)
              or a padded batch: {"pages": [page, page, ...]}, each page as above
            LXMERT: {"question": "str", "features": "feats.npy" ([boxes, feat_dim] or [1, boxes, feat_dim]),
                     "boxes": "boxes.npy" ([boxes, 4], 0-1),
                     "matched_label": optional int (LxmertForPreTraining),
                     "ans": optional int, the answer index (LxmertForPreTraining's ans,
                            LxmertForQuestionAnswering's labels)}
            (.npy paths are relative to the JSON file)
  .jsonl  one such JSON case per line; --out is then a directory or a pattern with {index}
"""


#: The most bytes an ``--inputs`` file (or a ``.npy`` it names) may hold, and the most an
#: ``.npz``'s members may declare together (checked before any is inflated).
MAX_INPUT_BYTES = 1 << 30
#: The most bytes of one JSON case (a ``.json`` file, one ``.jsonl`` line).
MAX_CASE_BYTES = 16 << 20
#: Characters of text allowed per position of ``max_position_embeddings`` before tokenizing
#: (at least the tokenizer's longest vocabulary entry, see `max_text_chars`).
MAX_CHARS_PER_TOKEN = 128
_INT64 = (-(1 << 63), (1 << 63) - 1)
_SEQ_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "labels",
    "bbox",
    "inputs_embeds",
)


def _load_npz(path: str) -> dict[str, np.ndarray]:
    return read_npz(path, "inputs file", MAX_INPUT_BYTES, max_total=MAX_INPUT_BYTES)


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
        if a.dtype == object:  # ragged, or integers past int64: never dropped silently
            raise CliError(f"tokenizer output {k!r} is not a rectangular array of numbers (dtype object)")
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


def _check_int64(value: int, field: str) -> None:
    """Raise `CliError` naming ``field`` when a JSON integer does not fit the int64 it becomes."""
    if not _INT64[0] <= value <= _INT64[1]:
        raise CliError(
            f"case field {field} = {value} does not fit a 64-bit integer (the int64 array it becomes; "
            f"allowed range [{_INT64[0]}, {_INT64[1]}])"
        )


def _vocab_longest(tok: Any) -> int:
    cached = getattr(tok, "_refimpl_longest_token", None)
    if cached is None:
        backend = getattr(tok, "backend", None)
        try:
            vocab = backend.get_vocab() if backend is not None else {}
        except Exception:  # a tokenizer without a readable vocabulary: the policy bound alone
            vocab = {}
        cached = max(map(len, vocab), default=0)
        try:
            tok._refimpl_longest_token = cached
        except AttributeError:
            pass
    return cached


def max_text_chars(tok: Any, max_positions: int) -> int:
    """The most characters a case's text (words and question together, one more per word)
    may hold before it is tokenized: ``max_positions * max(MAX_CHARS_PER_TOKEN, longest
    vocabulary entry)``.

    No token of the tokenizer covers more characters than its longest vocabulary entry, so a
    longer text cannot fit ``max_positions`` tokens and would be refused by the model after
    tokenization; it is refused here, in time linear in nothing but ``len``. (Only text made
    mostly of whitespace runs, or of words over 100 characters that WordPiece turns into one
    ``[UNK]`` each, could have fit; it is refused too: see docs/loading.md.)
    """
    return max_positions * max(MAX_CHARS_PER_TOKEN, _vocab_longest(tok))


def _check_text(tok: Any, config: Any, chars: int, what: str) -> None:
    if config is None:
        return
    P = int(getattr(config, "max_position_embeddings", 0) or 0)
    limit = max_text_chars(tok, P)
    if P and chars > limit:
        raise CliError(
            f"case {what}: {chars} characters of text cannot fit max_position_embeddings = {P} tokens "
            f"(at most {limit} characters: {limit // P} per token); refused before tokenizing"
        )


def check_sequence_lengths(inputs: dict[str, Any], config: Any, where: str) -> None:
    """Refuse, before any work, an input whose sequence axis (axis 1 of ``input_ids``,
    ``attention_mask``, ``bbox``, ...) is longer than the config's ``max_position_embeddings``
    (a model cannot embed more positions; a padded batch from the oracle's tokenizers never is).

    Args:
        inputs: forward keywords -> arrays: ``input_ids [batch, seq]``, ``bbox [batch, seq, 4]``,
            ``inputs_embeds [batch, seq, hidden]``, ...
        config: the checkpoint's config (None: nothing is checked).
        where: names the input in the message.

    Raises:
        CliError: naming ``where``, the input, its length and the limit.
    """
    P = int(getattr(config, "max_position_embeddings", 0) or 0) if config is not None else 0
    if not P:
        return
    for k in _SEQ_KEYS:
        a = inputs.get(k)
        shape = getattr(a, "shape", None)
        if shape is not None and len(shape) >= 2 and shape[1] > P:
            raise CliError(
                f"{where}: {k} has sequence length {shape[1]} (shape {tuple(shape)}), over "
                f"max_position_embeddings = {P} of the checkpoint's config; refused before any work"
            )


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
    for i, b in enumerate(boxes):
        for j, c in enumerate(b):
            _check_int64(c, f"{at.strip()}'boxes'[{i}][{j}]".lstrip())
    for i, x in enumerate(case.get("labels") or ()):
        _check_int64(x, f"{at.strip()}'labels'[{i}]".lstrip())
    for key in _DOCUMENTS:
        _check_document(case, key, at)


#: the original LiLT relation extraction's per-page documents: field -> its keys.
_DOCUMENTS = {"entities": ("start", "end", "label"), "relations": ("head", "tail")}
#: the architecture that takes them (`refimpl.lilt.original`).
_RE_ARCHITECTURE = "LiLTRobertaLikeForRelationExtraction"


def _check_document(case: dict[str, Any], key: str, at: str) -> None:
    """A page's ``entities`` / ``relations``: an object of equal-length integer lists (the
    model checks the ranges, naming the document, the field and the position)."""
    doc = case.get(key)
    if doc is None:
        return
    fields = _DOCUMENTS[key]
    _need_type(
        doc,
        key,
        lambda v: (
            isinstance(v, dict)
            and set(v) == set(fields)
            and all(isinstance(x, list) and all(_is_int(i) for i in x) for x in v.values())
        ),
        "an object {" + ", ".join(f'"{f}": [int, ...]' for f in fields) + "}",
    )
    for f in fields:
        for i, x in enumerate(doc[f]):
            _check_int64(x, f"{at.strip()}'{key}'['{f}'][{i}]".lstrip())


def _documents(pages: list[dict[str, Any]], architecture: str | None) -> dict[str, list[dict[str, Any]]]:
    """The forward's ``entities`` / ``relations`` (one dict per page), or ``{}`` when no page
    has them; refused for an architecture that does not take them, required by one that does."""
    given = {k: [p.get(k) for p in pages] for k in _DOCUMENTS}
    if architecture == _RE_ARCHITECTURE and not all(d is not None for d in given["entities"]):
        raise CliError(
            f"{_RE_ARCHITECTURE} needs 'entities' on every page: "
            '{"start": [token positions], "end": [...], "label": [0 HEADER, 1 QUESTION, 2 ANSWER]}'
        )
    out = {}
    for key, docs in given.items():
        if all(d is None for d in docs):
            continue
        if architecture != _RE_ARCHITECTURE:
            raise CliError(
                f"LiLT case field {key!r} is an input of {_RE_ARCHITECTURE} (the original LiLT's relation "
                f"extraction); this checkpoint is {architecture}: leave it out"
            )
        if any(d is None for d in docs):
            raise CliError(f"LiLT case 'pages': give every page {key!r}, or none")
        out[key] = [dict(d) for d in docs]
    return out


def _page_chars(page: dict[str, Any]) -> int:
    """Characters of one page's text as the tokenizer sees it (words, separators, question)."""
    return sum(map(len, page["words"])) + len(page["words"]) + len(page.get("question") or "")


def _encode_lilt(case: dict[str, Any], tok: Any, config: Any, architecture: str | None) -> dict[str, Any]:
    """One page, or a padded batch of ``pages``, tokenized together (the text bounded before
    tokenizing, the sequence length after, both by ``config``); a page's ``entities`` and
    ``relations`` become the forward's (one dict per page)."""
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
        for i, page in enumerate(pages):
            _check_text(tok, config, _page_chars(page), f"pages[{i}] 'words' and 'question'")
        kwargs: dict[str, Any] = {"boxes": [p["boxes"] for p in pages], "padding": True}
        if labels[0] is not None:
            kwargs["word_labels"] = labels
        words = [p["words"] for p in pages]
        enc = (
            tok(questions, words, return_tensors="np", **kwargs)
            if all(questions)
            else tok(words, return_tensors="np", **kwargs)
        )
        out: dict[str, Any] = _batched(enc)
        check_sequence_lengths(out, config, "case (tokenized)")
        return {**out, **_documents(pages, architecture)}
    _lilt_page(case)
    _check_text(tok, config, _page_chars(case), "'words' and 'question'")
    kwargs = {"boxes": case["boxes"]}
    if case.get("labels") is not None:
        kwargs["word_labels"] = case["labels"]
    if case.get("question"):
        enc = tok(case["question"], case["words"], return_tensors="np", **kwargs)
    else:
        enc = tok(case["words"], return_tensors="np", **kwargs)
    out = _batched(enc)
    check_sequence_lengths(out, config, "case (tokenized)")
    return {**out, **_documents([case], architecture)}


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
    config: Any = None,
    files: list[str] | None = None,
    architecture: str | None = None,
):
    """Turn one JSON case into forward keywords with the checkpoint's tokenizer.

    LiLT: ``{"words": [...], "boxes": [[x0, y0, x1, y1], ...] (0-1000), "question"?: str,
    "labels"?: [int per word], "entities"?: {"start", "end", "label"}, "relations"?: {"head",
    "tail"}}``, or a padded batch ``{"pages": [page, ...]}``; ``entities`` (required there) and
    ``relations`` only for ``LiLTRobertaLikeForRelationExtraction``, in the original LiLT's
    format (token positions of the tokenized page), one dict per page. LXMERT:
    ``{"question": str, "features": "feats.npy" ([boxes, feat_dim] or [1, boxes,
    feat_dim]), "boxes": "boxes.npy" ([boxes, 4], 0-1), "matched_label"?: int, "ans"?: int}``,
    paths relative to ``base_dir``; ``matched_label`` and ``ans`` only where ``architecture``
    takes them (``ans`` is ``LxmertForQuestionAnswering``'s ``labels``). Any case may carry a
    ``"description"`` string.

    With ``config`` (the checkpoint's), the text is bounded before tokenizing
    (`max_text_chars`) and the result's sequences by ``max_position_embeddings``; integers
    must fit int64 (a 20-digit box coordinate is refused, never dropped). The ``.npy`` files
    read are appended to ``files``.

    Returns:
        (forward keywords -> arrays with a batch axis, plus the documents ``entities`` /
        ``relations`` as lists of one dict per page where the case has them; the tokenizer used).
    """
    if not isinstance(case, dict):
        raise CliError(f"a case must be a JSON object, got {type(case).__name__}")
    tok = tok or _tokenizer(checkpoint, model_type)
    if model_type == "lilt":
        return _encode_lilt(case, tok, config, architecture), tok
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
        for key in _LXMERT_TARGETS:
            if _is_int(case.get(key)):
                _check_int64(case[key], repr(key))
        _check_text(tok, config, len(case["question"]), "'question'")
        feats_path = os.path.join(base_dir, case["features"])
        boxes_path = os.path.join(base_dir, case["boxes"])
        feats = _load_npy(feats_path, "features file")
        boxes = _load_npy(boxes_path, "boxes file")
        if files is not None:
            files += [feats_path, boxes_path]
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
        check_sequence_lengths(enc, config, "case (tokenized)")
        return enc, tok
    raise CliError(f"model_type {model_type!r} has no JSON input format")


def _jsonl_lines(path: str):
    """``(line number, bytes)`` of each line of a ``.jsonl``, streamed: the file at most
    ``MAX_INPUT_BYTES``, each line at most ``MAX_CASE_BYTES``."""
    with open_regular(path, "inputs file", MAX_INPUT_BYTES) as f:
        i = 0
        while True:
            ln = f.readline(MAX_CASE_BYTES + 1)
            if not ln:
                return
            i += 1
            if len(ln) > MAX_CASE_BYTES and not ln.endswith(b"\n"):
                raise CliError(
                    f"{path} line {i}: a case of more than {MAX_CASE_BYTES} bytes exceeds the limit"
                )
            yield i, ln


def read_cases(
    path: str,
    checkpoint: str,
    model_type: str,
    config: Any = None,
    files: list[str] | None = None,
    architecture: str | None = None,
) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """Read ``--inputs``: ``.npz`` (one case, arrays named as forward keywords), ``.json`` (one
    case, tokenized) or ``.jsonl`` (one JSON case per line).

    Args:
        path: the inputs file.
        checkpoint, model_type: whose tokenizer encodes a JSON case.
        config: the checkpoint's config; bounds every case before any work (see `encode_case`
            and `check_sequence_lengths`).
        files: the files read are appended (the inputs file, any ``.npy`` a case names), so a
            writer never writes over them.

    Returns:
        a list of (forward keywords -> arrays, provenance for the manifest).
    """
    _need_file(path, "inputs file")
    if files is not None:
        files.append(path)
    ext = os.path.splitext(path)[1].lower()
    src = {"path": os.path.basename(path), "sha256": sha256_file(path)}
    if ext == ".npz":
        arrays = _load_npz(path)
        check_sequence_lengths(arrays, config, f"inputs file {path}")
        check_npz_case(arrays, config, architecture, path)
        return [(arrays, {"kind": "npz", **src, "description": "arrays named as the forward keywords"})]
    base = os.path.dirname(os.path.abspath(path))
    if ext == ".json":
        case = read_json(path, path, max_bytes=MAX_CASE_BYTES)
        inputs, _ = encode_case(
            case, checkpoint, model_type, base, config=config, files=files, architecture=architecture
        )
        return [(inputs, {"kind": "json", **src, "description": f"{model_type} tokenizer of the checkpoint"})]
    if ext == ".jsonl":
        cases = []
        tok = None
        for i, ln in _jsonl_lines(path):
            if not ln.strip():
                continue
            case = read_json(ln, f"{path} line {i}", max_bytes=MAX_CASE_BYTES)
            try:
                inputs, tok = encode_case(
                    case,
                    checkpoint,
                    model_type,
                    base,
                    tok,
                    config=config,
                    files=files,
                    architecture=architecture,
                )
            except CliError as e:
                raise CliError(f"{path} line {i}: {e}") from None
            cases.append(
                (inputs, {"kind": "jsonl", **src, "line": i, "description": f"{model_type} tokenizer"})
            )
        if not cases:
            raise CliError(f"{path} holds no cases")
        return cases
    raise CliError(f"--inputs must be .npz, .json or .jsonl, got {path!r}")
