"""LiLT task heads and their losses, as transformers 4.56.2 computes them.

Each head's and each loss's backward sits right after it (``classification_head_backward``):
a head's backward reads what its forward recorded from the tape (`refimpl.tape.saved`) and
records the gradients of those names.
"""

from __future__ import annotations

from .. import trace
from ..activations import tanh_backward
from ..backend import get_namespace
from ..losses import (
    bce_with_logits,
    bce_with_logits_backward,
    cross_entropy,
    cross_entropy_backward,
    mse_loss,
    mse_loss_backward,
)
from ..ops import linear, linear_backward
from ..tape import saved

__all__ = [
    "classification_head",
    "classification_head_backward",
    "sequence_classification_problem_type",
    "sequence_classification_loss",
    "sequence_classification_loss_backward",
    "token_classification_loss",
    "token_classification_loss_backward",
    "question_answering_logits",
    "question_answering_logits_backward",
    "question_answering_loss",
    "question_answering_loss_backward",
]


def classification_head(sequence_output, *, dense, out_proj):
    """RoBERTa's sentence head on the first token: ``out_proj(tanh(dense(x[:, 0])))``.

    Args:
        sequence_output: ``[batch, seq, hidden]``.
        dense: ``{"weight": [hidden, hidden], "bias": [hidden]}``.
        out_proj: ``{"weight": [labels, hidden], "bias": [labels]}``.

    Returns:
        ``[batch, labels]``.
    """
    xp = get_namespace(sequence_output)
    # the <s> token: [b, s, h] -> [b, h]
    x = sequence_output[:, 0, :]
    # [b, h] -> [b, h]
    x = linear(x, **dense)
    trace.record("dense", x)
    x = xp.tanh(x)
    # [b, h] -> [b, labels]
    logits = linear(x, **out_proj)
    trace.record("out_proj", logits)
    return logits


def classification_head_backward(grad_logits, sequence_output, *, dense, out_proj):
    """Backward of `classification_head`: ``out_proj(tanh(dense(x[:, 0])))`` in reverse.

    Reads ``dense`` from the tape (the tanh is recomputed from it: its output is not recorded)
    and records the gradients of ``out_proj`` (the upstream one) and ``dense``; only the first
    token of each row gets a gradient.

    Args:
        grad_logits: ``dL/dlogits``, ``[batch, labels]``.
        sequence_output: the forward's input, ``[batch, seq, hidden]``.
        dense, out_proj: as in the forward.

    Returns:
        ``(d_sequence_output [batch, seq, hidden], {"dense": ..., "out_proj": ...})``.
    """
    xp = get_namespace(grad_logits, sequence_output)
    trace.record("out_proj", grad_logits)
    # [b, labels] -> [b, h], through out_proj
    x = xp.tanh(saved("dense"))
    d_x, d_out_weight, d_out_bias = linear_backward(grad_logits, x, **out_proj)
    # through the tanh, from its output: [b, h]
    d_dense = tanh_backward(d_x, x)
    trace.record("dense", d_dense)
    # [b, h] -> [b, h], the <s> token only
    d_first, d_dense_weight, d_dense_bias = linear_backward(d_dense, sequence_output[:, 0, :], **dense)
    d_sequence = xp.zeros_like(sequence_output)  # [b, s, h]: no other token feeds the head
    d_sequence[:, 0, :] = d_first
    grads = {
        "dense": {"weight": d_dense_weight, "bias": d_dense_bias},
        "out_proj": {"weight": d_out_weight, "bias": d_out_bias},
    }
    return d_sequence, grads


