"""LXMERT's backward: `refimpl.lxmert.layers` step by step in reverse, under the same names.

Each function here is the backward of the forward function of the same name without the
``_backward`` suffix, in llm.c's style: it takes the upstream gradient of the forward's output
and the forward's inputs, reads what the forward recorded from the tape by the same relative
names (`refimpl.tape.saved`: there is no second forward), records the gradient of every tensor
the forward recorded under that tensor's name (`refimpl.trace.record`, under a recorder that
collects gradients), and returns the inputs' gradients and its weights' gradients keyed like
its weights. It runs in the forward's trace scopes, so ``saved("query")`` inside
``encoder.x_layers.0.visual_attention`` with ``call="visn"`` reads
``encoder.x_layers.0.visual_attention.att.query@visn``. As in the forward, whoever opens a
module's scope records the gradient of the module's own output there (``trace.output``).

The cross-modality layer runs its one ``visual_attention`` module twice (words -> regions,
then regions -> the *input* words), so its backward runs both calls in reverse, each in its
own per-call scope, and returns the sum of both calls' weight gradients; each stream's input
gets the gradient of its query/residual role in one call plus its key/value role in the other.

The heads' backwards sit beside their forwards in `refimpl.lxmert.heads`, the losses' in
`refimpl.losses` and `refimpl.lxmert.heads`; `refimpl.lxmert.modeling_backward` wires them
into the three model classes' backwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import bert, trace
from ..backend import get_namespace
from ..config import LxmertConfig
from ..ops import embedding_backward, layer_norm_backward, linear_backward
from ..tape import release, saved
from .layers import LN_EPS

__all__ = [
    "add_grads",
    "lxmert_embeddings_backward",
    "lxmert_visual_feature_encoder_backward",
    "lxmert_self_attention_layer_backward",
    "lxmert_cross_attention_layer_backward",
    "lxmert_layer_backward",
    "lxmert_x_layer_backward",
    "lxmert_encoder_backward",
]


def add_grads(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Nested weight gradients summed key by key (a module used twice: the sum of both uses).

    Args:
        a, b: nested dicts of arrays with the same keys (``{"att": {"query": {"weight": ...}}}``).
    """
    return {k: add_grads(v, b[k]) if isinstance(v, Mapping) else v + b[k] for k, v in a.items()}


