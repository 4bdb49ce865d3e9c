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
# region features), then its pre-training losses. Each markdown cell states one idea and
# its equation; the code cell under it computes exactly that, first by hand with plain
# NumPy and then with the function that does it (`refimpl.lxmert`, the shared BERT blocks of
# `refimpl.bert`), each called by itself. At the end the step-by-step results and losses are
# checked against one call of the model.
#
# Layer functions take the checkpoint's weights as keyword sub-dicts named like its keys
# (`**w["embeddings"]`) and read their hyper-parameters from `config=cfg`. Every linear
# layer is $y = xW^\top + b$ with $W$ the stored `[out_features, in_features]` matrix, as on
# the docs pages. Shapes: `B` batch, `L` words, `N` regions, `H` hidden size, `n` heads.

# %%
import json
import math
import sys

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless when run as a plain script
import matplotlib.pyplot as plt
import numpy as np

import refimpl
from refimpl import bert, trace
from refimpl.attention import extended_attention_mask
from refimpl.data import path as bundled_path
from refimpl.lxmert import heads
from refimpl.lxmert import layers as L
from refimpl.lxmert.inputs import check_inputs
from refimpl.lxmert.tokenization import LxmertTokenizer

np.set_printoptions(precision=4, suppress=True, linewidth=88)
# Figures at 100 dpi, at most 6.6 in wide (they show unscaled in the docs' 688-px text column), labels >= 8 pt.
plt.rcParams.update(
    {"figure.dpi": 100, "font.size": 9, "axes.titlesize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8}
)
ATOL = 1e-12  # by hand vs function, and steps vs model: float64 round-off only
EPS = 1e-12  # every LXMERT LayerNorm (the oracle hard-codes it)


def check(name, ours, theirs):
    """Print the largest difference (first, so a narrow screen never hides it) and fail above ATOL."""
    diff = np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)).max()
    print(f"max |diff| = {diff:.1e}  {name}  {np.shape(ours)}")
    assert diff <= ATOL, f"{name}: {diff:.3e} > {ATOL}"


def mask_str(m):
    """An additive mask as text: 0 for a kept key, finfo.min for a masked one (plain float printing
    shows them as -0.0000e+000 and -1.7977e+308)."""
    fmin = np.finfo(m.dtype).min
    return np.array2string(
        m, formatter={"float_kind": lambda v: "0" if v == 0 else "finfo.min" if v == fmin else f"{v:.4g}"}
    )


def proj(x, lin):  # x W^T + b
    return x @ lin["weight"].T + lin["bias"]


def layer_norm_by_hand(x, weight, bias):  # over the last axis, eps 1e-12
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * weight + bias


erf = np.vectorize(math.erf)


def gelu_by_hand(x):  # the exact GELU, x/2 (1 + erf(x / sqrt 2))
    return x / 2 * (1 + erf(x / np.sqrt(2)))


# %% [markdown]
# ## The checkpoint and the inputs
#
# The weights, nested by checkpoint key: `w["encoder"]["x_layers"]["0"]["visual_attention"]`
# holds the keys `lxmert.encoder.x_layers.0.visual_attention.*`. We compute in float64.

# %%
CKPT = bundled_path("lxmert-tiny")
model = refimpl.from_pretrained(CKPT, dtype="float64")
cfg = model.config
params = model.weights  # the whole LxmertForPreTraining: lxmert, cls, obj_predict_head, answer_head
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
pad_start = int(np.argmin(attention_mask[1]))  # first 0 of question 2's mask
assert attention_mask[1, :pad_start].all() and not attention_mask[1, pad_start:].any()
print(f"question 2: padding starts at token index {pad_start} of {input_ids.shape[1]}")

# %% [markdown]
# ## 1. Word embeddings
#
# $$E_\text{lang} = \mathrm{LN}_{\epsilon=10^{-12}}\big(W_\text{word}[\text{ids}] + W_\text{pos}[0..L-1] + W_\text{type}[\text{type}]\big) \in \mathbb{R}^{B\times L\times H}$$
#
# Positions count from 0 whatever the padding (unlike LiLT), and the LayerNorm epsilon is
# 1e-12 whatever the config says (the oracle hard-codes it).

