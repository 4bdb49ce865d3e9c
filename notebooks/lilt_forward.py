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
# idea and its equation; the code cell under it computes exactly that, first by hand with
# plain NumPy and then with the layer function that does it (`refimpl.lilt`, the shared
# BERT blocks of `refimpl.bert`, the attention steps of `refimpl.attention`), each called
# by itself. At the end, the step-by-step result is checked against a single call of the
# model.
#
# Layer functions take the checkpoint's weights as keyword sub-dicts named like its keys
# (`**w["embeddings"]`) and read their hyper-parameters from `config=cfg`.
#
# Every linear layer is $y = xW^\top + b$ with $W$ the stored `[out_features, in_features]`
# matrix, as on the docs pages. Shapes are written `[B, L, H]`: batch, sequence length, hidden size; `r` is
# `channel_shrink_ratio`, `n` the number of heads and `d = H / n` the head size.
# The page [LiLT explained](../docs/lilt.md) has the same steps with the source of each
# function.

# %%
import json
import math
import sys

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless when run as a plain script
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import refimpl
from refimpl import bert
from refimpl.attention import extended_attention_mask, head_masks, split_heads
from refimpl.bi_acm import bi_acm_contexts, bi_acm_scores
from refimpl.data import path as bundled_path
from refimpl.lilt import embeddings as emb
from refimpl.lilt import layers
from refimpl.lilt.tokenization import LiltTokenizer
from refimpl.ops import linear

np.set_printoptions(precision=4, suppress=True, linewidth=88)
# Figures at 100 dpi, at most 6.6 in wide (they show unscaled in the docs' 688-px text column), labels >= 8 pt.
plt.rcParams.update(
    {"figure.dpi": 100, "font.size": 9, "axes.titlesize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8}
)
ATOL = 1e-12  # by hand vs function, and steps vs model: float64 round-off only


def check(name, ours, theirs):
    """Print the largest difference (first, so a narrow screen never hides it) and fail above ATOL."""
    diff = np.abs(ours - theirs).max()
    print(f"max |diff| = {diff:.1e}  {name}  {ours.shape}")
    assert diff <= ATOL, f"{name}: {diff:.3e} > {ATOL}"


def mask_str(m):
    """An additive mask as text: 0 for a kept key, finfo.min for a masked one (plain float printing
    shows them as -0.0000e+000 and -1.7977e+308)."""
    fmin = np.finfo(m.dtype).min
    return np.array2string(
        m, formatter={"float_kind": lambda v: "0" if v == 0 else "finfo.min" if v == fmin else f"{v:.4g}"}
    )


def layer_norm_by_hand(x, weight, bias, eps):  # [..., F] -> [..., F], over the last axis
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


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
# batch of two: the whole page, and its first five words (padded to the page's length), so
# that masks and padding show up.

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

fig, ax = plt.subplots(figsize=(6.4, 6.4))
for word, (x0, y0, x1, y1) in zip(form["words"], form["boxes"], strict=True):
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.8))
    ax.text(x0, y0 - 6, word, fontsize=8)
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
pad_start = int(np.argmin(attention_mask[1]))  # first 0 of page 2's mask
assert attention_mask[1, :pad_start].all() and not attention_mask[1, pad_start:].any()
print(
    f"page 2 has {pad_start} real tokens (<s>, five words' sub-tokens, </s>): padding starts at "
    f"token index {pad_start}, the {pad_start + 1}th token of {input_ids.shape[1]}"
)

# %% [markdown]
# ## 2. Text embeddings
#
# $$E_\text{text} = \mathrm{LN}\big(W_\text{word}[\text{ids}] + W_\text{type}[\text{type}] + W_\text{pos}[\text{pos}]\big) \in \mathbb{R}^{B\times L\times H}$$
#
# By hand, then with `text_embeddings` (it reads `position_embedding_type` and
# `layer_norm_eps` from the config).

# %%
te = w["embeddings"]
token_type_ids = np.zeros_like(input_ids)
text_by_hand = layer_norm_by_hand(
    te["word_embeddings"]["weight"][input_ids]
    + te["token_type_embeddings"]["weight"][token_type_ids]
    + te["position_embeddings"]["weight"][position_ids],
    **te["LayerNorm"],
    eps=cfg.layer_norm_eps,
)
text = emb.text_embeddings(input_ids, None, token_type_ids, position_ids, **te, config=cfg)  # [B, L, H]
check("text embeddings: by hand vs text_embeddings", text_by_hand, text)

