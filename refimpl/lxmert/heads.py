"""LXMERT's heads and losses as plain functions: the pre-training heads (masked-LM prediction,
image-text matching, visual object/attribute/feature prediction), the answer head, and the
oracle's loss rules.

Trace names are relative to the head model (``cls.predictions.transform.dense``,
``obj_predict_head.decoder_dict.attr``, ``answer_head.logit_fc.3``, ...); losses are recorded
at the top level as ``loss``, ``loss.masked_lm``, ``loss.matched``, ``loss.visual`` (the visual
sum), ``loss.visual.obj``, ``loss.visual.attr``, ``loss.visual.feat`` and ``loss.answer``.

Each head's backward sits right after it (``answer_head`` / ``answer_head_backward``), as in
`refimpl.bert`: it takes the upstream gradient of the head's output and the head's input,
reads what the head recorded from the tape (`refimpl.tape.saved`), records the gradients of
those tensors under the same names, and returns the input's gradient and the weights'
gradients keyed like the weights. The caller records the gradient of the head's own output,
as it records the output in the forward.
"""

from __future__ import annotations

from .. import trace
from ..activations import activation_backward, gelu, gelu_backward, get_activation
from ..backend import get_namespace
from ..bert import linear_grads
from ..losses import cross_entropy, cross_entropy_backward, smooth_l1_loss, smooth_l1_loss_backward
from ..ops import layer_norm, layer_norm_backward, linear, linear_backward
from ..tape import saved
from .layers import LN_EPS

__all__ = [
    "prediction_head_transform",
    "prediction_head_transform_backward",
    "lm_prediction_head",
    "lm_prediction_head_backward",
    "visual_obj_head",
    "visual_obj_head_backward",
    "answer_head",
    "answer_head_backward",
    "visual_losses",
    "visual_loss",
    "visual_loss_backward",
    "accumulate_loss",
]


def prediction_head_transform(x, *, dense, LayerNorm, hidden_act: str):
    """LxmertPredictionHeadTransform: ``LayerNorm(act(dense(x)))``, ``[..., hidden] -> [..., hidden]``.

    Args:
        x: ``[..., hidden]``.
        dense: Linear weights ``[hidden, hidden]``; LayerNorm: ``{"weight", "bias"}`` of ``[hidden]``.
        hidden_act: ``config.hidden_act``.
    """
    # project: [..., h]
    h = linear(x, **dense)
    trace.record("dense", h)
    # activation: [..., h]
    h = get_activation(hidden_act)(h)
    trace.record("transform_act_fn", h)
    # normalise: [..., h]
    h = layer_norm(h, **LayerNorm, eps=LN_EPS)
    trace.record("LayerNorm", h)
    return h


def prediction_head_transform_backward(grad_output, x, *, dense, LayerNorm, hidden_act: str):
    """Backward of `prediction_head_transform`: ``LayerNorm(act(dense(x)))`` in reverse.

    Reads ``dense`` and ``transform_act_fn`` from the tape (the activation's input and output,
    the LayerNorm's input) and records the gradients of ``LayerNorm`` (the upstream one),
    ``transform_act_fn`` and ``dense``.

    Args:
        grad_output: ``dL/d`` the transform's output, ``[..., hidden]``.
        x: the forward's input, ``[..., hidden]``.
        dense, LayerNorm, hidden_act: as in the forward.

    Returns:
        ``(d_x [..., hidden], {"dense": {"weight", "bias"}, "LayerNorm": {"weight", "bias"}})``.
    """
    trace.record("LayerNorm", grad_output)
    # through the LayerNorm, from its input (the activation's output): [..., h]
    act = saved("transform_act_fn")
    d_act, d_ln_weight, d_ln_bias = layer_norm_backward(grad_output, act, **LayerNorm, eps=LN_EPS)
    trace.record("transform_act_fn", d_act)
    # through the activation: [..., h]
    d_h = activation_backward(hidden_act, d_act, saved("dense"), act)
    trace.record("dense", d_h)
    # the projection: [..., h] -> [..., h]
    d_x, d_weight, d_bias = linear_backward(d_h, x, **dense)
    grads = {"dense": linear_grads(d_weight, d_bias), "LayerNorm": {"weight": d_ln_weight, "bias": d_ln_bias}}
    return d_x, grads