# %%
e = w["embeddings"]
lang_by_hand = layer_norm_by_hand(
    e["word_embeddings"]["weight"][input_ids]
    + e["position_embeddings"]["weight"][np.arange(input_ids.shape[1])]
    + e["token_type_embeddings"]["weight"][token_type_ids],
    **e["LayerNorm"],
)
lang = L.lxmert_embeddings(input_ids, token_type_ids, None, **e)  # [B, L, H]
check("E_lang: by hand vs lxmert_embeddings", lang_by_hand, lang)

# %% [markdown]
# ## 2. Visual feature encoder
#
# Features and boxes are projected to `H` and normalised separately, then averaged:
#
# $$E_\text{vis} = \tfrac12\big(\mathrm{LN}(fW_f^\top + b_f) + \mathrm{LN}(pW_p^\top + b_p)\big) \in \mathbb{R}^{B\times N\times H}$$

# %%
v = w["encoder"]["visn_fc"]
vis_by_hand = (
    layer_norm_by_hand(proj(visual_feats, v["visn_fc"]), **v["visn_layer_norm"])
    + layer_norm_by_hand(proj(visual_pos, v["box_fc"]), **v["box_layer_norm"])
) / 2
vis = L.lxmert_visual_feature_encoder(visual_feats, visual_pos, **v)  # [B, N, H]
check("E_vis: by hand vs lxmert_visual_feature_encoder", vis_by_hand, vis)

# %% [markdown]
# ## 3. Masks
#
# Each stream has its own additive mask over its **keys**, `[B, 1, 1, L]` and `[B, 1, 1, N]`:
# $(1 - \text{mask})\cdot\text{finfo.min}$. `check_inputs` validates the model's inputs and
# returns the 0/1 keep masks it was given (1 = attend), checked, as LiLT's does; the model
# makes them additive with `extended_attention_mask`.

# %%
fmin = np.finfo(np.float64).min
lang_mask = ((1.0 - attention_mask) * fmin)[:, None, None, :]  # [B, 1, 1, L]
visn_mask = ((1.0 - visual_attention_mask) * fmin)[:, None, None, :]  # [B, 1, 1, N]
inputs = check_inputs(
    cfg,
    np.float64,
    input_ids=input_ids,
    visual_feats=visual_feats,
    visual_pos=visual_pos,
    attention_mask=attention_mask,
    visual_attention_mask=visual_attention_mask,
    token_type_ids=token_type_ids,
)
assert np.array_equal(inputs["attention_mask"], attention_mask)  # the keep masks, checked
assert np.array_equal(inputs["visual_attention_mask"], visual_attention_mask)
assert np.array_equal(lang_mask, extended_attention_mask(inputs["attention_mask"], np.float64))
assert np.array_equal(visn_mask, extended_attention_mask(inputs["visual_attention_mask"], np.float64))
print("language mask", lang_mask.shape, "| vision mask", visn_mask.shape, "| both equal the model's")
print("question 2, vision mask over the 6 regions:", mask_str(visn_mask[1, 0, 0]))
print(f"finfo(float64).min = {fmin:.6e}")

# %% [markdown]
# ## 4. Language and object-relationship encoders
#
# Plain BERT layers, each stream on its own. First language layer 0 block by block:
# self-attention, then add-and-norm (`lxmert_self_attention_layer`),
#
# $$P = \mathrm{softmax}\Big(\frac{QK^\top}{\sqrt d} + M\Big), \quad C = PV, \qquad X' = \mathrm{LN}(C{W^O}^\top + b^O + X)$$
#
# then the feed-forward block (`bert.intermediate`, `bert.add_and_norm`), with the exact GELU:
#
# $$X'' = \mathrm{LN}\big(\mathrm{gelu}(X'W_1^\top + b_1)W_2^\top + b_2 + X'\big)$$

# %%
n = cfg.num_attention_heads


