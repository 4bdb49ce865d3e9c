"""Run a forward with some fast kernels switched off, to measure (and parity-test) what each buys.

The layers always call the plain ops; `refimpl.switch` runs each op's fast kernel in its place
unless told otherwise. ``plain_ops()`` turns the chosen kernels off for the ``with`` block, so
those ops run their formulas:

* ``gelu``: ``bert.intermediate`` (the GEMM with the bias and the GELU fused), the chunked
  ``activations.gelu`` / ``activations.erf`` and the blocked ``activations.gelu_backward``;
* ``add_norm``: ``bert.add_and_norm`` (bias, residual and LayerNorm in the GEMM's output) and
  the row-blocked ``ops.layer_norm``;
* ``softmax``: the fused attention (``attention.scaled_dot_product_attention``,
  ``bi_acm.bi_acm_attention``), ``attention.attention_probs`` and ``ops.softmax``;
* ``context``: ``attention.attention_context`` and ``bi_acm.bi_acm_contexts``;
* ``gemm``: ``ops.linear`` (one GEMM over the flattened rows, ``(W @ x.T).T`` for few float32
  rows) and ``bi_acm.bi_acm_scores`` (a block of heads at a time).

Use::

    from fused_wiring import plain_ops
    with plain_ops():        # or plain_ops(gelu=True, add_norm=False, softmax=False, context=False, gemm=False)
        model(**inputs)

``plain_ops()`` with every group on is ``refimpl.reference()``.
"""

from __future__ import annotations

from refimpl import activations, attention, bert, bi_acm, ops, switch

GROUPS = {
    "gelu": (bert.intermediate, activations.gelu, activations.erf, activations.gelu_backward),
    "add_norm": (bert.add_and_norm, ops.layer_norm, ops.layer_norm_backward),
    "softmax": (
        attention.scaled_dot_product_attention,
        bi_acm.bi_acm_attention,
        attention.attention_probs,
        ops.softmax,
        ops.softmax_backward,
    ),
    "context": (attention.attention_context, bi_acm.bi_acm_contexts),
    "gemm": (ops.linear, bi_acm.bi_acm_scores),
}


def plain_ops(
    gelu: bool = True,
    add_norm: bool = True,
    softmax: bool = True,
    context: bool = True,
    gemm: bool = True,
):
    """A context manager: the chosen groups of ops run their formulas, the rest their kernels."""
    chosen = {"gelu": gelu, "add_norm": add_norm, "softmax": softmax, "context": context, "gemm": gemm}
    return switch.fast(without=[op for key, ops_ in GROUPS.items() if chosen[key] for op in ops_])