def lm_prediction_head(x, *, transform, decoder, bias, hidden_act: str):
    """LxmertLMPredictionHead: transform, then the decoder tied to the word embeddings, plus a bias.

    Args:
        x: language output ``[batch, seq, hidden]``.
        decoder: ``{"weight": [vocab, hidden]}`` (the word-embedding matrix).
        bias: ``[vocab]``.
        hidden_act: ``config.hidden_act``.

    Returns:
        ``[batch, seq, vocab]`` logits.
    """
    # transform: dense, activation, LayerNorm: [b, s, h]
    with trace.scope("transform"):
        h = prediction_head_transform(x, **transform, hidden_act=hidden_act)
        trace.output(h)
    # scores against every word embedding (the decoder has no bias of its own): [b, s, V]
    logits = linear(h, decoder["weight"])
    trace.record("decoder", logits)
    # the head's own output bias: [b, s, V]
    return logits + bias


def lm_prediction_head_backward(grad_output, x, *, transform, decoder, bias, hidden_act: str):
    """Backward of `lm_prediction_head`: ``transform(x) W_dec^T + bias`` in reverse.

    Reads the transform's output from the tape, records the gradients of ``decoder`` (the
    upstream one: the bias passes it on unchanged) and of the transform (see
    `prediction_head_transform_backward`). The decoder's weight gradient is returned under
    ``decoder.weight``, the head's own key: `refimpl.gradients.backward` adds it to the
    word-embedding lookup's, and gives the sum to both tied keys.

    Args:
        grad_output: ``dL/dlogits``, ``[batch, seq, vocab]``.
        x: the forward's input (the language output), ``[batch, seq, hidden]``.
        transform, decoder, bias, hidden_act: as in the forward.

    Returns:
        ``(d_x [batch, seq, hidden], {"transform": {...}, "decoder": {"weight"}, "bias": [vocab]})``.
    """
    vocab = grad_output.shape[-1]
    # the output bias: [b, s, V] -> [V]
    d_bias = grad_output.reshape(-1, vocab).sum(axis=0)
    # the decoder (no bias), against the transform's output: [b, s, V] -> [b, s, h]
    trace.record("decoder", grad_output)
    d_h, d_decoder, _ = linear_backward(grad_output, saved("transform"), decoder["weight"])
    # transform: LayerNorm, activation, dense, in reverse: [b, s, h]
    with trace.scope("transform"):
        trace.output(d_h)
        d_x, g_transform = prediction_head_transform_backward(d_h, x, **transform, hidden_act=hidden_act)
    return d_x, {"transform": g_transform, "decoder": {"weight": d_decoder}, "bias": d_bias}


def visual_losses(config) -> dict[str, dict]:
    """The visual losses the config switches on, in the oracle's order (obj, attr, feat).

    Returns:
        key -> ``{"num": output size, "loss": "visual_ce" | "l2"}``.
    """
    out = {}
    if config.visual_obj_loss:
        out["obj"] = {"num": config.num_object_labels, "loss": "visual_ce"}
    if config.visual_attr_loss:
        out["attr"] = {"num": config.num_attr_labels, "loss": "visual_ce"}
    if config.visual_feat_loss:
        out["feat"] = {"num": config.visual_feat_dim, "loss": "l2"}
    return out


def visual_obj_head(x, *, transform, decoder_dict=None, hidden_act: str, keys):
    """LxmertVisualObjHead: transform, then one decoder per enabled visual loss.

    Args:
        x: vision output ``[batch, boxes, hidden]``.
        decoder_dict: ``{"obj": Linear, "attr": Linear, "feat": Linear}`` (enabled ones).
        hidden_act: ``config.hidden_act``.
        keys: the enabled keys in order (see `visual_losses`).

    Returns:
        key -> ``[batch, boxes, num]``.
    """
    # transform: dense, activation, LayerNorm: [b, n, h]
    with trace.scope("transform"):
        h = prediction_head_transform(x, **transform, hidden_act=hidden_act)
        trace.output(h)
    # one linear decoder per loss: [b, n, num]
    out = {}
    for key in keys:
        out[key] = linear(h, **decoder_dict[key])
        trace.record(f"decoder_dict.{key}", out[key])
    return out


