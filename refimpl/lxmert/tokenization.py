"""LXMERT's tokenizer: text (or text pairs) -> input_ids, token_type_ids, attention_mask.

LXMERT uses BERT's uncased WordPiece tokenizer; this equals transformers 4.56.2's
``LxmertTokenizerFast`` (the oracle), call for call:

- normalize (``BertNormalizer``): drop control characters and map whitespace to " ", put spaces
  around every CJK character, lower-case and strip accents (NFD, drop combining marks);
- pre-tokenize (``BertPreTokenizer``): split on whitespace and around every punctuation character;
- WordPiece: greedy longest-match-first sub-words, continuations prefixed with "##", a word
  with no match (or longer than 100 characters) becomes ``[UNK]``;
- ``[CLS] A [SEP]`` with type ids 0, pairs ``[CLS] A [SEP] B [SEP]`` with B and its [SEP] type 1.

The first three steps and the template run in the `tokenizers` library; padding and the
batch/array logic are written out in ``refimpl.tokenization_utils``.
"""

from __future__ import annotations

import json
import os

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ..tokenization_utils import (
    VERY_LARGE_INTEGER,
    BatchEncoding,
    TokenizerBase,
    added_token,
    check_side,
    read_json,
    resolve_strategies,
    strip_batch_axis,
    to_tensors,
    token_content,
)

SPECIAL_TOKEN_NAMES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
DEFAULT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def read_wordpiece_vocab(vocab_file: str) -> dict:
    """Read vocab.txt as transformers' ``load_vocab``: one token per line, id = line number.

    A token repeated on a later line takes that later line's id (it is a dict update).
    """
    vocab = {}
    with open(vocab_file, encoding="utf-8") as f:
        tokens = f.readlines()
    for index, token in enumerate(tokens):
        vocab[token.rstrip("\n")] = index
    return vocab


def build_wordpiece_backend(
    vocab: dict,
    special_tokens: dict,
    added_tokens: list,
    do_lower_case: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
) -> Tokenizer:
    """BERT WordPiece pipeline, as transformers converts a slow LXMERT/BERT tokenizer.

    Args:
        vocab: {token: id} from vocab.txt.
        special_tokens: {"cls_token": "[CLS]", ...}.
        added_tokens: AddedToken objects to register (special tokens), ids from the vocab.
        do_lower_case / strip_accents / tokenize_chinese_chars: BertNormalizer switches
            (strip_accents None: follow do_lower_case).
    """
    ids = dict(vocab)
    for token in added_tokens:
        if token.content not in ids:
            ids[token.content] = len(ids)
    backend = Tokenizer(models.WordPiece(vocab, unk_token=special_tokens["unk_token"]))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents,
        lowercase=do_lower_case,
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = special_tokens["cls_token"], special_tokens["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_tokens(added_tokens)
    return backend


def _is_text_input(t) -> bool:
    """transformers' accepted shapes: str, list[str], list[list[str]] (empty lists too)."""
    if isinstance(t, str):
        return True
    if isinstance(t, (list, tuple)):
        if len(t) == 0 or isinstance(t[0], str):
            return True
        if isinstance(t[0], (list, tuple)):
            return len(t[0]) == 0 or isinstance(t[0][0], str)
    return False


def _check_strings(value, name: str, depth: int) -> None:
    """Every leaf is a string (the shape was already checked on the first element only)."""
    if depth == 0:
        if not isinstance(value, str):
            raise ValueError(f"{name} is {value!r}, expected a string")
        return
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} is {value!r}, expected a list")
    for i, v in enumerate(value):
        _check_strings(v, f"{name}[{i}]", depth - 1)


