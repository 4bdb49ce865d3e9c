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
# # LXMERT, one function at a time
#
# This notebook runs an LXMERT forward pass step by step on the bundled tiny checkpoint
# (`refimpl/data/lxmert-tiny`, an `LxmertForPreTraining` with random weights: hidden size 64,
# 4 heads, 2 language layers, 1 object-relationship layer, 1 cross-modality layer, 32-d
# region features). Each markdown cell states one idea and its equation; the code cell under
# it computes exactly that, with the functions of `refimpl.lxmert`. At the end the
# step-by-step result is checked against one call of the model.
#
# Shapes: `B` batch, `L` words, `N` regions, `H` hidden size, `n` heads.

# %%
import json
import sys

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless when run as a plain script
import matplotlib.pyplot as plt
import numpy as np

import refimpl
from refimpl.data import path as bundled_path
from refimpl.lxmert import heads
from refimpl.lxmert import layers as L
from refimpl.lxmert.modeling import nest
from refimpl.lxmert.tokenization import LxmertTokenizer
from refimpl.ops import layer_norm, linear

np.set_printoptions(precision=4, suppress=True, linewidth=110)
plt.rcParams.update({"figure.dpi": 72, "font.size": 8})

# %% [markdown]
# ## The checkpoint and the inputs
#
# The weights, nested by checkpoint key: `w["encoder"]["x_layers"]["0"]["visual_attention"]`
# holds the keys `lxmert.encoder.x_layers.0.visual_attention.*`. We compute in float64.

# %%
CKPT = bundled_path("lxmert-tiny")
model = refimpl.from_pretrained(CKPT, dtype="float64")
cfg = model.config
params = nest(model.params)
w = params["lxmert"]
print(
    type(model).__name__,
    "| hidden",
    cfg.hidden_size,
    "| heads",
    cfg.num_attention_heads,
    "| l/r/x layers",
    cfg.l_layers,
    cfg.r_layers,
    cfg.x_layers,
    f"| LayerNorm eps 1e-12 (config.layer_norm_eps = {cfg.layer_norm_eps}, never read)",
)
print(sorted(params))

# %% [markdown]
# Two questions about one image. The image is already a set of `N = 6` detector regions:
# a feature vector per region and its box, normalised to [0, 1] by the image size. The
# second question is shorter (padded), and for it we also mask out the last two regions.

# %%
with open(bundled_path("example", "question.json"), encoding="utf-8") as f:
    q = json.load(f)
feats = np.load(bundled_path("example", q["features"])).astype(np.float64)  # [N, F]
boxes = np.load(bundled_path("example", q["boxes"])).astype(np.float64)  # [N, 4]
tok = LxmertTokenizer.from_pretrained(CKPT)
enc = tok([q["question"], "is the sky blue?"], padding=True, return_tensors="np")
input_ids, token_type_ids, attention_mask = enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]
visual_feats = np.stack([feats, feats])  # [B, N, F]
visual_pos = np.stack([boxes, boxes])  # [B, N, 4]
visual_attention_mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
words = [tok.backend.id_to_token(int(i)) for i in input_ids[0]]
print("input_ids", input_ids.shape, "| visual_feats", visual_feats.shape, "| visual_pos", visual_pos.shape)
print(words)

# %% [markdown]
# ## 1. Word embeddings
#
# $$E_\text{lang} = \mathrm{LN}_{\epsilon=10^{-12}}\big(W_\text{word}[\text{ids}] + W_\text{pos}[0..L-1] + W_\text{type}[\text{type}]\big) \in \mathbb{R}^{B\times L\times H}$$
#
# Positions count from 0 whatever the padding (unlike LiLT), and the LayerNorm epsilon is
# 1e-12 whatever the config says (the oracle hard-codes it).

# %%
e = w["embeddings"]
x = (
    e["word_embeddings"]["weight"][input_ids]
    + e["position_embeddings"]["weight"][np.arange(input_ids.shape[1])]
    + e["token_type_embeddings"]["weight"][token_type_ids]
)
lang_by_hand = layer_norm(x, **e["LayerNorm"], eps=1e-12)
lang = L.embeddings(input_ids, token_type_ids, None, **e)
print("E_lang", lang.shape, "| max |by hand - function| =", np.abs(lang - lang_by_hand).max())

# %% [markdown]
# ## 2. Visual feature encoder
#
# Features and boxes are projected to `H` and normalised separately, then averaged:
#
# $$E_\text{vis} = \tfrac12\big(\mathrm{LN}(fW_f + b_f) + \mathrm{LN}(pW_p + b_p)\big) \in \mathbb{R}^{B\times N\times H}$$

