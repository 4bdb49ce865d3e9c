"""LXMERT's encoder as plain functions: embeddings, visual feature encoder, attention, the
BERT-style language / relationship layers, the cross-modality layer, the encoder and the pooler.

Every function takes arrays and the weights of one oracle module, as keyword sub-dicts named
like the checkpoint keys (``query={"weight": ..., "bias": ...}``), and returns arrays. It records
what it computes with :mod:`refimpl.trace` relative to the current scope, which the caller sets to
the function's module path, so that names equal the oracle's ``named_modules()`` paths.

Trace names (relative to the model, see ``refimpl.lxmert.modeling`` for the prefixes):

* the output of every module whose forward returns one tensor, under its module path
  (Linear, LayerNorm, Embedding, activation modules, and tensor-returning containers such as
  ``encoder.layer.0.attention.output`` or ``encoder.visn_fc``); dropouts (identity at
  inference) are not recorded;
* inner steps of each attention module (``...attention.self``, ``...visual_attention.att``):
  ``attention_scores`` (``q k^T / sqrt(head_size)``, before the mask), ``attention_probs``
  (after the softmax) and ``context`` (heads merged, ``[batch, q_len, hidden]``);
* the cross-attention module ``encoder.x_layers.<i>.visual_attention`` is called twice per cross
  layer with the same weights: first with language queries over vision keys, then with vision
  queries over language keys. Everything recorded inside it carries a per-call suffix at the end
  of the name: ``@lang`` for the first call, ``@visn`` for the second, e.g.
  ``encoder.x_layers.0.visual_attention.att.query@lang`` and
  ``encoder.x_layers.0.visual_attention.output@visn``. Stripping the suffix gives the module
  path; the suffix order is the order a forward hook on that module sees the calls.

LayerNorm eps is 1e-12 everywhere, as the oracle hard-codes it (``config.layer_norm_eps`` is
never read).
"""

from __future__ import annotations

import math

from .. import trace
from ..attention import attention_probs, attention_scores, merge_heads, split_heads
from ..backend import get_namespace
from ..ops import embedding, gelu, get_activation, layer_norm, linear

__all__ = [
    "LN_EPS",
    "embeddings",
    "visual_feature_encoder",
    "mha",
    "attention_output",
    "attention_layer",
    "ffn_intermediate",
    "bert_layer",
    "cross_layer",
    "encoder",
    "pooler",
]

#: The oracle builds every LayerNorm with ``eps=1e-12``, whatever ``config.layer_norm_eps`` says.
LN_EPS = 1e-12

record = trace.record
scope = trace.scope


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------


def embeddings(
    input_ids,
    token_type_ids,
    inputs_embeds,
    *,
    word_embeddings,
    position_embeddings,
    token_type_embeddings,
    LayerNorm,
):
    """LxmertEmbeddings: word (or given) + position (0..L-1) + token-type embeddings, then LayerNorm.

    Args:
        input_ids: integer ``[batch, seq]`` or ``None`` (then ``inputs_embeds`` is used).
        token_type_ids: integer ids broadcastable to ``[batch, seq]``.
        inputs_embeds: ``[batch, seq, hidden]`` or ``None``.
        word_embeddings, position_embeddings, token_type_embeddings, LayerNorm: weight sub-dicts.

    Returns:
        ``[batch, seq, hidden]``.
    """
    xp = get_namespace(position_embeddings["weight"])
    # word vectors: look the ids up unless the caller gave the vectors
    if inputs_embeds is None:
        inputs_embeds = embedding(input_ids, word_embeddings["weight"], "input_ids")  # [b, L] -> [b, L, h]
        record("word_embeddings", inputs_embeds)
    seq_length = inputs_embeds.shape[1]
    # absolute positions 0..L-1, the same for every row
    position_ids = xp.arange(seq_length)  # [L]
    pos = embedding(position_ids, position_embeddings["weight"], "position_ids")  # [L, h]
    pos = xp.broadcast_to(pos, inputs_embeds.shape)  # [b, L, h], as the oracle's expanded ids
    record("position_embeddings", pos)
    # segment vectors
    tok = embedding(token_type_ids, token_type_embeddings["weight"], "token_type_ids")  # [b, L] -> [b, L, h]
    record("token_type_embeddings", tok)
    # sum, then LayerNorm
    x = inputs_embeds + pos + tok  # [b, L, h]
    return record("LayerNorm", layer_norm(x, **LayerNorm, eps=LN_EPS))  # [b, L, h]