class LxmertTokenizer(TokenizerBase):
    """Tokenizer for LXMERT checkpoints; equal to transformers' ``LxmertTokenizerFast``.

    Example:

        tok = LxmertTokenizer.from_pretrained("path/to/lxmert")
        enc = tok(["what is on the table?", "how many dogs?"], padding=True, return_tensors="np")
        enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]   # [2, L] each
    """

    model_input_names = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(
        self,
        backend: Tokenizer,
        *,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        do_lower_case=True,
        tokenize_chinese_chars=True,
        strip_accents=None,
        model_max_length=VERY_LARGE_INTEGER,
        padding_side="right",
        truncation_side="right",
        pad_token_type_id=0,
    ):
        self.backend = backend
        self.unk_token, self.sep_token, self.pad_token = unk_token, sep_token, pad_token
        self.cls_token, self.mask_token = cls_token, mask_token
        self.do_lower_case = do_lower_case
        self.model_max_length = int(model_max_length)
        self.padding_side = check_side("padding_side", padding_side)
        self.truncation_side = check_side("truncation_side", truncation_side)
        self.pad_token_type_id = pad_token_type_id
        # transformers (LxmertTokenizerFast.__init__): tokenizer_config's normalizer switches win
        # over tokenizer.json's normalizer.
        if backend.normalizer is not None:
            state = json.loads(backend.normalizer.__getstate__())
            if (
                state.get("lowercase", do_lower_case) != do_lower_case
                or state.get("strip_accents", strip_accents) != strip_accents
                or state.get("handle_chinese_chars", tokenize_chinese_chars) != tokenize_chinese_chars
            ):
                kind = state.pop("type")
                state.update(
                    lowercase=do_lower_case,
                    strip_accents=strip_accents,
                    handle_chinese_chars=tokenize_chinese_chars,
                )
                backend.normalizer = getattr(normalizers, kind)(**state)

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str) -> LxmertTokenizer:
        """Load from a checkpoint directory: tokenizer.json, or vocab.txt.

        tokenizer_config.json (and special_tokens_map.json, which wins for the special tokens)
        supply the special tokens, ``do_lower_case``, ``strip_accents``,
        ``tokenize_chinese_chars``, ``model_max_length`` and the padding / truncation sides.
        """
        if not os.path.isdir(path):
            raise ValueError(f"path={path!r} is not a directory")
        config = read_json(os.path.join(path, "tokenizer_config.json"))
        specials_map = read_json(os.path.join(path, "special_tokens_map.json"))
        specials = {
            name: token_content(specials_map.get(name, config.get(name, DEFAULT_SPECIAL_TOKENS[name])))
            for name in SPECIAL_TOKEN_NAMES
        }
        decoder = config.get("added_tokens_decoder", {})
        added = [added_token(decoder[k], normalized=False) for k in sorted(decoder, key=int)]
        known = {t.content for t in added}
        for name in SPECIAL_TOKEN_NAMES:
            content = specials[name]
            if content is not None and content not in known:
                added.append(AddedToken(content, lstrip=False, rstrip=False, normalized=False, special=True))
                known.add(content)
        special_contents = {c for c in specials.values() if c is not None}
        for t in added:
            if t.content in special_contents:
                t.special = True
        switches = dict(
            do_lower_case=config.get("do_lower_case", True),
            strip_accents=config.get("strip_accents", None),
            tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
        )

        tokenizer_file, vocab_file = os.path.join(path, "tokenizer.json"), os.path.join(path, "vocab.txt")
        if os.path.isfile(tokenizer_file):
            backend = Tokenizer.from_file(tokenizer_file)
            present = {t.content for t in backend.get_added_tokens_decoder().values()}
            missing = [t for t in added if t.content not in present]
            if missing:
                backend.add_tokens(missing)
            if backend.padding is not None and "padding_side" not in config:
                config["padding_side"] = backend.padding["direction"]
            if backend.truncation is not None and "truncation_side" not in config:
                config["truncation_side"] = backend.truncation["direction"]
            backend.no_padding()
            backend.no_truncation()
        elif os.path.isfile(vocab_file):
            backend = build_wordpiece_backend(read_wordpiece_vocab(vocab_file), specials, added, **switches)
        else:
            raise ValueError(f"{path!r} has neither tokenizer.json nor vocab.txt")
        return cls(
            backend,
            **specials,
            **switches,
            model_max_length=config.get("model_max_length", VERY_LARGE_INTEGER),
            padding_side=config.get("padding_side", "right"),
            truncation_side=config.get("truncation_side", "right"),
        )

    # ------------------------------------------------------------------------------------ vocabulary
    # ------------------------------------------------------------------------------------- encoding
    def __call__(
        self,
        text=None,
        text_pair=None,
        add_special_tokens: bool = True,
        padding=False,
        truncation=None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
    ) -> BatchEncoding:
        """Encode one text, a batch of texts, or (batches of) text pairs.

        Args:
            text: ``str``, a batch ``list[str]``; with ``is_split_into_words=True`` one pre-split
                text ``list[str]`` or a batch ``list[list[str]]``.
            text_pair: the second sequence(s), same shape as ``text``.
            padding / truncation / max_length / stride / pad_to_multiple_of / padding_side: as in
                transformers.
            return_tensors: None (lists) or "np".

        Returns:
            BatchEncoding with ``input_ids``, ``token_type_ids``, ``attention_mask`` ([B, L] each)
            and whatever else was asked for; without a batch and without return_tensors the
            batch axis is dropped.
        """
        if text is None:
            raise ValueError("text is required")
        if not _is_text_input(text):
            raise ValueError(
                "text must be `str`, `list[str]` or `list[list[str]]` (pre-split words, with is_split_into_words=True)"
            )
        if text_pair is not None and not _is_text_input(text_pair):
            raise ValueError("text_pair must be `str`, `list[str]` or `list[list[str]]`")
        if is_split_into_words:
            is_batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
        else:
            is_batched = isinstance(text, (list, tuple))
        depth = (1 if is_split_into_words else 0) + (1 if is_batched else 0)

        if is_batched:
            if isinstance(text_pair, str):
                raise ValueError(
                    "when tokenizing batches of text, `text_pair` must be a list with the same length as `text`"
                )
            if text_pair is not None and len(text) != len(text_pair):
                raise ValueError(
                    f"batch length of `text`: {len(text)} does not match batch length of `text_pair`: {len(text_pair)}"
                )
            if len(text) == 0:
                raise ValueError("empty batch: give at least one text")
            _check_strings(text, "text", depth)
            if text_pair is not None:
                _check_strings(text_pair, "text_pair", depth)
            inputs = list(zip(text, text_pair, strict=True)) if text_pair is not None else list(text)
        else:
            _check_strings(text, "text", depth)
            if text_pair is not None:
                _check_strings(text_pair, "text_pair", depth)
            # transformers: an empty text_pair ("" or []) is the same as no pair
            inputs = [(text, text_pair)] if text_pair else [text]

        padding_strategy, truncation_strategy, max_length = resolve_strategies(
            padding, truncation, max_length, pad_to_multiple_of, self.model_max_length, self.pad_token_id
        )
        rows = self.encode_and_pad(
            inputs,
            is_pretokenized=is_split_into_words,
            add_special_tokens=add_special_tokens,
            truncation_strategy=truncation_strategy,
            padding_strategy=padding_strategy,
            max_length=max_length,
            stride=stride,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_overflowing_tokens=return_overflowing_tokens,
        )

        data = self.columns(
            rows,
            return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask,
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
            return_length=return_length,
            return_overflowing_tokens=return_overflowing_tokens,
        )

        data = to_tensors(data, return_tensors)
        if not is_batched and return_tensors is None and not return_overflowing_tokens:
            data = strip_batch_axis(data)
        return BatchEncoding(data, rows)


__all__ = ["LxmertTokenizer", "build_wordpiece_backend", "read_wordpiece_vocab"]
