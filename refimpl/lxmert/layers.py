"""LXMERT's encoder as plain functions, one per oracle module: embeddings, the visual feature
encoder, the self- and cross-attention layers, the language/relationship layer (LxmertLayer),
the cross-modality layer (LxmertXLayer) and the encoder.

Three encoders run in turn: ``l_layers`` language layers over the words, ``r_layers``
relationship layers over the regions, then ``x_layers`` cross-modality layers, each of which
lets the words attend to the regions and the regions to the words through ONE shared
cross-attention module, then runs a self-attention and a feed-forward block per modality:

    lang' = CrossAtt(lang -> visn),   visn' = CrossAtt(visn -> lang)      same weights
    lang'' = FFN(SelfAtt(lang')),     visn'' = FFN(SelfAtt(visn'))

Weights arrive as keyword sub-dicts named like the checkpoint's keys; config values are read
from ``config`` (a `refimpl.config.LxmertConfig`) by name. Every LayerNorm uses
``eps = 1e-12`` (`LN_EPS`), as the oracle hard-codes it; ``config.layer_norm_eps`` is
never read.

Trace names equal the oracle's ``named_modules()`` paths: every module whose forward returns
one tensor is recorded under its path (Linear, LayerNorm, Embedding, activation modules, and
tensor-returning containers such as ``encoder.layer.0.attention.output``); inside attention
modules also ``attention_scores``, ``attention_probs`` and ``context``. The shared
cross-attention ``encoder.x_layers.<i>.visual_attention`` is called twice per cross layer, so
everything recorded inside it ends in ``@lang`` (language queries over vision keys, the first
call) or ``@visn`` (the second), e.g. ``encoder.x_layers.0.visual_attention.att.query@lang``.
"""

from __future__ import annotations

from .. import bert, trace
from ..backend import get_namespace
from ..config import LxmertConfig
from ..ops import embedding, layer_norm, linear

__all__ = [
    "LN_EPS",
    "lxmert_embeddings",
    "lxmert_visual_feature_encoder",
    "lxmert_self_attention_layer",
    "lxmert_cross_attention_layer",
    "lxmert_layer",
    "lxmert_x_layer",
    "lxmert_encoder",
]

#: The oracle builds every LayerNorm with ``eps=1e-12``, whatever ``config.layer_norm_eps`` says.
LN_EPS = 1e-12


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------


def lxmert_embeddings(
    input_ids,
    token_type_ids,
    inputs_embeds,
    *,
    word_embeddings,
    position_embeddings,
    token_type_embeddings,
    LayerNorm,
):
    """LxmertEmbeddings: word (or given) + position (0..seq-1) + token-type embeddings, then LayerNorm.

    Args:
        input_ids: integer ``[batch, seq]`` or ``None`` (then ``inputs_embeds`` is used).
        token_type_ids: integer ids broadcastable to ``[batch, seq]``.
        inputs_embeds: ``[batch, seq, hidden]`` or ``None``.
        word_embeddings, position_embeddings, token_type_embeddings: ``{"weight": [n, hidden]}``.
        LayerNorm: ``{"weight", "bias"}`` of ``[hidden]``.

    Returns:
        ``[batch, seq, hidden]``.
    """
    xp = get_namespace(position_embeddings["weight"])
    # word vectors, unless the caller gave them: [b, s] -> [b, s, h]
    if inputs_embeds is None:
        inputs_embeds = embedding(input_ids, word_embeddings["weight"])
        trace.record("word_embeddings", inputs_embeds)
    # absolute positions 0..seq-1, the same for every row: [s] -> [b, s, h]
    position_ids = xp.arange(inputs_embeds.shape[1])
    position = xp.broadcast_to(embedding(position_ids, position_embeddings["weight"]), inputs_embeds.shape)
    trace.record("position_embeddings", position)
    # segment vectors: [b, s] -> [b, s, h]
    token_type = embedding(token_type_ids, token_type_embeddings["weight"])
    trace.record("token_type_embeddings", token_type)
    # sum, then normalise: [b, s, h]
    out = layer_norm(inputs_embeds + position + token_type, **LayerNorm, eps=LN_EPS)
    trace.record("LayerNorm", out)
    return out


