"""Draw the documentation's figures (docs/figures/*.svg) from code, reproducibly.

    python docs/figures.py            # (re)write every figure
    python docs/figures.py --check    # exit 1 if a committed figure differs from what this draws

Two kinds of figure:

* **architecture diagrams** (``lilt-architecture.svg``, ``lxmert-architecture.svg``): boxes and
  arrows with the shapes of every stream, drawn with matplotlib patches;
* **figures of a real forward pass** of the bundled tiny checkpoints in float64 (random
  weights, so the predictions mean nothing; the point is what is computed and where it goes):
  ``lilt-attention.svg`` (the shared attention probabilities of one head, tokens on both axes),
  ``lilt-page.svg`` (the example page's word boxes coloured by label: the example's labels and
  the model's predictions), ``lxmert-cross-attention.svg`` (word-to-region cross-attention,
  as a heatmap and over the region boxes);
* **a gradient-flow diagram**: ``lilt-layer-backward.svg`` (one LiLT layer in reverse, from the
  two output gradients to the two input gradients, as ``refimpl.lilt.backward`` computes them).

Every figure is at most ``MAX_WIDTH_IN`` wide, so the docs show it unscaled in their text column,
and no label is smaller than ``MIN_LABEL_PT``: drawing a figure that breaks either fails.

The output is byte-for-byte deterministic for a given matplotlib version: the Agg backend,
fixed ``svg.hashsalt``, no date or creator metadata, glyphs as paths (no fonts needed to
view), and no randomness (the inputs are the bundled example). ``tests/test_docs.py`` runs
``--check`` when the installed matplotlib is the one the committed files were drawn with
(``MATPLOTLIB_VERSION``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402
from matplotlib.text import Text  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "figures")
sys.path.insert(0, ROOT)  # draw with the refimpl of this checkout, not another installed copy
#: the matplotlib the committed SVGs were drawn with (SVG output differs between versions).
MATPLOTLIB_VERSION = "3.11.2"
#: The docs' text column is 688 CSS px wide in a 1280-px window (Material, both sidebars shown); an
#: SVG is 96 CSS px per inch, so a figure up to 7.1 in wide is shown at its own size, not shrunk.
MAX_WIDTH_IN = 7.1
#: The smallest text allowed in a figure, in points at that size (8 pt = 10.7 CSS px).
MIN_LABEL_PT = 8.0

plt.rcParams.update(
    {
        "svg.hashsalt": "refimpl-docs",
        "svg.fonttype": "path",
        "font.family": "DejaVu Sans",
        "font.size": 9,
        "axes.titlesize": 10,
        "figure.dpi": 100,
        "xtick.labelsize": 8,
        "ytick.labelsize": 8,
    }
)

TEXT_C = "#dbe7fb"  # text / language stream
LAYOUT_C = "#fde3c8"  # layout / vision stream
SHARED_C = "#e7dcf5"  # what both streams share
PLAIN_C = "#f2f2f2"


def _bundled(*parts: str) -> str:
    from refimpl.data import path

    return path(*parts)


# --- drawing helpers ------------------------------------------------------------------------


def _box(ax, x, y, w, h, text, color, fontsize=8.5, weight="normal"):
    """A rounded box centred on (x, y), w wide and h high, with centred text."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.8",
            facecolor=color,
            edgecolor="#555555",
            linewidth=0.8,
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, weight=weight, linespacing=1.35)


def _arrow(ax, start, end, text=None, color="#333333", style="-|>", rad=0.0, text_at=0.5, offset=(0, 0)):
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=10,
            color=color,
            linewidth=1.0,
            connectionstyle=f"arc3,rad={rad}",
            shrinkA=2,
            shrinkB=2,
        )
    )
    if text:
        mx = start[0] + (end[0] - start[0]) * text_at + offset[0]
        my = start[1] + (end[1] - start[1]) * text_at + offset[1]
        ax.text(mx, my, text, ha="center", va="center", fontsize=8, color=color)


def _canvas(w_in, h_in, xmax, ymax):
    fig, ax = plt.subplots(figsize=(w_in, h_in))
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    return fig, ax


# --- architecture diagrams ------------------------------------------------------------------