def visual_feature_encoder(visual_feats, visual_pos, *, visn_fc, visn_layer_norm, box_fc, box_layer_norm):
    """LxmertVisualFeatureEncoder: ``(LayerNorm(visn_fc(feats)) + LayerNorm(box_fc(pos))) / 2``.

    Args:
        visual_feats: ``[batch, boxes, visual_feat_dim]`` region features.
        visual_pos: ``[batch, boxes, visual_pos_dim]`` box coordinates.

    Returns:
        ``[batch, boxes, hidden]``.
    """
    # project and normalise the region features
    x = record("visn_fc", linear(visual_feats, **visn_fc))  # [b, n, f] -> [b, n, h]
    x = record("visn_layer_norm", layer_norm(x, **visn_layer_norm, eps=LN_EPS))  # [b, n, h]
    # project and normalise the box coordinates
    y = record("box_fc", linear(visual_pos, **box_fc))  # [b, n, 4] -> [b, n, h]
    y = record("box_layer_norm", layer_norm(y, **box_layer_norm, eps=LN_EPS))  # [b, n, h]
    # average the two
    return (x + y) / 2  # [b, n, h]


# ------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------


def mha(hidden, context, mask, *, query, key, value, n_head: int, sfx: str = ""):
    """LxmertAttention: multi-head attention, queries from ``hidden``, keys and values from ``context``.

    Args:
        hidden: ``[batch, q_len, hidden]``.
        context: ``[batch, k_len, hidden]`` (``hidden`` itself for self-attention).
        mask: additive mask broadcastable to ``[batch, 1, 1, k_len]`` (0 keep, ``finfo.min``
            drop), or ``None``.
        query, key, value: Linear weight sub-dicts.
        n_head: number of heads.
        sfx: per-call trace suffix ("" for modules called once).

    Returns:
        ``(context [batch, q_len, hidden], probs [batch, n_head, q_len, k_len])``.
    """
    xp = get_namespace(hidden)
    # project, then split the hidden axis into heads
    q = split_heads(record("query" + sfx, linear(hidden, **query)), n_head)  # [b, lq, h] -> [b, nh, lq, d]
    k = split_heads(record("key" + sfx, linear(context, **key)), n_head)  # [b, lk, h] -> [b, nh, lk, d]
    v = split_heads(record("value" + sfx, linear(context, **value)), n_head)  # [b, lk, h] -> [b, nh, lk, d]
    # scaled dot products
    scores = attention_scores(q, k)  # [b, nh, lq, lk]
    scores /= math.sqrt(q.shape[-1])  # in place on the fresh scores
    record("attention_scores" + sfx, scores)
    # masked keys get finfo.min, then softmax over the keys
    if scores.shape[-1] == 0:  # no keys (zero boxes): torch's softmax returns the empty scores
        probs = record("attention_probs" + sfx, scores.copy())  # [b, nh, lq, 0]
    else:
        probs = record("attention_probs" + sfx, attention_probs(scores, mask))  # [b, nh, lq, lk]
    # weighted sum of values, heads merged back
    ctx = merge_heads(xp.matmul(probs, v))  # [b, nh, lq, d] -> [b, lq, h]
    return record("context" + sfx, ctx), probs


def attention_output(hidden, input_tensor, *, dense, LayerNorm, sfx: str = ""):
    """LxmertAttentionOutput and LxmertOutput: ``LayerNorm(dense(hidden) + input_tensor)``.

    Args:
        hidden: ``[batch, len, in]`` (``in`` = hidden or intermediate size).
        input_tensor: the residual, ``[batch, len, hidden]``.

    Returns:
        ``[batch, len, hidden]``.
    """
    x = record("dense" + sfx, linear(hidden, **dense))  # [b, l, in] -> [b, l, h]
    # residual, then LayerNorm, both in place on the fresh dense output
    x += input_tensor  # [b, l, h]
    return record("LayerNorm" + sfx, layer_norm(x, **LayerNorm, eps=LN_EPS, out=x))  # [b, l, h]


def attention_layer(x, context, mask, att, output, *, n_head: int, att_name: str, sfx: str = ""):
    """LxmertSelfAttentionLayer (``att_name="self"``, ``context`` = ``x``) and
    LxmertCrossAttentionLayer (``att_name="att"``): attention, then dense + residual + LayerNorm.

    Args:
        x: ``[batch, q_len, hidden]``; context ``[batch, k_len, hidden]``.
        mask: additive mask over the context's positions, or ``None``.
        att, output: weight sub-dicts of the ``self``/``att`` and ``output`` submodules.

    Returns:
        ``(out [batch, q_len, hidden], probs [batch, n_head, q_len, k_len])``.
    """
    # multi-head attention
    with scope(att_name):
        ctx, probs = mha(x, context, mask, **att, n_head=n_head, sfx=sfx)  # [b, lq, h]
    # output projection, residual, LayerNorm
    with scope("output"):
        out = attention_output(ctx, x, **output, sfx=sfx)  # [b, lq, h]
    return record("output" + sfx, out), probs