def lxmert_visual_feature_encoder(
    visual_feats, visual_pos, *, visn_fc, visn_layer_norm, box_fc, box_layer_norm
):
    """LxmertVisualFeatureEncoder: ``(LayerNorm(visn_fc(feats)) + LayerNorm(box_fc(pos))) / 2``.

    Args:
        visual_feats: ``[batch, boxes, visual_feat_dim]`` region features.
        visual_pos: ``[batch, boxes, visual_pos_dim]`` box coordinates.
        visn_fc, box_fc: Linear weights ``{"weight": [hidden, in], "bias": [hidden]}``.
        visn_layer_norm, box_layer_norm: ``{"weight", "bias"}`` of ``[hidden]``.

    Returns:
        ``[batch, boxes, hidden]``.
    """
    # project and normalise the region features: [b, n, f] -> [b, n, h]
    x = linear(visual_feats, **visn_fc)
    trace.record("visn_fc", x)
    x = layer_norm(x, **visn_layer_norm, eps=LN_EPS)
    trace.record("visn_layer_norm", x)
    # project and normalise the box coordinates: [b, n, 4] -> [b, n, h]
    y = linear(visual_pos, **box_fc)
    trace.record("box_fc", y)
    y = layer_norm(y, **box_layer_norm, eps=LN_EPS)
    trace.record("box_layer_norm", y)
    # average the two: [b, n, h]
    return (x + y) / 2


# ------------------------------------------------------------------------------------------
# attention layers
# ------------------------------------------------------------------------------------------


def lxmert_self_attention_layer(hidden_states, attention_mask, *, self, output, config: LxmertConfig):
    """LxmertSelfAttentionLayer: self-attention, then ``LayerNorm(dense(context) + hidden_states)``.

    Args:
        hidden_states: ``[batch, len, hidden]``.
        attention_mask: additive ``[batch, 1, 1, len]`` or ``None``.
        self: ``{"query", "key", "value"}`` Linear weights.
        output: ``{"dense", "LayerNorm"}`` weights.
        config: uses ``num_attention_heads``.

    Returns:
        ``(attention_output [batch, len, hidden], attention_probs [batch, heads, len, len])``.
    """
    with trace.scope("self"):
        context, probs = bert.multi_head_attention(
            hidden_states,
            hidden_states,
            attention_mask,
            None,
            **self,
            num_attention_heads=config.num_attention_heads,
        )
    with trace.scope("output"):
        attention_output = bert.add_and_norm(context, hidden_states, **output, layer_norm_eps=LN_EPS)
        trace.output(attention_output)
    return attention_output, probs


def lxmert_cross_attention_layer(
    hidden_states, key_value_states, key_value_mask, *, att, output, config: LxmertConfig
):
    """LxmertCrossAttentionLayer: ``hidden_states`` attend to ``key_value_states`` (the other
    modality), then ``LayerNorm(dense(context) + hidden_states)``.

    Args:
        hidden_states: queries ``[batch, q_len, hidden]``.
        key_value_states: the other modality, keys and values ``[batch, k_len, hidden]``.
        key_value_mask: additive ``[batch, 1, 1, k_len]`` over ``key_value_states``, or ``None``.
        att: ``{"query", "key", "value"}`` Linear weights.
        output: ``{"dense", "LayerNorm"}`` weights.
        config: uses ``num_attention_heads``.

    Returns:
        ``(attention_output [batch, q_len, hidden], attention_probs [batch, heads, q_len, k_len])``.
    """
    with trace.scope("att"):
        context, probs = bert.multi_head_attention(
            hidden_states,
            key_value_states,
            key_value_mask,
            None,
            **att,
            num_attention_heads=config.num_attention_heads,
        )
    with trace.scope("output"):
        attention_output = bert.add_and_norm(context, hidden_states, **output, layer_norm_eps=LN_EPS)
        trace.output(attention_output)
    return attention_output, probs


# ------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------


