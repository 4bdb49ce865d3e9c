"""Regenerate the bundled tiny checkpoints and the example under refimpl/data/ (never hand-edit them).

    .venv/bin/python scripts/make_bundled.py            # writes refimpl/data/
    .venv/bin/python scripts/make_bundled.py --check    # rebuild in a temp dir, fail if anything differs

Dev-time only (needs torch + transformers + tokenizers; refimpl itself never imports this):

* ``lilt-tiny/``: ``LiltForTokenClassification`` (hidden 96, 2 layers, 4 heads, FUNSD's 7 labels)
  with a byte-level BPE tokenizer (vocab.json + merges.txt + tokenizer.json, saved through
  transformers' ``LayoutLMv3TokenizerFast`` as the real LiLT checkpoints ship it);
* ``lxmert-tiny/``: ``LxmertForPreTraining`` (hidden 64, 2 language / 1 vision / 1 cross layer,
  32-dim region features) with an uncased WordPiece tokenizer (whole words + characters; vocab.txt + tokenizer.json,
  saved through ``LxmertTokenizerFast``);
* ``example/``: ``form.json`` (a small form page: words, 0-1000 boxes, FUNSD labels),
  ``forms.json`` (that page and a shorter receipt: a padded batch of two) and
  ``question.json`` + ``feats.npy`` [6, 32] + ``boxes.npy`` [6, 4] (normalised region boxes).

Weights are random (seeded): every parameter is drawn anew (N(0, 0.2), LayerNorm weights
around 1) so that no bias or norm is trivially zero or one; they are not trained, so the
predictions mean nothing; the numbers exist to be traced and compared. Everything is seeded,
so two runs write byte-identical files (``--check`` verifies it).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "refimpl", "data")
SEED = 20240601

# A small built-in corpus: form words, invoice vocabulary and simple VQA questions.
CORPUS = [
    "INVOICE Invoice number: 2024-0117 Date: March 1, 2024 Due date: March 31, 2024",
    "Bill to: ACME Corp. 12 Main Street, Springfield Ship to: Globex Ltd. 7 Elm Road",
    "Description Quantity Unit price Amount Widget 4 $12.50 $50.00 Gadget 2 $600.00 $1,200.00",
    "Subtotal: $1,250.00 Tax (8%): $100.00 Total: $1,350.00 Paid by cheque",
    "Name: Jane Doe Phone: (555) 010-2030 Email: jane.doe@example.com Signature",
    "REGISTRATION FORM First name Last name Date of birth Address City Postal code Country",
    "Question Answer Header Other Key Value Table Row Column Page 1 of 2",
    "Please return this form to the office before the due date. Thank you for your order.",
    "what color is the car on the left? is there a dog in the picture? how many people are there?",
    "what is the man holding? where is the cat sitting? is the sky blue? what is on the table?",
    "a red car parked next to a white truck on a street with trees and a blue sky",
    "two people are sitting on a bench in the park while a dog runs on the grass",
    "the woman is holding an umbrella and the man is reading a newspaper near the window",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 20 50 100 2023 2024 $ % : ; , . - / ( ) # @ ? !",
]

FUNSD_LABELS = ["O", "B-HEADER", "I-HEADER", "B-QUESTION", "I-QUESTION", "B-ANSWER", "I-ANSWER"]

# The example form page: (word, box on the 0..1000 grid, FUNSD label).
FORM = [
    ("INVOICE", [420, 40, 580, 70], "B-HEADER"),
    ("Invoice", [60, 110, 140, 130], "B-QUESTION"),
    ("number:", [145, 110, 230, 130], "I-QUESTION"),
    ("2024-0117", [240, 110, 350, 130], "B-ANSWER"),
    ("Date:", [620, 110, 680, 130], "B-QUESTION"),
    ("March", [690, 110, 760, 130], "B-ANSWER"),
    ("1,", [765, 110, 790, 130], "I-ANSWER"),
    ("2024", [795, 110, 860, 130], "I-ANSWER"),
    ("Bill", [60, 170, 110, 190], "B-QUESTION"),
    ("to:", [115, 170, 150, 190], "I-QUESTION"),
    ("ACME", [160, 170, 230, 190], "B-ANSWER"),
    ("Corp.", [235, 170, 300, 190], "I-ANSWER"),
    ("Total:", [600, 820, 680, 845], "B-QUESTION"),
    ("$1,350.00", [690, 820, 820, 845], "B-ANSWER"),
    ("Thank", [60, 930, 120, 950], "O"),
    ("you", [125, 930, 165, 950], "O"),
]

# A second, shorter page (a receipt) for the padded batch example: (word, box, FUNSD label).
RECEIPT = [
    ("RECEIPT", [400, 50, 600, 80], "B-HEADER"),
    ("Total:", [100, 500, 200, 530], "B-QUESTION"),
    ("$12.50", [220, 500, 330, 530], "B-ANSWER"),
    ("Thank", [100, 900, 170, 925], "O"),
    ("you", [175, 900, 220, 925], "O"),
]

QUESTION = "what color is the car on the left?"
N_REGIONS = 6
VISUAL_FEAT_DIM = 32


def randomize_(model, seed: int, std: float = 0.2):
    """Redraw every parameter: N(0, std), LayerNorm weights N(1, std) (as tests/_oracle.py, wider, so
    that attention is not uniform)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64) * std
            if name.endswith("LayerNorm.weight") or name.endswith("layer_norm.weight"):
                noise = noise + 1.0
            p.copy_(noise.to(p.dtype))
    return model


