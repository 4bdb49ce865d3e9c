"""Isolation: tell a block's own error from the error it inherited, on the block lists the
families export (`refimpl.lilt.blocks`, `refimpl.lxmert.blocks`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import from_pretrained
from ..blocks import BlockNamesError
from ..golden.masks import keep_mask
from ..lilt.blocks import isolation_blocks as lilt_blocks
from ..lxmert.blocks import isolation_blocks as lxmert_blocks
from .candidates import Candidate, read_candidate, read_reference
from .check import compare
from .errors import CompareError
from .names import NameMap
from .report import BlockRow, IsolationResult
from .rules import _compare_one, _tolerance_for

__all__ = ["isolate"]


def isolate(
    reference: Any,
    candidate: Any,
    checkpoint: str | os.PathLike,
    atol: float | None = None,
    rtol: float | None = None,
    strict: bool = False,
    rule: str = "max_abs",
    names: NameMap | None = None,
) -> IsolationResult:
    """Tell a block's own error from inherited drift.

    For every block in forward order (LiLT: text and layout embeddings, each layer's text and
    layout outputs, pooler, head; LXMERT: embeddings, visual feature encoder, language,
    relationship and cross layers, pooler, heads) whose inputs and output the candidate holds,
    the block is recomputed in float64 with refimpl's functions from the candidate's own
    inputs to it (model inputs come from the reference) and compared with the candidate's
    output: that is the block's local error. The first block whose local error is out of
    tolerance is the culprit, even when the plain comparison failed earlier; when every block
    is locally fine but the plain comparison fails, the divergence is accumulated drift.

    Args:
        reference, candidate, atol, rtol, strict, rule, names: as `compare`. The local
            check uses the tolerance of one block (depth 1) for the candidate's dtype, or the
            overrides.
        checkpoint: the checkpoint directory the golden file was made from.

    Returns:
        `IsolationResult`.
    """
    ref = read_reference(reference)
    cand = candidate if isinstance(candidate, Candidate) else read_candidate(candidate)
    if names:
        cand = names.apply(cand, set(ref.tensors))
    plain = compare(ref, cand, atol, rtol, strict, rule)
    ck = os.fspath(checkpoint)
    if not os.path.isdir(ck):
        raise CompareError(f"checkpoint directory not found: {ck}")
    model = from_pretrained(ck, dtype="float64")
    mt = ref.manifest.get("model_type")
    if mt != model.config.model_type:
        raise CompareError(f"checkpoint {ck} is a {model.config.model_type} model; the reference is {mt}")
    try:
        blocks = lilt_blocks(ref, model) if mt == "lilt" else lxmert_blocks(ref, model)
    except BlockNamesError as e:
        raise CompareError(str(e)) from None
    plain_rows = {r.name: r for r in plain.rows}
    entries = {e["name"]: e for e in ref.manifest.get("tensors", [])}
    default = ref.manifest.get("default_tolerance") or {}
    rows: list[BlockRow] = []
    culprit = None
    for b in blocks:
        have = all(n.startswith("inputs.") or n in cand.tensors for n in b.inputs) and any(
            o in cand.tensors for o in b.outputs
        )
        got = None
        if have:
            t = {n: np.asarray(cand.tensors[n], np.float64) for n in b.inputs if not n.startswith("inputs.")}
            got = b.run(t)
        for k, o in enumerate(b.outputs):
            if o not in ref.tensors:
                continue
            local = None
            if got is not None and o in cand.tensors:
                r = ref.tensors[o]
                dt = cand.dtypes.get(o, str(r.dtype))
                a, tt = _tolerance_for(entries.get(o, {}), default, r, dt, 1)
                a = a if atol is None else float(atol)
                tt = tt if rtol is None else float(rtol)
                specs = entries.get(o, {}).get("masks") or []
                keep = keep_mask(tuple(r.shape), specs, ref.tensors) if specs else None
                local = _compare_one(
                    o, np.asarray(got[k]), np.asarray(cand.tensors[o]), a, tt, keep, rule, dt
                )
            row = BlockRow(b.name, o, b.inputs, plain_rows.get(o), local)
            if local is not None and not local.ok and culprit is None:
                row.culprit, culprit = True, o
            rows.append(row)
    if culprit is not None:
        verdict = "culprit"
    elif not plain.compared or plain.name_mismatch:
        verdict = "names"
    elif not plain.ok:
        verdict = "drift"
    else:
        verdict = "ok"
    return IsolationResult(rows, plain, verdict, culprit)
