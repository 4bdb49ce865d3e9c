"""Shared input-preparation steps of the two tokenizers: strategies, truncation, padding, arrays.

The subword work (normalizing, pre-tokenizing, BPE / WordPiece, adding the special tokens, and
cutting long inputs into windows) is done by the `tokenizers` library, the same Rust engine that
transformers' fast tokenizers drive. Everything after it is written out here in plain Python, in
the order transformers 4.56.2 does it:

1. ``resolve_strategies``: ``padding=`` / ``truncation=`` / ``max_length=`` -> one padding strategy,
   one truncation strategy and one length (``_get_padding_truncation_strategies``).
2. ``encode_rows``: run the backend (truncation on, padding off) and flatten every encoding and,
   if asked, its overflowing windows into rows: one row = one model input sequence.
3. ``pad_rows``: pad every row to the longest top-level row (or ``max_length``), rounded up to
   ``pad_to_multiple_of``; pads get ``pad_token_id``, type id ``pad_token_type_id``, attention 0,
   special-tokens mask 1, offset (0, 0) and no word.
4. ``BatchEncoding``: a dict of lists (or NumPy arrays with ``return_tensors="np"``) that also
   keeps each row's ``word_ids`` / ``sequence_ids`` / ``tokens``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
from tokenizers import AddedToken

# transformers: VERY_LARGE_INTEGER = int(1e30) is "no limit"; anything above LARGE_INTEGER = int(1e20) counts as none.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)

PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("only_first", "only_second", "longest_first", "do_not_truncate")


@dataclass
class Row:
    """One model input sequence (one batch row) before conversion to arrays.

    Every list has the row's length ``L``; ``offsets`` holds (start, end) character spans in
    the word (pre-tokenized input) or the text, ``word_ids`` / ``sequence_ids`` are None for
    special tokens and pads.
    """

    input_ids: list
    token_type_ids: list
    attention_mask: list
    special_tokens_mask: list
    offsets: list
    word_ids: list
    sequence_ids: list
    tokens: list
    sample_index: int  # which input example of the batch this row (or overflow window) came from
    top: bool = True  # False for overflow windows (they do not count for "longest" padding)
    extra: dict = field(default_factory=dict)


class BatchEncoding(dict):
    """What the tokenizers return: ``{"input_ids": ..., "attention_mask": ..., ...}``.

    A dict whose values are lists (``return_tensors=None``) or NumPy arrays
    (``return_tensors="np"``), in transformers' key order. Keys are also readable as attributes
    (``enc.input_ids``). ``word_ids(i)`` maps each token of row ``i`` to the index of the word it
    came from (None for special tokens and pads); use it to map token predictions back to words.
    """

    def __init__(self, data: dict, rows: list[Row] | None = None):
        super().__init__(data)
        self._rows = list(rows or [])

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    def _row(self, batch_index: int) -> Row:
        if not -len(self._rows) <= batch_index < len(self._rows):
            raise ValueError(
                f"batch_index={batch_index} is out of range for a batch of {len(self._rows)} rows"
            )
        return self._rows[batch_index]

    def word_ids(self, batch_index: int = 0) -> list:
        """Word index of each token of row ``batch_index`` (None for special tokens and pads). [L]"""
        return list(self._row(batch_index).word_ids)

    def sequence_ids(self, batch_index: int = 0) -> list:
        """0 for tokens of the first sequence, 1 for the second, None for special tokens and pads. [L]"""
        return list(self._row(batch_index).sequence_ids)

    def tokens(self, batch_index: int = 0) -> list:
        """The token strings of row ``batch_index``. [L]"""
        return list(self._row(batch_index).tokens)

    @property
    def n_sequences(self) -> int:
        """Number of rows (batch size after overflow windows)."""
        return len(self._rows)


def read_json(path: str) -> dict:
    """Read a JSON file, or return {} when it does not exist."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def token_content(value) -> str | None:
    """A special token as written in tokenizer_config.json: a string or {"content": ...}."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:
        return value["content"]
    raise ValueError(f"special token {value!r} is neither a string nor a {{'content': ...}} object")


def _strategy(name: str, value, if_true: str, if_false: str, allowed: tuple[str, ...]) -> str:
    """``True`` / ``False`` / ``None`` / a strategy name (or transformers' enum) -> a strategy name."""
    if value is True:
        return if_true
    if value is False or value is None:
        return if_false
    strategy = getattr(value, "value", value)
    if strategy not in allowed:
        raise ValueError(f"{name}={value!r} is not one of True, False, {', '.join(map(repr, allowed))}")
    return strategy


def resolve_strategies(padding, truncation, max_length, pad_to_multiple_of, model_max_length, pad_token_id):
    """Turn the user's ``padding`` / ``truncation`` / ``max_length`` into strategies.

    Mirrors transformers' ``_get_padding_truncation_strategies``:
    - ``max_length`` alone (padding False, truncation None) turns on ``"longest_first"`` truncation;
    - ``padding=True`` is ``"longest"``, ``truncation=True`` is ``"longest_first"``;
    - without ``max_length``, ``"max_length"`` padding and truncation use ``model_max_length``,
      or are switched off when the checkpoint sets none (> 1e20).

    Returns:
        (padding_strategy, truncation_strategy, max_length): strategies are the lower-case names
        in PADDING_STRATEGIES / TRUNCATION_STRATEGIES.
    """
    if max_length is not None and padding is False and truncation is None:
        truncation = "longest_first"

    padding_strategy = _strategy("padding", padding, "longest", "do_not_pad", PADDING_STRATEGIES)
    truncation_strategy = _strategy(
        "truncation", truncation, "longest_first", "do_not_truncate", TRUNCATION_STRATEGIES
    )

    if max_length is None:
        if padding_strategy == "max_length":
            if model_max_length > LARGE_INTEGER:
                padding_strategy = "do_not_pad"  # transformers warns and does not pad
            else:
                max_length = model_max_length
        if truncation_strategy != "do_not_truncate":
            if model_max_length > LARGE_INTEGER:
                truncation_strategy = "do_not_truncate"  # transformers warns and does not truncate
            else:
                max_length = model_max_length
    elif not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool) or max_length < 0:
        raise ValueError(f"max_length={max_length!r} must be a non-negative integer or None")

    if padding_strategy != "do_not_pad" and (pad_token_id is None or pad_token_id < 0):
        raise ValueError("Asking to pad but the tokenizer has no padding token (pad_token)")

    if pad_to_multiple_of is not None and (
        not isinstance(pad_to_multiple_of, (int, np.integer)) or pad_to_multiple_of <= 0
    ):
        raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of!r} must be a positive integer or None")
    if (
        truncation_strategy != "do_not_truncate"
        and padding_strategy != "do_not_pad"
        and pad_to_multiple_of is not None
        and max_length is not None
        and max_length % pad_to_multiple_of != 0
    ):
        raise ValueError(
            f"Truncation and padding are both activated but truncation length ({max_length}) is not a "
            f"multiple of pad_to_multiple_of ({pad_to_multiple_of})."
        )
    return padding_strategy, truncation_strategy, max_length