def make_lilt(out: str) -> None:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LayoutLMv3TokenizerFast, LiltConfig, LiltForTokenClassification

    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bpe = ByteLevelBPETokenizer(add_prefix_space=True)
        bpe.train_from_iterator(
            CORPUS + [" ".join(w for w, _, _ in FORM)],
            vocab_size=600,
            min_frequency=1,
            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
            show_progress=False,
        )
        bpe.save_model(tmp)
        tok = LayoutLMv3TokenizerFast(
            vocab_file=os.path.join(tmp, "vocab.json"),
            merges_file=os.path.join(tmp, "merges.txt"),
            add_prefix_space=True,
            model_max_length=128,
        )
    tok.save_pretrained(out)
    config = LiltConfig(
        vocab_size=len(tok),
        hidden_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=192,
        max_position_embeddings=130,
        type_vocab_size=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        layer_norm_eps=1e-5,
        channel_shrink_ratio=4,
        max_2d_position_embeddings=1024,
        id2label=dict(enumerate(FUNSD_LABELS)),
        label2id={label: i for i, label in enumerate(FUNSD_LABELS)},
    )
    torch.manual_seed(SEED)
    model = randomize_(LiltForTokenClassification(config), SEED).eval()
    model.save_pretrained(out, safe_serialization=True)


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_lxmert(out: str) -> None:
    import torch
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import LxmertConfig, LxmertForPreTraining, LxmertTokenizerFast

    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # The WordPiece trainer's token set varies from run to run (ties broken by hash-map order),
        # so the vocabulary is built deterministically from the same library's BERT normalizer and
        # pre-tokenizer: specials, every whole word of the corpus, every character and "##" + character.
        norm = BertNormalizer(lowercase=True, strip_accents=None, clean_text=True, handle_chinese_chars=True)
        pre = BertPreTokenizer()
        words = set()
        for line in CORPUS + [QUESTION]:
            words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
        chars = sorted({c for w in words for c in w})
        vocab = SPECIALS + sorted(words - set(chars)) + chars + ["##" + c for c in chars]
        vocab_file = os.path.join(tmp, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in vocab))
        tok = LxmertTokenizerFast(vocab_file=vocab_file, model_max_length=64)
    tok.save_pretrained(out)
    config = LxmertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        l_layers=2,
        x_layers=1,
        r_layers=1,
        max_position_embeddings=64,
        type_vocab_size=2,
        visual_feat_dim=VISUAL_FEAT_DIM,
        visual_pos_dim=4,
        num_qa_labels=10,
        num_object_labels=20,
        num_attr_labels=8,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(SEED + 1)
    model = randomize_(LxmertForPreTraining(config), SEED + 1).eval()
    model.save_pretrained(out, safe_serialization=True)


