# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # LiLT, one function at a time
#
# This notebook runs a LiLT forward pass step by step on the bundled tiny checkpoint
# (`refimpl/data/lilt-tiny`, a `LiltForTokenClassification` with random weights: hidden
# size 96, 2 layers, 4 heads, layout stream 96 / 4 = 24 wide). Each markdown cell states one
# idea and its equation; the code cell under it computes exactly that, with the layer
# functions of `refimpl.lilt`. At the end, the step-by-step result is checked against a
# single call of the model.
#
# Shapes are written `[B, L, H]`: batch, sequence length, hidden size; `r` is
# `channel_shrink_ratio`, `n` the number of heads and `d = H / n` the head size.
# The page [LiLT explained](../docs/lilt.md) has the same steps with the source of each
# function.

# %%
import json
import sys

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless when run as a plain script
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import refimpl
from refimpl.attention import extended_attention_mask, head_masks
from refimpl.data import path as bundled_path
from refimpl.lilt import embeddings as emb
from refimpl.lilt import layers
from refimpl.lilt.tokenization import LiltTokenizer
from refimpl.ops import linear

np.set_printoptions(precision=4, suppress=True, linewidth=110)
plt.rcParams.update({"figure.dpi": 72, "font.size": 8})

# %% [markdown]
# ## The checkpoint and the page
#
# `refimpl.from_pretrained` reads `config.json`, picks the class it names
# (`LiltForTokenClassification`) and loads every weight strictly. `model.weights` is the
# checkpoint nested by its key names, so `w["encoder"]["layer"]["0"]` is what the keys
# `lilt.encoder.layer.0.*` hold. We compute in float64, the reference precision.

# %%
CKPT = bundled_path("lilt-tiny")
model = refimpl.from_pretrained(CKPT, dtype="float64")
cfg = model.config
w = model.weights["lilt"]  # the LiltModel inside the token-classification head
print(
    type(model).__name__,
    "| hidden",
    cfg.hidden_size,
    "| layers",
    cfg.num_hidden_layers,
    "| heads",
    cfg.num_attention_heads,
    "| r",
    cfg.channel_shrink_ratio,
    "| pad id",
    cfg.pad_token_id,
)
print(sorted(w))

# %% [markdown]
# The input is an OCR'd page: words, and one box per word on the 0..1000 grid. We make a
# batch of two: the whole page, and its first five words (padded), so that masks and
# padding show up.

# %%
with open(bundled_path("example", "form.json"), encoding="utf-8") as f:
    form = json.load(f)
tok = LiltTokenizer.from_pretrained(CKPT)
enc = tok(
    [form["words"], form["words"][:5]],
    boxes=[form["boxes"], form["boxes"][:5]],
    padding=True,
    return_tensors="np",
)
input_ids, bbox, attention_mask = enc["input_ids"], enc["bbox"], enc["attention_mask"]
tokens = [
    tok.backend.id_to_token(int(i)).replace("\u0120", "_") for i in input_ids[0]
]  # "_" marks a word start
print("input_ids", input_ids.shape, "bbox", bbox.shape, "attention_mask", attention_mask.shape)
print(tokens)

fig, ax = plt.subplots(figsize=(5, 5))
for word, (x0, y0, x1, y1) in zip(form["words"], form["boxes"], strict=True):
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.8))
    ax.text(x0, y0 - 4, word, fontsize=6)
ax.set(xlim=(0, 1000), ylim=(1000, 0), title="the page: word boxes on the 0..1000 grid", aspect="equal")
plt.show()

# %% [markdown]
# ## 1. Position ids start after the padding id
#
# $$\text{pos}_i = m_i \cdot \textstyle\sum_{j\le i} m_j + p, \qquad m_i = [\text{id}_i \ne p]$$
#
# Real tokens count from `p + 1`; padding keeps `p`. These ids are shared by the text
# position table and the layout stream's box position table.

# %%
p = cfg.pad_token_id
mask = (input_ids != p).astype(np.int64)
position_ids = np.cumsum(mask, axis=1) * mask + p  # [B, L]
assert np.array_equal(position_ids, emb.create_position_ids_from_input_ids(input_ids, p))
print(position_ids)