# %%
v = w["encoder"]["visn_fc"]
vis_by_hand = (
    layer_norm(linear(visual_feats, **v["visn_fc"]), **v["visn_layer_norm"], eps=1e-12)
    + layer_norm(linear(visual_pos, **v["box_fc"]), **v["box_layer_norm"], eps=1e-12)
) / 2
vis = L.visual_feature_encoder(visual_feats, visual_pos, **v)
print("E_vis", vis.shape, "| max |by hand - function| =", np.abs(vis - vis_by_hand).max())

# %% [markdown]
# ## 3. Masks
#
# Each stream has its own additive mask over its **keys**, `[B, 1, 1, L]` and `[B, 1, 1, N]`:
# $(1 - \text{mask})\cdot\text{finfo.min}$.

# %%
fmin = np.finfo(np.float64).min
lang_mask = ((1.0 - attention_mask) * fmin)[:, None, None, :]  # [B, 1, 1, L]
visn_mask = ((1.0 - visual_attention_mask) * fmin)[:, None, None, :]  # [B, 1, 1, N]
print(lang_mask.shape, visn_mask.shape)

# %% [markdown]
# ## 4. Language and object-relationship encoders
#
# Plain BERT layers, each stream on its own: self-attention
# $\mathrm{softmax}(QK^\top/\sqrt d + M)V$, residual + LN, feed-forward with exact gelu,
# residual + LN. `l_layers` over the words, `r_layers` over the regions.

# %%
n = cfg.num_attention_heads
lang_states, lang_attn = [], []
h_lang = lang
for i in range(cfg.l_layers):
    h_lang, probs = L.bert_layer(
        h_lang, lang_mask, **w["encoder"]["layer"][str(i)], n_head=n, act=cfg.hidden_act
    )
    lang_states.append(h_lang)
    lang_attn.append(probs)
vis_states, vis_attn = [], []
h_vis = vis
for i in range(cfg.r_layers):
    h_vis, probs = L.bert_layer(
        h_vis, visn_mask, **w["encoder"]["r_layers"][str(i)], n_head=n, act=cfg.hidden_act
    )
    vis_states.append(h_vis)
    vis_attn.append(probs)
print(
    "language",
    h_lang.shape,
    "| vision",
    h_vis.shape,
    "| language attention",
    lang_attn[0].shape,
    "| vision attention",
    vis_attn[0].shape,
)

# %% [markdown]
# The regions as the encoder sees them (boxes on the unit square), and what the two
# single-modality encoders attend to: layer-0 language self-attention over the words and
# the relationship layer's attention over the regions (head 0, first question).

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
for j, (bx0, by0, bx1, by1) in enumerate(boxes):
    axes[0].add_patch(plt.Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fill=False, lw=1, color=f"C{j}"))
    axes[0].text(bx0, by0, str(j), color=f"C{j}")
axes[0].set(xlim=(0, 1), ylim=(1, 0), aspect="equal", title="regions (visual_pos)")
im = axes[1].imshow(lang_attn[0][0, 0], cmap="viridis")
axes[1].set(title="language layer 0, head 0", xticks=range(len(words)), yticks=range(len(words)))
axes[1].set_xticklabels(words, rotation=90)
axes[1].set_yticklabels(words)
fig.colorbar(im, ax=axes[1])
im = axes[2].imshow(vis_attn[0][0, 0], cmap="viridis")
axes[2].set(title="relationship layer 0, head 0", xlabel="region", ylabel="region")
fig.colorbar(im, ax=axes[2])
plt.show()

# %% [markdown]
# ## 5. Cross-modality layer: one cross-attention module, used both ways
#
# $$X'_\text{lang} = \mathrm{CrossAtt}(X_\text{lang}, X_\text{vis}, M_\text{vis}), \qquad X'_\text{vis} = \mathrm{CrossAtt}(X_\text{vis}, X_\text{lang}, M_\text{lang})$$
#
# with the **same** weights (`visual_attention`), both reading the layer's inputs. By hand,
# the probabilities of both directions for cross layer 0:

# %%
va = w["encoder"]["x_layers"]["0"]["visual_attention"]["att"]