def make_example(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    form = {
        "description": "A small invoice page: words from OCR, boxes on the 0-1000 grid, FUNSD labels (ids into the "
        "lilt-tiny config's id2label). Generated by scripts/make_bundled.py.",
        "words": [w for w, _, _ in FORM],
        "boxes": [b for _, b, _ in FORM],
        "labels": [FUNSD_LABELS.index(lab) for _, _, lab in FORM],
    }
    with open(os.path.join(out, "form.json"), "w", encoding="utf-8") as f:
        json.dump(form, f, indent=1)
        f.write("\n")
    pages = [{k: form[k] for k in ("words", "boxes", "labels")}]
    pages.append(
        {
            "words": [w for w, _, _ in RECEIPT],
            "boxes": [b for _, b, _ in RECEIPT],
            "labels": [FUNSD_LABELS.index(lab) for _, _, lab in RECEIPT],
        }
    )
    forms = {
        "description": "A batch of two pages, the second shorter: tokenized together, the receipt's row is padded, "
        "so golden files carry attention-mask specs. Generated by scripts/make_bundled.py.",
        "pages": pages,
    }
    with open(os.path.join(out, "forms.json"), "w", encoding="utf-8") as f:
        json.dump(forms, f, indent=1)
        f.write("\n")
    rng = np.random.default_rng(SEED)
    # region features: non-negative like a detector's pooled ReLU features; boxes (x0, y0, x1, y1) in [0, 1]
    feats = np.maximum(rng.normal(0.0, 1.0, size=(N_REGIONS, VISUAL_FEAT_DIM)), 0.0).astype(np.float32)
    x0y0 = rng.uniform(0.0, 0.6, size=(N_REGIONS, 2))
    wh = rng.uniform(0.1, 0.4, size=(N_REGIONS, 2))
    boxes = np.concatenate([x0y0, np.minimum(x0y0 + wh, 1.0)], axis=1).astype(np.float32)
    np.save(os.path.join(out, "feats.npy"), feats)
    np.save(os.path.join(out, "boxes.npy"), boxes)
    question = {
        "description": f"A VQA-style question with {N_REGIONS} detector regions: features.npy [regions, "
        f"{VISUAL_FEAT_DIM}] and boxes.npy [regions, 4] normalised to [0, 1]. Generated by scripts/make_bundled.py.",
        "question": QUESTION,
        "features": "feats.npy",
        "boxes": "boxes.npy",
    }
    with open(os.path.join(out, "question.json"), "w", encoding="utf-8") as f:
        json.dump(question, f, indent=1)
        f.write("\n")


#: the folders of refimpl/data that build() writes (and --check compares)
GENERATED = ("lilt-tiny", "lxmert-tiny", "example")


def build(root: str) -> None:
    make_lilt(os.path.join(root, "lilt-tiny"))
    make_lxmert(os.path.join(root, "lxmert-tiny"))
    make_example(os.path.join(root, "example"))


def _same_tree(a: str, b: str) -> list[str]:
    diffs = []
    cmp = filecmp.dircmp(a, b)
    diffs += [os.path.join(a, n) for n in cmp.left_only + cmp.right_only]
    for n in cmp.common_files:
        if not filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False):
            diffs.append(os.path.join(a, n))
    for d in cmp.common_dirs:
        diffs += _same_tree(os.path.join(a, d), os.path.join(b, d))
    return diffs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="rebuild in a temp dir and compare with refimpl/data")
    p.add_argument("--out", default=DATA)
    args = p.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            build(tmp)
            # only what build() writes: refimpl/data also holds __init__.py and the vendored
            # lxmert-vocab/ (scripts/vendor_lxmert_vocab.py --check verifies those)
            diffs = [
                d
                for sub in GENERATED
                for d in _same_tree(os.path.join(args.out, sub), os.path.join(tmp, sub))
            ]
        if diffs:
            print("bundled data differs from a fresh build:\n  " + "\n  ".join(diffs))
            return 1
        print("bundled data is reproducible")
        return 0
    for sub in GENERATED:
        shutil.rmtree(os.path.join(args.out, sub), ignore_errors=True)
    build(args.out)
    for dirpath, _, files in sorted(os.walk(args.out)):
        for n in sorted(files):
            p_ = os.path.join(dirpath, n)
            print(f"{os.path.relpath(p_, ROOT):<50} {os.path.getsize(p_):>9} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