def visual_obj_head_backward(grad_outputs, x, *, transform, decoder_dict=None, hidden_act: str, keys):
    """Backward of `visual_obj_head`: each decoder in reverse, their gradients summed into the
    transform's output, then the transform in reverse.

    Reads the transform's output from the tape and records the gradients of
    ``decoder_dict.<key>`` (the upstream ones) and of the transform.

    Args:
        grad_outputs: key -> ``dL/dscores``, ``[batch, boxes, num]``, for every key in ``keys``.
        x: the forward's input (the vision output), ``[batch, boxes, hidden]``.
        transform, decoder_dict, hidden_act, keys: as in the forward.

    Returns:
        ``(d_x [batch, boxes, hidden], {"transform": {...}, "decoder_dict": {key: {"weight", "bias"}}})``.
    """
    h = saved("transform")  # [b, n, h]
    # one linear decoder per loss, their input gradients summed: [b, n, num] -> [b, n, h]
    d_h, g_decoders = None, {}
    for key in keys:
        trace.record(f"decoder_dict.{key}", grad_outputs[key])
        d, d_weight, d_bias = linear_backward(grad_outputs[key], h, **decoder_dict[key])
        d_h = d if d_h is None else d_h + d
        g_decoders[key] = linear_grads(d_weight, d_bias)
    if d_h is None:  # every visual loss switched off: the transform's output reaches nothing
        d_h = get_namespace(h).zeros_like(h)
    # transform: LayerNorm, activation, dense, in reverse: [b, n, h]
    with trace.scope("transform"):
        trace.output(d_h)
        d_x, g_transform = prediction_head_transform_backward(d_h, x, **transform, hidden_act=hidden_act)
    return d_x, {"transform": g_transform, "decoder_dict": g_decoders}


def answer_head(x, *, logit_fc):
    """LxmertVisualAnswerHead: Linear(h, 2h), exact GELU, LayerNorm (eps 1e-12), Linear(2h, num_qa_labels).

    Args:
        x: pooled output ``[batch, hidden]``.
        logit_fc: ``{"0": Linear, "2": LayerNorm, "3": Linear}`` (``"1"`` is the weightless GeLU).

    Returns:
        ``[batch, num_qa_labels]``.
    """
    with trace.scope("logit_fc"):
        # [b, h] -> [b, 2h]
        h = linear(x, **logit_fc["0"])
        trace.record("0", h)
        # exact GELU, whatever config.hidden_act says: [b, 2h]
        h = gelu(h)
        trace.record("1", h)
        # [b, 2h]
        h = layer_norm(h, **logit_fc["2"], eps=LN_EPS)
        trace.record("2", h)
        # [b, 2h] -> [b, num_qa]
        h = linear(h, **logit_fc["3"])
        trace.record("3", h)
        trace.output(h)
    return h


def answer_head_backward(grad_output, x, *, logit_fc):
    """Backward of `answer_head`: Linear, LayerNorm, exact GELU, Linear in reverse.

    Reads ``logit_fc.0`` .. ``logit_fc.2`` from the tape and records the gradients of
    ``logit_fc`` and ``logit_fc.3`` (the upstream one), ``logit_fc.2``, ``.1`` and ``.0``.

    Args:
        grad_output: ``dL/d`` the answer scores, ``[batch, num_qa_labels]``.
        x: the forward's input (the pooled output), ``[batch, hidden]``.
        logit_fc: as in the forward.

    Returns:
        ``(d_x [batch, hidden], {"logit_fc": {"0": ..., "2": ..., "3": ...}})``.
    """
    with trace.scope("logit_fc"):
        trace.record("3", grad_output)
        trace.output(grad_output)
        # [b, num_qa] -> [b, 2h]
        d, d_weight3, d_bias3 = linear_backward(grad_output, saved("2"), **logit_fc["3"])
        trace.record("2", d)
        # the LayerNorm, from its input (the GELU's output): [b, 2h]
        d, d_ln_weight, d_ln_bias = layer_norm_backward(d, saved("1"), **logit_fc["2"], eps=LN_EPS)
        trace.record("1", d)
        # the exact GELU, from its input: [b, 2h]
        d = gelu_backward(d, saved("0"))
        trace.record("0", d)
        # [b, 2h] -> [b, h]
        d_x, d_weight0, d_bias0 = linear_backward(d, x, **logit_fc["0"])
    grads = {
        "0": linear_grads(d_weight0, d_bias0),
        "2": {"weight": d_ln_weight, "bias": d_ln_bias},
        "3": linear_grads(d_weight3, d_bias3),
    }
    return d_x, {"logit_fc": grads}


# ------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------


