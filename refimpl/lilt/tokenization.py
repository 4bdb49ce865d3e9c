"""LiLT's tokenizer: words + boxes (+ word labels) -> input_ids, attention_mask, bbox, labels.

LiLT checkpoints ship the LayoutLMv3 / RoBERTa byte-level BPE tokenizer, so this equals
transformers 4.56.2's ``LayoutLMv3TokenizerFast`` (the oracle), call for call:

- the input is always pre-split into words, each with one box on the 0-1000 grid
  (see ``refimpl.boxes.normalize_boxes``); every word is encoded with a prefix space
  (``ByteLevel(add_prefix_space=True)``), so "hello" becomes "Ġhello";
- special tokens: ``<s> words </s>`` and, for a question + page, ``<s> question </s></s> words </s>``
  (RoBERTa post-processing); the question (a string) is split on whitespace;
- every sub-token of a word gets the word's box; ``<s>`` gets ``cls_token_box``, ``</s>``
  ``sep_token_box``, padding and every question token ``pad_token_box`` (all [0, 0, 0, 0]
  unless tokenizer_config.json says otherwise);
- with ``word_labels``, a word's label goes to its first sub-token (one whose character offset
  in the word is 0 and that does not follow an empty-offset token), every other token gets
  ``pad_token_label`` (-100), unless ``only_label_first_subword`` is False.

LiLT-InfoXLM checkpoints name ``LayoutXLMTokenizer`` in tokenizer_config.json instead; loaded
from their tokenizer.json they follow ``LayoutXLMTokenizerFast``, which differs in three places:
``sep_token_box`` defaults to [1000, 1000, 1000, 1000], a label goes to every token whose
offset starts at 0 (no "previous token empty" check), and add_prefix_space is not forced.

The BPE itself runs in the `tokenizers` library; the steps around it are written out below.
"""

from __future__ import annotations

import json
import math
import numbers
import os

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

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

# "layoutlmv3": LayoutLMv3TokenizerFast (LiLT-RoBERTa); "layoutxlm": LayoutXLMTokenizerFast (LiLT-InfoXLM).
FLAVOURS = ("layoutlmv3", "layoutxlm")
DEFAULT_SEP_TOKEN_BOX = {"layoutlmv3": [0, 0, 0, 0], "layoutxlm": [1000, 1000, 1000, 1000]}

# transformers' SPECIAL_TOKENS_ATTRIBUTES order (the order in which missing special tokens get new ids).
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
DEFAULT_SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "cls_token": "<s>",
    "mask_token": "<mask>",
}


def read_bpe_files(vocab_file: str, merges_file: str) -> tuple[dict, list]:
    """Read vocab.json and merges.txt as LayoutLMv3Tokenizer does.

    merges.txt is read with ``read().split("\\n")[1:-1]``: the first line (the "#version" header)
    and the last (empty after the final newline) are skipped, each remaining line is split on
    whitespace into a merge pair.
    """
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_file, encoding="utf-8") as f:
        lines = f.read().split("\n")[1:-1]
    merges = [tuple(line.split()) for line in lines]
    # transformers keeps the merges in a dict (bpe_ranks): a repeated pair keeps its first rank.
    merges = list(dict.fromkeys(merges))
    return vocab, merges


def build_bpe_backend(
    vocab: dict, merges: list, special_tokens: dict, added_tokens: list, add_prefix_space: bool
):
    """Byte-level BPE + RoBERTa post-processing, as transformers converts a slow RoBERTa tokenizer.

    Args:
        vocab: {token: id} from vocab.json.
        merges: [(left, right), ...] from merges.txt, in rank order.
        special_tokens: {"cls_token": "<s>", ...}.
        added_tokens: AddedToken objects to register, with their ids taken from the vocab (or
            appended after it when missing).
        add_prefix_space: put a space before every word, so a word is encoded like a mid-text word.
    """
    ids = dict(vocab)
    for token in added_tokens:  # tokens missing from vocab.json get the next free ids (as the slow tokenizer)
        if token.content not in ids:
            ids[token.content] = len(ids)
    backend = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    sep, cls = special_tokens["sep_token"], special_tokens["cls_token"]
    backend.post_processor = processors.RobertaProcessing(
        sep=(sep, ids[sep]), cls=(cls, ids[cls]), add_prefix_space=add_prefix_space, trim_offsets=True
    )
    backend.add_tokens(added_tokens)
    return backend