def encode_rows(
    backend,
    inputs: list,
    *,
    is_pretokenized: bool,
    add_special_tokens: bool,
    truncation_strategy: str,
    max_length: int | None,
    stride: int,
    truncation_side: str,
    return_overflowing_tokens: bool,
) -> list[Row]:
    """Run the `tokenizers` backend on a batch and flatten it into rows.

    ``inputs`` is a list of sequences or of (first, second) pairs. Truncation (with ``stride``
    tokens of overlap between overflow windows) is done by the backend exactly as transformers
    asks it to; padding is not (see ``pad_rows``).

    Returns:
        rows: one Row per encoding, followed by its overflow windows when asked for.
    """
    if truncation_strategy == "do_not_truncate":
        backend.no_truncation()
    else:
        backend.enable_truncation(
            max_length=max_length, stride=stride, strategy=truncation_strategy, direction=truncation_side
        )
    backend.no_padding()
    try:
        encodings = backend.encode_batch(
            inputs, add_special_tokens=add_special_tokens, is_pretokenized=is_pretokenized
        )
    except Exception as e:  # the Rust engine raises a bare Exception for impossible truncations
        raise ValueError(f"tokenizers could not encode the batch: {e}") from e
    except BaseException as e:
        # ... and panics (pyo3_runtime.PanicException, a BaseException) when stride >= the room
        # left for a sequence after the special tokens.
        if type(e).__name__ != "PanicException":
            raise
        raise ValueError(
            f"tokenizers refused the truncation (stride={stride}, max_length={max_length}): {e}"
        ) from None
    finally:
        backend.no_truncation()

    rows = []
    for sample_index, encoding in enumerate(encodings):
        windows = [encoding] + list(encoding.overflowing) if return_overflowing_tokens else [encoding]
        for k, e in enumerate(windows):
            rows.append(
                Row(
                    input_ids=list(e.ids),
                    token_type_ids=list(e.type_ids),
                    attention_mask=list(e.attention_mask),
                    special_tokens_mask=list(e.special_tokens_mask),
                    offsets=[tuple(o) for o in e.offsets],
                    word_ids=list(e.word_ids),
                    sequence_ids=list(e.sequence_ids),
                    tokens=list(e.tokens),
                    sample_index=sample_index,
                    top=k == 0,
                )
            )
    return rows