# %% [markdown]
# ## 2. Text embeddings
#
# $$E_\text{text} = \mathrm{LN}\big(W_\text{word}[\text{ids}] + W_\text{type}[\text{type}] + W_\text{pos}[\text{pos}]\big) \in \mathbb{R}^{B\times L\times H}$$

# %%
token_type_ids = np.zeros_like(input_ids)
text = emb.text_embeddings(
    input_ids,
    None,
    token_type_ids,
    position_ids,
    **w["embeddings"],
    eps=cfg.layer_norm_eps,
    position_embedding_type=cfg.position_embedding_type,
)
print("text embeddings", text.shape)  # [B, L, H]

# %% [markdown]
# ## 3. Layout embeddings: six box features
#
# Each box `(x0, y0, x1, y1)` becomes six lookups of width `H/6`: left `x0`, upper `y0`,
# right `x1`, lower `y1` (the x and y tables are each used twice), height `y1 - y0` and
# width `x1 - x0`. They are concatenated to `[B, L, H]`, projected to the layout width
# `H/r`, and the box position embedding of the same position ids is added:
#
# $$E_\text{layout} = \mathrm{LN}\Big(W_\text{box}\big[e_x(x_0); e_y(y_0); e_x(x_1); e_y(y_1); e_h(y_1-y_0); e_w(x_1-x_0)\big] + b + W_\text{boxpos}[\text{pos}]\Big) \in \mathbb{R}^{B\times L\times H/r}$$
#
# First by hand, with plain NumPy indexing, then with `layout_embeddings`.

# %%
le = w["layout_embeddings"]
x0, y0, x1, y1 = (bbox[..., k] for k in range(4))
six = [
    le["x_position_embeddings"]["weight"][x0],
    le["y_position_embeddings"]["weight"][y0],
    le["x_position_embeddings"]["weight"][x1],
    le["y_position_embeddings"]["weight"][y1],
    le["h_position_embeddings"]["weight"][y1 - y0],
    le["w_position_embeddings"]["weight"][x1 - x0],
]
print("six features, each", six[0].shape)  # [B, L, H/6]
spatial = linear(np.concatenate(six, axis=-1), **le["box_linear_embeddings"])  # [B, L, H] -> [B, L, H/r]
spatial = spatial + le["box_position_embeddings"]["weight"][position_ids]
mu = spatial.mean(-1, keepdims=True)
var = ((spatial - mu) ** 2).mean(-1, keepdims=True)
layout_by_hand = (spatial - mu) / np.sqrt(var + cfg.layer_norm_eps) * le["LayerNorm"]["weight"] + le[
    "LayerNorm"
]["bias"]

layout = emb.layout_embeddings(bbox, position_ids, **le, eps=cfg.layer_norm_eps)
print(
    "layout embeddings", layout.shape, "| max |by hand - function| =", np.abs(layout_by_hand - layout).max()
)

# %% [markdown]
# The layout stream of the first page, token by feature: tokens of one word share a box, so
# they share everything but their box position embedding.

# %%
fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
im = ax.imshow(layout[0].T, aspect="auto", cmap="RdBu_r")
ax.set(
    xticks=range(len(tokens)),
    yticks=[],
    xlabel="token",
    ylabel=f"layout feature (H/r = {layout.shape[-1]})",
    title="layout stream input E_layout, page 1",
)
ax.set_xticklabels(tokens, rotation=90, fontsize=6)
fig.colorbar(im, ax=ax)
plt.show()

# %% [markdown]
# ## 4. The additive mask
#
# $$M_{b,j} = (1 - \text{attention\_mask}_{b,j}) \cdot \text{finfo(float64).min}, \quad \text{shape } [B, 1, 1, L]$$
#
# added to every score of a padded key, so its probability underflows to exactly 0.