def _rebuild_component(component, module, **changes):
    """Re-create a tokenizers component (pre-tokenizer / post-processor) with some fields changed.

    Does what transformers does when tokenizer_config.json's add_prefix_space / trim_offsets
    differ from tokenizer.json: only fields the component already has are changed.
    """
    if component is None:
        return None
    state = json.loads(component.__getstate__())
    todo = {k: v for k, v in changes.items() if k in state and state[k] != v}
    if not todo:
        return None
    state.update(todo)
    for key in ("sep", "cls"):
        if key in state:
            state[key] = tuple(state[key])
    return getattr(module, state.pop("type"))(**state)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_words_boxes_labels(words, boxes, labels, where: str) -> None:
    """Validate one example: words are strings, one 4-number finite box and (if given) one label per word.

    Raises ValueError naming the example (``where``) and the word index.
    """
    for i, word in enumerate(words):
        if not isinstance(word, str):
            raise ValueError(f"{where}: word {i} is {word!r}, words must be strings")
    if boxes is None or isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__len__"):
        raise ValueError(
            f"{where}: boxes must be a list with one [x0, y0, x1, y1] box per word, got {boxes!r}"
        )
    if len(boxes) != len(words):
        raise ValueError(f"{where}: {len(words)} words but {len(boxes)} boxes; give exactly one box per word")
    for i, box in enumerate(boxes):
        if isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 4:
            raise ValueError(
                f"{where}: box {i} (word {words[i]!r}) is {box!r}, it must be 4 numbers [x0, y0, x1, y1]"
            )
        for c, v in enumerate(box):
            if not _is_number(v):
                raise ValueError(
                    f"{where}: box {i} (word {words[i]!r}) coordinate {c} is {v!r}, not a number"
                )
            if not math.isfinite(v):
                raise ValueError(f"{where}: box {i} (word {words[i]!r}) coordinate {c} is {v!r}, not finite")
    if labels is not None:
        if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
            raise ValueError(f"{where}: word_labels must be a list with one label per word, got {labels!r}")
        if len(labels) != len(words):
            raise ValueError(
                f"{where}: {len(words)} words but {len(labels)} word_labels; give one label per word"
            )