def pad_rows(
    rows: list[Row],
    *,
    padding_strategy: str,
    max_length: int | None,
    pad_to_multiple_of: int | None,
    padding_side: str,
    pad_token_id: int,
    pad_token: str,
    pad_token_type_id: int,
) -> None:
    """Pad rows in place, as the `tokenizers` engine pads a batch.

    The target length is ``max_length`` ("max_length") or the longest top-level encoding
    ("longest": overflow windows do not count), rounded up to a multiple of
    ``pad_to_multiple_of``. Rows already that long or longer are left as they are.
    """
    if padding_strategy == "do_not_pad":
        return
    target = (
        max_length
        if padding_strategy == "max_length"
        else max((len(r.input_ids) for r in rows if r.top), default=0)
    )
    if pad_to_multiple_of is not None and target % pad_to_multiple_of != 0:
        target += pad_to_multiple_of - target % pad_to_multiple_of
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side={padding_side!r} must be 'right' or 'left'")
    for row in rows:
        n = target - len(row.input_ids)
        if n <= 0:
            continue
        fills = {
            "input_ids": pad_token_id,
            "token_type_ids": pad_token_type_id,
            "attention_mask": 0,
            "special_tokens_mask": 1,
            "offsets": (0, 0),
            "word_ids": None,
            "sequence_ids": None,
            "tokens": pad_token,
        }
        for name, fill in fills.items():
            values = getattr(row, name)
            setattr(row, name, values + [fill] * n if padding_side == "right" else [fill] * n + values)


def as_numpy(value):
    """A list of rows -> NumPy array, as transformers' BatchEncoding does for return_tensors="np".

    Ragged rows become an object array of per-row arrays (transformers does the same, it does
    not raise).
    """
    if (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and isinstance(value[0], (list, tuple, np.ndarray))
    ):
        if len({len(v) for v in value}) > 1:
            return np.asarray([np.asarray(v) for v in value], dtype=object)
    return np.asarray(value)


def to_tensors(data: dict, return_tensors) -> dict:
    """Convert every value to a NumPy array for ``return_tensors="np"``; None leaves lists."""
    if return_tensors is None:
        return data
    if return_tensors not in ("np", "numpy"):
        raise ValueError(f"return_tensors={return_tensors!r}: only None and 'np' are supported")
    out = {}
    for key, value in data.items():
        try:
            out[key] = as_numpy(value)
        except Exception as e:
            raise ValueError(
                f"Unable to create an array for `{key}`: activate truncation and/or padding "
                "(padding=True, truncation=True) to get rows of equal length"
            ) from e
    return out


def strip_batch_axis(data: dict) -> dict:
    """Single (non-batched) input without return_tensors: drop the leading batch axis of list values."""
    return {k: (v[0] if len(v) > 0 and isinstance(v[0], list) else v) for k, v in data.items()}


def check_side(name: str, value: str) -> str:
    """Validate a padding/truncation side."""
    if value not in ("right", "left"):
        raise ValueError(f"{name}={value!r} must be 'right' or 'left'")
    return value


def added_token(entry: dict, normalized: bool) -> AddedToken:
    """An AddedToken from a tokenizer_config.json "added_tokens_decoder" entry.

    Args:
        entry: the entry (``content`` and optional flags).
        normalized: the flag's default when the entry leaves it out (the two tokenizer
            families of transformers differ here).
    """
    return AddedToken(
        entry["content"],
        single_word=entry.get("single_word", False),
        lstrip=entry.get("lstrip", False),
        rstrip=entry.get("rstrip", False),
        normalized=entry.get("normalized", normalized),
        special=entry.get("special", False),
    )


