"""Swap the layers' named fused ops for their plain twins at run time, to measure (and
parity-test) what the fused kernels buy.

The layer code calls the fused ops itself (``refimpl.bert`` and ``refimpl.attention``); each
has a plain twin beside it. ``plain_ops()`` puts the twins in their place for the ``with``
block:

* ``bert.linear_act`` -> ``ops.linear_act_plain`` (``act(linear(x))``);
* ``bert.add_layer_norm_`` -> ``layer_norm(x + residual)`` (in ``x``'s memory, as before the fusion);
* ``attention.attention_probs_`` -> ``attention_probs_plain``;
* ``attention.attention_context`` -> ``attention_context_plain``;
* ``_fused.matmul_wt`` (the GEMM behind ``ops.linear`` and the fused linear ops) -> ``x @ weight.T``.

Use::

    from fused_wiring import plain_ops
    with plain_ops():        # or plain_ops(gelu=True, add_norm=False, softmax=False, context=False, gemm=False)
        model(**inputs)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from refimpl import _fused, attention, bert, ops


def _add_layer_norm_plain(x, residual, weight, bias, eps):
    x += residual
    return ops.layer_norm(x, weight, bias, eps, out=x)


_TWINS = {
    "gelu": (bert, "linear_act", ops.linear_act_plain),
    "add_norm": (bert, "add_layer_norm_", _add_layer_norm_plain),
    "softmax": (attention, "attention_probs_", attention.attention_probs_plain),
    "context": (attention, "attention_context", attention.attention_context_plain),
    "gemm": (_fused, "matmul_wt", lambda x, weight: x @ weight.T),
}


@contextlib.contextmanager
def plain_ops(
    gelu: bool = True,
    add_norm: bool = True,
    softmax: bool = True,
    context: bool = True,
    gemm: bool = True,
) -> Iterator[None]:
    """Run the ``with`` block on the plain twins of the chosen fused ops."""
    chosen = {"gelu": gelu, "add_norm": add_norm, "softmax": softmax, "context": context, "gemm": gemm}
    saved = []
    try:
        for key, (module, name, twin) in _TWINS.items():
            if chosen[key]:
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, twin)
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)
