"""LiltTokenizer == transformers' LayoutLMv3TokenizerFast, on a byte-level BPE vocabulary trained here.

The vocabulary is trained once per module with tokenizers' BpeTrainer on a small corpus with
accents, CJK, emoji and punctuation, saved as vocab.json + merges.txt (what LiLT checkpoints
ship next to tokenizer.json), and loaded by both sides. Every returned value (every key, in the
same order, and word_ids of every row) must be equal; where the oracle raises, we must raise
ValueError.
"""

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from refimpl.lilt.tokenization import LiltTokenizer

transformers = pytest.importorskip("transformers")
from transformers import LayoutLMv3TokenizerFast, LayoutXLMTokenizerFast  # noqa: E402

CORPUS = [
    "Invoice number 12345 date 2021-03-04 total $1,234.56 (tax incl.)",
    "Café naïve résumé façade Ångström über straße Øresund",
    "東京 北京 上海 你好世界 日本語のテキスト 한국어",
    "emoji 😀🎉👍 ok! ✓ ★ → ←",
    "---- ... !!! ??? ### @@@ %%% &&& *** (( )) [[ ]]",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX",
    "Name: John Smith; Address: 42 Main St., Springfield",
]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]

# Word material: pieces the vocabulary knows, and characters it splits into bytes.
PIECES = [
    "Invoice",
    "total",
    "$1,234.56",
    "Café",
    "naïve",
    "東京",
    "你好",
    "😀",
    "🎉x",
    "...",
    "!!",
    "",
    " ",
    "a b",
    "<mask>",
]
ALPHABET = "abcXYZ019éàüñßøÅ東京你好한😀🎉👍✓.,;:!?-()$%&*/ \t"
WORD = st.one_of(st.sampled_from(PIECES), st.text(alphabet=ALPHABET, min_size=0, max_size=8))
BOX = st.lists(st.integers(0, 1000), min_size=4, max_size=4)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Train the BPE once; return {name: directory} for the load paths we test."""
    root = tmp_path_factory.mktemp("lilt_tok")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    vocab_dir = root / "vocab"
    vocab_dir.mkdir()
    tok.model.save(str(vocab_dir))
    saved_dir = root / "saved"
    oracle = LayoutLMv3TokenizerFast(
        vocab_file=str(vocab_dir / "vocab.json"), merges_file=str(vocab_dir / "merges.txt")
    )
    oracle.save_pretrained(str(saved_dir))
    # LayoutXLM-style special boxes, labels on every sub-token, left padding, a model_max_length.
    custom_dir = root / "custom"
    custom_dir.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(vocab_dir / name, custom_dir / name)
    config = {
        "tokenizer_class": "LayoutLMv3Tokenizer",
        "cls_token_box": [0, 0, 0, 0],
        "sep_token_box": [1000, 1000, 1000, 1000],
        "pad_token_box": [0, 0, 0, 0],
        "pad_token_label": -1,
        "only_label_first_subword": False,
        "padding_side": "left",
        "model_max_length": 24,
    }
    (custom_dir / "tokenizer_config.json").write_text(json.dumps(config))
    # LiLT-InfoXLM style: a sentencepiece-like Unigram model with Metaspace, saved by LayoutXLMTokenizerFast.
    xlm = Tokenizer(models.Unigram())
    xlm.pre_tokenizer = pre_tokenizers.Metaspace()
    xlm.decoder = decoders.Metaspace()
    xlm.train_from_iterator(
        CORPUS * 5,
        trainers.UnigramTrainer(
            vocab_size=300, special_tokens=SPECIALS, unk_token="<unk>", show_progress=False
        ),
    )
    xlm.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    xlm.save(str(root / "xlm_tokenizer.json"))
    xlm_dir = root / "xlm"
    LayoutXLMTokenizerFast(tokenizer_file=str(root / "xlm_tokenizer.json")).save_pretrained(str(xlm_dir))
    return {"vocab": str(vocab_dir), "saved": str(saved_dir), "custom": str(custom_dir), "xlm": str(xlm_dir)}


@pytest.fixture(scope="module")
def pairs(dirs):
    """(ours, oracle) for each load path."""
    v = dirs["vocab"]
    return {
        "vocab": (
            LiltTokenizer.from_pretrained(v),
            LayoutLMv3TokenizerFast(
                vocab_file=os.path.join(v, "vocab.json"), merges_file=os.path.join(v, "merges.txt")
            ),
        ),
        "saved": (
            LiltTokenizer.from_pretrained(dirs["saved"]),
            LayoutLMv3TokenizerFast.from_pretrained(dirs["saved"]),
        ),
        "custom": (
            LiltTokenizer.from_pretrained(dirs["custom"]),
            LayoutLMv3TokenizerFast.from_pretrained(dirs["custom"]),
        ),
        "xlm": (
            LiltTokenizer.from_pretrained(dirs["xlm"]),
            LayoutXLMTokenizerFast.from_pretrained(dirs["xlm"]),
        ),
    }


def assert_same(ours, theirs):
    """Every key (in order), every value, every row's word_ids equal."""
    assert list(ours.keys()) == list(theirs.keys())
    for key in theirs:
        a, b = ours[key], theirs[key]
        if isinstance(b, np.ndarray):
            assert isinstance(a, np.ndarray), key
            assert a.shape == b.shape and a.dtype == b.dtype, (key, a.shape, b.shape, a.dtype, b.dtype)
            if b.dtype == object:
                assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), key
            else:
                np.testing.assert_array_equal(a, b, err_msg=key)
        else:
            assert a == b, key
    for i in range(len(theirs.encodings)):
        assert ours.word_ids(i) == theirs.word_ids(i), f"word_ids row {i}"