def split(t):  # [B, S, H] -> [B, n, S, d]
    B, S, H = t.shape
    return t.reshape(B, S, n, H // n).transpose(0, 2, 1, 3)


def attention_by_hand(h, key_value_states, key_mask, att):
    """Queries from h, keys and values from key_value_states: (C [B, S, H], P [B, n, S, S'])."""
    qh, kh, vh = (
        split(proj(h, att["query"])),
        split(proj(key_value_states, att["key"])),
        split(proj(key_value_states, att["value"])),
    )
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(qh.shape[-1]) + key_mask
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    return (p @ vh).transpose(0, 2, 1, 3).reshape(h.shape), p


l0 = w["encoder"]["layer"]["0"]
ctx_by_hand, probs_by_hand = attention_by_hand(lang, lang, lang_mask, l0["attention"]["self"])
att_by_hand = layer_norm_by_hand(
    proj(ctx_by_hand, l0["attention"]["output"]["dense"]) + lang, **l0["attention"]["output"]["LayerNorm"]
)
ctx, probs = bert.multi_head_attention(
    lang, lang, lang_mask, None, **l0["attention"]["self"], num_attention_heads=n
)
check("P: by hand vs bert.multi_head_attention", probs_by_hand, probs)
check("C: by hand vs bert.multi_head_attention", ctx_by_hand, ctx)
att_out = bert.add_and_norm(ctx, lang, **l0["attention"]["output"], layer_norm_eps=EPS)
check("X': by hand vs bert.add_and_norm", att_by_hand, att_out)
att_layer, att_probs = L.lxmert_self_attention_layer(lang, lang_mask, **l0["attention"], config=cfg)
check("X': add_and_norm vs lxmert_self_attention_layer", att_out, att_layer)

inner_by_hand = gelu_by_hand(proj(att_out, l0["intermediate"]["dense"]))  # [B, L, intermediate]
ffn_by_hand = layer_norm_by_hand(
    proj(inner_by_hand, l0["output"]["dense"]) + att_out, **l0["output"]["LayerNorm"]
)
inner = bert.intermediate(att_out, **l0["intermediate"], hidden_act=cfg.hidden_act)
check("gelu(X'W1^T + b1): by hand vs bert.intermediate", inner_by_hand, inner)
ffn = bert.add_and_norm(inner, att_out, **l0["output"], layer_norm_eps=EPS)
check("X'': by hand vs bert.add_and_norm", ffn_by_hand, ffn)
layer_out, layer_probs = L.lxmert_layer(lang, lang_mask, **l0, config=cfg)
check("X'': the blocks vs lxmert_layer", ffn, layer_out)
check("P: bert.multi_head_attention vs lxmert_layer", probs, layer_probs)

# %% [markdown]
# Then `lxmert_layer` for every layer: `l_layers` over the words, `r_layers` over the regions.

# %%
lang_states, lang_attn = [], []
h_lang = lang
for i in range(cfg.l_layers):
    h_lang, probs = L.lxmert_layer(h_lang, lang_mask, **w["encoder"]["layer"][str(i)], config=cfg)
    lang_states.append(h_lang)
    lang_attn.append(probs)
vis_states, vis_attn = [], []
h_vis = vis
for i in range(cfg.r_layers):
    h_vis, probs = L.lxmert_layer(h_vis, visn_mask, **w["encoder"]["r_layers"][str(i)], config=cfg)
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
fig, axes = plt.subplot_mosaic(
    [["regions", "relation"], ["lang", "lang"]],
    figsize=(6.6, 7.0),
    layout="constrained",
    height_ratios=[1, 1.4],
)
for j, (bx0, by0, bx1, by1) in enumerate(boxes):
    axes["regions"].add_patch(
        plt.Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fill=False, lw=1, color=f"C{j}")
    )
    axes["regions"].text(bx0 + 0.01, by0 + 0.01, str(j), color=f"C{j}", va="top")
axes["regions"].set(xlim=(0, 1), ylim=(1, 0), aspect="equal", title="regions (visual_pos)")
im = axes["lang"].imshow(lang_attn[0][0, 0], cmap="viridis")
axes["lang"].set(title="language layer 0, head 0", xticks=range(len(words)), yticks=range(len(words)))
axes["lang"].set_xticklabels(words, rotation=90)
axes["lang"].set_yticklabels(words)
fig.colorbar(im, ax=axes["lang"])
im = axes["relation"].imshow(vis_attn[0][0, 0], cmap="viridis")
axes["relation"].set(title="relationship layer 0, head 0", xlabel="region", ylabel="region")
fig.colorbar(im, ax=axes["relation"])
plt.show()