def visual_loss(scores, label, conf, *, kind: str, normalizer: float):
    """One visual loss of LxmertForPreTraining, as the oracle computes it.

    ``obj``/``attr`` (``kind="visual_ce"``): per-region cross-entropy (``-100`` regions count 0).
    ``feat`` (``kind="l2"``): per-region smooth-L1 (beta 1) averaged over the feature axis.
    Then multiplied by the flattened confidence, averaged over ALL regions (ignored ones
    included) and multiplied by ``visual_loss_normalizer``.

    Args:
        scores: ``[batch, boxes, num]`` head output.
        label: integer ``[batch * boxes]`` ids, or float ``[batch * boxes, feat_dim]`` targets.
        conf: ``[batch * boxes]`` (or ``[1]``) confidence weights.

    Returns:
        a 0-d array.
    """
    num = scores.shape[-1]
    flat = scores.reshape(-1, num)  # [b*n, num]
    if kind == "visual_ce":
        per_region = cross_entropy(flat, label, reduction="none")  # [b*n], 0 where label is -100
    else:
        per_region = smooth_l1_loss(flat, label).mean(axis=1)  # [b*n, f] -> [b*n]
    weighted = per_region * conf  # [b*n]
    if weighted.size == 0:  # no regions: torch's mean of nothing is NaN (numpy's would warn)
        return get_namespace(scores).full((), float("nan"), dtype=scores.dtype)
    return weighted.mean() * normalizer  # []


def visual_loss_backward(grad_output, scores, label, conf, *, kind: str, normalizer: float):
    """Backward of `visual_loss`: ``dL/dscores`` for one of LXMERT's visual losses.

    The forward is ``normalizer * mean_i(per_region_i * conf_i)`` over all ``N = batch * boxes``
    regions, so each region's loss gets ``g_i = grad_output * normalizer * conf_i / N``
    (``normalizer`` is ``config.visual_loss_normalizer``, 6.67 in the released config; ignored
    regions included in ``N``); then ``obj`` / ``attr`` pass ``g_i`` through the per-region
    cross entropy (``-100`` regions get nothing) and ``feat`` through the smooth-L1 (beta 1)
    averaged over the ``feat_dim`` axis (``g_i / feat_dim`` per element).

    The oracle adds the visual losses, and then every loss of `LxmertForPreTraining`, into a
    float32 total (see `accumulate_loss`); ``d total / d part = 1``, so the gradient reaching
    each part is the total's, exactly, in the part's dtype: only the loss value is rounded.

    Args:
        grad_output: ``dL/dloss`` of this visual loss, a scalar (0-d array or float).
        scores: ``[batch, boxes, num]`` head output.
        label: integer ``[batch * boxes]`` ids, or float ``[batch * boxes, feat_dim]`` targets.
        conf: ``[batch * boxes]`` (or ``[1]``) confidence weights.
        kind: ``"visual_ce"`` or ``"l2"``.
        normalizer: ``config.visual_loss_normalizer``.

    Returns:
        ``dL/dscores``, ``[batch, boxes, num]``.
    """
    xp = get_namespace(scores, conf)
    num = scores.shape[-1]
    flat = scores.reshape(-1, num)  # [N, num]
    n = flat.shape[0]
    # mean over the N regions, times the normaliser and each region's confidence: [N]
    per_region = xp.broadcast_to(conf.reshape(-1), (n,)) * (xp.asarray(grad_output) * (normalizer / n))
    per_region = per_region.astype(scores.dtype, copy=False)
    if kind == "visual_ce":
        d_flat = cross_entropy_backward(per_region, flat, label, reduction="none")  # [N, num]
    else:
        # smooth-L1 averaged over the feature axis: [N] -> [N, f]
        per_element = xp.broadcast_to((per_region / num)[:, None], flat.shape)
        d_flat = smooth_l1_loss_backward(per_element, flat, label)  # [N, f]
    return d_flat.reshape(scores.shape)


def accumulate_loss(total, part):
    """``total += part`` on the oracle's float32 accumulator (``torch.tensor(0.0)`` is float32,
    and an in-place add keeps it so): add in the wider dtype, round to float32.

    Args:
        total: 0-d float32 array.
        part: 0-d array of the model's dtype.
    """
    xp = get_namespace(part)
    wide = xp.result_type(total.dtype, part.dtype)
    return xp.asarray(total.astype(wide) + part).astype(xp.float32)
