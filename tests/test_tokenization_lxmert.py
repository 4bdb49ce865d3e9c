"""LxmertTokenizer == transformers' LxmertTokenizerFast, on a WordPiece vocabulary trained here.

The vocabulary is trained once per module with tokenizers' WordPieceTrainer (uncased BERT
normalizer) on a small corpus with accents, CJK, emoji and punctuation, saved as vocab.txt and
loaded by both sides; the oracle's save_pretrained output (tokenizer.json) is loaded too.
"""

import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from refimpl.lxmert.tokenization import LxmertTokenizer

transformers = pytest.importorskip("transformers")
from transformers import LxmertTokenizerFast  # noqa: E402

CORPUS = [
    "What is the man holding in his right hand?",
    "How many dogs are on the grass? Two dogs, one cat.",
    "Café naïve résumé façade Ångström über straße Øresund",
    "東京 北京 上海 你好世界 日本語のテキスト 한국어",
    "emoji 😀🎉👍 ok! ✓ ★",
    "---- ... !!! ??? ### (( )) [[ ]] $12.50 100%",
    "Is the red bus parked next to the building?",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PIECES = [
    "what",
    "Dogs",
    "CAFÉ",
    "naïve",
    "東京",
    "你好",
    "😀",
    "...",
    "[MASK]",
    "?",
    "résumé",
    "x" * 120,
    "",
    " ",
]
ALPHABET = "abcXYZ019éàüñßøÅ東京你好한😀🎉👍✓.,;:!?-()$%&*/ \t\n\u0301\u200b\x00"
TEXT = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=12).map(" ".join),
    st.text(alphabet=ALPHABET, max_size=40),
)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lxmert_tok")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer)
    vocab_dir = root / "vocab"
    vocab_dir.mkdir()
    tok.model.save(str(vocab_dir))
    saved_dir = root / "saved"
    LxmertTokenizerFast(vocab_file=str(vocab_dir / "vocab.txt")).save_pretrained(str(saved_dir))
    # cased, accents kept, CJK not split, left padding / truncation, a model_max_length
    custom_dir = root / "custom"
    custom_dir.mkdir()
    shutil.copy(vocab_dir / "vocab.txt", custom_dir / "vocab.txt")
    config = {
        "tokenizer_class": "LxmertTokenizer",
        "do_lower_case": False,
        "strip_accents": False,
        "tokenize_chinese_chars": False,
        "padding_side": "left",
        "truncation_side": "left",
        "model_max_length": 16,
    }
    (custom_dir / "tokenizer_config.json").write_text(json.dumps(config))
    return {"vocab": str(vocab_dir), "saved": str(saved_dir), "custom": str(custom_dir)}


@pytest.fixture(scope="module")
def pairs(dirs):
    return {
        "vocab": (
            LxmertTokenizer.from_pretrained(dirs["vocab"]),
            LxmertTokenizerFast(vocab_file=os.path.join(dirs["vocab"], "vocab.txt")),
        ),
        "saved": (
            LxmertTokenizer.from_pretrained(dirs["saved"]),
            LxmertTokenizerFast.from_pretrained(dirs["saved"]),
        ),
        "custom": (
            LxmertTokenizer.from_pretrained(dirs["custom"]),
            LxmertTokenizerFast.from_pretrained(dirs["custom"]),
        ),
    }


def assert_same(ours, theirs):
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
        assert ours.tokens(i) == theirs.tokens(i), f"tokens row {i}"