def lxmert_layer(hidden_states, attention_mask, *, attention, intermediate, output, config: LxmertConfig):
    """LxmertLayer (language ``encoder.layer.<i>``, relationship ``encoder.r_layers.<i>``):
    a self-attention layer, then a feed-forward block.

    Args:
        hidden_states: ``[batch, len, hidden]``.
        attention_mask: additive ``[batch, 1, 1, len]`` or ``None``.
        attention: ``{"self", "output"}`` weights; intermediate, output: feed-forward weights.
        config: uses ``num_attention_heads`` and ``hidden_act``.

    Returns:
        ``(layer_output [batch, len, hidden], attention_probs [batch, heads, len, len])``.
    """
    # self-attention block: [b, l, h]
    with trace.scope("attention"):
        attention_output, probs = lxmert_self_attention_layer(
            hidden_states, attention_mask, **attention, config=config
        )
    # feed-forward block: [b, l, h] -> [b, l, i] -> [b, l, h]
    with trace.scope("intermediate"):
        inner = bert.intermediate(attention_output, **intermediate, hidden_act=config.hidden_act)
        trace.output(inner, also="intermediate_act_fn")
    with trace.scope("output"):
        layer_output = bert.add_and_norm(inner, attention_output, **output, layer_norm_eps=LN_EPS)
        trace.output(layer_output)
    return layer_output, probs


def lxmert_x_layer(
    lang_feats,
    lang_attention_mask,
    visual_feats,
    visual_attention_mask,
    *,
    visual_attention,
    lang_self_att,
    visn_self_att,
    lang_inter,
    lang_output,
    visn_inter,
    visn_output,
    config: LxmertConfig,
):
    """LxmertXLayer: the shared cross-attention both ways, then self-attention and a
    feed-forward block per modality.

    The one ``visual_attention`` module serves both directions: language queries attend to the
    regions (recorded with suffix ``@lang``), then region queries attend to the *input*
    language states (suffix ``@visn``).

    Args:
        lang_feats: ``[batch, seq, hidden]``; lang_attention_mask: additive ``[batch, 1, 1, seq]`` or ``None``.
        visual_feats: ``[batch, boxes, hidden]``; visual_attention_mask: additive ``[batch, 1, 1, boxes]`` or ``None``.
        visual_attention: ``{"att", "output"}``; lang_self_att, visn_self_att: ``{"self", "output"}``;
        lang_inter, visn_inter: ``{"dense"}``; lang_output, visn_output: ``{"dense", "LayerNorm"}``.
        config: uses ``num_attention_heads`` and ``hidden_act``.

    Returns:
        dict with ``lang`` ``[batch, seq, hidden]``, ``visn`` ``[batch, boxes, hidden]`` (the
        new states), ``cross_lang_probs`` ``[batch, heads, seq, boxes]``, ``cross_visn_probs``
        ``[batch, heads, boxes, seq]``, ``lang_self_probs``, ``visn_self_probs``.
    """
    act = config.hidden_act
    # cross-attention, words -> regions (call 1 of the shared module): [b, s, h]
    with trace.scope("visual_attention", call="lang"):
        lang_att, cross_lang_probs = lxmert_cross_attention_layer(
            lang_feats, visual_feats, visual_attention_mask, **visual_attention, config=config
        )
    # cross-attention, regions -> words (call 2, same weights, the input words): [b, n, h]
    with trace.scope("visual_attention", call="visn"):
        visn_att, cross_visn_probs = lxmert_cross_attention_layer(
            visual_feats, lang_feats, lang_attention_mask, **visual_attention, config=config
        )
    # self-attention within each modality: [b, s, h], [b, n, h]
    with trace.scope("lang_self_att"):
        lang_att, lang_self_probs = lxmert_self_attention_layer(
            lang_att, lang_attention_mask, **lang_self_att, config=config
        )
    with trace.scope("visn_self_att"):
        visn_att, visn_self_probs = lxmert_self_attention_layer(
            visn_att, visual_attention_mask, **visn_self_att, config=config
        )
    # feed-forward per modality: [b, s, h] -> [b, s, i] -> [b, s, h], the same for regions
    with trace.scope("lang_inter"):
        lang_inner = bert.intermediate(lang_att, **lang_inter, hidden_act=act)
        trace.output(lang_inner, also="intermediate_act_fn")
    with trace.scope("lang_output"):
        lang_out = bert.add_and_norm(lang_inner, lang_att, **lang_output, layer_norm_eps=LN_EPS)
        trace.output(lang_out)
    with trace.scope("visn_inter"):
        visn_inner = bert.intermediate(visn_att, **visn_inter, hidden_act=act)
        trace.output(visn_inner, also="intermediate_act_fn")
    with trace.scope("visn_output"):
        visn_out = bert.add_and_norm(visn_inner, visn_att, **visn_output, layer_norm_eps=LN_EPS)
        trace.output(visn_out)
    return {
        "lang": lang_out,
        "visn": visn_out,
        "cross_lang_probs": cross_lang_probs,
        "cross_visn_probs": cross_visn_probs,
        "lang_self_probs": lang_self_probs,
        "visn_self_probs": visn_self_probs,
    }