def sequence_classification_problem_type(problem_type, num_labels: int, labels) -> str:
    """The oracle's choice of loss when ``config.problem_type`` is ``None``.

    ``num_labels == 1`` -> ``"regression"``; int32/int64 labels -> ``"single_label_classification"``;
    anything else (float labels, other integer widths) -> ``"multi_label_classification"``.
    Only the dtype of ``labels`` (``[batch]`` or ``[batch, num_labels]``) is looked at.
    """
    if problem_type is not None:
        return problem_type
    if num_labels == 1:
        return "regression"
    if labels.dtype.name in ("int64", "int32"):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_loss(logits, labels, *, num_labels: int, problem_type):
    """LiltForSequenceClassification's loss.

    Args:
        logits: ``[batch, num_labels]``.
        labels: regression: ``[batch]`` or ``[batch, num_labels]`` floats; single-label:
            integer ``[batch]`` in ``[0, num_labels - 1]``; multi-label: ``[batch, num_labels]`` of 0/1.
        num_labels: ``config.num_labels``.
        problem_type: ``config.problem_type`` (``None`` chooses as the oracle does).

    Returns:
        0-d array in the logits' dtype: MSE (on squeezed arrays when ``num_labels == 1``),
        cross entropy, or binary cross entropy with logits.
    """
    kind = sequence_classification_problem_type(problem_type, num_labels, labels)
    if kind == "regression":
        target = labels.astype(logits.dtype)
        if num_labels == 1:
            # [b, 1] -> [b] (or a scalar when b == 1), as torch's squeeze()
            return mse_loss(logits.squeeze(), target.squeeze()).astype(logits.dtype)
        return mse_loss(logits, target).astype(logits.dtype)
    if kind == "single_label_classification":
        # [b, labels] vs [b]
        return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1)).astype(logits.dtype)
    if labels.shape != logits.shape:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}; multi-label classification needs [batch, num_labels] = "
            f"{list(logits.shape)}"
        )
    return bce_with_logits(logits, labels.astype(logits.dtype)).astype(logits.dtype)


def sequence_classification_loss_backward(grad_output, logits, labels, *, num_labels: int, problem_type):
    """Backward of `sequence_classification_loss`: ``dL/dlogits`` for the problem type the
    forward chose (see `sequence_classification_problem_type`).

    Regression: the MSE's gradient ``2 (logits - labels) / N * g`` (on the squeezed arrays when
    ``num_labels == 1``, reshaped back); single-label: the cross entropy's (``-100`` labels
    get none); multi-label: the binary cross entropy's ``(sigmoid(logits) - labels) / N * g``.

    Args:
        grad_output: ``dL/dloss``, a scalar (0-d array or float).
        logits: ``[batch, num_labels]``.
        labels: as in the forward.
        num_labels: ``config.num_labels``.
        problem_type: ``config.problem_type`` (``None`` chooses as the oracle does).

    Returns:
        ``dL/dlogits``, ``[batch, num_labels]``.
    """
    kind = sequence_classification_problem_type(problem_type, num_labels, labels)
    if kind == "regression":
        target = labels.astype(logits.dtype)
        if num_labels == 1:
            # the forward's squeeze(), undone on the gradient: [b] -> [b, 1]
            squeezed = mse_loss_backward(grad_output, logits.squeeze(), target.squeeze())
            return squeezed.reshape(logits.shape)
        return mse_loss_backward(grad_output, logits, target)
    if kind == "single_label_classification":
        # [b, labels] vs [b]
        return cross_entropy_backward(
            grad_output, logits.reshape(-1, num_labels), labels.reshape(-1)
        ).reshape(logits.shape)
    if labels.shape != logits.shape:
        raise ValueError(
            f"labels has shape {tuple(labels.shape)}; multi-label classification needs [batch, num_labels] = "
            f"{list(logits.shape)}"
        )
    return bce_with_logits_backward(grad_output, logits, labels.astype(logits.dtype))


def token_classification_loss(logits, labels):
    """Cross entropy over every token, ``-100`` ignored (NaN when every label is ignored, as torch).

    Args:
        logits: ``[batch, seq, num_labels]``.
        labels: integer ``[batch, seq]``.

    Returns:
        0-d array in the logits' dtype.
    """
    num_labels = logits.shape[-1]
    # [b, s, labels] -> [b*s, labels] vs [b*s]
    return cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1)).astype(logits.dtype)


def token_classification_loss_backward(grad_output, logits, labels):
    """Backward of `token_classification_loss`: the mean cross entropy's gradient, 0 on ``-100``
    tokens (all zeros when every label is ignored, as torch, though the loss is NaN).

    Args:
        grad_output: ``dL/dloss``, a scalar (0-d array or float).
        logits: ``[batch, seq, num_labels]``.
        labels: integer ``[batch, seq]``.

    Returns:
        ``dL/dlogits``, ``[batch, seq, num_labels]``.
    """
    num_labels = logits.shape[-1]
    # [b, s, labels] -> [b*s, labels] vs [b*s], and back
    return cross_entropy_backward(grad_output, logits.reshape(-1, num_labels), labels.reshape(-1)).reshape(
        logits.shape
    )


