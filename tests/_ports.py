"""Ports as porters make them: the oracle (transformers 4.56.2) cast to float16 or bfloat16,
with or without a planted bug, dumped by the torch hook recipe of docs/porting.md (the block
is read from the page and run, so the page's recipe is what the tests exercise).

Model sizes. The tiny configs of `_oracle` (hidden 32-48) hold too few values per block for a
float16 port's rounding to look like a real one's, and base size would take minutes. Hidden
96 (4 heads of 24; LiLT's layout heads 6 wide, so its 1/sqrt(d // r) scale is 1/sqrt(6) and
the bug's 1/sqrt(24) halves the layout scores, as at base size where 16 and 64 give the same
factor 2), intermediate 384, a padded batch of two rows (48 tokens for LiLT, 24 tokens and 12
regions for LXMERT): each block output holds 4,000-9,000 compared values, so a block's RMS
rounding error is stable to a few percent. LiLT has 6 layers (a bug in layer 5 sits deep in
the chain), LXMERT 2 language, 1 relationship and 3 cross layers. Weights are the oracle
helper's (std 0.05): attention is nearly uniform, the hardest case for a bug inside the
attention scores; `peaked` gives the queries and keys std 0.15 (attention as peaked as a
trained model's).
"""

from __future__ import annotations

import copy
import math
import os
import re

import numpy as np
import torch
from _oracle import build, save, tiny_lilt_config, tiny_lxmert_config
from transformers import LiltForTokenClassification, LxmertForPreTraining

import refimpl
from refimpl import golden

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LILT_SIZES = dict(
    hidden_size=96,
    num_hidden_layers=6,
    num_attention_heads=4,
    intermediate_size=384,
    vocab_size=300,
    max_position_embeddings=52,
    max_2d_position_embeddings=1024,
)
LXMERT_SIZES = dict(
    hidden_size=96,
    num_attention_heads=4,
    intermediate_size=384,
    l_layers=2,
    r_layers=1,
    x_layers=3,
    vocab_size=300,
    visual_feat_dim=64,
    max_position_embeddings=28,
)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def recipe():
    """The ``hook_dump`` function of docs/porting.md's PyTorch recipe, executed from the page."""
    text = open(os.path.join(ROOT, "docs", "porting.md"), encoding="utf-8").read()
    at = text.index("<!-- the test suite runs this block")
    block = re.search(r"```python\n(.*?)```", text[at:], re.S).group(1)
    ns: dict = {}
    exec(compile(block, "docs/porting.md (PyTorch recipe)", "exec"), ns)
    return ns["hook_dump"]


def peaked(oracle, seed: int, std: float = 0.15) -> None:
    """Queries' and keys' weights drawn with ``std``: attention as peaked as a trained model's."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for n, p in oracle.named_parameters():
            if n.endswith(("query.weight", "key.weight")):
                p.copy_((torch.randn(p.shape, generator=g, dtype=torch.float64) * std).to(p.dtype))


def lilt_case(d, seed: int = 0, peak: bool = False):
    """(oracle, inputs, golden path, checkpoint dir): a LiLT token classifier, a padded batch."""
    oracle = build(LiltForTokenClassification, tiny_lilt_config(**LILT_SIZES), seed=seed)
    if peak:
        peaked(oracle, seed)
    ckpt = save(oracle, os.path.join(d, "ckpt"))
    rng = np.random.default_rng(seed)
    s = 48
    ids = rng.integers(3, 300, (2, s))
    ids[:, 0] = 0
    mask = np.ones((2, s), np.int64)
    mask[1, 32:] = 0  # the second row is padded
    ids[1, 32:] = 1
    x0, y0 = rng.integers(0, 900, (2, s)), rng.integers(0, 900, (2, s))
    bbox = np.stack([x0, y0, x0 + rng.integers(0, 100, (2, s)), y0 + rng.integers(0, 100, (2, s))], -1)
    inputs = {"input_ids": ids, "bbox": bbox, "attention_mask": mask}
    path = os.path.join(d, "case.safetensors")
    golden.write_case(path, refimpl.from_pretrained(ckpt, dtype="float64"), inputs, checkpoint=ckpt)
    return oracle, inputs, path, ckpt


def lxmert_case(d, seed: int = 0, cls=LxmertForPreTraining):
    """(oracle, inputs, golden path, checkpoint dir): an LXMERT, a padded batch of questions."""
    oracle = build(cls, tiny_lxmert_config(**LXMERT_SIZES), seed=seed)
    ckpt = save(oracle, os.path.join(d, "ckpt"))
    rng = np.random.default_rng(seed)
    s, o = 24, 12
    mask = np.ones((2, s), np.int64)
    mask[1, 16:] = 0
    inputs = {
        "input_ids": rng.integers(3, 300, (2, s)),
        "token_type_ids": np.zeros((2, s), np.int64),
        "attention_mask": mask,
        "visual_feats": rng.normal(size=(2, o, 64)),
        "visual_pos": rng.uniform(size=(2, o, 4)),
    }
    path = os.path.join(d, "case.safetensors")
    golden.write_case(path, refimpl.from_pretrained(ckpt, dtype="float64"), inputs, checkpoint=ckpt)
    return oracle, inputs, path, ckpt


# ------------------------------------------------------------------------------- planted bugs
def relu_lilt(port, kwargs):
    """ReLU for GELU in LiLT layer 5's text feed-forward."""
    port.lilt.encoder.layer[5].intermediate.intermediate_act_fn = torch.nn.ReLU()