def check(ours_tok, oracle_tok, *args, **kwargs):
    try:
        theirs = oracle_tok(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - the oracle raises ValueError, Rust errors, Rust panics
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise
        with pytest.raises(ValueError):
            ours_tok(*args, **kwargs)
        return type(e).__name__
    assert_same(ours_tok(*args, **kwargs), theirs)
    return None


@pytest.mark.parametrize("which", ["vocab", "saved", "custom"])
def test_backend_equals_oracle_backend(pairs, which):
    ours, oracle = pairs[which]
    oracle.backend_tokenizer.no_padding()
    oracle.backend_tokenizer.no_truncation()
    assert json.loads(ours.backend.to_str()) == json.loads(oracle.backend_tokenizer.to_str())


def test_known_pair(pairs):
    """[CLS] a [SEP] b [SEP], b's part has token type 1; accents stripped and lower-cased."""
    ours, oracle = pairs["vocab"]
    enc = ours("What is the CAFÉ?", "Two dogs")
    assert enc["input_ids"][0] == ours.cls_token_id
    assert enc.tokens()[:6] == ["[CLS]", "what", "is", "the", "cafe", "?"]
    first_sep = enc["input_ids"].index(ours.sep_token_id)
    assert enc["token_type_ids"] == [0] * (first_sep + 1) + [1] * (len(enc["input_ids"]) - first_sep - 1)
    assert_same(enc, oracle("What is the CAFÉ?", "Two dogs"))


OPTIONS = st.fixed_dictionaries(
    {
        "padding": st.sampled_from([False, True, "longest", "max_length", "do_not_pad"]),
        "truncation": st.sampled_from([None, False, True, "longest_first", "only_first", "only_second"]),
        "max_length": st.sampled_from([None, 3, 6, 12, 40]),
        "pad_to_multiple_of": st.sampled_from([None, 4]),
        "return_token_type_ids": st.sampled_from([None, False]),
        "return_attention_mask": st.sampled_from([None, False]),
        "return_special_tokens_mask": st.booleans(),
        "return_offsets_mapping": st.booleans(),
        "return_length": st.booleans(),
        "add_special_tokens": st.booleans(),
        "return_overflowing_tokens": st.booleans(),
        "stride": st.sampled_from([0, 1]),
        "return_tensors": st.sampled_from([None, "np"]),
    }
)


@settings(max_examples=40)
@given(
    text=TEXT,
    pair=st.one_of(st.none(), TEXT),
    options=OPTIONS,
    which=st.sampled_from(["vocab", "saved", "custom"]),
)
def test_single_parity(pairs, text, pair, options, which):
    ours, oracle = pairs[which]
    check(ours, oracle, text, pair, **options)


@settings(max_examples=30)
@given(
    texts=st.lists(TEXT, min_size=1, max_size=4),
    with_pairs=st.booleans(),
    data=st.data(),
    options=OPTIONS,
    which=st.sampled_from(["vocab", "custom"]),
)
def test_batch_parity(pairs, texts, with_pairs, data, options, which):
    ours, oracle = pairs[which]
    text_pair = data.draw(st.lists(TEXT, min_size=len(texts), max_size=len(texts))) if with_pairs else None
    check(ours, oracle, texts, text_pair, **options)


@settings(max_examples=20)
@given(
    words=st.lists(st.lists(st.sampled_from(PIECES + ["a", "b"]), max_size=8), min_size=1, max_size=3),
    batched=st.booleans(),
    options=OPTIONS,
)
def test_split_into_words_parity(pairs, words, batched, options):
    ours, oracle = pairs["vocab"]
    text = words if batched else words[0]
    check(ours, oracle, text, is_split_into_words=True, **options)


def test_long_text_windows(pairs):
    ours, oracle = pairs["vocab"]
    text = " ".join(CORPUS * 3)
    kwargs = dict(
        truncation=True,
        max_length=24,
        stride=4,
        return_overflowing_tokens=True,
        padding=True,
        return_tensors="np",
    )
    enc = ours([text, "short"], **kwargs)
    assert enc["input_ids"].shape[1] == 24 and enc["overflow_to_sample_mapping"][-1] == 1
    assert_same(enc, oracle([text, "short"], **kwargs))


def test_bad_input(pairs):
    ours, _ = pairs["vocab"]
    with pytest.raises(ValueError, match="text"):
        ours(3)
    with pytest.raises(ValueError, match=r"text\[1\]"):
        ours(["a", 3])
    with pytest.raises(ValueError, match="batch length"):
        ours(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="truncation="):
        ours("a", truncation="middle")
    with pytest.raises(ValueError, match="return_tensors"):
        ours("a", return_tensors="pt")