# %%
additive_mask = extended_attention_mask(attention_mask, np.float64)  # [B, 1, 1, L]
per_layer_head_mask = head_masks(None, cfg.num_hidden_layers, cfg.num_attention_heads, np.float64)
print("mask", additive_mask.shape, "| page 2, keys 9..12:", additive_mask[1, 0, 0, 9:13])

# %% [markdown]
# ## 5. Layer 0 attention, by hand: BiACM
#
# Both streams project queries and keys with their own weights; the text heads are `d` wide,
# the layout heads `d/r`. Each stream's scores are scaled by its own head size, then **both
# streams use the sum**:
#
# $$S = \frac{QK^\top}{\sqrt d} + \frac{Q_\ell K_\ell^\top}{\sqrt{d/r}}, \qquad A = \mathrm{softmax}(S + M), \qquad C_\text{text} = AV, \quad C_\text{layout} = AV_\ell$$

# %%
sa = w["encoder"]["layer"]["0"]["attention"]["self"]
n = cfg.num_attention_heads


def heads(x):  # [B, L, n*k] -> [B, n, L, k]
    B, L, F = x.shape
    return x.reshape(B, L, n, F // n).transpose(0, 2, 1, 3)


q, k, v = (heads(linear(text, **sa[name])) for name in ("query", "key", "value"))
ql, kl, vl = (heads(linear(layout, **sa[name])) for name in ("layout_query", "layout_key", "layout_value"))
d, dl = q.shape[-1], ql.shape[-1]
print("text heads", q.shape, "| layout heads", ql.shape)  # [B, n, L, d], [B, n, L, d/r]

s_text = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)  # [B, n, L, L]
s_layout = ql @ kl.transpose(0, 1, 3, 2) / np.sqrt(dl)  # [B, n, L, L]
s = s_text + s_layout + additive_mask
a = np.exp(s - s.max(-1, keepdims=True))
a = a / a.sum(-1, keepdims=True)  # [B, n, L, L], shared by both streams
ctx_text = (a @ v).transpose(0, 2, 1, 3).reshape(text.shape)  # [B, L, H]
ctx_layout = (a @ vl).transpose(0, 2, 1, 3).reshape(layout.shape)  # [B, L, H/r]

# The same step with refimpl's function:
ctx_f, lctx_f, probs_f, lprobs_f = layers.lilt_self_attention(
    text,
    layout,
    additive_mask,
    per_layer_head_mask[0],
    **sa,
    num_heads=n,
    channel_shrink_ratio=cfg.channel_shrink_ratio,
    position_embedding_type=cfg.position_embedding_type,
    max_position_embeddings=cfg.max_position_embeddings,
)
print(
    "max |by hand - function|: probs",
    np.abs(a - probs_f).max(),
    "| text context",
    np.abs(ctx_text - ctx_f).max(),
    "| layout context",
    np.abs(ctx_layout - lctx_f).max(),
)
print("the two streams' probabilities are the same numbers:", np.array_equal(probs_f, lprobs_f))

# %% [markdown]
# What each stream contributes, head 0 of page 1: the text scores, the layout scores, and the
# shared probabilities after the softmax. The bundled weights are random, so the patterns
# carry no meaning; what the picture shows is where each term comes from: the layout scores
# depend only on boxes and positions, the text scores only on tokens and positions.

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), layout="constrained")
for ax, m, title in zip(
    axes,
    (s_text[0, 0], s_layout[0, 0], a[0, 0]),
    ("text scores QK^T/sqrt(d)", "layout scores Q_l K_l^T/sqrt(d/r)", "shared probabilities A"),
    strict=True,
):
    im = ax.imshow(m, cmap="viridis")
    ax.set(title=title, xlabel="key token", ylabel="query token")
    fig.colorbar(im, ax=ax, fraction=0.046)
plt.show()

# %% [markdown]
# Every head of layer 0 for the padded second page: the padded keys (columns from the
# sixth token on) get probability exactly 0.

# %%
fig, axes = plt.subplots(1, n, figsize=(3 * n, 3))
for h, ax in enumerate(axes):
    ax.imshow(a[1, h], cmap="viridis", vmin=0, vmax=1)
    ax.set(title=f"page 2, head {h}", xticks=[], yticks=[])