# %% [markdown]
# ## 5. Cross-modality layer: one cross-attention module, used both ways
#
# $$X'_\text{lang} = \mathrm{CrossAtt}(X_\text{lang}, X_\text{vis}, M_\text{vis}), \qquad X'_\text{vis} = \mathrm{CrossAtt}(X_\text{vis}, X_\text{lang}, M_\text{lang})$$
#
# with the **same** weights (`visual_attention`), both reading the layer's inputs:
# queries from one modality, keys and values from the other, then add-and-norm with the
# query side's states. By hand, then `lxmert_cross_attention_layer` called twice with the one
# `visual_attention` weight dict:

# %%
xw = w["encoder"]["x_layers"]["0"]
va = xw["visual_attention"]


def cross_by_hand(h, key_value_states, key_mask):
    c, p = attention_by_hand(h, key_value_states, key_mask, va["att"])
    return layer_norm_by_hand(proj(c, va["output"]["dense"]) + h, **va["output"]["LayerNorm"]), p


lang_x_by_hand, lang_to_vis = cross_by_hand(h_lang, h_vis, visn_mask)  # [B, L, H], [B, n, L, N]
vis_x_by_hand, vis_to_lang = cross_by_hand(h_vis, h_lang, lang_mask)  # [B, N, H], [B, n, N, L]
lang_x, lang_to_vis_f = L.lxmert_cross_attention_layer(h_lang, h_vis, visn_mask, **va, config=cfg)
vis_x, vis_to_lang_f = L.lxmert_cross_attention_layer(h_vis, h_lang, lang_mask, **va, config=cfg)
check("words -> regions P: by hand vs function", lang_to_vis, lang_to_vis_f)
check("words -> regions output: by hand vs function", lang_x_by_hand, lang_x)
check("regions -> words P: by hand vs function", vis_to_lang, vis_to_lang_f)
check("regions -> words output: by hand vs function", vis_x_by_hand, vis_x)
print(
    "question 2, largest probability on a masked region:",
    lang_to_vis[1][..., visual_attention_mask[1] == 0].max(),
)
assert lang_to_vis[1][..., visual_attention_mask[1] == 0].max() == 0.0

# %% [markdown]
# Head 0 of both directions for the first question, and the second question's
# language→vision attention, where the two masked regions get exactly 0.
# transformers returns only the first direction (`cross_encoder_attentions`); refimpl
# returns the second too (`cross_encoder_vision_attentions`).

# %%
fig, axes = plt.subplot_mosaic([["q1", "q2"], ["back", "back"]], figsize=(6.6, 6.2), layout="constrained")
panels = (
    ("q1", lang_to_vis[0, 0], "question 1: words -> regions", "region", "word"),
    ("back", vis_to_lang[0, 0], "question 1: regions -> words", "word", "region"),
    ("q2", lang_to_vis[1, 0], "question 2: words -> regions\n(regions 4, 5 masked)", "region", "word"),
)
for key, m, title, xl, yl in panels:
    im = axes[key].imshow(m, cmap="viridis", aspect="auto")
    axes[key].set(title=title, xlabel=xl, ylabel=yl)
    fig.colorbar(im, ax=axes[key])
axes["back"].set_xticks(range(len(words)))
axes["back"].set_xticklabels(words, rotation=90)
plt.show()

# %% [markdown]
# After the cross-attention, each modality attends to itself (`lang_self_att`,
# `visn_self_att`, each an `lxmert_self_attention_layer`) and runs its own feed-forward
# block (`lang_inter` + `lang_output`, `visn_inter` + `visn_output`). By the blocks, then
# `lxmert_x_layer`, which does the whole cross-modality layer; last, `lxmert_encoder` runs
# steps 2, 4 and 5 in one call.

