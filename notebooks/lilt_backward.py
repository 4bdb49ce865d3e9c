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
# # One LiLT layer backward, by hand
#
# This notebook takes layer 0 of the bundled tiny LiLT checkpoint (`refimpl/data/lilt-tiny`,
# random weights: hidden size 96, 4 heads, layout stream 96 / 4 = 24 wide) and computes the
# gradient of a scalar $L$ with respect to every one of its 32 weights and both of its inputs,
# one operation at a time, with refimpl's op-level backward functions (`linear_backward`,
# `layer_norm_backward`, `gelu_backward`, `softmax_backward`). Then it checks the result three ways:
#
# 1. against `refimpl.lilt.backward.lilt_layer_backward`, the library's layer backward;
# 2. against **torch autograd** through transformers' own `LiltLayer` on the same weights;
# 3. against **central finite differences** of the forward, on sampled entries of every weight
#    and of both inputs.
#
# The derivations are on the page [Backward pass](../docs/backward.md); this notebook is
# them, executed. Notation: $X$ `[B, L, H]` the text stream, $Y$ `[B, L, H/r]` the layout
# stream, $n$ heads of size $d = H/n$ (layout heads $d /\!/ r$), every linear layer
# $y = xW^\top + b$ with $W$ the stored `[out, in]` matrix, and $\mathrm{d}Z$ means
# $\partial L / \partial Z$, of $Z$'s shape.
#
# Each check prints `max |diff|` first, relative to the size of the expected values
# (divided by $\max(1, \max|\text{expected}|)$), and fails above $10^{-12}$.

# %%
import json
import sys
import warnings

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # headless when run as a plain script
else:  # tqdm (imported by transformers) warns when the kernel has no ipywidgets
    warnings.filterwarnings("ignore", message="IProgress not found")
import matplotlib.pyplot as plt
import numpy as np
import torch
from transformers import LiltForTokenClassification

import refimpl
from refimpl import trace
from refimpl.activations import gelu, gelu_backward
from refimpl.attention import attention_probs, extended_attention_mask, head_masks, merge_heads, split_heads
from refimpl.bi_acm import bi_acm_backward, bi_acm_contexts, bi_acm_scores
from refimpl.data import path as bundled_path
from refimpl.gradients import TensorGrads, flatten_grads
from refimpl.lilt import backward as lilt_backward
from refimpl.lilt import embeddings as emb
from refimpl.lilt import layers
from refimpl.lilt.tokenization import LiltTokenizer
from refimpl.ops import layer_norm, layer_norm_backward, linear, linear_backward, softmax_backward
from refimpl.tape import Tape, reading