plt.show()
print("largest probability on a padded key:", a[1][..., attention_mask[1] == 0].max())

# %% [markdown]
# ## 6. Residual blocks and feed-forward, one per stream
#
# $$X' = \mathrm{LN}(C_\text{text}W^O + b^O + X), \quad Y' = \mathrm{LN}(C_\text{layout}W^O_\ell + b^O_\ell + Y)$$
# $$X'' = \mathrm{LN}\big(\mathrm{gelu}(X'W_1 + b_1)W_2 + b_2 + X'\big), \quad Y'' = \text{the same with the layout weights, } r \text{ times narrower}$$
#
# `lilt_layer` does steps 5 and 6 for one layer; we run every layer and keep both streams.

# %%
X, Y = text, layout
text_states, layout_states, attentions = [X], [Y], []
for i in range(cfg.num_hidden_layers):
    X, Y, probs, _ = layers.lilt_layer(
        X,
        Y,
        additive_mask,
        per_layer_head_mask[i],
        **w["encoder"]["layer"][str(i)],
        hidden_act=cfg.hidden_act,
        eps=cfg.layer_norm_eps,
        num_heads=n,
        channel_shrink_ratio=cfg.channel_shrink_ratio,
        position_embedding_type=cfg.position_embedding_type,
        max_position_embeddings=cfg.max_position_embeddings,
    )
    text_states.append(X)
    layout_states.append(Y)
    attentions.append(probs)
    print(f"layer {i}: text {X.shape}  layout {Y.shape}")

# %% [markdown]
# The layout stream through the layers (page 1, feature norms per token): it is never
# mixed into the text stream directly, only through the shared scores.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 2.8), layout="constrained")
for ax, states, title in zip(
    axes,
    (text_states, layout_states),
    ("text stream |X| per token", "layout stream |Y| per token"),
    strict=True,
):
    im = ax.imshow(np.stack([np.linalg.norm(s_[0], axis=-1) for s_ in states]), aspect="auto", cmap="magma")
    ax.set(title=title, xlabel="token", ylabel="embeddings, layer 1, 2", yticks=range(len(states)))
    fig.colorbar(im, ax=ax)
plt.show()

# %% [markdown]
# ## 7. The head: one label per token
#
# `LiltForTokenClassification` has no pooler: a linear layer maps each token's final text
# state to the 7 FUNSD labels, `logits = X'' W_c + b_c` with shape `[B, L, num_labels]`.

# %%
logits = linear(X, **model.weights["classifier"])  # [B, L, 7]
print("logits", logits.shape)
print("predicted labels, page 1:", [cfg.id2label[int(j)] for j in logits[0].argmax(-1)][:8], "...")

# %% [markdown]
# ## 8. Check: the steps equal one call of the model
#
# The same inputs through `model(...)`, which runs the functions above inside
# `refimpl.lilt.modeling.lilt_model`. Every output must agree to float64 round-off.

# %%
out = model(
    input_ids=input_ids,
    bbox=bbox,
    attention_mask=attention_mask,
    output_hidden_states=True,
    output_attentions=True,
)
checks = {"logits": (logits, out.logits)}
checks.update(
    {
        f"hidden_states.{i}": (ours, theirs)
        for i, (ours, theirs) in enumerate(zip(text_states, out.hidden_states, strict=True))
    }
)
checks.update(
    {
        f"attentions.{i}": (ours, theirs)
        for i, (ours, theirs) in enumerate(zip(attentions, out.attentions, strict=True))
    }
)
checks.update(
    {
        f"layout_hidden_states.{i}": (ours, theirs)
        for i, (ours, theirs) in enumerate(zip(layout_states, out.layout_hidden_states, strict=True))
    }
)
for name, (ours, theirs) in checks.items():
    print(f"{name:<26} {str(ours.shape):<16} max |diff| = {np.abs(ours - theirs).max():.1e}")
    assert np.allclose(ours, theirs, rtol=0, atol=1e-12), name
print("step-by-step == model(...)")