# %%
lang_s, lang_self_probs = L.lxmert_self_attention_layer(lang_x, lang_mask, **xw["lang_self_att"], config=cfg)
vis_s, vis_self_probs = L.lxmert_self_attention_layer(vis_x, visn_mask, **xw["visn_self_att"], config=cfg)
lang_ff = bert.add_and_norm(
    bert.intermediate(lang_s, **xw["lang_inter"], hidden_act=cfg.hidden_act),
    lang_s,
    **xw["lang_output"],
    layer_norm_eps=EPS,
)
vis_ff = bert.add_and_norm(
    bert.intermediate(vis_s, **xw["visn_inter"], hidden_act=cfg.hidden_act),
    vis_s,
    **xw["visn_output"],
    layer_norm_eps=EPS,
)
x0 = L.lxmert_x_layer(h_lang, lang_mask, h_vis, visn_mask, **xw, config=cfg)
check("language: the blocks vs lxmert_x_layer", lang_ff, x0["lang"])
check("vision: the blocks vs lxmert_x_layer", vis_ff, x0["visn"])
check("words -> regions P: function vs lxmert_x_layer", lang_to_vis_f, x0["cross_lang_probs"])
check("regions -> words P: function vs lxmert_x_layer", vis_to_lang_f, x0["cross_visn_probs"])

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

# lxmert_encoder: the visual feature encoder and the three stacks, as done step by step above
encoder = L.lxmert_encoder(lang, lang_mask, visual_feats, visual_pos, visn_mask, **w["encoder"], config=cfg)
for field, ours_all in (("language_hidden_states", lang_states), ("vision_hidden_states", vis_states)):
    for i, (ours, theirs) in enumerate(zip(ours_all, encoder[field], strict=True)):
        check(f"{field}.{i}: the steps vs lxmert_encoder", ours, theirs)

# %% [markdown]
# ## 6. Pooler and heads
#
# $$\text{pooled} = \tanh(X_\text{lang}[:,0]\,W_p^\top + b_p)$$
#
# The masked-LM head scores every word against the (tied) word-embedding matrix $E$,
# $\mathrm{LN}(\mathrm{gelu}(XW_t^\top + b_t))E^\top + b$; the matching head gives two
# scores for whether the sentence fits the image (index 1: it matches, 0: it does not); the
# answer head is `Linear(H, 2H) -> gelu -> LN -> Linear(2H, num_qa_labels)` on the pooled
# output (its hidden layer is `2H` wide); the visual object head maps each region through its
# own transform to one output per enabled visual loss: `num_object_labels` object classes
# (1600 Visual Genome objects at base size), `num_attr_labels` attributes (400) and the
# region's `visual_feat_dim`-wide detector feature (2048), regressed.

# %%
pooled_by_hand = np.tanh(proj(h_lang[:, 0], w["pooler"]["dense"]))
pooled = bert.pooler(h_lang, **w["pooler"])  # [B, H]
check("pooled: by hand vs bert.pooler", pooled_by_hand, pooled)

cls_ = params["cls"]
transform = cls_["predictions"]["transform"]
word_matrix = w["embeddings"]["word_embeddings"]  # the decoder is tied to it
lm_by_hand = (
    layer_norm_by_hand(gelu_by_hand(proj(h_lang, transform["dense"])), **transform["LayerNorm"])
    @ word_matrix["weight"].T
    + cls_["predictions"]["bias"]
)
prediction_logits = heads.lm_prediction_head(
    h_lang,
    transform=transform,
    decoder=word_matrix,
    bias=cls_["predictions"]["bias"],
    hidden_act=cfg.hidden_act,
)  # [B, L, V]
check("prediction_logits: by hand vs lm_prediction_head", lm_by_hand, prediction_logits)
cross_relationship_score = proj(pooled, cls_["seq_relationship"])  # [B, 2]

fc = params["answer_head"]["logit_fc"]
answer_by_hand = proj(layer_norm_by_hand(gelu_by_hand(proj(pooled, fc["0"])), **fc["2"]), fc["3"])
answer_score = heads.answer_head(pooled, **params["answer_head"])  # [B, num_qa]
check("question_answering_score: by hand vs answer_head", answer_by_hand, answer_score)

visual_keys = list(heads.visual_losses(cfg))  # the enabled visual losses, in the oracle's order
visual_scores = heads.visual_obj_head(
    h_vis, **params["obj_predict_head"], hidden_act=cfg.hidden_act, keys=visual_keys
)
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
print("visual object head:", {k: s_.shape for k, s_ in visual_scores.items()})