# %% [markdown]
# ## 3. Layout embeddings: six box features
#
# Each box `(x0, y0, x1, y1)` becomes six lookups of width `H/6`: left `x0`, upper `y0`,
# right `x1`, lower `y1` (the x and y tables are each used twice), height `y1 - y0` and
# width `x1 - x0`. They are concatenated to `[B, L, H]`, projected to the layout width
# `H/r`, and the box position embedding of the same position ids is added:
#
# $$\begin{aligned}E_\text{layout} = \mathrm{LN}\Big(&\big[e_x(x_0); e_y(y_0); e_x(x_1); e_y(y_1); e_h(y_1-y_0); e_w(x_1-x_0)\big]W_\text{box}^\top \\ &+ b + W_\text{boxpos}[\text{pos}]\Big) \in \mathbb{R}^{B\times L\times H/r}\end{aligned}$$
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
box = le["box_linear_embeddings"]
spatial = np.concatenate(six, axis=-1) @ box["weight"].T + box["bias"]  # [B, L, H] -> [B, L, H/r]
spatial = spatial + le["box_position_embeddings"]["weight"][position_ids]
layout_by_hand = layer_norm_by_hand(spatial, **le["LayerNorm"], eps=cfg.layer_norm_eps)

layout = emb.layout_embeddings(bbox, position_ids, **le, config=cfg)  # [B, L, H/r]
check("layout embeddings: by hand vs layout_embeddings", layout_by_hand, layout)

# %% [markdown]
# The layout stream of the first page, token by feature: tokens of one word share a box, so
# they share everything but their box position embedding.

# %%
fig, ax = plt.subplots(figsize=(6.6, 3.2), layout="constrained")
im = ax.imshow(layout[0].T, aspect="auto", cmap="RdBu_r")
ax.set(
    xticks=range(len(tokens)),
    yticks=[],
    xlabel="token",
    ylabel=f"layout feature (H/r = {layout.shape[-1]})",
    title="layout stream input E_layout, page 1",
)
ax.set_xticklabels(tokens, rotation=90)
fig.colorbar(im, ax=ax)
plt.show()

# %% [markdown]
# ## 4. The additive mask
#
# $$M_{b,j} = (1 - \text{attention\_mask}_{b,j}) \cdot \text{finfo(float64).min}, \quad \text{shape } [B, 1, 1, L]$$
#
# added to every score of a padded key, so its probability underflows to exactly 0.

# %%
mask_by_hand = ((1.0 - attention_mask) * np.finfo(np.float64).min)[:, None, None, :]
additive_mask = extended_attention_mask(attention_mask, np.float64)  # [B, 1, 1, L]
assert np.array_equal(mask_by_hand, additive_mask)
per_layer_head_mask = head_masks(None, cfg.num_hidden_layers, cfg.num_attention_heads, np.float64)
print(
    "mask",
    additive_mask.shape,
    f"| page 2, keys {pad_start - 2}..{pad_start + 1}:",
    mask_str(additive_mask[1, 0, 0, pad_start - 2 : pad_start + 2]),
)
print(f"finfo(float64).min = {np.finfo(np.float64).min:.6e}")

# %% [markdown]
# ## 5. Layer 0 attention, by hand: BiACM
#
# Both streams project queries and keys with their own weights; the text heads are `d` wide,
# the layout heads `d // r` (the text head size floor-divided by `r`, as the oracle writes
# it). Each stream's scores are scaled by 1/√(its own head size), then **both streams use the
# sum**:
#
# $$\begin{aligned}S &= \frac{QK^\top}{\sqrt d} + \frac{Q_\ell K_\ell^\top}{\sqrt{d /\!/ r}}, \\ P &= \mathrm{softmax}(S + M), \qquad C_\text{text} = PV, \quad C_\text{layout} = PV_\ell\end{aligned}$$

# %%
sa = w["encoder"]["layer"]["0"]["attention"]["self"]
n, r = cfg.num_attention_heads, cfg.channel_shrink_ratio