def relu_lxmert(port, kwargs):
    """ReLU for GELU in LXMERT cross layer 1's language feed-forward."""
    port.lxmert.encoder.x_layers[1].lang_inter.intermediate_act_fn = torch.nn.ReLU()


def no_mask(port, kwargs):
    """The padding mask dropped: padded tokens are attended to."""
    kwargs.pop("attention_mask")


def _lilt_self_attention_bad_layout_scale(
    self, hidden_states, layout_inputs, attention_mask=None, head_mask=None, output_attentions=False
):
    """transformers' LiltSelfAttention.forward (absolute positions), with the layout scores
    divided by sqrt(d) instead of sqrt(d // r)."""
    r = self.channel_shrink_ratio
    lv = self.transpose_for_scores(self.layout_value(layout_inputs), r=r)
    lk = self.transpose_for_scores(self.layout_key(layout_inputs), r=r)
    lq = self.transpose_for_scores(self.layout_query(layout_inputs), r=r)
    q = self.transpose_for_scores(self.query(hidden_states))
    k = self.transpose_for_scores(self.key(hidden_states))
    v = self.transpose_for_scores(self.value(hidden_states))
    text = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
    layout = torch.matmul(lq, lk.transpose(-1, -2)) / math.sqrt(self.attention_head_size)  # the bug
    scores, layout_scores = text + layout, layout + text
    if attention_mask is not None:
        scores, layout_scores = scores + attention_mask, layout_scores + attention_mask
    layout_probs = self.dropout(torch.softmax(layout_scores, -1))
    probs = self.dropout(torch.softmax(scores, -1))
    layout_context = torch.matmul(layout_probs, lv).permute(0, 2, 1, 3).contiguous()
    context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
    layout_context = layout_context.view(layout_context.size()[:-2] + (self.all_head_size // r,))
    context = context.view(context.size()[:-2] + (self.all_head_size,))
    return ((context, layout_context), probs) if output_attentions else ((context, layout_context),)


def layout_scale(port, kwargs):
    """LiLT layer 3's layout scores scaled by 1/sqrt(d) instead of 1/sqrt(d // r)."""
    sa = port.lilt.encoder.layer[3].attention.self
    sa.forward = _lilt_self_attention_bad_layout_scale.__get__(sa)


def cross_scale(port, kwargs):
    """LXMERT cross layer 1's cross-attention keys scaled by 1/sqrt(d) (both directions)."""
    d = port.config.hidden_size // port.config.num_attention_heads
    key = port.lxmert.encoder.x_layers[1].visual_attention.att.key
    key.register_forward_hook(lambda m, args, out: out / math.sqrt(d))


def port_dump(oracle, inputs, dtype: str, path, bug=None, hook_dump=None):
    """The oracle cast to ``dtype`` (float16 / bfloat16), ``bug`` planted, run on ``inputs``
    and dumped by the docs recipe to ``path`` (.npz, or .safetensors keeping bfloat16)."""
    hook_dump = hook_dump or recipe()
    td = DTYPES[dtype]
    port = copy.deepcopy(oracle).to(td)
    kwargs = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    for k in ("visual_feats", "visual_pos"):
        if k in kwargs:
            kwargs[k] = kwargs[k].to(td)
    if bug is not None:
        bug(port, kwargs)
    hook_dump(port, lambda m: m(**kwargs, output_attentions=True, output_hidden_states=True), str(path))
    return str(path)