class TokenizerBase:
    """What both tokenizers share: vocabulary look-ups, and steps 2-3 of the pipeline above.

    A subclass holds a ``tokenizers.Tokenizer`` as ``backend``, special-token strings as
    ``cls_token``, ``sep_token``, ``pad_token`` (and ``mask_token``), and ``pad_token_type_id``,
    ``padding_side``, ``truncation_side``.
    """

    backend = None
    cls_token = sep_token = pad_token = mask_token = None

    def token_to_id(self, token: str | None) -> int | None:
        """Id of a token string (None if absent)."""
        return None if token is None else self.backend.token_to_id(token)

    @property
    def cls_token_id(self) -> int | None:
        """Id of the classification token (``<s>`` / ``[CLS]``)."""
        return self.token_to_id(self.cls_token)

    @property
    def sep_token_id(self) -> int | None:
        """Id of the separator token (``</s>`` / ``[SEP]``)."""
        return self.token_to_id(self.sep_token)

    @property
    def pad_token_id(self) -> int | None:
        """Id of the padding token."""
        return self.token_to_id(self.pad_token)

    @property
    def mask_token_id(self) -> int | None:
        """Id of the mask token (None if the tokenizer has none)."""
        return self.token_to_id(self.mask_token)

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (without added tokens)."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Token ids (a sequence of ints) -> text, through the backend's decoder."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def encode_and_pad(
        self,
        inputs: list,
        *,
        is_pretokenized: bool,
        add_special_tokens: bool,
        truncation_strategy: str,
        padding_strategy: str,
        max_length: int | None,
        stride: int,
        pad_to_multiple_of: int | None,
        padding_side: str | None,
        return_overflowing_tokens: bool,
    ) -> list[Row]:
        """Run the backend on ``inputs`` (`encode_rows`), then pad the rows (`pad_rows`).

        Args:
            inputs: one entry per sample: a sequence, or a ``(first, second)`` pair.
            padding_side: ``None`` for the tokenizer's own.
            the rest: as resolved by `resolve_strategies` and the call's keywords.

        Returns:
            one `Row` per model input sequence (overflow windows included), padded.
        """
        rows = encode_rows(
            self.backend,
            inputs,
            is_pretokenized=is_pretokenized,
            add_special_tokens=add_special_tokens,
            truncation_strategy=truncation_strategy,
            max_length=max_length,
            stride=stride,
            truncation_side=self.truncation_side,
            return_overflowing_tokens=return_overflowing_tokens,
        )
        pad_rows(
            rows,
            padding_strategy=padding_strategy,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=check_side("padding_side", padding_side or self.padding_side),
            pad_token_id=self.pad_token_id,
            pad_token=self.pad_token,
            pad_token_type_id=self.pad_token_type_id,
        )
        return rows

    def columns(
        self,
        rows: list[Row],
        *,
        return_token_type_ids: bool | None,
        return_attention_mask: bool | None,
        return_special_tokens_mask: bool,
        return_offsets_mapping: bool,
        return_length: bool,
        return_overflowing_tokens: bool,
    ) -> dict[str, list]:
        """The padded rows as transformers' columns, in its key order: ``input_ids``, then each
        asked-for column (``None`` for the first two: present when ``model_input_names`` has it).

        Args:
            rows: one `Row` per model input sequence, ``n`` of them, each padded to ``seq``.

        Returns:
            ``{name: n lists of seq values}`` (``length``: ``n`` ints;
            ``overflow_to_sample_mapping``: ``n`` sample indices).
        """
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        data = {"input_ids": [r.input_ids for r in rows]}
        if return_token_type_ids:
            data["token_type_ids"] = [r.token_type_ids for r in rows]
        if return_attention_mask:
            data["attention_mask"] = [r.attention_mask for r in rows]
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [r.special_tokens_mask for r in rows]
        if return_offsets_mapping:
            data["offset_mapping"] = [r.offsets for r in rows]
        if return_length:
            data["length"] = [len(r.input_ids) for r in rows]
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = [r.sample_index for r in rows]
        return data