def check(ours_tok, oracle_tok, *args, **kwargs):
    """Call both; equal outputs, or both fail (ours with ValueError)."""
    try:
        theirs = oracle_tok(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - the oracle raises IndexError, Rust errors, Rust panics
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise
        with pytest.raises(ValueError):
            ours_tok(*args, **kwargs)
        return type(e).__name__
    ours = ours_tok(*args, **kwargs)
    assert_same(ours, theirs)
    return None


@pytest.mark.parametrize("which", ["vocab", "saved", "xlm"])
def test_backend_equals_oracle_backend(pairs, which):
    """The `tokenizers` pipelines we build (from vocab/merges or tokenizer.json) serialize identically."""
    ours, oracle = pairs[which]
    oracle.backend_tokenizer.no_padding()
    oracle.backend_tokenizer.no_truncation()
    assert json.loads(ours.backend.to_str()) == json.loads(oracle.backend_tokenizer.to_str())


def test_known_page(pairs):
    """A readable example: sub-tokens share their word's box, specials get [0,0,0,0], labels on first sub-token."""
    ours, oracle = pairs["vocab"]
    words = ["Invoice", "Café", "東京", "😀"]
    boxes = [[10, 20, 110, 40], [120, 20, 200, 40], [210, 20, 260, 40], [270, 20, 290, 40]]
    enc = ours(words, boxes=boxes, word_labels=[1, 2, 3, 4])
    word_ids = enc.word_ids()
    assert word_ids[0] is None and word_ids[-1] is None
    for t, w in enumerate(word_ids):
        assert enc["bbox"][t] == (boxes[w] if w is not None else [0, 0, 0, 0])
    assert enc["input_ids"][0] == ours.cls_token_id and enc["input_ids"][-1] == ours.sep_token_id
    assert_same(enc, oracle(words, boxes=boxes, word_labels=[1, 2, 3, 4]))


@st.composite
def page(draw, min_words=0, max_words=12):
    n = draw(st.integers(min_words, max_words))
    words = draw(st.lists(WORD, min_size=n, max_size=n))
    boxes = draw(st.lists(BOX, min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    return words, boxes, labels


CALL_OPTIONS = st.fixed_dictionaries(
    {
        "padding": st.sampled_from([False, True, "longest", "max_length", "do_not_pad"]),
        "truncation": st.sampled_from([None, False, True, "longest_first", "only_first"]),
        "max_length": st.sampled_from([None, 4, 8, 16, 40]),
        "pad_to_multiple_of": st.sampled_from([None, 8]),
        "return_token_type_ids": st.sampled_from([None, True]),
        "return_attention_mask": st.sampled_from([None, False]),
        "return_special_tokens_mask": st.booleans(),
        "return_offsets_mapping": st.booleans(),
        "return_length": st.booleans(),
        "add_special_tokens": st.booleans(),
    }
)


@settings(max_examples=40)
@given(
    data=page(),
    labelled=st.booleans(),
    options=CALL_OPTIONS,
    which=st.sampled_from(["vocab", "saved", "custom", "xlm"]),
)
def test_single_page_parity(pairs, data, labelled, options, which):
    ours, oracle = pairs[which]
    words, boxes, labels = data
    check(ours, oracle, words, boxes=boxes, word_labels=labels if labelled else None, **options)


@settings(max_examples=30)
@given(
    batch=st.lists(page(max_words=20), min_size=1, max_size=4),
    labelled=st.booleans(),
    options=CALL_OPTIONS,
    overflow=st.booleans(),
    stride=st.sampled_from([0, 2]),
    tensors=st.sampled_from([None, "np"]),
    which=st.sampled_from(["vocab", "custom", "xlm"]),
)
def test_batch_parity(pairs, batch, labelled, options, overflow, stride, tensors, which):
    """Uneven pages, padding/truncation/overflow windows, labels and arrays stay aligned."""
    ours, oracle = pairs[which]
    words = [b[0] for b in batch]
    boxes = [b[1] for b in batch]
    labels = [b[2] for b in batch] if labelled else None
    check(
        ours,
        oracle,
        words,
        boxes=boxes,
        word_labels=labels,
        return_overflowing_tokens=overflow,
        stride=stride,
        return_tensors=tensors,
        **options,
    )


QUESTION = st.lists(
    st.sampled_from(["what", "is", "the", "total", "東京", "😀?", "naïve", "", "  "]), max_size=6
).map(" ".join)


@settings(max_examples=30)
@given(
    question=QUESTION,
    data=page(min_words=1, max_words=16),
    batched=st.booleans(),
    labelled=st.booleans(),
    truncation=st.sampled_from([None, True, "only_second", "longest_first", "only_first"]),
    max_length=st.sampled_from([None, 10, 20]),
    padding=st.sampled_from([False, "max_length", True]),
    tensors=st.sampled_from([None, "np"]),
    overflow=st.booleans(),
    which=st.sampled_from(["vocab", "xlm"]),
)
def test_question_page_parity(
    pairs, question, data, batched, labelled, truncation, max_length, padding, tensors, overflow, which
):
    """Question (str) + page words: question tokens get the pad box; boxes follow the page words."""
    ours, oracle = pairs[which]
    words, boxes, labels = data
    kwargs = dict(
        truncation=truncation,
        max_length=max_length,
        padding=padding,
        return_tensors=tensors,
        return_overflowing_tokens=overflow,
    )
    if batched:
        check(
            ours,
            oracle,
            [question, "what"],
            [words, words[:1]],
            boxes=[boxes, boxes[:1]],
            word_labels=[labels, labels[:1]] if labelled else None,
            **kwargs,
        )
    else:
        check(ours, oracle, question, words, boxes=boxes, word_labels=labels if labelled else None, **kwargs)


def test_question_tokens_get_pad_box(pairs):
    ours, oracle = pairs["custom"]
    enc = ours("what is the total", ["$1,234.56"], boxes=[[5, 6, 7, 8]])
    seq = enc.sequence_ids()
    for t, s in enumerate(seq):
        if s == 0:
            assert enc["bbox"][t] == [0, 0, 0, 0]
        elif s == 1:
            assert enc["bbox"][t] == [5, 6, 7, 8]
    sep_id = ours.sep_token_id
    assert [b for i, b in zip(enc["input_ids"], enc["bbox"], strict=True) if i == sep_id] == [[1000] * 4] * 3
    assert_same(enc, oracle("what is the total", ["$1,234.56"], boxes=[[5, 6, 7, 8]]))


def test_long_page_overflow_windows(pairs):
    """A page far beyond max_length: windows with stride overlap, each mapped to its sample."""
    ours, oracle = pairs["vocab"]
    words = (CORPUS[0] + " " + CORPUS[1] + " " + CORPUS[2]).split() * 4
    boxes = [[i, i, i + 1, i + 1] for i in range(len(words))]
    labels = [i % 5 for i in range(len(words))]
    kwargs = dict(
        boxes=[boxes, boxes[:7]],
        word_labels=[labels, labels[:7]],
        truncation=True,
        max_length=32,
        stride=5,
        padding="max_length",
        return_overflowing_tokens=True,
        return_tensors="np",
        return_offsets_mapping=True,
    )
    enc = ours([words, words[:7]], **kwargs)
    assert enc["input_ids"].shape[0] > 2 and enc["input_ids"].shape[1] == 32
    assert enc["bbox"].shape == enc["input_ids"].shape + (4,)
    assert_same(enc, oracle([words, words[:7]], **kwargs))


def test_tensors_without_batch_have_batch_axis(pairs):
    ours, oracle = pairs["saved"]
    enc = ours(["a", "b"], boxes=[[1, 2, 3, 4]] * 2, return_tensors="np")
    assert enc["input_ids"].ndim == 2 and enc["bbox"].shape[-1] == 4 and enc["bbox"].dtype == np.int64
    assert_same(enc, oracle(["a", "b"], boxes=[[1, 2, 3, 4]] * 2, return_tensors="np"))


@pytest.mark.parametrize(
    "words, boxes, labels, match",
    [
        (["a", "b"], [[1, 2, 3, 4]], None, "2 words but 1 boxes"),
        (["a", "b"], [[1, 2, 3, 4], [1, 2, 3]], None, "box 1"),
        (["a", "b"], [[1, 2, 3, 4], [1, 2, float("nan"), 4]], None, "box 1 .* coordinate 2 .* not finite"),
        (["a", "b"], [[1, 2, 3, 4], [1, 2, "x", 4]], None, "box 1 .* not a number"),
        (["a", "b"], [[1, 2, 3, 4], [1, 2, 3, 4]], [0], "2 words but 1 word_labels"),
        (["a", 3], [[1, 2, 3, 4], [1, 2, 3, 4]], None, "word 1"),
    ],
)
def test_bad_input_names_the_word(pairs, words, boxes, labels, match):
    ours, _ = pairs["vocab"]
    with pytest.raises(ValueError, match=match):
        ours(words, boxes=boxes, word_labels=labels)


def test_bad_input_in_batch_names_the_example(pairs):
    ours, _ = pairs["vocab"]
    with pytest.raises(ValueError, match="example 1: box 0"):
        ours([["a"], ["b"]], boxes=[[[1, 2, 3, 4]], [[1, 2, 3, float("inf")]]])
    with pytest.raises(ValueError, match="boxes are required"):
        ours(["a"])
    with pytest.raises(ValueError, match="padding="):
        ours(["a"], boxes=[[1, 2, 3, 4]], padding="sideways")


def test_question_indexes_labels_quirk(pairs):
    """transformers labels question tokens with word_labels[question word id]; when that is out of
    range it raises IndexError, we raise ValueError. Where it succeeds we match it."""
    ours, oracle = pairs["vocab"]
    assert (
        check(ours, oracle, "what is this thing", ["a", "b"], boxes=[[1, 2, 3, 4]] * 2, word_labels=[5, 6])
        == "IndexError"
    )
    assert check(ours, oracle, "what", ["a", "b"], boxes=[[1, 2, 3, 4]] * 2, word_labels=[5, 6]) is None


def test_layoutxlm_flavour(pairs):
    """LiLT-InfoXLM: sep box [1000]*4 by default, labels on every offset-0 token (no empty-token check)."""
    ours, oracle = pairs["xlm"]
    assert ours.flavour == "layoutxlm" and ours.sep_token_box == [1000] * 4
    words, boxes = ["Invoice", "東京😀", "Café"], [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    enc = ours(words, boxes=boxes, word_labels=[1, 2, 3])
    assert enc["bbox"][-1] == [1000] * 4
    assert_same(enc, oracle(words, boxes=boxes, word_labels=[1, 2, 3]))


def test_numpy_boxes_and_labels(pairs):
    """NumPy boxes / labels are accepted as transformers accepts them; arrays come back equal."""
    ours, oracle = pairs["vocab"]
    words = ["Invoice", "total", "😀"]
    boxes = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    labels = np.array([0, 1, 2])
    kwargs = dict(boxes=boxes, word_labels=labels, return_tensors="np", padding="max_length", max_length=16)
    assert_same(ours(words, **kwargs), oracle(words, **kwargs))