def lilt_architecture():
    """LiLT: two streams, one score matrix. Shapes use the notation of docs/lilt.md."""
    fig, ax = _canvas(MAX_WIDTH_IN, 8.2, 100, 94)
    tx, lx, mx = 24, 76, 50  # text column, layout column, shared column
    ax.text(tx, 91, "text stream (width H)", ha="center", fontsize=10, weight="bold", color="#1f4e9c")
    ax.text(lx, 91, "layout stream (width H/r)", ha="center", fontsize=10, weight="bold", color="#b35900")

    _box(ax, tx, 85, 30, 4.6, "input_ids  [B, L]", PLAIN_C)
    _box(ax, lx, 85, 44, 4.6, "bbox  [B, L, 4]  (0..1000 grid)", PLAIN_C)
    _box(ax, mx, 77.5, 34, 5.6, "position ids  [B, L]\ncount from pad_token_id + 1", SHARED_C, fontsize=8)
    _box(ax, tx, 69, 42, 5.6, "text embeddings (step 2)\nX  [B, L, H]", TEXT_C)
    _box(ax, lx, 69, 42, 5.6, "layout embeddings (step 3)\nY  [B, L, H/r]", LAYOUT_C)
    _arrow(ax, (tx, 82.7), (tx, 71.8))
    _arrow(ax, (lx, 82.7), (lx, 71.8))
    _arrow(ax, (tx + 8, 82.7), (mx - 8, 80.3))
    _arrow(ax, (mx - 12, 74.7), (tx + 12, 71.8))
    _arrow(ax, (mx + 12, 74.7), (lx - 12, 71.8))

    # one layer
    ax.add_patch(
        Rectangle((1.5, 9), 97, 55, facecolor="none", edgecolor="#888888", linestyle="--", linewidth=0.9)
    )
    ax.text(3, 61.5, "one layer (× N): lilt_layer", fontsize=9, style="italic", color="#555555")
    _box(ax, tx, 55.5, 42, 5.6, "Q, K, V = X Wᵀ + b\n[B, n_h, L, d]", TEXT_C)
    _box(ax, lx, 55.5, 42, 5.6, "Q_ℓ, K_ℓ, V_ℓ = Y W_ℓᵀ + b_ℓ\n[B, n_h, L, d // r]", LAYOUT_C)
    _arrow(ax, (tx, 66.2), (tx, 58.3))
    _arrow(ax, (lx, 66.2), (lx, 58.3))
    _box(ax, tx, 45.5, 30, 5.6, "Q Kᵀ / √d\n[B, n_h, L, L]", TEXT_C)
    _box(ax, lx, 45.5, 30, 5.6, "Q_ℓ K_ℓᵀ / √(d // r)\n[B, n_h, L, L]", LAYOUT_C)
    _arrow(ax, (tx, 52.7), (tx, 48.3))
    _arrow(ax, (lx, 52.7), (lx, 48.3))
    _box(
        ax,
        mx,
        36,
        58,
        7.2,
        "BiACM: ONE score matrix for both streams\nS = Q Kᵀ/√d + Q_ℓ K_ℓᵀ/√(d // r)\n"
        "A = softmax(S + M)   [B, n_h, L, L]",
        SHARED_C,
        weight="bold",
        fontsize=8,
    )
    _arrow(ax, (tx + 6, 42.7), (mx - 16, 39.6))
    _arrow(ax, (lx - 6, 42.7), (mx + 16, 39.6))
    _box(ax, tx, 25.5, 34, 5.6, "C = A V\n[B, L, H]  (heads merged)", TEXT_C)
    _box(ax, lx, 25.5, 34, 5.6, "C_ℓ = A V_ℓ\n[B, L, H/r]", LAYOUT_C)
    _arrow(ax, (mx - 14, 32.4), (tx + 6, 28.3))
    _arrow(ax, (mx + 14, 32.4), (lx - 6, 28.3))
    _arrow(ax, (tx - 17, 52.7), (tx - 14, 28.3), text="V", rad=0.25, text_at=0.5, offset=(2.2, 0))
    _arrow(ax, (lx + 17, 52.7), (lx + 14, 28.3), text="V_ℓ", rad=-0.25, text_at=0.5, offset=(-2.8, 0))
    _box(ax, tx, 15, 44, 6.2, "add & norm, feed-forward (I),\nadd & norm: X ← [B, L, H]", TEXT_C)
    _box(ax, lx, 15, 44, 6.2, "add & norm, feed-forward (I/r),\nadd & norm: Y ← [B, L, H/r]", LAYOUT_C)
    _arrow(ax, (tx, 22.7), (tx, 18.1))
    _arrow(ax, (lx, 22.7), (lx, 18.1))

    _box(ax, tx, 4, 44, 4.8, "last_hidden_state [B, L, H] → heads", PLAIN_C)
    _box(ax, lx, 4, 44, 4.8, "layout_hidden_states (refimpl extra)", PLAIN_C)
    _arrow(ax, (tx, 11.9), (tx, 6.4))
    _arrow(ax, (lx, 11.9), (lx, 6.4))
    ax.text(
        mx,
        21,
        "the streams never exchange\nhidden states: only scores",
        ha="center",
        va="center",
        fontsize=8,
        style="italic",
        color="#555555",
    )
    return fig


