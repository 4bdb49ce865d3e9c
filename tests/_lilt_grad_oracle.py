"""The gradient oracle for LiLT, gap closed: autograd gradients of the self-attention tensors
that are not module outputs, under refimpl's trace names.

`tests/_grad_oracle.py` sees module outputs only. Inside ``LiltSelfAttention.forward`` of
transformers 4.56.2 the scores, the two summands, the relative position scores and the two
streams' probabilities are plain tensors. `lilt_oracle_gradients` runs the same
`oracle_gradients` (one forward, one ``backward``) while a `torch.overrides.TorchFunctionMode`
logs every torch call made inside a ``LiltSelfAttention`` (its pre-/post-forward hooks say
which one; the mode sees the top-level calls only: a call's own inner calls run with the mode
off), and calls ``retain_grad`` on each result that requires a gradient. After the backward
the log is read by data dependence, following the oracle's own code, from the two softmax
calls back (the first softmax is the layout stream's, the second the text stream's)::

    X_l = S_l + mask  ->  softmax  ->  P_l  (-> dropout, identity in eval)  [-> P_l * head_mask = P'_l]
    S_l = T_l + T       (layout_attention_scores: tmp_layout + tmp)
    S   = T + T_l       (attention_scores: tmp + tmp_layout, the text softmax's input less the mask)
    T   = A / sqrt(d),  A = Q K^T [+ R_q] [+ R_k]    (R_q, R_k: the einsum "bhld,lrd->bhlr" / "bhrd,lrd->bhlr")

Each name's tensor is the very tensor the oracle's graph used, so its ``.grad`` is autograd's
``dL/d(tensor)``: ``attention_scores`` is ``S`` before the mask (the add of the mask passes the
gradient unchanged, so ``dL/dS = dL/dX``), ``attention_probs`` is ``P'`` after the head mask (the
product's result; without a head mask the softmax's own output). The forward values come back
too (``activations``), so a test can check each name against refimpl's trace (it does:
tests/test_backward_lilt.py) — a wrongly resolved tensor fails there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from _grad_oracle import OracleGradients, oracle_gradients
from torch.overrides import TorchFunctionMode

__all__ = ["lilt_oracle_gradients", "self_attention_tensors"]

_SOFTMAX = {"softmax", "_softmax"}
_EINSUM_NAMES = {
    "bhld,lrd->bhlr": "query",  # relative_position_scores_query (relative_key: relative_position_scores)
    "bhrd,lrd->bhlr": "key",  # relative_position_scores_key
}


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


class _Log(TorchFunctionMode):
    """Logs ``(function name, args, result)`` of every torch call while ``self.inside`` names a
    self-attention module path; retains the gradient of every result that has one."""

    def __init__(self):
        super().__init__()
        self.inside: list[str] = []
        self.calls: dict[str, list[tuple[str, tuple, object]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if self.inside:
            if isinstance(result, torch.Tensor) and result.requires_grad:
                result.retain_grad()
            self.calls.setdefault(self.inside[-1], []).append((_name(func), tuple(args), result))
        return result


def _resolve(calls: list[tuple[str, tuple, object]], position_embedding_type: str) -> dict[str, torch.Tensor]:
    """The named tensors of one ``LiltSelfAttention`` call, from its log (see the module docstring)."""
    producer = {id(r): (name, args) for name, args, r in calls if isinstance(r, torch.Tensor)}

    def strip_mask(x):
        """``X = S + mask`` -> ``S`` (the mask needs no gradient); ``X`` itself when unmasked."""
        name, args = producer.get(id(x), ("", ()))
        if name in ("add", "__add__") and isinstance(args[1], torch.Tensor) and not args[1].requires_grad:
            return args[0]
        return x

    softmaxes = [(args[0], r) for name, args, r in calls if name in _SOFTMAX]
    assert len(softmaxes) == 2, f"expected 2 softmax calls (layout, text), saw {len(softmaxes)}"
    out: dict[str, torch.Tensor] = {}
    for stream, (x, p) in zip(("layout_", ""), softmaxes, strict=True):
        out[f"{stream}attention_scores"] = strip_mask(x)
        # dropout (identity in eval) may hand back p itself; then the head mask's product, if any
        probs = p
        for name, args, r in calls:
            if name == "dropout" and args and args[0] is probs:
                probs = r
        for name, args, r in calls:
            if name in ("mul", "__mul__") and args and args[0] is probs:
                probs = r
                break
        out[f"{stream}attention_probs"] = probs
    # S_l = T_l + T, S = T + T_l
    name, (t_layout, t_text) = producer[id(out["layout_attention_scores"])]
    assert name in ("add", "__add__"), name
    name, (t_text2, t_layout2) = producer[id(out["attention_scores"])]
    assert t_text2 is t_text and t_layout2 is t_layout, "S and S_l do not share their summands"
    out["tmp_attention_scores"], out["tmp_layout_attention_scores"] = t_text, t_layout
    # the relative position scores, by their einsum
    if position_embedding_type in ("relative_key", "relative_key_query"):
        for name, args, r in calls:
            if name == "einsum":
                side = _EINSUM_NAMES[args[0]]
                key = (
                    "relative_position_scores"
                    if position_embedding_type == "relative_key"
                    else f"relative_position_scores_{side}"
                )
                out[key] = r
    return out


@contextlib.contextmanager
def self_attention_tensors(model: torch.nn.Module) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Capture every ``LiltSelfAttention`` call's tensors during the forwards in the ``with`` block.

    Yields a dict that, when the block exits, maps each golden name
    (``lilt.encoder.layer.0.attention.self.attention_scores``, ...) to the oracle's tensor
    (with its gradient retained).
    """
    from transformers.models.lilt.modeling_lilt import LiltSelfAttention

    log = _Log()

    def enter(path):
        log.inside.append(path)

    def leave(module, args, output):
        log.inside.pop()  # returns None: the output stays as it is

    handles = []
    for path, module in model.named_modules():
        if isinstance(module, LiltSelfAttention):
            handles.append(module.register_forward_pre_hook(lambda m, a, path=path: enter(path)))
            handles.append(module.register_forward_hook(leave))
    named: dict[str, torch.Tensor] = {}
    try:
        with log:
            yield named
    finally:
        for h in handles:
            h.remove()
    pet = getattr(model.config, "position_embedding_type", "absolute")
    for path, calls in log.calls.items():
        for name, tensor in _resolve(calls, pet).items():
            named[f"{path}.{name}"] = tensor


def lilt_oracle_gradients(model: torch.nn.Module, inputs: dict, upstream=None, **kwargs) -> OracleGradients:
    """`oracle_gradients` of a LiLT oracle model, plus the self-attention tensors that are not
    module outputs in ``modules`` / ``activations`` (same arguments)."""
    with self_attention_tensors(model) as named:
        result = oracle_gradients(model, inputs, upstream, **kwargs)
    for name, tensor in named.items():
        grad = (tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)).detach().cpu().numpy()
        if name in result.modules:  # the text probabilities, returned with output_attentions: the same tensor
            if not (
                np.array_equal(result.modules[name], grad)
                and np.array_equal(result.activations[name], tensor.detach().cpu().numpy())
            ):
                raise ValueError(f"{name!r}: the module output and the captured tensor differ")
            continue
        result.modules[name] = grad.copy()
        result.activations[name] = tensor.detach().cpu().numpy().copy()
    return result