def ffn_intermediate(x, *, dense, act: str):
    """LxmertIntermediate: ``act(dense(x))``, ``[batch, len, hidden] -> [batch, len, intermediate]``.

    The activation module is recorded as ``intermediate_act_fn``.
    """
    h = record("dense", linear(x, **dense))  # [b, l, h] -> [b, l, i]
    # exact GELU (LXMERT's default) in place on the fresh dense output
    fn = get_activation(act)
    return record("intermediate_act_fn", fn(h, out=h) if fn is gelu else fn(h))  # [b, l, i]


def _ffn(x, inter, out, *, act: str, inter_name: str, out_name: str):
    """Feed-forward sub-block: ``inter_name`` (dense + act) then ``out_name`` (dense + residual + LN)."""
    with scope(inter_name):
        h = ffn_intermediate(x, **inter, act=act)  # [b, l, i]
    record(inter_name, h)
    with scope(out_name):
        y = attention_output(h, x, **out)  # [b, l, h]
    return record(out_name, y)


# ------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------


def bert_layer(x, mask, *, attention, intermediate, output, n_head: int, act: str):
    """LxmertLayer (language ``encoder.layer.<i>`` and relationship ``encoder.r_layers.<i>``):
    self-attention block, then feed-forward block.

    Args:
        x: ``[batch, len, hidden]``.
        mask: additive mask ``[batch, 1, 1, len]`` or ``None``.

    Returns:
        ``(out [batch, len, hidden], probs [batch, n_head, len, len])``.
    """
    # self-attention block
    with scope("attention"):
        a, probs = attention_layer(
            x, x, mask, attention["self"], attention["output"], n_head=n_head, att_name="self"
        )
    # feed-forward block
    y = _ffn(a, intermediate, output, act=act, inter_name="intermediate", out_name="output")  # [b, l, h]
    return y, probs


def cross_layer(
    lang,
    lang_mask,
    visn,
    visn_mask,
    *,
    visual_attention,
    lang_self_att,
    visn_self_att,
    lang_inter,
    lang_output,
    visn_inter,
    visn_output,
    n_head: int,
    act: str,
):
    """LxmertXLayer: shared cross-attention both ways, self-attention per modality, FFN per modality.

    The one ``visual_attention`` module serves both directions: language queries attend to
    vision (recorded with suffix ``@lang``), then vision queries attend to the *input*
    language states (suffix ``@visn``).

    Args:
        lang: ``[batch, seq, hidden]``; lang_mask: additive ``[batch, 1, 1, seq]`` or ``None``.
        visn: ``[batch, boxes, hidden]``; visn_mask: additive ``[batch, 1, 1, boxes]`` or ``None``.

    Returns:
        dict with ``lang``, ``visn`` (the new states), ``cross_lang_probs``
        ``[batch, heads, seq, boxes]``, ``cross_visn_probs`` ``[batch, heads, boxes, seq]``,
        ``lang_self_probs``, ``visn_self_probs``.
    """
    va = visual_attention
    # cross-attention, language -> vision (call 1 of the shared module)
    with scope("visual_attention"):
        lang_x, cross_lang_probs = attention_layer(
            lang, visn, visn_mask, va["att"], va["output"], n_head=n_head, att_name="att", sfx="@lang"
        )
    # cross-attention, vision -> language (call 2, same weights, original language input)
    with scope("visual_attention"):
        visn_x, cross_visn_probs = attention_layer(
            visn, lang, lang_mask, va["att"], va["output"], n_head=n_head, att_name="att", sfx="@visn"
        )
    # self-attention within each modality
    with scope("lang_self_att"):
        lang_s, lang_self_probs = attention_layer(
            lang_x,
            lang_x,
            lang_mask,
            lang_self_att["self"],
            lang_self_att["output"],
            n_head=n_head,
            att_name="self",
        )
    with scope("visn_self_att"):
        visn_s, visn_self_probs = attention_layer(
            visn_x,
            visn_x,
            visn_mask,
            visn_self_att["self"],
            visn_self_att["output"],
            n_head=n_head,
            att_name="self",
        )
    # feed-forward per modality
    lang_o = _ffn(
        lang_s, lang_inter, lang_output, act=act, inter_name="lang_inter", out_name="lang_output"
    )  # [b, L, h]
    visn_o = _ffn(
        visn_s, visn_inter, visn_output, act=act, inter_name="visn_inter", out_name="visn_output"
    )  # [b, n, h]
    return {
        "lang": lang_o,
        "visn": visn_o,
        "cross_lang_probs": cross_lang_probs,
        "cross_visn_probs": cross_visn_probs,
        "lang_self_probs": lang_self_probs,
        "visn_self_probs": visn_self_probs,
    }