def heads(x):  # [B, L, n*k] -> [B, n, L, k]
    B, L, F = x.shape
    return x.reshape(B, L, n, F // n).transpose(0, 2, 1, 3)


def proj(x, lin):  # x W^T + b
    return x @ lin["weight"].T + lin["bias"]


q, k, v = (heads(proj(text, sa[name])) for name in ("query", "key", "value"))
ql, kl, vl = (heads(proj(layout, sa[name])) for name in ("layout_query", "layout_key", "layout_value"))
d = q.shape[-1]
print("text heads", q.shape, "| layout heads", ql.shape)  # [B, n, L, d], [B, n, L, d // r]

s_text = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)  # [B, n, L, L]
s_layout = ql @ kl.transpose(0, 1, 3, 2) / np.sqrt(d // r)  # [B, n, L, L]
s = s_text + s_layout + additive_mask
a = np.exp(s - s.max(-1, keepdims=True))
a = a / a.sum(-1, keepdims=True)  # [B, n, L, L], shared by both streams
ctx_text = (a @ v).transpose(0, 2, 1, 3).reshape(text.shape)  # [B, L, H]
ctx_layout = (a @ vl).transpose(0, 2, 1, 3).reshape(layout.shape)  # [B, L, H/r]

# The same step with refimpl's function: one probability array, shared by both streams
ctx_f, lctx_f, probs_f = layers.lilt_self_attention(
    text, layout, additive_mask, per_layer_head_mask[0], **sa, config=cfg
)
check("probs: by hand vs lilt_self_attention", a, probs_f)
check("text context: by hand vs lilt_self_attention", ctx_text, ctx_f)
check("layout context: by hand vs lilt_self_attention", ctx_layout, lctx_f)

# %% [markdown]
# ### The formulas and their fast kernels
#
# `lilt_self_attention` computes $S$, $P$ and both contexts with `refimpl.attention`'s
# `bi_acm_attention`, whose steps `bi_acm_scores` and `bi_acm_contexts` are the formulas as
# written above. Each has a fast kernel of the same name in `refimpl.fast`, which runs in its
# place unless `refimpl.reference()` is on. The scores' kernel computes $S$ a block of heads
# at a time, so neither summand is ever held for every head; the contexts' kernel turns the
# two value products into one:
#
# $$\big[C_\text{text} \;\big|\; C_\text{layout}\big] = P\,\big[V \;\big|\; V_\ell\big]$$
#
# The formulas equal the hand computation, and each kernel equals its formula: the scores bit
# for bit, the contexts to the order in which BLAS sums each dot product.

# %%
qh, kh, vh = (split_heads(proj(text, sa[name]), n) for name in ("query", "key", "value"))
qlh, klh, vlh = (
    split_heads(proj(layout, sa[name]), n) for name in ("layout_query", "layout_key", "layout_value")
)
with refimpl.reference():  # the formulas only
    scores_plain = bi_acm_scores(qh, kh, qlh, klh, r)  # [B, n, L, L]
    ctx_plain, lctx_plain = bi_acm_contexts(a, vh, vlh)
scores_fast = bi_acm_scores(qh, kh, qlh, klh, r)  # the default: refimpl.fast's kernel
ctx_fast, lctx_fast = bi_acm_contexts(a, vh, vlh)
check("S: by hand vs the formula", s_text + s_layout, scores_plain)
check("S: the fast kernel vs the formula", scores_fast, scores_plain)
print("  kernel == formula bit for bit:", np.array_equal(scores_fast, scores_plain))
check("contexts: by hand vs the formula", ctx_text, ctx_plain)
check("text context: the fast kernel vs the formula", ctx_fast, ctx_plain)
check("layout context: the fast kernel vs the formula", lctx_fast, lctx_plain)

# %% [markdown]
# What each stream contributes, head 0 of page 1: the text scores, the layout scores, and the
# shared probabilities after the softmax. The bundled weights are random, so the patterns
# carry no meaning; what the picture shows is where each term comes from: the layout scores
# depend only on boxes and positions, the text scores only on tokens and positions.

# %%
fig, axes = plt.subplots(1, 3, figsize=(6.6, 2.9), layout="constrained")
for ax, m, title in zip(
    axes,
    (s_text[0, 0], s_layout[0, 0], a[0, 0]),
    (
        r"text scores" "\n" r"$QK^\top/\sqrt{d}$",
        r"layout scores" "\n" r"$Q_\ell K_\ell^\top/\sqrt{d\,//\,r}$",
        "shared\nprobabilities P",
    ),
    strict=True,
):
    im = ax.imshow(m, cmap="viridis")
    ax.set(title=title, xlabel="key token", ylabel="query token")
    fig.colorbar(im, ax=ax, fraction=0.046, location="bottom")
plt.show()

# %% [markdown]
# Every head of layer 0 for the padded second page: the padded keys (the columns from
# `pad_start`, computed in step 1, on) get probability exactly 0.

# %%
fig, axes = plt.subplots(1, n, figsize=(6.6, 6.6 / n + 0.4), layout="constrained")
for h, ax in enumerate(axes):
    ax.imshow(a[1, h], cmap="viridis", vmin=0, vmax=1)
    ax.axvline(pad_start - 0.5, color="w", lw=0.8)
    ax.set(title=f"head {h}", xticks=[], yticks=[])
fig.suptitle("layer 0, page 2: keys right of the white line are padding")
plt.show()
print(f"padded keys of page 2: columns {pad_start}..{input_ids.shape[1] - 1}")
print("largest probability on a padded key:", a[1][..., pad_start:].max())
assert a[1][..., pad_start:].max() == 0.0

# %% [markdown]
# ## 6. Add and norm, one per stream
#
# Each stream's context is projected back and added to that stream's input, then normalised:
#
# $$X' = \mathrm{LN}(C_\text{text}{W^O}^\top + b^O + X), \qquad Y' = \mathrm{LN}(C_\text{layout}{W^O_\ell}^\top + b^O_\ell + Y)$$
#
# `refimpl.bert.add_and_norm` is this block (BERT's SelfOutput and Output); `lilt_attention`
# is step 5 plus one `add_and_norm` per stream.

# %%
att = w["encoder"]["layer"]["0"]["attention"]
eps = cfg.layer_norm_eps
x_att_by_hand = layer_norm_by_hand(
    proj(ctx_text, att["output"]["dense"]) + text, **att["output"]["LayerNorm"], eps=eps
)
y_att_by_hand = layer_norm_by_hand(
    proj(ctx_layout, att["layout_output"]["dense"]) + layout, **att["layout_output"]["LayerNorm"], eps=eps
)
x_att = bert.add_and_norm(ctx_f, text, **att["output"], layer_norm_eps=eps)  # [B, L, H]
y_att = bert.add_and_norm(lctx_f, layout, **att["layout_output"], layer_norm_eps=eps)  # [B, L, H/r]
check("X': by hand vs add_and_norm", x_att_by_hand, x_att)
check("Y': by hand vs add_and_norm", y_att_by_hand, y_att)

x_la, y_la, probs_la = layers.lilt_attention(
    text, layout, additive_mask, per_layer_head_mask[0], **att, config=cfg
)
check("X': add_and_norm vs lilt_attention", x_att, x_la)
check("Y': add_and_norm vs lilt_attention", y_att, y_la)
check("P: lilt_self_attention vs lilt_attention", probs_f, probs_la)

# %% [markdown]
# ## 7. Feed-forward, one per stream
#
# $$X'' = \mathrm{LN}\big(\mathrm{gelu}(X'W_1^\top + b_1)W_2^\top + b_2 + X'\big), \qquad \mathrm{gelu}(x) = \tfrac x2\big(1 + \mathrm{erf}(x/\sqrt2)\big)$$
#
# and the same for $Y''$ with the layout weights, $r$ times narrower
# (`H/r -> intermediate/r -> H/r`). `refimpl.bert.intermediate` is the first half
# (`hidden_act` is the exact erf GELU here), `add_and_norm` the second; `lilt_layer` is steps
# 5 to 7 for one layer. By hand, GELU uses Python's `math.erf` element by element.

# %%
erf = np.vectorize(math.erf)
layer0 = w["encoder"]["layer"]["0"]


def gelu_by_hand(x):
    return x / 2 * (1 + erf(x / np.sqrt(2)))


inner_by_hand = gelu_by_hand(proj(x_att, layer0["intermediate"]["dense"]))  # [B, L, intermediate]
x_ffn_by_hand = layer_norm_by_hand(
    proj(inner_by_hand, layer0["output"]["dense"]) + x_att, **layer0["output"]["LayerNorm"], eps=eps
)
inner = bert.intermediate(x_att, **layer0["intermediate"], hidden_act=cfg.hidden_act)  # [B, L, intermediate]
layout_inner = bert.intermediate(y_att, **layer0["layout_intermediate"], hidden_act=cfg.hidden_act)
x_ffn = bert.add_and_norm(inner, x_att, **layer0["output"], layer_norm_eps=eps)  # [B, L, H]
y_ffn = bert.add_and_norm(layout_inner, y_att, **layer0["layout_output"], layer_norm_eps=eps)  # [B, L, H/r]
print("intermediate: text", inner.shape, "| layout", layout_inner.shape)
check("gelu(X'W1^T + b1): by hand vs intermediate", inner_by_hand, inner)
check("X'': by hand vs intermediate + add_and_norm", x_ffn_by_hand, x_ffn)

x_l0, y_l0, probs_l0 = layers.lilt_layer(
    text, layout, additive_mask, per_layer_head_mask[0], **layer0, config=cfg
)
check("X'': the blocks vs lilt_layer", x_ffn, x_l0)
check("Y'': the blocks vs lilt_layer", y_ffn, y_l0)
check("P: lilt_self_attention vs lilt_layer", probs_f, probs_l0)

# %% [markdown]
# ## 8. Every layer
#
# `lilt_layer` once per layer, keeping both streams and the shared probabilities;
# `lilt_encoder` is this loop.

# %%
X, Y = text, layout
text_states, layout_states, attentions = [X], [Y], []
for i in range(cfg.num_hidden_layers):
    X, Y, probs = layers.lilt_layer(
        X, Y, additive_mask, per_layer_head_mask[i], **w["encoder"]["layer"][str(i)], config=cfg
    )
    text_states.append(X)
    layout_states.append(Y)
    attentions.append(probs)
    print(f"layer {i}: text {X.shape}  layout {Y.shape}")

encoder = layers.lilt_encoder(
    text,
    layout,
    additive_mask,
    per_layer_head_mask,
    **w["encoder"],
    config=cfg,
    output_hidden_states=True,
    output_attentions=True,
)
for i in range(cfg.num_hidden_layers + 1):
    check(f"text stream {i}: the loop vs lilt_encoder", text_states[i], encoder["hidden_states"][i])
    check(
        f"layout stream {i}: the loop vs lilt_encoder", layout_states[i], encoder["layout_hidden_states"][i]
    )

# %% [markdown]
# The layout stream through the layers (page 1, feature norms per token): it is never
# mixed into the text stream directly, only through the shared scores.

# %%
fig, axes = plt.subplots(2, 1, figsize=(6.6, 4.4), layout="constrained")
for ax, states, title in zip(
    axes,
    (text_states, layout_states),
    ("text stream |X| per token", "layout stream |Y| per token"),
    strict=True,
):
    im = ax.imshow(np.stack([np.linalg.norm(s_[0], axis=-1) for s_ in states]), aspect="auto", cmap="magma")
    ax.set(title=title, xlabel="token", ylabel="after", yticks=range(len(states)))
    ax.set_yticklabels(["embeddings"] + [f"layer {i}" for i in range(len(states) - 1)])
    fig.colorbar(im, ax=ax)
plt.show()

# %% [markdown]
# ## 9. The head: one label per token
#
# `LiltForTokenClassification` has no pooler: a linear layer maps each token's final text
# state to the 7 FUNSD labels, $\text{logits} = X''W_c^\top + b_c$ with shape `[B, L, num_labels]`.
#
# Only the text stream reaches the head: transformers' heads read the final text states
# (`last_hidden_state`) alone, so the layout stream acts on the labels only through the
# scores it added in every layer. The paper and the original code concatenate both streams'
# final states for their heads instead.

# %%
logits = linear(X, **model.weights["classifier"])  # [B, L, 7]
print("logits", logits.shape)
print("predicted labels, page 1:", [cfg.id2label[int(j)] for j in logits[0].argmax(-1)][:8], "...")

# %% [markdown]
# ## 10. Check: the steps equal one call of the model
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
for field, ours_all in (
    ("hidden_states", text_states),
    ("layout_hidden_states", layout_states),
    ("attentions", attentions),
):
    for i, (ours, theirs) in enumerate(zip(ours_all, getattr(out, field), strict=True)):
        checks[f"{field}.{i}"] = (ours, theirs)
for name, (ours, theirs) in checks.items():
    check(name, ours, theirs)
print("step-by-step == model(...)")