np.set_printoptions(precision=4, suppress=True, linewidth=88)
plt.rcParams.update(
    {"figure.dpi": 100, "font.size": 9, "axes.titlesize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8}
)
ATOL = 1e-12  # relative to the largest gradient: float64 round-off only


def check(name, ours, theirs, atol=ATOL):
    """Print the largest difference relative to max(1, max|theirs|), and fail above atol."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{name}: shapes {ours.shape} != {theirs.shape}"
    diff = np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max())
    print(f"max |diff| = {diff:.1e}  {name}  {ours.shape}")
    assert diff <= atol, f"{name}: {diff:.3e} > {atol}"
    return diff


# %% [markdown]
# ## The layer's inputs
#
# The bundled padded batch (`example/forms.json`: a form and a shorter receipt, so the second
# row has padded keys), through both embedding streams. These are layer 0's inputs $X$, $Y$,
# and the additive mask $M$ (0 for a real key, `finfo.min` for a padded one).

# %%
CKPT = bundled_path("lilt-tiny")
model = refimpl.from_pretrained(CKPT, dtype="float64")
cfg = model.config
w = model.weights["lilt"]
w0 = w["encoder"]["layer"]["0"]  # layer 0's weights, nested like the checkpoint's keys
with open(bundled_path("example", "forms.json"), encoding="utf-8") as f:
    pages = json.load(f)["pages"]
tok = LiltTokenizer.from_pretrained(CKPT)
enc = tok([p["words"] for p in pages], boxes=[p["boxes"] for p in pages], padding=True, return_tensors="np")
position_ids = emb.create_position_ids_from_input_ids(enc["input_ids"], cfg.pad_token_id)
X = emb.text_embeddings(
    enc["input_ids"], None, np.zeros_like(enc["input_ids"]), position_ids, **w["embeddings"], config=cfg
)  # [B, L, H]
Y = emb.layout_embeddings(enc["bbox"], position_ids, **w["layout_embeddings"], config=cfg)  # [B, L, H/r]
M = extended_attention_mask(enc["attention_mask"], np.float64)  # [B, 1, 1, L]
n, r, eps = cfg.num_attention_heads, cfg.channel_shrink_ratio, cfg.layer_norm_eps
print("X", X.shape, "| Y", Y.shape, "| M", M.shape, "| real tokens per row:", enc["attention_mask"].sum(1))

# %% [markdown]
# ## The forward, keeping what the backward needs
#
# The same steps as `lilt_layer`, each with the library's forward function, keeping every
# intermediate a backward reads (what the library's tape keeps):
#
# $$\begin{aligned}
# Q, K, V &= XW_{q,k,v}^\top + b, \quad Q_\ell, K_\ell, V_\ell = YW_{\ell,q,k,v}^\top + b_\ell &&\text{(heads split)}\\
# S &= QK^\top/\sqrt d + Q_\ell K_\ell^\top/\sqrt{d /\!/ r}, \quad P = \mathrm{softmax}(S + M) &&\text{(BiACM)}\\
# C &= PV, \quad C_\ell = PV_\ell &&\text{(heads merged)}\\
# A &= \mathrm{LN}(CW_o^\top + b_o + X), \quad A_\ell = \mathrm{LN}(C_\ell W_{\ell o}^\top + b_{\ell o} + Y)\\
# X' &= \mathrm{LN}\big(\mathrm{gelu}(AW_1^\top + b_1)W_2^\top + b_2 + A\big), \quad Y' \text{ the same with the layout weights}
# \end{aligned}$$

# %%
sa, att = w0["attention"]["self"], w0["attention"]


def forward(X, Y, w0):
    """Layer 0 step by step; returns (X', Y', the intermediates)."""
    sa, att = w0["attention"]["self"], w0["attention"]
    t = {}
    for name, x in (("query", X), ("key", X), ("value", X)):
        t[name] = split_heads(linear(x, **sa[name]), n)  # [B, n, L, d]
    for name in ("layout_query", "layout_key", "layout_value"):
        t[name] = split_heads(linear(Y, **sa[name]), n)  # [B, n, L, d // r]
    t["S"] = bi_acm_scores(t["query"], t["key"], t["layout_query"], t["layout_key"], r)  # [B, n, L, L]
    t["P"] = attention_probs(t["S"], M)  # softmax(S + M): [B, n, L, L]
    t["C"], t["C_l"] = bi_acm_contexts(t["P"], t["value"], t["layout_value"])  # [B, L, H], [B, L, H/r]
    # add & norm after the attention, one per stream: [B, L, H], [B, L, H/r]
    t["pre_A"] = linear(t["C"], **att["output"]["dense"]) + X
    t["A"] = layer_norm(t["pre_A"], **att["output"]["LayerNorm"], eps=eps)
    t["pre_A_l"] = linear(t["C_l"], **att["layout_output"]["dense"]) + Y
    t["A_l"] = layer_norm(t["pre_A_l"], **att["layout_output"]["LayerNorm"], eps=eps)
    # feed-forward, one per stream: [B, L, I] and [B, L, I/r] inside
    for s, inter, out in (("", "intermediate", "output"), ("_l", "layout_intermediate", "layout_output")):
        t["h1" + s] = linear(t["A" + s], **w0[inter]["dense"])
        t["g" + s] = gelu(t["h1" + s])
        t["pre_out" + s] = linear(t["g" + s], **w0[out]["dense"]) + t["A" + s]
        t["out" + s] = layer_norm(t["pre_out" + s], **w0[out]["LayerNorm"], eps=eps)
    return t["out"], t["out_l"], t


X1, Y1, t = forward(X, Y, w0)
X1_lib, Y1_lib, P_lib = layers.lilt_layer(X, Y, M, None, **w0, config=cfg)
check("X': step by step vs lilt_layer", X1, X1_lib)
check("Y': step by step vs lilt_layer", Y1, Y1_lib)
check("P: step by step vs lilt_layer", t["P"], P_lib)

# %% [markdown]
# ## The scalar $L$
#
# A layer has two outputs, so we differentiate $L = \sum X' \odot G + \sum Y' \odot G_\ell$ with
# fixed standard-normal $G$, $G_\ell$ (what `refimpl golden --grads` does for a model without
# labels). Then $\mathrm{d}X' = G$ and $\mathrm{d}Y' = G_\ell$: the upstream gradients.

# %%
rng = np.random.default_rng(0)
G, G_l = rng.standard_normal(X1.shape), rng.standard_normal(Y1.shape)


def loss(X1, Y1):
    return float((X1 * G).sum() + (Y1 * G_l).sum())


print(f"L = {loss(X1, Y1):.6f}")

# %% [markdown]
# ## 1. The feed-forward blocks, in reverse
#
# Output LayerNorm first: $X' = \mathrm{LN}(z)$ with $z = \mathrm{gelu}(h_1)W_2^\top + b_2 + A$.
# `layer_norm_backward` gives $\mathrm{d}z$ and the LayerNorm's $\mathrm{d}w$, $\mathrm{d}b$
# (it recomputes the row statistics from $z$). The residual passes $\mathrm{d}z$ straight to $A$;
# the linear layer gives $\mathrm{d}g = \mathrm{d}z\,W_2$, $\mathrm{d}W_2 = \mathrm{d}z^\top g$,
# $\mathrm{d}b_2 = \sum \mathrm{d}z$; the exact GELU multiplies by
# $\mathrm{gelu}'(h_1) = \Phi(h_1) + h_1\varphi(h_1)$; and the first linear layer adds its share to
# $\mathrm{d}A$:
#
# $$\mathrm{d}A = \mathrm{d}z + \big(\mathrm{d}g \odot \mathrm{gelu}'(h_1)\big) W_1 .$$
#
# The layout stream's block is the same with its own weights, so one function does both.

# %%
grads = {}  # our gradients, keyed like the checkpoint's keys inside the layer


def feed_forward_backward(d_out, s, inter, out):
    """d_out = dL/d(block output) -> dL/dA, recording the weights' gradients."""
    d_z, grads[f"{out}.LayerNorm.weight"], grads[f"{out}.LayerNorm.bias"] = layer_norm_backward(
        d_out, t["pre_out" + s], **w0[out]["LayerNorm"], eps=eps
    )
    d_g, grads[f"{out}.dense.weight"], grads[f"{out}.dense.bias"] = linear_backward(
        d_z, t["g" + s], **w0[out]["dense"]
    )
    d_h1 = gelu_backward(d_g, t["h1" + s])  # dg * (Phi(h1) + h1 phi(h1))
    d_A, grads[f"{inter}.dense.weight"], grads[f"{inter}.dense.bias"] = linear_backward(
        d_h1, t["A" + s], **w0[inter]["dense"]
    )
    return d_z + d_A  # the residual's share + the block's


d_A = feed_forward_backward(G, "", "intermediate", "output")  # [B, L, H]
d_A_l = feed_forward_backward(G_l, "_l", "layout_intermediate", "layout_output")  # [B, L, H/r]
print("dA", d_A.shape, "| dA_l", d_A_l.shape)

# %% [markdown]
# ## 2. Add & norm after the attention
#
# The same pattern without the GELU: $A = \mathrm{LN}(CW_o^\top + b_o + X)$ gives
# $\mathrm{d}C = \mathrm{d}z\,W_o$ and a residual share $\mathrm{d}z$ for $X$, which we keep
# and add to the attention's share at the end.

# %%
d_pre_A, grads["attention.output.LayerNorm.weight"], grads["attention.output.LayerNorm.bias"] = (
    layer_norm_backward(d_A, t["pre_A"], **att["output"]["LayerNorm"], eps=eps)
)
d_C, grads["attention.output.dense.weight"], grads["attention.output.dense.bias"] = linear_backward(
    d_pre_A, t["C"], **att["output"]["dense"]
)
(
    d_pre_A_l,
    grads["attention.layout_output.LayerNorm.weight"],
    grads["attention.layout_output.LayerNorm.bias"],
) = layer_norm_backward(d_A_l, t["pre_A_l"], **att["layout_output"]["LayerNorm"], eps=eps)
d_C_l, grads["attention.layout_output.dense.weight"], grads["attention.layout_output.dense.bias"] = (
    linear_backward(d_pre_A_l, t["C_l"], **att["layout_output"]["dense"])
)
d_X, d_Y = d_pre_A.copy(), d_pre_A_l.copy()  # the residual shares; the attention adds to them
print("dC", d_C.shape, "| dC_l", d_C_l.shape)

# %% [markdown]
# ## 3. BiACM in reverse: one $P$, two gradients, one shared score
#
# Both contexts read the same $P$, but each meets only its own stream's values, so $P$ gets
# one gradient from each stream:
#
# $$\mathrm{d}P = \mathrm{d}C\,V^\top, \qquad \mathrm{d}P_\ell = \mathrm{d}C_\ell\,V_\ell^\top, \qquad
# \mathrm{d}V = P^\top\mathrm{d}C, \qquad \mathrm{d}V_\ell = P^\top\mathrm{d}C_\ell .$$
#
# Each goes through the softmax, $\mathrm{d}S_k = P_k\big(\mathrm{d}P_k - \sum_j \mathrm{d}P_j P_j\big)$
# (the additive mask is a constant: a padded key, $P_k = 0$, gets nothing), and both land on
# the one shared score $S = T + T_\ell$, whose two summands each receive the total
# $\mathrm{d}T = \mathrm{d}S + \mathrm{d}S_\ell$, then each its own scale:
#
# $$\mathrm{d}Q = \tfrac{\mathrm{d}T}{\sqrt d}K,\quad \mathrm{d}K = \big(\tfrac{\mathrm{d}T}{\sqrt d}\big)^{\!\top}Q,\quad
# \mathrm{d}Q_\ell = \tfrac{\mathrm{d}T}{\sqrt{d/\!/r}}K_\ell,\quad \mathrm{d}K_\ell = \big(\tfrac{\mathrm{d}T}{\sqrt{d/\!/r}}\big)^{\!\top}Q_\ell .$$

# %%
P = t["P"]
dCh, dCh_l = split_heads(d_C, n), split_heads(d_C_l, n)  # [B, n, L, d], [B, n, L, d // r]
dP = dCh @ t["value"].swapaxes(-1, -2)  # [B, n, L, L], the text stream's
dP_l = dCh_l @ t["layout_value"].swapaxes(-1, -2)  # [B, n, L, L], the layout stream's
dV = P.swapaxes(-1, -2) @ dCh
dV_l = P.swapaxes(-1, -2) @ dCh_l
dS, dS_l = softmax_backward(dP, P), softmax_backward(dP_l, P)
dT = dS + dS_l  # both summands of the shared score get both streams' gradients
d = t["query"].shape[-1]
dQ, dK = (dT / np.sqrt(d)) @ t["key"], (dT / np.sqrt(d)).swapaxes(-1, -2) @ t["query"]
dQ_l = (dT / np.sqrt(d // r)) @ t["layout_key"]
dK_l = (dT / np.sqrt(d // r)).swapaxes(-1, -2) @ t["layout_query"]
print(f"head size d = {d}: text scale 1/sqrt({d}), layout scale 1/sqrt({d // r})")
print("padded keys get no score gradient:", np.abs(dT[1][..., enc["attention_mask"][1] == 0]).max())

g = bi_acm_backward(
    d_C, d_C_l, t["query"], t["key"], t["value"], t["layout_query"], t["layout_key"], t["layout_value"], P, r
)
for name, ours, lib in (
    ("dP (text stream)", dP, g.attention_probs),
    ("dP_l (layout stream)", dP_l, g.layout_attention_probs),
    ("dT = dS + dS_l", dT, g.tmp_attention_scores),
    ("dQ", dQ, g.query),
    ("dK", dK, g.key),
    ("dV", dV, g.value),
    ("dQ_l", dQ_l, g.layout_query),
    ("dK_l", dK_l, g.layout_key),
    ("dV_l", dV_l, g.layout_value),
):
    check(f"{name}: by hand vs bi_acm_backward", ours, lib)

# %% [markdown]
# The two gradients of the one probability matrix, head 0 of the form (row 0): equal forward
# values, different gradients. Golden gradient files keep them apart for this reason
# (`attention_probs` and `layout_attention_probs`).

# %%
fig, axes = plt.subplots(1, 3, figsize=(6.6, 2.7), layout="constrained")
L0 = int(enc["attention_mask"][0].sum())
for ax, m, title, cmap in zip(
    axes,
    (P[0, 0, :L0, :L0], dP[0, 0, :L0, :L0], dP_l[0, 0, :L0, :L0]),
    ("P (shared)", "dP from the text stream", "dP_l from the layout stream"),
    ("viridis", "RdBu_r", "RdBu_r"),
    strict=True,
):
    lim = None if cmap == "viridis" else np.abs(m).max()  # diverging maps centred on 0
    im = ax.imshow(m, cmap=cmap, vmin=None if lim is None else -lim, vmax=lim)
    ax.set(title=title, xlabel="key token", ylabel="query token")
    fig.colorbar(im, ax=ax, fraction=0.046, location="bottom")
plt.show()

# %% [markdown]
# ## 4. The six projections
#
# Heads merged back, each projection's `linear_backward` gives its weight's gradient and a
# share of its input's: $X$ feeds $Q$, $K$, $V$ (three shares) and the residual (step 2), $Y$
# the same for the layout stream.

# %%
for name, dz, x in (
    ("query", dQ, X),
    ("key", dK, X),
    ("value", dV, X),
    ("layout_query", dQ_l, Y),
    ("layout_key", dK_l, Y),
    ("layout_value", dV_l, Y),
):
    dx, grads[f"attention.self.{name}.weight"], grads[f"attention.self.{name}.bias"] = linear_backward(
        merge_heads(dz), x, **sa[name]
    )
    if name.startswith("layout"):
        d_Y += dx
    else:
        d_X += dx
print(f"{len(grads)} weight gradients by hand; dX {d_X.shape}, dY {d_Y.shape}")
assert len(grads) == len(flatten_grads(w0))  # every weight of the layer

# %% [markdown]
# ## Check 1: the library's `lilt_layer_backward`
#
# The library runs the forward once under a *tape* (a trace recorder that keeps a reference to
# each named tensor), then `lilt_layer_backward` walks `lilt_layer` in reverse, in the same
# trace scopes, reading what it needs by name: no second forward.

# %%
tape = Tape()
with trace.tracing(recorder=tape), trace.scope("layer"):
    layers.lilt_layer(X, Y, M, None, **w0, config=cfg)
with reading(tape), trace.tracing(recorder=TensorGrads()), trace.scope("layer"):
    d_X_lib, d_Y_lib, nested = lilt_backward.lilt_layer_backward(G, G_l, X, Y, M, None, **w0, config=cfg)
lib_grads = flatten_grads(nested)
assert sorted(lib_grads) == sorted(grads)
worst_lib = max(check(f"d {key}", grads[key], lib_grads[key]) for key in sorted(grads))
check("dX", d_X, d_X_lib)
check("dY", d_Y, d_Y_lib)

# %% [markdown]
# ## Check 2: torch autograd through transformers' `LiltLayer`
#
# The oracle: transformers 4.56.2's `LiltLayer` with the checkpoint's weights (loaded by
# transformers itself, in float64), the same inputs with `requires_grad`, the same $L$, and
# `L.backward()`. Parameter names are the same as our keys.

# %%
hf = LiltForTokenClassification.from_pretrained(CKPT).double().eval()
hf_layer = hf.lilt.encoder.layer[0]
Xt = torch.tensor(X, requires_grad=True)
Yt = torch.tensor(Y, requires_grad=True)
(X1t, Y1t), *_ = hf_layer(Xt, Yt, attention_mask=torch.tensor(M))
Lt = (X1t * torch.tensor(G)).sum() + (Y1t * torch.tensor(G_l)).sum()
Lt.backward()
print(f"L: ours {loss(X1, Y1):.15f}  torch {Lt.item():.15f}")
torch_grads = {k: p.grad.numpy() for k, p in hf_layer.named_parameters()}
assert sorted(torch_grads) == sorted(grads)
worst_torch = max(check(f"d {key}", grads[key], torch_grads[key]) for key in sorted(grads))
worst_torch = max(worst_torch, check("dX", d_X, Xt.grad.numpy()), check("dY", d_Y, Yt.grad.numpy()))

# %% [markdown]
# ### With a head mask
#
# A head mask $h$ multiplies the probabilities after the softmax, $P' = P \odot h$, and both
# contexts read $P'$. Where $h = 0$ the head's contexts are 0, so its values, scores, queries
# and keys get no gradient; yet $\mathrm{d}P' = \mathrm{d}C\,V^\top$ is not 0 there (it is what a
# golden file stores as that head's `attention_probs` gradient). The softmax's backward needs
# $P$ from *before* the mask, which $P'$ cannot give back where $h = 0$: the library's tape
# therefore keeps the scores when there is a head mask and recomputes $P$ from them. Below,
# head 1 is switched off; the library and autograd must still agree.

# %%
hm = np.array([1.0, 0.0, 1.0, 1.0])  # head 1 off
layer_hm = head_masks(hm, 1, n, np.float64)[0]  # [1, n, 1, 1]
tape_hm = Tape(skip=())  # keep the scores too
with trace.tracing(recorder=tape_hm), trace.scope("layer"):
    X1_hm, Y1_hm, _ = layers.lilt_layer(X, Y, M, layer_hm, **w0, config=cfg)
grads_hm_rec = TensorGrads()
with reading(tape_hm), trace.tracing(recorder=grads_hm_rec), trace.scope("layer"):
    dX_hm, dY_hm, nested_hm = lilt_backward.lilt_layer_backward(G, G_l, X, Y, M, layer_hm, **w0, config=cfg)
grads_hm = flatten_grads(nested_hm)

for p in hf_layer.parameters():
    p.grad = None
Xt_hm, Yt_hm = torch.tensor(X, requires_grad=True), torch.tensor(Y, requires_grad=True)
(X1t_hm, Y1t_hm), *_ = hf_layer(
    Xt_hm, Yt_hm, attention_mask=torch.tensor(M), head_mask=torch.tensor(layer_hm)
)
((X1t_hm * torch.tensor(G)).sum() + (Y1t_hm * torch.tensor(G_l)).sum()).backward()
worst_hm = max(
    check(f"d {k} (head mask)", grads_hm[k], p.grad.numpy()) for k, p in hf_layer.named_parameters()
)
worst_hm = max(
    worst_hm,
    check("dX (head mask)", dX_hm, Xt_hm.grad.numpy()),
    check("dY (head mask)", dY_hm, Yt_hm.grad.numpy()),
)
worst_torch = max(worst_torch, worst_hm)

dP_hm = grads_hm_rec.tensors["layer.attention.self.attention_probs"]  # dL/dP', [B, n, L, L]
dS_hm = grads_hm_rec.tensors["layer.attention.self.attention_scores"]  # dL/dS, [B, n, L, L]
print(
    f"head 1: max |dP'| = {np.abs(dP_hm[:, 1]).max():.3f} (not 0), max |dS| = {np.abs(dS_hm[:, 1]).max():.1e}"
)
assert np.abs(dP_hm[:, 1]).max() > 0 and np.abs(dS_hm[:, 1]).max() == 0

# %% [markdown]
# ## Check 3: central finite differences
#
# An independent check that needs no autograd: nudge one entry $\theta$ by $\pm h$ and
# $\pm 2h$, rerun the forward, and take the fourth-order central difference
#
# $$\frac{\partial L}{\partial\theta} \approx \frac{-L(\theta+2h) + 8L(\theta+h) - 8L(\theta-h) + L(\theta-2h)}{12h},$$
#
# whose truncation error is $O(h^4)$ and rounding error about $\varepsilon\,|L|/h$. With
# $h = 2^{-13}$ both are near $10^{-12}$, so the two must agree to $10^{-6}$ relative (to the
# larger of $|\mathrm{d}\theta|$ and 1). Two random entries of every weight, and four of each
# input.

# %%
H = 2.0**-13
fd_rng = np.random.default_rng(1)
params = flatten_grads(w0)  # key -> the weight array itself (flatten_grads only renames)


def finite_difference(array, idx):
    old = array[idx]
    values = []
    for step in (2, 1, -1, -2):
        array[idx] = old + step * H
        values.append(loss(*layers.lilt_layer(X, Y, M, None, **w0, config=cfg)[:2]))
    array[idx] = old
    return (-values[0] + 8 * values[1] - 8 * values[2] + values[3]) / (12 * H)


rows = []  # (what, index, ours, finite difference)
for key in sorted(params):
    for _ in range(2):
        idx = tuple(int(fd_rng.integers(s)) for s in params[key].shape)
        rows.append((key, idx, grads[key][idx], finite_difference(params[key], idx)))
for name, array, grad in (("X", X, d_X), ("Y", Y, d_Y)):
    for _ in range(4):
        idx = tuple(int(fd_rng.integers(s)) for s in array.shape)
        rows.append((name, idx, grad[idx], finite_difference(array, idx)))
rel = np.array([abs(a - b) / max(1.0, abs(a)) for _, _, a, b in rows])
for (what, idx, a, b), e in list(zip(rows, rel, strict=True))[::6]:
    print(f"{what:42s} {str(idx):14s} ours {a:+.10f}  finite diff {b:+.10f}  rel {e:.1e}")
print(f"{len(rows)} entries: worst relative difference {rel.max():.1e}")
assert rel.max() <= 1e-6
check("forward unchanged after the nudges", layers.lilt_layer(X, Y, M, None, **w0, config=cfg)[0], X1)

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.0), layout="constrained")
ours, fd = np.array([row[2] for row in rows]), np.array([row[3] for row in rows])
ax.scatter(fd, ours, s=12)
lim = np.abs(np.concatenate([ours, fd])).max() * 1.1
ax.plot([-lim, lim], [-lim, lim], lw=0.8, color="grey")
ax.set(
    xlabel="central finite difference",
    ylabel="by hand",
    title=f"{len(rows)} sampled entries: on the diagonal",
)
plt.show()

# %% [markdown]
# ## Summary
#
# The hand-written steps above are the library's `lilt_layer_backward` to float64
# round-off, equal torch autograd through transformers' `LiltLayer` (with and without a head
# mask), and agree with finite differences that need neither.

# %%
print(f"weights and inputs: {len(grads)} + 2 gradients")
print(f"by hand vs lilt_layer_backward: worst {worst_lib:.1e}")
print(f"by hand vs torch autograd:      worst {worst_torch:.1e} (head mask included)")
print(f"by hand vs finite differences:  worst {rel.max():.1e} (relative, {len(rows)} entries)")
print("by hand == lilt_layer_backward == autograd == finite differences")
