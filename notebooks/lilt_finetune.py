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
# # Fine-tuning LiLT in NumPy, with AdamW written out
#
# The bundled tiny `LiltForTokenClassification` (`refimpl/data/lilt-tiny`, random weights, 7
# FUNSD labels) is fine-tuned on the bundled forms (`example/forms.json`: a form and a receipt,
# one label per word) for 30 steps. Each step is one `model.backward(...)`, the hand-written
# backward of the whole model (see [Backward pass](../docs/backward.md)), and one AdamW update
# written out in NumPy below. Nothing else is used: no autograd, no optimizer library.
#
# Two pages cannot teach a model anything general: the point is that the loss falls, and that
# every number on the way equals what PyTorch computes. The notebook checks that twice:
#
# * the NumPy AdamW against `torch.optim.AdamW` on the same gradients;
# * the whole run (30 losses, and every weight after the last step) against the same run in
#   PyTorch: transformers' `LiltForTokenClassification`, `loss.backward()`, `torch.optim.AdamW`.
#
# Dropout is off in both (refimpl has no dropout; the torch model is in `eval()` mode), so the
# two runs are deterministic and comparable number for number.

# %%
import json
import os
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
from refimpl.data import path as bundled_path
from refimpl.lilt.tokenization import LiltTokenizer