def split(t):  # [B, S, H] -> [B, n, S, d]
    B, S, H = t.shape
    return t.reshape(B, S, n, H // n).transpose(0, 2, 1, 3)


def cross_probs(queries_from, keys_from, key_mask):
    qh, kh = split(linear(queries_from, **va["query"])), split(linear(keys_from, **va["key"]))
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(qh.shape[-1]) + key_mask
    a = np.exp(s - s.max(-1, keepdims=True))
    return a / a.sum(-1, keepdims=True)


lang_to_vis = cross_probs(h_lang, h_vis, visn_mask)  # [B, n, L, N]
vis_to_lang = cross_probs(h_vis, h_lang, lang_mask)  # [B, n, N, L]

x0 = L.cross_layer(
    h_lang, lang_mask, h_vis, visn_mask, **w["encoder"]["x_layers"]["0"], n_head=n, act=cfg.hidden_act
)
print(
    "language -> vision", lang_to_vis.shape, "max |diff|", np.abs(lang_to_vis - x0["cross_lang_probs"]).max()
)
print(
    "vision -> language", vis_to_lang.shape, "max |diff|", np.abs(vis_to_lang - x0["cross_visn_probs"]).max()
)

# %% [markdown]
# Head 0 of both directions for the first question, and the second question's
# language→vision attention, where the two masked regions get exactly 0.
# transformers returns only the first direction (`cross_encoder_attentions`); refimpl
# returns the second too (`cross_encoder_vision_attentions`).

# %%
fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
panels = (
    (lang_to_vis[0, 0], "question 1: words -> regions", "region", "word"),
    (vis_to_lang[0, 0], "question 1: regions -> words", "word", "region"),
    (lang_to_vis[1, 0], "question 2: words -> regions (4, 5 masked)", "region", "word"),
)
for ax, (m, title, xl, yl) in zip(axes, panels, strict=True):
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    ax.set(title=title, xlabel=xl, ylabel=yl)
    fig.colorbar(im, ax=ax)
axes[1].set_xticks(range(len(words)))
axes[1].set_xticklabels(words, rotation=90)
plt.show()

# %% [markdown]
# After the cross-attention, each modality attends to itself (`lang_self_att`,
# `visn_self_att`) and runs its own feed-forward. `cross_layer` did all of it:

# %%
h_lang, h_vis = x0["lang"], x0["visn"]
lang_states.append(h_lang)
vis_states.append(h_vis)
cross_attn = [x0["cross_lang_probs"]]
print("language_output", h_lang.shape, "| vision_output", h_vis.shape)
print(
    "hidden-state tuples: language",
    len(lang_states),
    "= l + x, vision",
    len(vis_states),
    "= r + x (no embedding outputs, as in transformers)",
)

# %% [markdown]
# ## 6. Pooler and heads
#
# $$\text{pooled} = \tanh(W_p X_\text{lang}[:,0] + b_p)$$
#
# The masked-LM head scores every word against the (tied) word-embedding matrix; the
# matching head says whether the sentence fits the image; the answer head is
# `Linear(H, 2H) -> gelu -> LN -> Linear(2H, num_qa_labels)` on the pooled output.

# %%
pooled = L.pooler(h_lang, **w["pooler"])  # [B, H]
cls_ = params["cls"]
prediction_logits = heads.lm_prediction_head(h_lang, **cls_["predictions"], act=cfg.hidden_act)  # [B, L, V]
cross_relationship_score = linear(pooled, **cls_["seq_relationship"])  # [B, 2]
answer_score = heads.answer_head(pooled, **params["answer_head"])  # [B, num_qa]
print(
    "pooled",
    pooled.shape,
    "| prediction_logits",
    prediction_logits.shape,
    "| cross_relationship_score",
    cross_relationship_score.shape,
    "| question_answering_score",
    answer_score.shape,
)

# %% [markdown]
# ## 7. Check: the steps equal one call of the model

# %%
out = model(
    input_ids=input_ids,
    token_type_ids=token_type_ids,
    attention_mask=attention_mask,
    visual_feats=visual_feats,
    visual_pos=visual_pos,
    visual_attention_mask=visual_attention_mask,
    output_hidden_states=True,
    output_attentions=True,
)
checks = {
    "prediction_logits": (prediction_logits, out.prediction_logits),
    "cross_relationship_score": (cross_relationship_score, out.cross_relationship_score),
    "question_answering_score": (answer_score, out.question_answering_score),
}
for field, ours_all in (
    ("language_hidden_states", lang_states),
    ("vision_hidden_states", vis_states),
    ("language_attentions", lang_attn),
    ("vision_attentions", vis_attn),
    ("cross_encoder_attentions", cross_attn),
):
    for i, (ours, theirs) in enumerate(zip(ours_all, getattr(out, field), strict=True)):
        checks[f"{field}.{i}"] = (ours, theirs)
for name, (ours, theirs) in checks.items():
    print(f"{name:<28} {str(ours.shape):<16} max |diff| = {np.abs(ours - theirs).max():.1e}")
    assert np.allclose(ours, theirs, rtol=0, atol=1e-12), name
print("step-by-step == model(...)")