# %% [markdown]
# ## 7. Pre-training losses, by hand
#
# `LxmertForPreTraining` adds one loss per task the config switches on (`task_mask_lm`,
# `task_matched`, `task_obj_predict` with `visual_obj_loss` / `visual_attr_loss` /
# `visual_feat_loss`, `task_qa`). The bundled config switches **all of them on**, so all are
# computed below; a task that is off adds nothing, and its labels are ignored. The labels are
# made up (the weights are random anyway): a few masked words, match / mismatch, an object
# and an attribute id per region with a confidence, the regions' own features as the
# feature-regression target, and an answer id per question (a class id: the oracle's
# docstring says one-hot, its code reads ids).

# %%
print({t: getattr(cfg, t) for t in ("task_mask_lm", "task_matched", "task_obj_predict", "task_qa")})
print({t: getattr(cfg, t) for t in ("visual_obj_loss", "visual_attr_loss", "visual_feat_loss")})
print("visual_loss_normalizer", cfg.visual_loss_normalizer)
assert (
    cfg.task_mask_lm and cfg.task_matched and cfg.task_obj_predict and cfg.task_qa and len(visual_keys) == 3
)

rng = np.random.default_rng(0)
B, N = visual_feats.shape[:2]
labels = np.full_like(input_ids, -100)  # -100: not a masked word
for b in range(B):  # two real words per question (not [CLS] / [SEP]) are the masked-LM targets
    picks = rng.choice(np.arange(1, int(attention_mask[b].sum()) - 1), size=2, replace=False)
    labels[b, picks] = input_ids[b, picks]
matched_label = np.array([1, 0])
obj_ids = rng.integers(0, cfg.num_object_labels, (B, N))
obj_ids[1, 5] = -100  # ignored: adds 0, but still counts in the mean over regions
obj_labels = {
    "obj": (obj_ids, rng.uniform(size=(B, N))),
    "attr": (rng.integers(0, cfg.num_attr_labels, (B, N)), rng.uniform(size=(B, N))),
    "feat": (visual_feats, rng.integers(0, 2, (B, N)).astype(np.float64)),  # conf 1: a masked region
}
ans = np.array([3, 7])
print("masked-LM labels:\n", labels)

# %% [markdown]
# Cross entropy of logits $z$ and a class $y$, and its mean over the items not ignored
# ($y = -100$):
#
# $$\mathrm{CE}(z, y) = \log\textstyle\sum_c e^{z_c} - z_y, \qquad \ell = \frac{1}{|\{i: y_i \ne -100\}|}\sum_{i: y_i\ne -100}\mathrm{CE}(z_i, y_i)$$
#
# This is the masked-LM loss over all `B·L` tokens, the matching loss over the `B` pairs and
# the answer loss over the `B` questions.


# %%
def ce_per_item(z, y):  # [M, C], [M] -> [M], 0 where y == -100
    zmax = z.max(-1, keepdims=True)
    lse = (zmax + np.log(np.exp(z - zmax).sum(-1, keepdims=True)))[:, 0]
    keep = y != -100
    return np.where(keep, lse - z[np.arange(len(y)), np.where(keep, y, 0)], 0.0)


def ce_mean(z, y):
    return ce_per_item(z, y).sum() / (y != -100).sum()


loss_mlm = ce_mean(prediction_logits.reshape(-1, cfg.vocab_size), labels.reshape(-1))
loss_matched = ce_mean(cross_relationship_score.reshape(-1, 2), matched_label)
loss_answer = ce_mean(answer_score.reshape(-1, cfg.num_qa_labels), ans)
print(f"masked LM {loss_mlm:.12f} | matched {loss_matched:.12f} | answer {loss_answer:.12f}")

# %% [markdown]
# The visual losses are per region, weighted by the label's confidence $c$, averaged over
# **all** `B·N` regions (ignored and masked ones included) and scaled by
# `visual_loss_normalizer` $\lambda$:
#
# $$\begin{aligned}\ell_\text{obj} &= \frac{\lambda}{BN}\sum_{i} c_i\,\mathrm{CE}(z_i, y_i), \\ \ell_\text{feat} &= \frac{\lambda}{BN}\sum_i c_i\,\frac1F\sum_f \mathrm{smoothL1}(\hat f_{if} - f_{if}), \\ \mathrm{smoothL1}(x) &= \begin{cases} x^2/2 & |x| < 1 \\ |x| - 1/2 & \text{else}\end{cases}\end{aligned}$$
#
# (`attr` like `obj`). `heads.visual_loss` is this rule.


# %%
def smooth_l1(x):
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