def encoder(
    lang,
    lang_mask,
    visual_feats,
    visual_pos,
    visn_mask,
    *,
    visn_fc,
    layer=None,
    r_layers=None,
    x_layers=None,
    n_head: int,
    act: str,
):
    """LxmertEncoder: visual feature encoder, ``l_layers`` language layers, ``r_layers``
    relationship (vision) layers, then ``x_layers`` cross-modality layers.

    Args:
        lang: embeddings ``[batch, seq, hidden]``.
        lang_mask, visn_mask: additive masks ``[batch, 1, 1, seq|boxes]`` (``visn_mask`` may be ``None``).
        visual_feats, visual_pos: ``[batch, boxes, visual_feat_dim]``, ``[batch, boxes, visual_pos_dim]``.
        visn_fc: weights of ``encoder.visn_fc``.
        layer, r_layers, x_layers: ``{"0": weights, "1": ...}`` (absent when there are none).

    Returns:
        dict of tuples: ``language_hidden_states`` (each language layer's output, then each
        cross layer's language output; the embeddings are NOT included), ``vision_hidden_states``
        (each relationship layer's output, then each cross layer's vision output; the visual
        feature encoder's output is NOT included), ``language_attentions``,
        ``vision_attentions``, ``cross_encoder_attentions`` (language->vision probs),
        ``cross_encoder_vision_attentions`` (vision->language probs),
        ``cross_encoder_language_self_attentions``, ``cross_encoder_vision_self_attentions``.
    """
    layer, r_layers, x_layers = layer or {}, r_layers or {}, x_layers or {}
    out = {
        k: []
        for k in (
            "language_hidden_states",
            "vision_hidden_states",
            "language_attentions",
            "vision_attentions",
            "cross_encoder_attentions",
            "cross_encoder_vision_attentions",
            "cross_encoder_language_self_attentions",
            "cross_encoder_vision_self_attentions",
        )
    }
    # embed the regions
    with scope("visn_fc"):
        visn = visual_feature_encoder(visual_feats, visual_pos, **visn_fc)  # [b, n, h]
    record("visn_fc", visn)
    # language layers
    for i in range(len(layer)):
        with scope(f"layer.{i}"):
            lang, probs = bert_layer(lang, lang_mask, **layer[str(i)], n_head=n_head, act=act)  # [b, L, h]
        out["language_hidden_states"].append(lang)
        out["language_attentions"].append(probs)
    # relationship (vision) layers
    for i in range(len(r_layers)):
        with scope(f"r_layers.{i}"):
            visn, probs = bert_layer(visn, visn_mask, **r_layers[str(i)], n_head=n_head, act=act)  # [b, n, h]
        out["vision_hidden_states"].append(visn)
        out["vision_attentions"].append(probs)
    # cross-modality layers
    for i in range(len(x_layers)):
        with scope(f"x_layers.{i}"):
            x = cross_layer(lang, lang_mask, visn, visn_mask, **x_layers[str(i)], n_head=n_head, act=act)
        lang, visn = x["lang"], x["visn"]  # [b, L, h], [b, n, h]
        out["language_hidden_states"].append(lang)
        out["vision_hidden_states"].append(visn)
        out["cross_encoder_attentions"].append(x["cross_lang_probs"])
        out["cross_encoder_vision_attentions"].append(x["cross_visn_probs"])
        out["cross_encoder_language_self_attentions"].append(x["lang_self_probs"])
        out["cross_encoder_vision_self_attentions"].append(x["visn_self_probs"])
    return {k: tuple(v) for k, v in out.items()}


def pooler(x, *, dense):
    """LxmertPooler: ``tanh(dense(x[:, 0]))``, ``[batch, seq, hidden] -> [batch, hidden]``."""
    xp = get_namespace(x)
    # first token of every row
    first = x[:, 0]  # [b, h]
    y = record("dense", linear(first, **dense))  # [b, h]
    return record("activation", xp.tanh(y))  # [b, h]