def _sum_to(grad, shape):
    """``grad`` summed over the leading and size-1 axes along which a tensor of ``shape`` was broadcast."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------


def lxmert_embeddings_backward(
    grad_output,
    input_ids,
    token_type_ids,
    inputs_embeds,
    *,
    word_embeddings,
    position_embeddings,
    token_type_embeddings,
    LayerNorm,
):
    """Backward of `refimpl.lxmert.layers.lxmert_embeddings`: LayerNorm(word + position +
    token type) in reverse.

    The LayerNorm's input is re-added from the three recorded lookups; the sum hands its
    gradient to each summand; each table gets a scatter-add (`refimpl.ops.embedding_backward`)
    in which row 0 gets nothing, as the oracle builds all three ``nn.Embedding(...,
    padding_idx=0)``: the padding word, position 0 (the first token of every row) and token
    type 0.

    Args:
        grad_output: ``dL/d`` the embeddings' output, ``[batch, seq, hidden]``.
        input_ids: integer ``[batch, seq]`` or ``None``; token_type_ids: integer, broadcastable
            to ``[batch, seq]``; inputs_embeds: ``[batch, seq, hidden]`` or ``None``.
        word_embeddings, position_embeddings, token_type_embeddings, LayerNorm: as in the forward.

    Returns:
        ``(d_inputs_embeds [batch, seq, hidden] or None, {"word_embeddings": ..., ...})``:
        ``None`` when the words were looked up (``input_ids``).
    """
    xp = get_namespace(grad_output)
    trace.record("LayerNorm", grad_output)
    # the LayerNorm's input, the three lookups re-added as the forward added them: [b, s, h]
    words = saved("word_embeddings") if inputs_embeds is None else inputs_embeds
    position, token_type = saved("position_embeddings"), saved("token_type_embeddings")
    d_sum, d_ln_weight, d_ln_bias = layer_norm_backward(
        grad_output, words + position + token_type, **LayerNorm, eps=LN_EPS
    )
    grads = {"LayerNorm": {"weight": d_ln_weight, "bias": d_ln_bias}}
    # the sum hands d_sum to each summand (a broadcast one sums it back): [b, s, h]
    d_token_type = _sum_to(d_sum, token_type.shape)
    trace.record("token_type_embeddings", d_token_type)
    trace.record("position_embeddings", d_sum)
    # segment table, row 0 (padding_idx) left out: [b, s, h] -> [type_vocab, h]
    n_types = token_type_embeddings["weight"].shape[0]
    d_table = embedding_backward(d_token_type, token_type_ids, n_types, padding_idx=0)
    grads["token_type_embeddings"] = {"weight": d_table}
    # position table, positions 0..s-1 in every row, row 0 (padding_idx) left out: [b, s, h] -> [P, h]
    position_ids = xp.broadcast_to(xp.arange(d_sum.shape[1]), d_sum.shape[:2])
    n_positions = position_embeddings["weight"].shape[0]
    d_table = embedding_backward(d_sum, position_ids, n_positions, padding_idx=0)
    grads["position_embeddings"] = {"weight": d_table}
    if inputs_embeds is not None:  # the caller's vectors take the word gradient
        return d_sum, grads
    # word table, row 0 (padding_idx) left out: [b, s, h] -> [vocab, h]
    trace.record("word_embeddings", d_sum)
    n_words = word_embeddings["weight"].shape[0]
    grads["word_embeddings"] = {"weight": embedding_backward(d_sum, input_ids, n_words, padding_idx=0)}
    return None, grads


def lxmert_visual_feature_encoder_backward(
    grad_output, visual_feats, visual_pos, *, visn_fc, visn_layer_norm, box_fc, box_layer_norm
):
    """Backward of `refimpl.lxmert.layers.lxmert_visual_feature_encoder`:
    ``(LayerNorm(visn_fc(feats)) + LayerNorm(box_fc(pos))) / 2`` in reverse.

    Reads ``visn_fc`` and ``box_fc`` (the LayerNorms' inputs) from the tape and records the
    gradients of ``visn_layer_norm``, ``box_layer_norm``, ``visn_fc`` and ``box_fc``.

    Args:
        grad_output: ``dL/d`` the encoder's output, ``[batch, boxes, hidden]``.
        visual_feats, visual_pos: the forward's inputs, ``[batch, boxes, visual_feat_dim]``
            and ``[batch, boxes, visual_pos_dim]``.
        visn_fc, visn_layer_norm, box_fc, box_layer_norm: as in the forward.

    Returns:
        ``(d_visual_feats, d_visual_pos, {"visn_fc": ..., "visn_layer_norm": ..., "box_fc": ...,
        "box_layer_norm": ...})``.
    """
    # the average: each half gets half the gradient: [b, n, h]
    d_half = grad_output / 2
    trace.record("visn_layer_norm", d_half)
    trace.record("box_layer_norm", d_half)
    # region features: the LayerNorm, then the projection: [b, n, h] -> [b, n, f]
    d_x, d_ln_weight, d_ln_bias = layer_norm_backward(d_half, saved("visn_fc"), **visn_layer_norm, eps=LN_EPS)
    trace.record("visn_fc", d_x)
    d_feats, d_weight, d_bias = linear_backward(d_x, visual_feats, **visn_fc)
    grads = {
        "visn_fc": bert.linear_grads(d_weight, d_bias),
        "visn_layer_norm": {"weight": d_ln_weight, "bias": d_ln_bias},
    }
    # box coordinates: the LayerNorm, then the projection: [b, n, h] -> [b, n, 4]
    d_y, d_ln_weight, d_ln_bias = layer_norm_backward(d_half, saved("box_fc"), **box_layer_norm, eps=LN_EPS)
    trace.record("box_fc", d_y)
    d_pos, d_weight, d_bias = linear_backward(d_y, visual_pos, **box_fc)
    grads["box_fc"] = bert.linear_grads(d_weight, d_bias)
    grads["box_layer_norm"] = {"weight": d_ln_weight, "bias": d_ln_bias}
    return d_feats, d_pos, grads


# ------------------------------------------------------------------------------------------
# attention layers
# ------------------------------------------------------------------------------------------


def lxmert_self_attention_layer_backward(
    grad_output, hidden_states, attention_mask, *, self, output, config: LxmertConfig
):
    """Backward of `refimpl.lxmert.layers.lxmert_self_attention_layer`: self-attention, then
    ``LayerNorm(dense(context) + hidden_states)``, in reverse.

    Records the gradient of the layer's output (``output``, the scope's own), then those of
    `refimpl.bert.add_and_norm_backward` and `refimpl.bert.multi_head_attention_backward`.

    Args:
        grad_output: ``dL/d attention_output``, ``[batch, len, hidden]``.
        hidden_states, attention_mask: the forward's inputs.
        self, output, config: as in the forward.

    Returns:
        ``(d_hidden_states [batch, len, hidden], {"self": ..., "output": ...})``: the input's
        gradient sums its roles as residual, query, key and value.
    """
    with trace.scope("self"):
        context = saved("context")  # [b, l, h]
    # residual and LayerNorm: [b, l, h]
    with trace.scope("output"):
        trace.output(grad_output)
        d_context, d_residual, g_output = bert.add_and_norm_backward(
            grad_output, context, hidden_states, **output, layer_norm_eps=LN_EPS
        )
    # attention over the layer's own states: [b, l, h]
    with trace.scope("self"):
        d_query_in, d_key_value_in, g_self = bert.multi_head_attention_backward(
            d_context,
            hidden_states,
            hidden_states,
            attention_mask,
            None,
            **self,
            num_attention_heads=config.num_attention_heads,
        )
    return d_residual + d_query_in + d_key_value_in, {"self": g_self, "output": g_output}


def lxmert_cross_attention_layer_backward(
    grad_output, hidden_states, key_value_states, key_value_mask, *, att, output, config: LxmertConfig
):
    """Backward of `refimpl.lxmert.layers.lxmert_cross_attention_layer`: queries from
    ``hidden_states`` over ``key_value_states``, then ``LayerNorm(dense(context) + hidden_states)``,
    in reverse (one call of the shared module; the caller opens its per-call scope).

    Args:
        grad_output: ``dL/d attention_output``, ``[batch, q_len, hidden]``.
        hidden_states, key_value_states, key_value_mask: the forward's inputs.
        att, output, config: as in the forward.

    Returns:
        ``(d_hidden_states [batch, q_len, hidden], d_key_value_states [batch, k_len, hidden],
        {"att": ..., "output": ...})``: this call's share of the weights' gradients.
    """
    with trace.scope("att"):
        context = saved("context")  # [b, lq, h]
    # residual and LayerNorm: [b, lq, h]
    with trace.scope("output"):
        trace.output(grad_output)
        d_context, d_residual, g_output = bert.add_and_norm_backward(
            grad_output, context, hidden_states, **output, layer_norm_eps=LN_EPS
        )
    # attention over the other modality: [b, lq, h] and [b, lk, h]
    with trace.scope("att"):
        d_query_in, d_key_value, g_att = bert.multi_head_attention_backward(
            d_context,
            hidden_states,
            key_value_states,
            key_value_mask,
            None,
            **att,
            num_attention_heads=config.num_attention_heads,
        )
    return d_residual + d_query_in, d_key_value, {"att": g_att, "output": g_output}


# ------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------


def lxmert_layer_backward(
    grad_output, hidden_states, attention_mask, *, attention, intermediate, output, config: LxmertConfig
):
    """Backward of `refimpl.lxmert.layers.lxmert_layer`: the feed-forward block, then the
    self-attention layer, in reverse.

    Args:
        grad_output: ``dL/d layer_output``, ``[batch, len, hidden]``.
        hidden_states, attention_mask: the forward's inputs.
        attention, intermediate, output, config: as in the forward.

    Returns:
        ``(d_hidden_states [batch, len, hidden], {"attention": ..., "intermediate": ..., "output": ...})``.
    """
    # the block's inner states: [b, l, h] and [b, l, i]
    with trace.scope("attention.output"):
        attention_output = saved("")
    with trace.scope("intermediate"):
        inner = saved("")
    # feed-forward block: [b, l, h] -> [b, l, i] -> [b, l, h], in reverse
    with trace.scope("output"):
        trace.output(grad_output)
        d_inner, d_attention, g_output = bert.add_and_norm_backward(
            grad_output, inner, attention_output, **output, layer_norm_eps=LN_EPS
        )
    with trace.scope("intermediate"):
        trace.output(d_inner, also="intermediate_act_fn")
        d, g_intermediate = bert.intermediate_backward(
            d_inner, attention_output, **intermediate, hidden_act=config.hidden_act
        )
    # self-attention block: [b, l, h]
    with trace.scope("attention"):
        d_hidden, g_attention = lxmert_self_attention_layer_backward(
            d_attention + d, hidden_states, attention_mask, **attention, config=config
        )
    return d_hidden, {"attention": g_attention, "intermediate": g_intermediate, "output": g_output}


def _feed_forward_backward(grad_output, x, inter_scope, output_scope, inter, output, config):
    """``add_and_norm(intermediate(x), x)`` of one stream of the cross layer, in reverse: ``dL/dx``."""
    with trace.scope(inter_scope):
        inner = saved("")  # [b, l, i]
    with trace.scope(output_scope):
        trace.output(grad_output)
        d_inner, d_x, g_output = bert.add_and_norm_backward(
            grad_output, inner, x, **output, layer_norm_eps=LN_EPS
        )
    with trace.scope(inter_scope):
        trace.output(d_inner, also="intermediate_act_fn")
        d, g_inter = bert.intermediate_backward(d_inner, x, **inter, hidden_act=config.hidden_act)
    return d_x + d, g_inter, g_output


def lxmert_x_layer_backward(
    grad_lang,
    grad_visn,
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
    """Backward of `refimpl.lxmert.layers.lxmert_x_layer`: the feed-forward blocks, the
    self-attention layers, then both calls of the shared cross-attention, in reverse.

    Args:
        grad_lang: ``dL/d`` the new language states, ``[batch, seq, hidden]``.
        grad_visn: ``dL/d`` the new vision states, ``[batch, boxes, hidden]``.
        lang_feats, lang_attention_mask, visual_feats, visual_attention_mask: the forward's inputs.
        visual_attention ... visn_output, config: as in the forward.

    Returns:
        ``(d_lang_feats [batch, seq, hidden], d_visual_feats [batch, boxes, hidden], grads)``
        with ``grads`` keyed like the layer's weights; ``visual_attention``'s is the sum of
        both calls'.
    """
    # each stream's cross- and self-attention outputs: [b, s, h], [b, n, h]
    with trace.scope("visual_attention.output", call="lang"):
        lang_cross = saved("")
    with trace.scope("visual_attention.output", call="visn"):
        visn_cross = saved("")
    with trace.scope("lang_self_att.output"):
        lang_att = saved("")
    with trace.scope("visn_self_att.output"):
        visn_att = saved("")
    # feed-forward per modality, in reverse: [b, l, h] -> [b, l, i] -> [b, l, h]
    d_visn_att, g_visn_inter, g_visn_output = _feed_forward_backward(
        grad_visn, visn_att, "visn_inter", "visn_output", visn_inter, visn_output, config
    )
    d_lang_att, g_lang_inter, g_lang_output = _feed_forward_backward(
        grad_lang, lang_att, "lang_inter", "lang_output", lang_inter, lang_output, config
    )
    # self-attention within each modality, in reverse: [b, n, h], [b, s, h]
    with trace.scope("visn_self_att"):
        d_visn_cross, g_visn_self = lxmert_self_attention_layer_backward(
            d_visn_att, visn_cross, visual_attention_mask, **visn_self_att, config=config
        )
    with trace.scope("lang_self_att"):
        d_lang_cross, g_lang_self = lxmert_self_attention_layer_backward(
            d_lang_att, lang_cross, lang_attention_mask, **lang_self_att, config=config
        )
    # cross-attention, regions -> input words (call 2), in reverse: [b, n, h] and [b, s, h]
    with trace.scope("visual_attention", call="visn"):
        d_visn_query, d_lang_key_value, g_cross_visn = lxmert_cross_attention_layer_backward(
            d_visn_cross, visual_feats, lang_feats, lang_attention_mask, **visual_attention, config=config
        )
    # cross-attention, words -> regions (call 1), in reverse: [b, s, h] and [b, n, h]
    with trace.scope("visual_attention", call="lang"):
        d_lang_query, d_visn_key_value, g_cross_lang = lxmert_cross_attention_layer_backward(
            d_lang_cross, lang_feats, visual_feats, visual_attention_mask, **visual_attention, config=config
        )
    grads = {
        "visual_attention": add_grads(g_cross_lang, g_cross_visn),  # one module, two calls
        "lang_self_att": g_lang_self,
        "visn_self_att": g_visn_self,
        "lang_inter": g_lang_inter,
        "lang_output": g_lang_output,
        "visn_inter": g_visn_inter,
        "visn_output": g_visn_output,
    }
    return d_lang_query + d_lang_key_value, d_visn_query + d_visn_key_value, grads


def lxmert_encoder_backward(
    grad_lang,
    grad_visn,
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
    """Backward of `refimpl.lxmert.layers.lxmert_encoder`: the cross-modality layers, the
    relationship layers, the language layers and the visual feature encoder, in reverse.

    Each layer's input (the previous layer's output) is read from the tape.

    Args:
        grad_lang: ``dL/d`` the last language states (the language output), ``[batch, seq, hidden]``.
        grad_visn: ``dL/d`` the last vision states (the vision output), ``[batch, boxes, hidden]``.
        lang_feats ... visual_attention_mask: the forward's inputs.
        visn_fc, layer, r_layers, x_layers, config: as in the forward.

    Returns:
        ``(d_lang_feats [batch, seq, hidden], d_visual_feats [batch, boxes, visual_feat_dim],
        d_visual_pos [batch, boxes, visual_pos_dim], grads)``, ``grads`` keyed like the weights.
    """
    layer, r_layers, x_layers = layer or {}, r_layers or {}, x_layers or {}
    # each stream's states after each language / relationship layer: the next layer's input
    lang = [lang_feats] + [saved(f"layer.{i}.output") for i in range(len(layer))]
    visn = [saved("visn_fc")] + [saved(f"r_layers.{i}.output") for i in range(len(r_layers))]
    grads: dict[str, Any] = {}
    d_lang, d_visn = grad_lang, grad_visn
    # cross-modality layers, last first: [b, s, h], [b, n, h]
    if x_layers:
        grads["x_layers"] = {}
    for i in reversed(range(len(x_layers))):
        lang_in = lang[-1] if i == 0 else saved(f"x_layers.{i - 1}.lang_output")
        visn_in = visn[-1] if i == 0 else saved(f"x_layers.{i - 1}.visn_output")
        with trace.scope(f"x_layers.{i}"):
            d_lang, d_visn, grads["x_layers"][str(i)] = lxmert_x_layer_backward(
                d_lang, d_visn, lang_in, lang_attention_mask, visn_in, visual_attention_mask,
                **x_layers[str(i)], config=config,
            )  # fmt: skip
        release(f"x_layers.{i}")  # its saved activations: no later backward reads them
    # relationship (region) layers, last first: [b, n, h]
    if r_layers:
        grads["r_layers"] = {}
    for i in reversed(range(len(r_layers))):
        with trace.scope(f"r_layers.{i}"):
            d_visn, grads["r_layers"][str(i)] = lxmert_layer_backward(
                d_visn, visn[i], visual_attention_mask, **r_layers[str(i)], config=config
            )
        release(f"r_layers.{i}")
    # language layers, last first: [b, s, h]
    if layer:
        grads["layer"] = {}
    for i in reversed(range(len(layer))):
        with trace.scope(f"layer.{i}"):
            d_lang, grads["layer"][str(i)] = lxmert_layer_backward(
                d_lang, lang[i], lang_attention_mask, **layer[str(i)], config=config
            )
        release(f"layer.{i}")
    # the visual feature encoder: [b, n, h] -> [b, n, f] and [b, n, 4]
    with trace.scope("visn_fc"):
        trace.output(d_visn)
        d_feats, d_pos, grads["visn_fc"] = lxmert_visual_feature_encoder_backward(
            d_visn, visual_feats, visual_pos, **visn_fc
        )
    return d_lang, d_feats, d_pos, grads