class LiltTokenizer(TokenizerBase):
    """Tokenizer for LiLT checkpoints; equal to transformers' ``LayoutLMv3TokenizerFast``.

    Build it with ``LiltTokenizer.from_pretrained(checkpoint_dir)`` (reads tokenizer.json, or
    vocab.json + merges.txt, plus tokenizer_config.json / special_tokens_map.json) and call it
    with words and their boxes:

        tok = LiltTokenizer.from_pretrained("path/to/lilt")
        enc = tok(["Invoice", "total:", "$12"], boxes=[[10, 10, 80, 20], [90, 10, 140, 20], [150, 10, 180, 20]],
                  return_tensors="np")
        enc["input_ids"], enc["attention_mask"], enc["bbox"]   # [1, L], [1, L], [1, L, 4]
        enc.word_ids(0)                                        # token -> word index (None for specials)
    """

    model_input_names = ("input_ids", "attention_mask")

    def __init__(
        self,
        backend: Tokenizer,
        *,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        add_prefix_space=True,
        trim_offsets=True,
        cls_token_box=(0, 0, 0, 0),
        sep_token_box=(0, 0, 0, 0),
        pad_token_box=(0, 0, 0, 0),
        pad_token_label=-100,
        only_label_first_subword=True,
        model_max_length=VERY_LARGE_INTEGER,
        padding_side="right",
        truncation_side="right",
        pad_token_type_id=0,
        flavour="layoutlmv3",
    ):
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour={flavour!r} must be one of {FLAVOURS}")
        self.flavour = flavour
        self.backend = backend
        self.bos_token, self.eos_token, self.sep_token, self.cls_token = (
            bos_token,
            eos_token,
            sep_token,
            cls_token,
        )
        self.unk_token, self.pad_token, self.mask_token = unk_token, pad_token, mask_token
        self.add_prefix_space = add_prefix_space
        self.trim_offsets = trim_offsets
        for name, box in (
            ("cls_token_box", cls_token_box),
            ("sep_token_box", sep_token_box),
            ("pad_token_box", pad_token_box),
        ):
            if len(box) != 4:
                raise ValueError(f"{name}={box!r} must be 4 numbers")
        self.cls_token_box = list(cls_token_box)
        self.sep_token_box = list(sep_token_box)
        self.pad_token_box = list(pad_token_box)
        self.pad_token_label = pad_token_label
        self.only_label_first_subword = only_label_first_subword
        self.model_max_length = int(model_max_length)
        self.padding_side = check_side("padding_side", padding_side)
        self.truncation_side = check_side("truncation_side", truncation_side)
        self.pad_token_type_id = pad_token_type_id

        # transformers (LayoutLMv3TokenizerFast.__init__): tokenizer_config's add_prefix_space /
        # trim_offsets win over what tokenizer.json's pre-tokenizer and post-processor say.
        # (LayoutXLMTokenizerFast leaves the post-processor alone.)
        if flavour == "layoutlmv3":
            post = _rebuild_component(
                backend.post_processor,
                processors,
                add_prefix_space=add_prefix_space,
                trim_offsets=trim_offsets,
            )
            if post is not None:
                backend.post_processor = post
        pre = _rebuild_component(backend.pre_tokenizer, pre_tokenizers, add_prefix_space=add_prefix_space)
        if pre is not None:
            backend.pre_tokenizer = pre

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str) -> LiltTokenizer:
        """Load from a checkpoint directory: tokenizer.json, or vocab.json + merges.txt.

        tokenizer_config.json (and special_tokens_map.json, which wins for the special tokens)
        supply the special tokens, the boxes of special tokens (``cls_token_box``,
        ``sep_token_box``, ``pad_token_box``), ``pad_token_label``, ``only_label_first_subword``,
        ``add_prefix_space``, ``model_max_length`` and the padding / truncation sides.
        """
        if not os.path.isdir(path):
            raise ValueError(f"path={path!r} is not a directory")
        config = read_json(os.path.join(path, "tokenizer_config.json"))
        specials_map = read_json(os.path.join(path, "special_tokens_map.json"))
        specials = {}
        for name in SPECIAL_TOKEN_NAMES:
            value = specials_map.get(name, config.get(name, DEFAULT_SPECIAL_TOKENS[name]))
            specials[name] = token_content(value)
        # LiLT-RoBERTa checkpoints name LayoutLMv3Tokenizer, LiLT-InfoXLM ones LayoutXLMTokenizer.
        tokenizer_class = str(config.get("tokenizer_class") or "LayoutLMv3Tokenizer").removesuffix("Fast")
        flavour = "layoutxlm" if tokenizer_class == "LayoutXLMTokenizer" else "layoutlmv3"
        # LayoutLMv3 passes add_prefix_space=True to the base class, LayoutXLM passes nothing (False).
        add_prefix_space = config.get("add_prefix_space", flavour == "layoutlmv3")
        # Flags of the added tokens: tokenizer_config.json's "added_tokens_decoder" if present,
        # else LayoutLMv3Tokenizer's defaults (mask_token strips the space on its left).
        decoder = config.get("added_tokens_decoder", {})
        added = [added_token(decoder[k], normalized=True) for k in sorted(decoder, key=int)]
        known = {t.content for t in added}
        for name in SPECIAL_TOKEN_NAMES:
            content = specials[name]
            if content is not None and content not in known:
                added.append(
                    AddedToken(
                        content, lstrip=name == "mask_token", rstrip=False, normalized=True, special=True
                    )
                )
                known.add(content)
        special_contents = {c for c in specials.values() if c is not None}
        for t in added:
            if t.content in special_contents:
                t.special = True

        tokenizer_file = os.path.join(path, "tokenizer.json")
        vocab_file, merges_file = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        if os.path.isfile(tokenizer_file):
            backend = Tokenizer.from_file(tokenizer_file)
            present = {t.content for t in backend.get_added_tokens_decoder().values()}
            missing = [t for t in added if t.content not in present]
            if missing:
                backend.add_tokens(missing)
            padding = backend.padding
            if padding is not None and "padding_side" not in config:
                config["padding_side"] = padding["direction"]
            truncation = backend.truncation
            if truncation is not None and "truncation_side" not in config:
                config["truncation_side"] = truncation["direction"]
            backend.no_padding()
            backend.no_truncation()
        elif flavour == "layoutxlm":
            raise ValueError(
                f"{path!r}: a LayoutXLM (sentencepiece) tokenizer needs tokenizer.json; "
                "convert it once with transformers (LayoutXLMTokenizerFast.save_pretrained)"
            )
        elif os.path.isfile(vocab_file) and os.path.isfile(merges_file):
            vocab, merges = read_bpe_files(vocab_file, merges_file)
            backend = build_bpe_backend(vocab, merges, specials, added, add_prefix_space)
        else:
            raise ValueError(f"{path!r} has neither tokenizer.json nor vocab.json + merges.txt")

        return cls(
            backend,
            **specials,
            add_prefix_space=add_prefix_space,
            trim_offsets=config.get("trim_offsets", True),
            cls_token_box=config.get("cls_token_box", [0, 0, 0, 0]),
            sep_token_box=config.get("sep_token_box", DEFAULT_SEP_TOKEN_BOX[flavour]),
            pad_token_box=config.get("pad_token_box", [0, 0, 0, 0]),
            pad_token_label=config.get("pad_token_label", -100),
            only_label_first_subword=config.get("only_label_first_subword", True),
            model_max_length=config.get("model_max_length", VERY_LARGE_INTEGER),
            padding_side=config.get("padding_side", "right"),
            truncation_side=config.get("truncation_side", "right"),
            flavour=flavour,
        )

    # ------------------------------------------------------------------------------------ vocabulary
    # ------------------------------------------------------------------------------------- encoding
    def __call__(
        self,
        text,
        text_pair=None,
        boxes=None,
        word_labels=None,
        add_special_tokens: bool = True,
        padding=False,
        truncation=None,
        max_length: int | None = None,
        stride: int = 0,
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
        """Encode one page or a batch of pages (optionally each with a question).

        Args:
            text: a page's words ``list[str]`` or a batch ``list[list[str]]``; with ``text_pair``,
                the question ``str`` (or a batch ``list[str]``).
            text_pair: with a question in ``text``: the page words ``list[str]`` (or a batch).
            boxes: one [x0, y0, x1, y1] box per page word on the 0-1000 grid: ``[n_words, 4]``,
                or a batch ``[batch][n_words, 4]``.
            word_labels: one int label per page word (or a batch), for token classification.
            padding / truncation / max_length / stride / pad_to_multiple_of / padding_side:
                as in transformers (``True``/``"longest"``, ``"max_length"``, ``False``/``"do_not_pad"``;
                ``True``/``"longest_first"``, ``"only_first"``, ``"only_second"``, ``False``).
            return_tensors: None (lists) or "np" (NumPy arrays with a leading batch axis).

        Returns:
            BatchEncoding with ``input_ids [B, L]``, ``attention_mask [B, L]``, ``bbox [B, L, 4]``,
            ``labels [B, L]`` (with word_labels) and whatever else was asked for; without a batch
            and without return_tensors the batch axis is dropped.
        """
        # ---- what kind of input is it (same rules as the oracle)
        if text_pair is not None:
            if not (
                isinstance(text, str)
                or (isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text))
            ):
                raise ValueError(
                    "text must be a question `str` (single example) or `list[str]` (batch) when text_pair is given"
                )
            if not isinstance(text_pair, (list, tuple)):
                raise ValueError("text_pair must be the page words `list[str]` or a batch `list[list[str]]`")
            is_batched = isinstance(text, (list, tuple))
        else:
            if not isinstance(text, (list, tuple)):
                raise ValueError(
                    "text must be the page words `list[str]` or a batch `list[list[str]]` (use refimpl's "
                    "text.split() if you have a string)"
                )
            is_batched = bool(text) and isinstance(text[0], (list, tuple))
        if boxes is None:
            raise ValueError("boxes are required: one [x0, y0, x1, y1] box (0-1000 grid) per word")

        words = text if text_pair is None else text_pair
        is_pair = text_pair is not None
        if is_batched:
            if len(words) != len(boxes):
                raise ValueError(f"{len(words)} examples of words but {len(boxes)} examples of boxes")
            if is_pair and len(text) != len(text_pair):
                raise ValueError(
                    f"batch length of `text`: {len(text)} does not match batch length of `text_pair`: {len(text_pair)}"
                )
            if word_labels is not None and len(word_labels) != len(words):
                raise ValueError(
                    f"{len(words)} examples of words but {len(word_labels)} examples of word_labels"
                )
            if len(words) == 0:
                raise ValueError("empty batch: give at least one example")
            batch_words, batch_boxes = list(words), list(boxes)
            batch_labels = list(word_labels) if word_labels is not None else None
            questions = list(text) if is_pair else None
        else:
            if is_pair and len(text_pair) == 0:
                # transformers treats an empty page as "no pair" and then fails; say what is wrong instead.
                raise ValueError(
                    "text_pair (the page words) is empty; give at least one word with a question"
                )
            batch_words, batch_boxes = [words], [boxes]
            batch_labels = [word_labels] if word_labels is not None else None
            questions = [text] if is_pair else None
        for b, example_words in enumerate(batch_words):
            if not isinstance(example_words, (list, tuple)):
                raise ValueError(f"example {b}: words must be a list of strings, got {example_words!r}")
            where = f"example {b}" if is_batched else "input"
            check_words_boxes_labels(
                example_words, batch_boxes[b], batch_labels[b] if batch_labels is not None else None, where
            )

        # ---- strategies and subword encoding (the backend also cuts long inputs into windows)
        padding_strategy, truncation_strategy, max_length = resolve_strategies(
            padding, truncation, max_length, pad_to_multiple_of, self.model_max_length, self.pad_token_id
        )
        if is_pair:  # the question is split on whitespace; both sequences are pre-tokenized
            inputs = [(q.split(), list(w)) for q, w in zip(questions, batch_words, strict=True)]
        else:
            inputs = [list(w) for w in batch_words]
        rows = self.encode_and_pad(
            inputs,
            is_pretokenized=True,
            add_special_tokens=add_special_tokens,
            truncation_strategy=truncation_strategy,
            padding_strategy=padding_strategy,
            max_length=max_length,
            stride=stride,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_overflowing_tokens=return_overflowing_tokens,
        )

        # ---- token-level boxes and labels
        bbox = [self._row_boxes(row, batch_boxes[row.sample_index], is_pair) for row in rows]
        labels = None
        if batch_labels is not None:
            labels = [self._row_labels(row, batch_labels[row.sample_index]) for row in rows]

        # ---- assemble in transformers' key order
        data = self.columns(
            rows,
            return_token_type_ids=return_token_type_ids,
            return_attention_mask=return_attention_mask,
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
            return_length=return_length,
            return_overflowing_tokens=return_overflowing_tokens,
        )
        data["bbox"] = bbox
        if labels is not None:
            data["labels"] = labels

        data = to_tensors(data, return_tensors)
        if not is_batched and return_tensors is None and not return_overflowing_tokens:
            data = strip_batch_axis(data)
        return BatchEncoding(data, rows)

    def _row_boxes(self, row, boxes, is_pair: bool) -> list:
        """One box per token of a (padded) row. [L, 4]

        Word tokens take their word's box, except question tokens (sequence 0 of a pair), which
        take ``pad_token_box``; special tokens are recognized by id: cls, then sep, then pad.
        """
        cls_id, sep_id, pad_id = self.cls_token_id, self.sep_token_id, self.pad_token_id
        out = []
        for position, (token_id, sequence_id, word_id) in enumerate(
            zip(row.input_ids, row.sequence_ids, row.word_ids, strict=True)
        ):
            if word_id is not None:
                if is_pair and sequence_id == 0:
                    out.append(list(self.pad_token_box))
                else:
                    out.append(list(boxes[word_id]))
            elif token_id == cls_id:
                out.append(list(self.cls_token_box))
            elif token_id == sep_id:
                out.append(list(self.sep_token_box))
            elif token_id == pad_id:
                out.append(list(self.pad_token_box))
            else:
                raise ValueError(
                    f"token {position} (id {token_id}) belongs to no word and is not cls/sep/pad: no box for it"
                )
        return out

    def _row_labels(self, row, word_labels) -> list:
        """One label per token of a (padded) row. [L]

        transformers' rule: with only_label_first_subword, a token of a word gets the word's
        label when its character offset starts at 0 and (LayoutLMv3 only) the token before it
        did not have the empty offset (0, 0); all other tokens get pad_token_label. The word index is used as it
        comes, so in question + page inputs the question's tokens index ``word_labels`` too.
        """
        out = []
        previous_token_empty = False
        for position, (offset, word_id) in enumerate(zip(row.offsets, row.word_ids, strict=True)):
            if word_id is None:
                out.append(self.pad_token_label)
                continue
            first = offset[0] == 0 and (self.flavour == "layoutxlm" or not previous_token_empty)
            if self.only_label_first_subword:
                previous_token_empty = tuple(offset) == (0, 0)
            if self.only_label_first_subword and not first:
                out.append(self.pad_token_label)
                continue
            if word_id >= len(word_labels):
                raise ValueError(
                    f"token {position} belongs to word {word_id} but word_labels has only {len(word_labels)} labels "
                    "(with a question, transformers indexes word_labels with the question's word ids too)"
                )
            out.append(word_labels[word_id])
        return out


__all__ = ["LiltTokenizer", "build_bpe_backend", "read_bpe_files", "check_words_boxes_labels"]