def lxmert_architecture():
    """LXMERT: language and relationship encoders, then cross layers with one shared attention."""
    fig, ax = _canvas(MAX_WIDTH_IN, 8.2, 100, 94)
    lx, vx, mx = 24, 76, 50
    ax.text(lx, 91, "language (width H)", ha="center", fontsize=10, weight="bold", color="#1f4e9c")
    ax.text(vx, 91, "vision (width H)", ha="center", fontsize=10, weight="bold", color="#b35900")
    _box(ax, lx, 85, 34, 4.6, "input_ids  [B, L]", PLAIN_C)
    _box(ax, vx, 85, 46, 6.2, "visual_feats [B, N_v, F]\nvisual_pos [B, N_v, 4]", PLAIN_C, fontsize=8)
    _box(ax, lx, 76, 42, 5.6, "word embeddings (step 1)\n[B, L, H]", TEXT_C)
    _box(ax, vx, 76, 46, 5.6, "visual feature encoder (step 2)\n[B, N_v, H]", LAYOUT_C)
    _arrow(ax, (lx, 82.7), (lx, 78.8))
    _arrow(ax, (vx, 81.9), (vx, 78.8))
    _box(ax, lx, 65.5, 42, 7.6, "language encoder\nl × BERT layer (self-attention)\n[B, L, H]", TEXT_C)
    _box(
        ax,
        vx,
        65.5,
        46,
        7.6,
        "object-relationship encoder\nr × BERT layer (self-attention)\n[B, N_v, H]",
        LAYOUT_C,
    )
    _arrow(ax, (lx, 73.2), (lx, 69.3))
    _arrow(ax, (vx, 73.2), (vx, 69.3))

    ax.add_patch(
        Rectangle((1.5, 13), 97, 45, facecolor="none", edgecolor="#888888", linestyle="--", linewidth=0.9)
    )
    ax.text(
        3, 14.5, "one cross-modality layer (× x): lxmert_x_layer", fontsize=9, style="italic", color="#555555"
    )
    _box(
        ax,
        lx,
        42,
        42,
        8,
        "call @lang: words → regions\nAtt(X_lang, X_vis, M_vis)\nprobs [B, n_h, L, N_v]",
        TEXT_C,
        fontsize=8,
    )
    _box(
        ax,
        vx,
        42,
        42,
        8,
        "call @visn: regions → words\nAtt(X_vis, X_lang, M_lang)\nprobs [B, n_h, N_v, L]",
        LAYOUT_C,
        fontsize=8,
    )
    _arrow(ax, (lx - 12, 61.7), (lx - 12, 46.2), text="queries", offset=(-5.5, 0))
    _arrow(ax, (vx + 12, 61.7), (vx + 12, 46.2), text="queries", offset=(5.5, 0))
    _arrow(
        ax,
        (lx + 8, 61.7),
        (vx - 10, 46.2),
        text="keys, values",
        color="#1f4e9c",
        text_at=0.78,
        offset=(2, 2),
    )
    _arrow(
        ax,
        (vx - 8, 61.7),
        (lx + 10, 46.2),
        text="keys, values",
        color="#b35900",
        text_at=0.78,
        offset=(-2, 2),
    )
    _box(
        ax,
        mx,
        31,
        48,
        7.6,
        "visual_attention: ONE module\none set of query, key, value, output\nweights, used by both calls",
        SHARED_C,
        weight="bold",
        fontsize=8,
    )
    _arrow(ax, (mx - 16, 34.8), (lx + 2, 37.8), style="-", color="#7a4fb0", rad=-0.2)
    _arrow(ax, (mx + 16, 34.8), (vx - 2, 37.8), style="-", color="#7a4fb0", rad=0.2)
    ax.text(
        mx,
        25.2,
        "both calls read the layer's inputs,\nnot each other's outputs",
        ha="center",
        va="center",
        fontsize=8,
        style="italic",
        color="#555555",
    )
    _box(ax, lx, 19.5, 34, 6.2, "lang_self_att, lang FFN\n[B, L, H]", TEXT_C)
    _box(ax, vx, 19.5, 34, 6.2, "visn_self_att, visn FFN\n[B, N_v, H]", LAYOUT_C)
    _arrow(ax, (lx, 38), (lx, 22.6))
    _arrow(ax, (vx, 38), (vx, 22.6))
    _box(
        ax,
        lx,
        5.5,
        46,
        7.2,
        "language_output [B, L, H]\npooled_output [B, H] =\ntanh(x₀ W_pᵀ + b_p)",
        PLAIN_C,
        fontsize=8,
    )
    _box(ax, vx, 5.5, 40, 5, "vision_output [B, N_v, H]", PLAIN_C)
    _arrow(ax, (lx, 16.4), (lx, 9.1))
    _arrow(ax, (vx, 16.4), (vx, 8))
    return fig