np.set_printoptions(precision=4, suppress=True, linewidth=88)
plt.rcParams.update(
    {"figure.dpi": 100, "font.size": 9, "axes.titlesize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8}
)
STEPS = 30
LR, WEIGHT_DECAY = 1e-3, 0.01

# %% [markdown]
# ## AdamW, written out
#
# For each weight $\theta$ with gradient $g_t$ at step $t = 1, 2, \ldots$ (torch's
# `AdamW`, `amsgrad=False`, `maximize=False`):
#
# $$\begin{aligned}
# \theta &\leftarrow \theta\,(1 - \eta\lambda) && \text{decoupled weight decay: on } \theta \text{, not on } g\\
# m &\leftarrow m + (1-\beta_1)(g_t - m) && \text{first moment (torch's } \texttt{lerp}\text{)}\\
# v &\leftarrow \beta_2 v + (1-\beta_2)\,g_t^2 && \text{second moment}\\
# \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}\cdot\frac{m}{\sqrt{v}\,/\sqrt{1-\beta_2^t} + \epsilon} && \text{bias-corrected step}
# \end{aligned}$$
#
# Two details decide whether the numbers equal torch's. The weight decay multiplies $\theta$
# *before* the moments and is not part of $g$ (Adam with L2 regularisation would add
# $\lambda\theta$ to $g$, and $m$, $v$ would see it). And $\epsilon$ is added *after* the
# second moment's bias correction, $\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon$, not to
# $\sqrt{\hat v}$ under the square root nor before the correction: at the first steps,
# when $1 - \beta_2^t$ is about $10^{-3}$, the three placements differ in the fourth digit of a
# small gradient's step. The weights are updated in place, so the model (whose nested
# `model.weights` are views of the same arrays) sees the new values.


# %%
class AdamW:
    """torch.optim.AdamW's update (amsgrad=False, maximize=False), in NumPy, in place.

    Args:
        params: name -> weight array (updated in place).
        lr, betas, eps, weight_decay: torch's defaults.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        self.params, self.lr, self.eps, self.weight_decay = params, lr, eps, weight_decay
        self.beta1, self.beta2 = betas
        self.m = {k: np.zeros_like(p) for k, p in params.items()}  # first moments
        self.v = {k: np.zeros_like(p) for k, p in params.items()}  # second moments
        self.t = 0

    def step(self, grads):
        """One update of every parameter from ``grads`` (name -> gradient, the parameter's shape)."""
        self.t += 1
        b1, b2, lr = self.beta1, self.beta2, self.lr
        bias_correction1 = 1 - b1**self.t
        bias_correction2_sqrt = (1 - b2**self.t) ** 0.5
        step_size = lr / bias_correction1
        for k, p in self.params.items():
            g, m, v = grads[k], self.m[k], self.v[k]
            p *= 1 - lr * self.weight_decay  # decoupled weight decay
            m += (g - m) * (1 - b1)  # m <- lerp(m, g, 1 - beta1)
            v *= b2
            v += (1 - b2) * g * g
            denom = np.sqrt(v) / bias_correction2_sqrt + self.eps  # eps after the correction
            p -= step_size * (m / denom)


# %% [markdown]
# First check: a few steps of this AdamW against `torch.optim.AdamW` itself, on random weights
# and random gradients in float64 (`tests/test_notebooks.py` runs the same check on this
# cell's code).

# %%
rng = np.random.default_rng(0)
shapes = {"w": (5, 3), "b": (3,)}
ours = {k: rng.standard_normal(s) for k, s in shapes.items()}
theirs = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in ours.items()}
opt_np = AdamW(ours, lr=0.01, weight_decay=0.1)
opt_torch = torch.optim.AdamW(list(theirs.values()), lr=0.01, weight_decay=0.1)
for _ in range(5):
    grads = {k: rng.standard_normal(s) for k, s in shapes.items()}
    for k, p in theirs.items():
        p.grad = torch.tensor(grads[k])
    opt_np.step(grads)
    opt_torch.step()
adamw_diff = max(np.abs(ours[k] - theirs[k].detach().numpy()).max() for k in shapes)
print(f"5 steps: max |NumPy AdamW - torch.optim.AdamW| = {adamw_diff:.1e}")
assert adamw_diff <= 1e-12

# %% [markdown]
# ## The data: two pages, one label per word
#
# The tokenizer puts each word's label on its first sub-token and `-100` (ignored by the
# loss) on the other sub-tokens, the special tokens and the padding.

# %%
CKPT = bundled_path("lilt-tiny")
model = refimpl.from_pretrained(CKPT, dtype="float64")
with open(bundled_path("example", "forms.json"), encoding="utf-8") as f:
    pages = json.load(f)["pages"]
tok = LiltTokenizer.from_pretrained(CKPT)
enc = tok(
    [p["words"] for p in pages],
    boxes=[p["boxes"] for p in pages],
    word_labels=[p["labels"] for p in pages],
    padding=True,
    return_tensors="np",
)
batch = {k: enc[k] for k in ("input_ids", "bbox", "attention_mask", "labels")}
print({k: v.shape for k, v in batch.items()})
print("labelled tokens per page:", (batch["labels"] != -100).sum(1))

# %% [markdown]
# ## Which weights the loss reaches
#
# `model.backward(**batch)` runs one forward under a tape and the backward of the
# cross-entropy loss through the classifier, both layers and both embedding streams; its
# `params` are the gradients by checkpoint key, the same keys as `model.params`, with zeros
# for a weight the loss does not reach.
#
# Some weights are not reached at all: transformers' token-classification head reads the
# text stream only, so the **last layer's layout stream** (its layout values, layout
# add & norm and layout feed-forward) feeds nothing. PyTorch leaves their `.grad` at `None`,
# and `torch.optim.AdamW` *skips* a parameter without a gradient: no moments and no weight
# decay either. Updating them with a zero gradient would still decay them, and the two runs
# would part. So, as torch does, the optimizer gets only the weights whose gradient is not
# identically zero.

# %%
g0 = model.backward(**batch)
unreached = [k for k, grad in g0.params.items() if not grad.any()]
print(f"{len(unreached)} of {len(model.params)} weights get no gradient:")
print("\n".join("  " + k for k in unreached))
trained = {k: p for k, p in model.params.items() if k not in unreached}

# %% [markdown]
# ## The training loop
#
# AdamW updates the arrays of `model.params` in place; `model(...)` uses the new values at
# the next step.

# %%
opt = AdamW(trained, lr=LR, weight_decay=WEIGHT_DECAY)
losses = []
for _ in range(STEPS):
    g = model.backward(**batch)  # L = the token-classification loss
    losses.append(float(g.loss))
    opt.step(g.params)
final = float(model(**batch).loss)
print(
    f"loss: step 0 {losses[0]:.4f} -> step {STEPS - 1} {losses[-1]:.4f} -> after the last update {final:.4f}"
)
assert final < 0.5 * losses[0], "the loss did not fall"
pred = model(**batch).logits.argmax(-1)
kept = batch["labels"] != -100
print(f"labelled tokens predicted right: {(pred[kept] == batch['labels'][kept]).mean():.0%}")

# %% [markdown]
# ## The same run in PyTorch
#
# transformers' `LiltForTokenClassification` from the same checkpoint, in float64 and
# `eval()` mode, the same batch, `loss.backward()` and `torch.optim.AdamW` with the same
# settings, for the same 30 steps. Each loss and, at the end, every weight must agree with the
# NumPy run to float64 round-off (relative to the largest value, $10^{-10}$), with one
# instructive exception: the **key biases**. A key bias adds the same amount $q \cdot b_k$ to
# every score of a query's row, and the softmax ignores a shift of its row, so their true
# gradient is 0; both backwards return round-off (about $10^{-16}$), each its own. Adam
# divides $m$ by $\sqrt{v} + \epsilon$, so a gradient that small moves a weight by at most
# $\eta\,|m|/\epsilon \approx 10^{-3} \cdot 10^{-16} / 10^{-8} = 10^{-11}$ per step, in a
# direction set by round-off: $\epsilon$ is what keeps Adam from blowing round-off up to steps
# of size $\eta$. Their check is that bound over 30 steps (absolute $10^{-9}$).

# %%
hf = LiltForTokenClassification.from_pretrained(CKPT).double().eval()
hf_opt = torch.optim.AdamW(hf.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
torch_batch = {k: torch.tensor(v) for k, v in batch.items()}
torch_losses = []
for _ in range(STEPS):
    hf_opt.zero_grad()
    out = hf(**torch_batch)
    out.loss.backward()
    torch_losses.append(out.loss.item())
    hf_opt.step()
loss_diff = np.abs(np.array(losses) - np.array(torch_losses)).max()
print(f"30 losses: max |numpy - torch| = {loss_diff:.1e}")
torch_params = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
rel_diff = {
    k: np.abs(p - torch_params[k]).max() / max(1.0, np.abs(torch_params[k]).max())
    for k, p in model.params.items()
}
key_biases = [k for k in rel_diff if k.endswith(("self.key.bias", "self.layout_key.bias"))]
param_diff = max(e for k, e in rel_diff.items() if k not in key_biases)
key_bias_diff = max(rel_diff[k] for k in key_biases)
print(
    f"{len(rel_diff) - len(key_biases)} weights after {STEPS} steps: max relative |numpy - torch| = {param_diff:.1e}"
)
print(f"{len(key_biases)} key biases (gradient 0 up to round-off): max |numpy - torch| = {key_bias_diff:.1e}")
assert loss_diff <= 1e-10 * max(losses) and param_diff <= 1e-10 and key_bias_diff <= 1e-9

# %% [markdown]
# ## The loss as it falls
#
# The plot is saved for the documentation site (`docs/figures/notebooks/lilt-finetune-loss.svg`,
# shown on the [Notebooks](../docs/notebooks.md) page), deterministically (no date in the file),
# through a temporary file and a rename.

# %%
fig, ax = plt.subplots(figsize=(6.4, 3.2), layout="constrained")
ax.plot(range(STEPS), losses, marker="o", ms=3, label="refimpl (NumPy backward + AdamW)")
ax.plot(range(STEPS), torch_losses, ls="--", lw=1, color="k", label="transformers + torch.optim.AdamW")
ax.set(
    xlabel="AdamW step",
    ylabel="token-classification loss",
    title=f"Fine-tuning lilt-tiny on the bundled forms (lr {LR}, weight decay {WEIGHT_DECAY})",
    ylim=(0, None),
)
ax.legend(fontsize=8)
out_dir = os.environ.get("REFIMPL_NOTEBOOK_FIGURES", os.path.join("docs", "figures", "notebooks"))
os.makedirs(out_dir, exist_ok=True)
target = os.path.join(out_dir, "lilt-finetune-loss.svg")
with matplotlib.rc_context({"svg.hashsalt": "refimpl-docs", "svg.fonttype": "path"}):
    fig.savefig(target + ".tmp", format="svg", metadata={"Date": None, "Creator": None})
os.replace(target + ".tmp", target)
print("saved", target)
plt.show()

# %% [markdown]
# ## Summary

# %%
print(f"{STEPS} AdamW steps: loss {losses[0]:.4f} -> {final:.4f}")
print(f"NumPy AdamW vs torch.optim.AdamW (5 random steps): {adamw_diff:.1e}")
print(
    f"the run vs PyTorch: losses {loss_diff:.1e}, weights {param_diff:.1e} (relative), key biases {key_bias_diff:.1e}"
)
print("NumPy fine-tuning == PyTorch fine-tuning")