def lxmert_encoder(
    lang_feats,
    lang_attention_mask,
    visual_feats,
    visual_pos,
    visual_attention_mask,
    *,
    visn_fc,
    layer=None,
    r_layers=None,
    x_layers=None,
    config: LxmertConfig,
):
    """LxmertEncoder: the visual feature encoder, ``l_layers`` language layers, ``r_layers``
    relationship (region) layers, then ``x_layers`` cross-modality layers.

    Args:
        lang_feats: embeddings ``[batch, seq, hidden]``.
        lang_attention_mask, visual_attention_mask: additive ``[batch, 1, 1, seq|boxes]`` or ``None``.
        visual_feats, visual_pos: ``[batch, boxes, visual_feat_dim]``, ``[batch, boxes, visual_pos_dim]``.
        visn_fc: weights of ``encoder.visn_fc``.
        layer, r_layers, x_layers: ``{"0": weights, "1": ...}`` (absent when there are none).
        config: uses ``num_attention_heads`` and ``hidden_act``.

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
    out: dict[str, list] = {
        "language_hidden_states": [],
        "vision_hidden_states": [],
        "language_attentions": [],
        "vision_attentions": [],
        "cross_encoder_attentions": [],
        "cross_encoder_vision_attentions": [],
        "cross_encoder_language_self_attentions": [],
        "cross_encoder_vision_self_attentions": [],
    }
    lang, lang_mask, visn_mask = lang_feats, lang_attention_mask, visual_attention_mask
    # embed the regions: [b, n, f] -> [b, n, h]
    with trace.scope("visn_fc"):
        visn = lxmert_visual_feature_encoder(visual_feats, visual_pos, **visn_fc)
        trace.output(visn)
    # language layers: [b, s, h]
    for i in range(len(layer)):
        with trace.scope(f"layer.{i}"):
            lang, probs = lxmert_layer(lang, lang_mask, **layer[str(i)], config=config)
        out["language_hidden_states"].append(lang)
        out["language_attentions"].append(probs)
    # relationship (region) layers: [b, n, h]
    for i in range(len(r_layers)):
        with trace.scope(f"r_layers.{i}"):
            visn, probs = lxmert_layer(visn, visn_mask, **r_layers[str(i)], config=config)
        out["vision_hidden_states"].append(visn)
        out["vision_attentions"].append(probs)
    # cross-modality layers: [b, s, h], [b, n, h]
    for i in range(len(x_layers)):
        with trace.scope(f"x_layers.{i}"):
            x = lxmert_x_layer(lang, lang_mask, visn, visn_mask, **x_layers[str(i)], config=config)
        lang, visn = x["lang"], x["visn"]
        out["language_hidden_states"].append(lang)
        out["vision_hidden_states"].append(visn)
        out["cross_encoder_attentions"].append(x["cross_lang_probs"])
        out["cross_encoder_vision_attentions"].append(x["cross_visn_probs"])
        out["cross_encoder_language_self_attentions"].append(x["lang_self_probs"])
        out["cross_encoder_vision_self_attentions"].append(x["visn_self_probs"])
    return {k: tuple(v) for k, v in out.items()}