def question_answering_logits(sequence_output, *, weight, bias):
    """``qa_outputs`` projection split into start and end logits.

    Args:
        sequence_output: ``[batch, seq, hidden]``.
        weight: ``[2, hidden]``; bias: ``[2]``.

    Returns:
        ``(start_logits [batch, seq], end_logits [batch, seq])``.
    """
    xp = get_namespace(sequence_output)
    # [b, s, h] -> [b, s, 2]
    logits = linear(sequence_output, weight, bias)
    trace.output(logits)
    # [b, s, 2] -> 2 x [b, s]
    return xp.ascontiguousarray(logits[..., 0]), xp.ascontiguousarray(logits[..., 1])


def question_answering_logits_backward(grad_start_logits, grad_end_logits, sequence_output, *, weight, bias):
    """Backward of `question_answering_logits`: the split undone, then the projection.

    Records the gradient of the module's own output (``[b, s, 2]``, the scope's name), as the
    forward records the output.

    Args:
        grad_start_logits, grad_end_logits: ``[batch, seq]`` each.
        sequence_output: the forward's input, ``[batch, seq, hidden]``.
        weight, bias: as in the forward.

    Returns:
        ``(d_sequence_output [batch, seq, hidden], {"weight": [2, hidden], "bias": [2]})``.
    """
    xp = get_namespace(grad_start_logits, grad_end_logits, sequence_output)
    # 2 x [b, s] -> [b, s, 2]
    d_logits = xp.stack([grad_start_logits, grad_end_logits], axis=-1)
    trace.output(d_logits)
    # [b, s, 2] -> [b, s, h]
    d_sequence, d_weight, d_bias = linear_backward(d_logits, sequence_output, weight, bias)
    return d_sequence, {"weight": d_weight, "bias": d_bias}


def question_answering_loss(start_logits, end_logits, start_positions, end_positions):
    """Mean of the start and end cross entropies.

    Positions outside ``[0, seq]`` are clamped into it, and position ``seq`` (one past the
    end) is ignored: transformers' way of dropping answers cut off by truncation.

    Args:
        start_logits, end_logits: ``[batch, seq]``.
        start_positions, end_positions: integer ``[batch]`` (or ``[batch, 1]``).

    Returns:
        0-d array in the logits' dtype (NaN when every position is ignored, as torch).
    """
    xp = get_namespace(start_logits)
    ignored_index = start_logits.shape[1]
    # [b, 1] -> [b]
    if start_positions.ndim > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.ndim > 1:
        end_positions = end_positions.squeeze(-1)
    # out-of-range answers land on the ignored index
    start_positions = xp.clip(start_positions, 0, ignored_index)
    end_positions = xp.clip(end_positions, 0, ignored_index)
    start_loss = cross_entropy(start_logits, start_positions, ignore_index=ignored_index)
    end_loss = cross_entropy(end_logits, end_positions, ignore_index=ignored_index)
    return ((start_loss + end_loss) / 2).astype(start_logits.dtype)


def question_answering_loss_backward(grad_output, start_logits, end_logits, start_positions, end_positions):
    """Backward of `question_answering_loss`: half the upstream gradient into each cross entropy.

    The positions are clamped into ``[0, seq]`` as in the forward, and position ``seq`` is
    ignored, so an answer cut off by truncation sends no gradient; when every start (or end)
    position is ignored that loss is NaN but its gradient is all zeros, as in torch.

    Args:
        grad_output: ``dL/dloss``, a scalar (0-d array or float).
        start_logits, end_logits: ``[batch, seq]``.
        start_positions, end_positions: integer ``[batch]`` (or ``[batch, 1]``).

    Returns:
        ``(dstart_logits [batch, seq], dend_logits [batch, seq])``.
    """
    xp = get_namespace(start_logits, end_logits)
    ignored_index = start_logits.shape[1]
    # [b, 1] -> [b]
    if start_positions.ndim > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.ndim > 1:
        end_positions = end_positions.squeeze(-1)
    start_positions = xp.clip(start_positions, 0, ignored_index)
    end_positions = xp.clip(end_positions, 0, ignored_index)
    # loss = (start_loss + end_loss) / 2: each gets half
    half = xp.asarray(grad_output) / 2
    d_start = cross_entropy_backward(half, start_logits, start_positions, ignore_index=ignored_index)
    d_end = cross_entropy_backward(half, end_logits, end_positions, ignore_index=ignored_index)
    return d_start, d_end