# --- figures of a real forward pass ---------------------------------------------------------


def _lilt_forward():
    import refimpl
    from refimpl.lilt.tokenization import LiltTokenizer

    ckpt = _bundled("lilt-tiny")
    model = refimpl.from_pretrained(ckpt, dtype="float64")
    with open(_bundled("example", "form.json"), encoding="utf-8") as f:
        page = json.load(f)
    enc = LiltTokenizer.from_pretrained(ckpt)(page["words"], boxes=page["boxes"], return_tensors="np")
    out = model(
        input_ids=enc["input_ids"],
        bbox=enc["bbox"],
        attention_mask=enc["attention_mask"],
        output_attentions=True,
    )
    return model, page, enc, out


def _token_label(t: str) -> str:
    return t.replace("Ġ", "")


def lilt_attention(run):
    model, _, enc, out = run
    probs = out.attentions[0][0, 0]  # layer 0, batch row 0, head 0: [L, L]
    tokens = [_token_label(t) for t in enc.tokens(0)]
    fig, ax = plt.subplots(figsize=(MAX_WIDTH_IN, 6.8))
    im = ax.imshow(probs, cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
    ax.set_xlabel("key token j")
    ax.set_ylabel("query token i")
    ax.set_title(
        "LiLT layer 0, head 0: A = softmax(S + M), shared by both streams\n"
        "(bundled lilt-tiny, random weights; the example page, one row: no padding)"
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="attention probability A[i, j]")
    fig.tight_layout()
    return fig


def lilt_page(run):
    model, page, enc, out = run
    id2label = model.config.id2label
    pred_tok = out.logits[0].argmax(-1)
    word_ids = enc.word_ids(0)
    predicted = {}
    for t, w in enumerate(word_ids):  # a word's label is its first token's
        if w is not None and w not in predicted:
            predicted[w] = int(pred_tok[t])
    labels = sorted(id2label)
    cmap = plt.get_cmap("tab10")
    colors = {k: cmap(k) for k in labels}
    fig, axes = plt.subplots(2, 1, figsize=(MAX_WIDTH_IN, 7.4))
    bottom = max(b[3] for b in page["boxes"]) + 30
    for ax, (title, lab) in zip(
        axes,
        [
            ("labels in form.json", {i: int(v) for i, v in enumerate(page["labels"])}),
            ("predicted by lilt-tiny\n(random weights: the labels mean nothing)", predicted),
        ],
        strict=True,
    ):
        for i, (word, (x0, y0, x1, y1)) in enumerate(zip(page["words"], page["boxes"], strict=True)):
            c = colors[lab[i]]
            ax.add_patch(
                Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=c, alpha=0.45, edgecolor=c, linewidth=1)
            )
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, word, ha="center", va="center", fontsize=8)
        ax.set_xlim(0, 1000)
        ax.set_ylim(bottom, 0)  # page coordinates: y grows downwards (the y axis is compressed)
        ax.set_title(title)
        ax.set_ylabel("y (0..1000 grid)")
    axes[-1].set_xlabel("x (0..1000 grid)")
    handles = [Rectangle((0, 0), 1, 1, facecolor=colors[k], alpha=0.6) for k in labels]
    fig.legend(handles, [id2label[k] for k in labels], loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(
        "The example page's word boxes, coloured by FUNSD label\n(a word takes its first token's label)"
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def lxmert_cross_attention():
    import refimpl
    from refimpl.lxmert.tokenization import LxmertTokenizer

    ckpt = _bundled("lxmert-tiny")
    model = refimpl.from_pretrained(ckpt, dtype="float64")
    with open(_bundled("example", "question.json"), encoding="utf-8") as f:
        q = json.load(f)
    feats = np.load(_bundled("example", q["features"]))[None].astype(np.float64)
    boxes = np.load(_bundled("example", q["boxes"]))[None].astype(np.float64)
    enc = LxmertTokenizer.from_pretrained(ckpt)(q["question"], return_tensors="np")
    out = model(**enc, visual_feats=feats, visual_pos=boxes, output_attentions=True)
    att = out.cross_encoder_attentions[-1][0].mean(0)  # last cross layer, row 0, mean over heads: [L, N_v]
    tokens = enc.tokens(0)
    n_v = att.shape[1]

    fig, axd = plt.subplot_mosaic(
        [["heat", "car"], ["heat", "left"]], figsize=(MAX_WIDTH_IN, 7.4), layout="constrained"
    )
    heat = axd["heat"]
    im = heat.imshow(att, cmap="magma", vmin=0.0, aspect="auto")
    heat.set_yticks(range(len(tokens)), tokens)
    heat.set_xticks(range(n_v), [f"r{j}" for j in range(n_v)])
    heat.set_xlabel("region (key)")
    heat.set_ylabel("word (query)")
    heat.set_title("words → regions,\nmean of the heads")
    fig.colorbar(im, ax=heat, fraction=0.08, pad=0.04, location="bottom")
    for ax, word in ((axd["car"], "car"), (axd["left"], "left")):
        i = tokens.index(word)
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)  # image coordinates: y grows downwards
        ax.set_aspect("equal")
        for j, (x0, y0, x1, y1) in enumerate(boxes[0]):
            a = att[i, j] / att[i].max()
            ax.add_patch(
                Rectangle(
                    (x0, y0),
                    x1 - x0,
                    y1 - y0,
                    facecolor=plt.get_cmap("magma")(0.75),
                    alpha=0.15 + 0.6 * a,
                    edgecolor="black",
                    linewidth=0.8,
                )
            )
            ax.text(x0 + 0.01, y0 + 0.04, f"r{j}: {att[i, j]:.2f}", fontsize=8, va="center")
        ax.set_title(f"attention of '{word}' over the region boxes")
        ax.set_xlabel("x / image width")
        ax.set_ylabel("y / image height")
    fig.suptitle(
        f'LXMERT cross-attention (last x-layer, @lang)\n"{q["question"]}" '
        "(bundled lxmert-tiny, random weights)",
        fontsize=10,
    )
    return fig


GRAD_C = "#b22222"  # gradient arrows


def lilt_layer_backward_flow():
    """The gradient flow through one LiLT layer (refimpl.lilt.backward.lilt_layer_backward), top to
    bottom: from the layer's two output gradients to its two input gradients, both streams'
    score gradients meeting in the one shared score."""
    fig, ax = _canvas(MAX_WIDTH_IN, 8.6, 100, 100)
    tx, lx, mx = 24, 76, 50
    ti, li = tx + 3, lx - 3  # the inner boxes, clear of the dV arrows at the sides
    ax.text(tx, 97, "text stream (width H)", ha="center", fontsize=10, weight="bold", color="#1f4e9c")
    ax.text(lx, 97, "layout stream (width H/r)", ha="center", fontsize=10, weight="bold", color="#b35900")
    down = dict(color=GRAD_C)

    _box(ax, tx, 91, 40, 4.6, "dX′  [B, L, H]  (from the next layer)", PLAIN_C, fontsize=8)
    _box(ax, lx, 91, 40, 4.6, "dY′  [B, L, H/r]", PLAIN_C, fontsize=8)
    _box(
        ax,
        tx,
        81,
        44,
        8.4,
        "feed-forward in reverse:\nLayerNorm′, linear (W₂), GELU′ = Φ + xφ,\nlinear (W₁); + the residual",
        TEXT_C,
        fontsize=8,
    )
    _box(
        ax,
        lx,
        81,
        44,
        8.4,
        "feed-forward in reverse (I/r):\nLayerNorm′, linear, GELU′, linear;\n+ the residual",
        LAYOUT_C,
        fontsize=8,
    )
    _arrow(ax, (tx, 88.6), (tx, 85.3), **down)
    _arrow(ax, (lx, 88.6), (lx, 85.3), **down)
    _box(
        ax,
        tx,
        69.5,
        44,
        6,
        "add & norm in reverse: LayerNorm′\ndC = dz W_o;  residual dz → dX",
        TEXT_C,
        fontsize=8,
    )
    _box(
        ax,
        lx,
        69.5,
        44,
        6,
        "add & norm in reverse: LayerNorm′\ndC_ℓ = dz W_ℓo;  residual dz → dY",
        LAYOUT_C,
        fontsize=8,
    )
    _arrow(ax, (tx, 76.7), (tx, 72.6), text="dA", offset=(3, 0), **down)
    _arrow(ax, (lx, 76.7), (lx, 72.6), text="dA_ℓ", offset=(3.5, 0), **down)
    _box(
        ax, tx, 58.5, 42, 6, "dP = dC Vᵀ    dV = Pᵀ dC\n(the text stream's gradient of P)", TEXT_C, fontsize=8
    )
    _box(
        ax,
        lx,
        58.5,
        42,
        6,
        "dP_ℓ = dC_ℓ V_ℓᵀ    dV_ℓ = Pᵀ dC_ℓ\n(the layout stream's, of the same P)",
        LAYOUT_C,
        fontsize=8,
    )
    _arrow(ax, (tx, 66.4), (tx, 61.6), text="dC", offset=(3, 0), **down)
    _arrow(ax, (lx, 66.4), (lx, 61.6), text="dC_ℓ", offset=(3.5, 0), **down)
    _box(ax, ti, 48, 34, 6, "softmax′ (× head mask)\ndS = P ⊙ (dP − Σ dP ⊙ P)", TEXT_C, fontsize=8)
    _box(ax, li, 48, 34, 6, "softmax′ (× head mask)\ndS_ℓ = P ⊙ (dP_ℓ − Σ dP_ℓ ⊙ P)", LAYOUT_C, fontsize=8)
    _arrow(ax, (ti, 55.4), (ti, 51.1), **down)
    _arrow(ax, (li, 55.4), (li, 51.1), **down)
    _box(
        ax,
        mx,
        37,
        60,
        6.4,
        "ONE shared score S = T + T_ℓ: both summands get\ndT = dT_ℓ = dS + dS_ℓ   [B, n_h, L, L]",
        SHARED_C,
        weight="bold",
        fontsize=8,
    )
    _arrow(ax, (ti + 4, 44.9), (mx - 14, 40.3), **down)
    _arrow(ax, (li - 4, 44.9), (mx + 14, 40.3), **down)
    _box(
        ax,
        ti,
        24.5,
        34,
        9.4,
        "dQ = (dT/√d) K\ndK = (dT/√d)ᵀ Q\nrelative positions: dR = dT/√d,\nscatter-added into distance rows",
        TEXT_C,
        fontsize=8,
    )
    _box(
        ax,
        li,
        24.5,
        34,
        9.4,
        "dQ_ℓ = (dT/√(d // r)) K_ℓ\ndK_ℓ = (dT/√(d // r))ᵀ Q_ℓ\neach stream at its own scale",
        LAYOUT_C,
        fontsize=8,
    )
    _arrow(ax, (mx - 14, 33.7), (ti + 4, 29.3), **down)
    _arrow(ax, (mx + 14, 33.7), (li - 4, 29.3), **down)
    _box(
        ax,
        tx,
        12.5,
        44,
        6,
        "linear′ of Q, K, V (heads merged):\ndX += dQ W_q + dK W_k + dV W_v",
        TEXT_C,
        fontsize=8,
    )
    _box(
        ax,
        lx,
        12.5,
        44,
        6,
        "linear′ of Q_ℓ, K_ℓ, V_ℓ:\ndY += dQ_ℓ W_ℓq + dK_ℓ W_ℓk + dV_ℓ W_ℓv",
        LAYOUT_C,
        fontsize=8,
    )
    _arrow(ax, (ti, 19.7), (ti, 15.6), **down)
    _arrow(ax, (li, 19.7), (li, 15.6), **down)
    # dV and dV_l skip the scores: from the context step straight to the projections
    _arrow(ax, (6, 55.4), (6, 15.6), text="dV", text_at=0.62, offset=(3, 0), **down)
    _arrow(ax, (94, 55.4), (94, 15.6), text="dV_ℓ", text_at=0.62, offset=(-3.5, 0), **down)
    _box(ax, tx, 3.5, 40, 4.6, "dX  [B, L, H]  (to the layer below)", PLAIN_C, fontsize=8)
    _box(ax, lx, 3.5, 40, 4.6, "dY  [B, L, H/r]", PLAIN_C, fontsize=8)
    _arrow(ax, (tx, 9.4), (tx, 5.9), **down)
    _arrow(ax, (lx, 9.4), (lx, 5.9), **down)
    return fig


# --- writing and checking -------------------------------------------------------------------


def check_sizes(fig, name: str) -> None:
    """Fail unless ``fig`` is at most MAX_WIDTH_IN wide and its smallest label is MIN_LABEL_PT."""
    width = fig.get_figwidth()
    if width > MAX_WIDTH_IN + 1e-9:
        raise ValueError(f"{name}: {width:.2f} in wide, more than MAX_WIDTH_IN = {MAX_WIDTH_IN} in")
    sizes = {
        t.get_text(): t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
    }
    small = sorted((pt, text) for text, pt in sizes.items() if pt < MIN_LABEL_PT)
    if small:
        raise ValueError(f"{name}: labels smaller than {MIN_LABEL_PT} pt: {small[:5]}")


def _svg(fig, name: str) -> bytes:
    check_sizes(fig, name)
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return buf.getvalue()


def figures() -> dict[str, bytes]:
    """Every figure, drawn: file name -> SVG bytes."""
    run = _lilt_forward()
    drawn = {
        "lilt-architecture.svg": lilt_architecture,
        "lxmert-architecture.svg": lxmert_architecture,
        "lilt-attention.svg": lambda: lilt_attention(run),
        "lilt-page.svg": lambda: lilt_page(run),
        "lxmert-cross-attention.svg": lxmert_cross_attention,
        "lilt-layer-backward.svg": lilt_layer_backward_flow,
    }
    return {name: _svg(draw(), name) for name, draw in drawn.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with docs/figures/ instead of writing")
    args = parser.parse_args(argv)
    drawn = figures()
    if args.check:
        stale = []
        for name, data in drawn.items():
            path = os.path.join(OUT, name)
            if not os.path.isfile(path):
                stale.append(f"{name} (missing)")
            else:
                with open(path, "rb") as f:
                    if f.read() != data:
                        stale.append(f"{name} (differs)")
        extra = (
            sorted(set(n for n in os.listdir(OUT) if n.endswith(".svg")) - set(drawn))
            if os.path.isdir(OUT)
            else []
        )
        stale += [f"{n} (not drawn by this script)" for n in extra]
        if stale:
            print("docs/figures/ is out of date; run `python docs/figures.py`:\n  " + "\n  ".join(stale))
            return 1
        print(f"docs/figures/: {len(drawn)} figures up to date")
        return 0
    os.makedirs(OUT, exist_ok=True)
    for name, data in drawn.items():
        path = os.path.join(OUT, name)
        with open(path + ".tmp", "wb") as f:  # temp file + rename: never a half-written figure
            f.write(data)
        os.replace(path + ".tmp", path)
        print(f"wrote docs/figures/{name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