visual_parts = {}
for key in visual_keys:
    label, conf = obj_labels[key]
    z = visual_scores[key].reshape(B * N, -1)  # [B*N, num]
    if key == "feat":
        per_region = smooth_l1(z - label.reshape(B * N, -1)).mean(1)  # [B*N]
    else:
        per_region = ce_per_item(z, label.reshape(-1))  # [B*N]
    visual_parts[key] = (per_region * conf.reshape(-1)).mean() * cfg.visual_loss_normalizer
    info = heads.visual_losses(cfg)[key]
    by_function = heads.visual_loss(
        visual_scores[key],
        label.reshape(B * N, -1) if key == "feat" else label.reshape(-1),
        conf.reshape(-1),
        kind=info["loss"],
        normalizer=cfg.visual_loss_normalizer,
    )
    check(f"visual {key} loss: by hand vs heads.visual_loss", visual_parts[key], by_function)

# %% [markdown]
# The oracle sums the parts into `torch.tensor(0.0)`, a **float32** scalar, with in-place
# adds: each add happens in the wider dtype and is rounded back to float32, also for a
# float64 model. The visual parts go into their own float32 accumulator first, which is then
# added to the total, in the order masked LM, matched, visual, answer:
#
# $$\begin{aligned}&s_0 = 0, \qquad s_k = \mathrm{fl}_{32}(s_{k-1} + \ell_k), \qquad \ell = s_4 \\ &\text{for } (\ell_1, \ldots, \ell_4) = (\ell_\text{MLM}, \ell_\text{matched}, \ell_\text{visual}, \ell_\text{answer})\end{aligned}$$
#
# where $\ell_\text{visual}$ is the same float32 sum of $\ell_\text{obj}, \ell_\text{attr}, \ell_\text{feat}$
# (`heads.accumulate_loss` is one such add).

# %%
visual_total = np.float32(0.0)
for key in visual_keys:
    visual_total = np.float32(np.float64(visual_total) + visual_parts[key])
total = np.float32(0.0)
for part in (loss_mlm, loss_matched, visual_total, loss_answer):
    total = np.float32(np.float64(total) + np.float64(part))

total_f = np.zeros((), np.float32)
for part in (loss_mlm, loss_matched, visual_total, loss_answer):
    total_f = heads.accumulate_loss(total_f, np.asarray(part))
assert total_f.dtype == np.float32 and total_f == total
float64_sum = loss_mlm + loss_matched + sum(visual_parts.values()) + loss_answer
print(f"total loss, float32 accumulator: {float(total):.9g} | a float64 sum would give {float64_sum:.12f}")

# %% [markdown]
# ## 8. Check: the steps equal one call of the model
#
# The same inputs and labels through `model(...)`, an `LxmertForPreTraining`. Its outputs
# and hidden states must agree to float64 round-off; so must each loss part, which the model
# records in a trace (`refimpl.trace`: `loss.masked_lm`, `loss.visual.obj`, ...), and its
# float32 total must be the very same float32 number.

# %%
with trace.tracing() as rec:
    out = model(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        visual_feats=visual_feats,
        visual_pos=visual_pos,
        visual_attention_mask=visual_attention_mask,
        labels=labels,
        matched_label=matched_label,
        obj_labels=obj_labels,
        ans=ans,
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
for key in visual_keys:
    checks[f"obj_predict_head.decoder_dict.{key}"] = (
        visual_scores[key],
        rec.tensors[f"obj_predict_head.decoder_dict.{key}"],
    )
checks["loss.masked_lm"] = (loss_mlm, rec.tensors["loss.masked_lm"])
checks["loss.matched"] = (loss_matched, rec.tensors["loss.matched"])
for key in visual_keys:
    checks[f"loss.visual.{key}"] = (visual_parts[key], rec.tensors[f"loss.visual.{key}"])
checks["loss.answer"] = (loss_answer, rec.tensors["loss.answer"])
for name, (ours, theirs) in checks.items():
    check(name, ours, theirs)
print(
    f"loss: by hand {float(total):.9g}, model {float(out.loss):.9g} ({out.loss.dtype}), "
    f"equal: {bool(out.loss == total)}"
)
assert out.loss.dtype == np.float32 and out.loss == total, "loss"
print("step-by-step == model(...)")
