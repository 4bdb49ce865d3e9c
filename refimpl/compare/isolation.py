"""Isolation: tell a block's own error from the error it inherited, on the block lists the
families export (`refimpl.lilt.blocks`, `refimpl.lxmert.blocks`), judged at the candidate's
precision."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import from_pretrained, trace
from ..blocks import Block, BlockNamesError
from ..golden.manifest import weight_entries
from ..golden.masks import keep_mask
from ..lilt.blocks import isolation_blocks as lilt_blocks
from ..lxmert.blocks import isolation_blocks as lxmert_blocks
from .candidates import Candidate
from .check import compare, prepare
from .errors import CompareError
from .matching import fill_from_aliases
from .names import NameMap
from .precision import PRECISION_FACTOR, REDUCED, emulating, round_to, round_tree
from .report import BlockRow, IsolationResult
from .rules import UNIT_ROUNDOFF, CompareRow, _compare_one, _tolerance_for

__all__ = ["isolate", "precision_stat", "check_checkpoint", "MIN_VALUES"]

#: the precision test needs at least this many compared values in a block output: the RMS of
#: fewer rounding errors is too noisy to judge by (a pooled vector, a pair of match scores
#: fall back to the rule's tolerance alone).
MIN_VALUES = 256


def precision_stat(row: CompareRow, rule: str) -> tuple[float, int, str]:
    """The error measure the precision test compares, for ``rule``: ``(value, power, name)``.

    ``max_abs`` and ``rel`` use the root-mean-square error (a rounding-error field's maximum
    is an extreme value that moves by +-50% from seed to seed; its RMS by a few percent);
    ``nmse`` its own value and ``cosine`` ``1 - cos``, both squares of an RMS-like measure
    (``power`` 2: the factor is squared).
    """
    if rule == "nmse":
        return row.nmse, 2, "nmse"
    if rule == "cosine":
        return row.one_minus_cos, 2, "1-cos"
    return row.rms, 1, "rms"


def _floor(row: CompareRow, dtype: str, power: int, rule: str) -> float:
    """The least expected error a block output in ``dtype`` can have: its own rounding (half a
    unit roundoff, RMS) in the measure of ``rule``."""
    u = 0.5 * UNIT_ROUNDOFF.get(dtype, 0.0)
    if rule in ("nmse", "cosine"):
        return u * u / (2 if rule == "cosine" else 1)
    return u * row.rms_ref


def check_checkpoint(ref: Any, checkpoint: str | os.PathLike, strict: bool = False) -> Any:
    """Load ``checkpoint`` in float64 for isolation after checking it is the one the golden
    file was made from (``strict``: `refimpl.from_pretrained`'s, refusing weights the model
    does not use).

    The weight files' sha256 (as `refimpl.golden.weight_entries` computes them) must equal
    the manifest's ``weights`` (skipped when the manifest records none); the model type and
    architecture must match. Every refusal is one line.

    Raises:
        CompareError: not a directory, unreadable, other weights (both hashes named), another
            model type or architecture.
    """
    ck = os.fspath(checkpoint)
    if not os.path.isdir(ck):
        raise CompareError(f"checkpoint directory not found: {ck}")
    want = [w for w in ref.manifest.get("weights") or [] if isinstance(w, dict) and "sha256" in w]
    if want:
        try:
            have = weight_entries(ck)
        except (OSError, ValueError) as e:
            raise CompareError(f"checkpoint {ck}: {_one_line(e)}") from None
        for w, h in zip(want, have, strict=False):
            if w.get("sha256") != h["sha256"]:
                raise CompareError(
                    f"checkpoint {ck} is not the one the golden file was made from: {h['file']} sha256 "
                    f"{h['sha256'][:16]}... here, {w.get('file')} sha256 {str(w.get('sha256'))[:16]}... in the "
                    "golden manifest"
                )
        if len(want) != len(have):
            raise CompareError(
                f"checkpoint {ck} is not the one the golden file was made from: {len(have)} weight file(s) here, "
                f"{len(want)} in the golden manifest"
            )
    try:
        model = from_pretrained(ck, dtype="float64", strict=strict)
    except Exception as e:  # any loading failure: one line naming the checkpoint
        raise CompareError(f"checkpoint {ck} cannot be loaded: {_one_line(e)}") from None
    mt = ref.manifest.get("model_type")
    if mt != model.config.model_type:
        raise CompareError(f"checkpoint {ck} is a {model.config.model_type} model; the reference is {mt}")
    arch = ref.manifest.get("architecture")
    if arch and type(model).__name__ != arch:
        raise CompareError(f"checkpoint {ck} is a {type(model).__name__}; the reference was made by a {arch}")
    return model


def _one_line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s[:300] + ("..." if len(s) > 300 else "")


def _blocks(ref: Any, model: Any) -> list[Block]:
    try:
        if ref.manifest.get("model_type") == "lilt":
            return lilt_blocks(ref, model)
        return lxmert_blocks(ref, model)
    except BlockNamesError as e:
        raise CompareError(str(e)) from None


class _Emulated:
    """Blocks recomputed as a port in a reduced dtype: weights rounded once per dtype."""

    def __init__(self, ref: Any, model: Any):
        self.ref, self.model = ref, model
        self._blocks: dict[str, dict[str, Block]] = {}

    def blocks(self, dtype: str) -> dict[str, Block]:
        if dtype not in self._blocks:
            rounded = SimpleNamespace(config=self.model.config, weights=round_tree(self.model.weights, dtype))
            self._blocks[dtype] = {b.name: b for b in _blocks(self.ref, rounded)}
        return self._blocks[dtype]

    def run(self, block: Block, dtype: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        b = self.blocks(dtype)[block.name]
        rounded = {k: round_to(np.asarray(v, np.float64), dtype) for k, v in inputs.items()}
        with emulating(dtype):
            return [round_to(y, dtype) for y in b.run(rounded)]


def _run(block: Block, inputs: dict[str, np.ndarray], ck: str) -> list[np.ndarray]:
    try:
        return block.run(inputs)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise CompareError(
            f"checkpoint {ck} does not fit the reference at block {block.name}: {_one_line(e)}"
        ) from None


def isolate(
    reference: Any,
    candidate: Any,
    checkpoint: str | os.PathLike,
    atol: float | None = None,
    rtol: float | None = None,
    strict: bool = False,
    rule: str = "max_abs",
    names: NameMap | None = None,
    candidate_dtype: str | None = None,
    factor: float = PRECISION_FACTOR,
    strict_checkpoint: bool = False,
) -> IsolationResult:
    """Tell a block's own error from inherited drift, at the candidate's precision.

    For every block in forward order (LiLT: text and layout embeddings, each layer's text and
    layout outputs, pooler, head; LXMERT: embeddings, visual feature encoder, language,
    relationship and cross layers, pooler, heads) whose inputs and output the candidate holds,
    the block is recomputed in float64 with refimpl's functions from the candidate's own
    inputs to it (model inputs come from the reference) and compared with the candidate's
    output: that is the block's *local* error, judged by ``rule`` at one block's tolerance.

    A block output the candidate holds in float16 or bfloat16 is also recomputed *as a correct
    port in that dtype computes it* (`refimpl.compare.precision.emulating`: weights, inputs
    and every recorded op's output rounded): the *expected* error. The block fails the
    precision test when its local error exceeds ``factor`` times the expected one (RMS errors
    for max_abs and rel, ``factor**2`` for the nmse and cosine measures; see
    `precision_stat`). The whole chain is also run emulated from the model inputs, so the
    plain (accumulated) error of each block output can be judged against a correct port's.

    Verdicts (`IsolationResult.verdict`): ``"culprit"`` (the first block failing locally);
    ``"inconclusive"`` (no culprit, the outputs diverge, and a block where the divergence
    starts, or any block after it, could not be checked: each is named with the golden name
    of the input it lacks); ``"drift"`` (every block locally fine, the outputs diverge beyond
    what the precision explains); ``"ok"``; ``"names"`` (nothing compared).

    Args:
        reference, candidate, atol, rtol, strict, rule, names, candidate_dtype: as `compare`.
            The local check uses the tolerance of one block (depth 1) for the dtype the
            candidate output is judged as, or the overrides.
        checkpoint: the checkpoint directory the golden file was made from (its weights hash
            is checked against the manifest).
        factor: the precision test's factor (`PRECISION_FACTOR`).
        strict_checkpoint: load ``checkpoint`` with ``strict=True`` (`check_checkpoint`).

    Returns:
        `IsolationResult`.
    """
    if not (factor >= 1 and math.isfinite(factor)):
        raise CompareError(f"precision factor must be a finite number >= 1, got {factor}")
    ref, cand, matches, raw = prepare(reference, candidate, names, candidate_dtype)
    plain = compare(ref, cand, atol, rtol, strict, rule)
    cand = Candidate(cand.path, cand.format, dict(cand.tensors), dict(cand.dtypes), cand.manifest,
                     dict(cand.stored), list(cand.notes), dict(cand.origin))  # fmt: skip
    plain.matches = matches + fill_from_aliases(cand, ref)  # hidden states stand for block outputs
    ck = os.fspath(checkpoint)
    model = check_checkpoint(ref, ck, strict=strict_checkpoint)
    blocks = _blocks(ref, model)
    emu = _Emulated(ref, model)
    plain_rows = {r.name: r for r in plain.rows}
    entries = {e["name"]: e for e in ref.manifest.get("tensors", [])}
    default = ref.manifest.get("default_tolerance") or {}
    order = {n: i for i, n in enumerate(ref.tensors)}
    chain: dict[str, np.ndarray] = {}  # the emulated chain's block outputs, golden names
    rows: list[BlockRow] = []
    for b in blocks:
        lacking = [n for n in b.inputs if not n.startswith("inputs.") and n not in cand.tensors]
        outs = [o for o in b.outputs if o in ref.tensors]
        dts = {cand.dtypes.get(o) for o in outs if o in cand.tensors}
        dt = next((d for d in REDUCED if d in dts), None)
        got = emul = None
        if not lacking and any(o in cand.tensors for o in outs):
            t = {n: np.asarray(cand.tensors[n], np.float64) for n in b.inputs if not n.startswith("inputs.")}
            got = _run(b, t, ck)
            if dt is not None:
                emul = emu.run(b, dt, t)
        chain_out = None
        chain_dt = dt or next((d for d in REDUCED if d in set(cand.dtypes.values())), None)
        if chain_dt is not None and all(n.startswith("inputs.") or n in chain for n in b.inputs):
            chain_in = {n: chain[n] for n in b.inputs if not n.startswith("inputs.")}
            chain_out = emu.run(b, chain_dt, chain_in)
            chain.update(zip(b.outputs, chain_out, strict=True))
        for k, o in enumerate(b.outputs):
            if o not in ref.tensors:
                continue
            r = ref.tensors[o]
            e = entries.get(o, {})
            specs = e.get("masks") or []
            keep = keep_mask(tuple(r.shape), specs, ref.tensors) if specs else None
            row = BlockRow(b.name, o, b.inputs, plain_rows.get(o), None, order=order.get(o, 0))
            row.missing = lacking + ([] if o in cand.tensors else [o])
            if got is not None and o in cand.tensors:
                c_dt = cand.dtypes.get(o, str(r.dtype))
                a, tt = _tolerance_for(e, default, r, c_dt, 1)
                a = a if atol is None else float(atol)
                tt = tt if rtol is None else float(rtol)
                row.local = _compare_one(
                    o, np.asarray(got[k]), np.asarray(cand.tensors[o]), a, tt, keep, rule, c_dt
                )
                if emul is not None and row.local.compared >= MIN_VALUES:
                    row.dtype = dt
                    row.expected = _compare_one(o, np.asarray(got[k]), emul[k], a, tt, keep, rule, dt)
                    stat, p, what = precision_stat(row.local, rule)
                    exp = max(precision_stat(row.expected, rule)[0], _floor(row.local, dt, p, rule))
                    row.measure, row.local_stat, row.expected_stat = what, stat, exp
                    row.ratio = (stat / exp) if exp > 0 else (math.inf if stat > 0 else 0.0)
                    row.precision_ok = stat <= factor**p * exp
            if (
                chain_out is not None
                and o in cand.tensors
                and row.plain is not None
                and row.plain.status not in ("missing", "shape")
                and row.plain.compared >= MIN_VALUES
            ):
                row.chain = _compare_one(o, r, chain_out[k], 0.0, 0.0, keep, rule, chain_dt)
                stat, p, _ = precision_stat(row.plain, rule)
                exp = max(precision_stat(row.chain, rule)[0], _floor(row.plain, chain_dt, p, rule))
                row.chain_stat = exp
                row.drift_explained = stat <= factor**p * exp
            rows.append(row)
    res = IsolationResult(rows, plain, factor=factor, rule=rule, reference=ref, candidate=cand).decide()
    if res.culprit is not None:
        row = next(r for r in rows if r.culprit)
        block = next(b for b in blocks if b.name == row.block)
        res.inside = _inside(block, cand, ref, rule, entries, ck)
    return res


def _inside(
    block: Block, cand: Any, ref: Any, rule: str, entries: dict, ck: str
) -> list[tuple[str, CompareRow]]:
    """The culprit block's own sub-tensors: the block recomputed in float64 from the
    candidate's inputs with tracing on, each traced step the candidate also holds compared
    with it (its local error), in the block's order."""
    t = {n: np.asarray(cand.tensors[n], np.float64) for n in block.inputs if not n.startswith("inputs.")}
    with trace.tracing() as rec:
        _run(block, t, ck)
    stems = [block.name, block.name.rsplit(".", 1)[0]]
    stem = max(stems, key=lambda p: sum(f"{p}.{n}" in ref.tensors for n in rec.tensors))
    out = []
    for n, v in rec.tensors.items():
        g = f"{stem}.{n}" if n else stem
        if (
            g not in ref.tensors
            or g not in cand.tensors
            or not isinstance(v, np.ndarray)
            or v.dtype.kind != "f"
        ):
            continue
        r = ref.tensors[g]
        e = entries.get(g, {})
        specs = e.get("masks") or []
        keep = keep_mask(tuple(r.shape), specs, ref.tensors) if specs else None
        c_dt = cand.dtypes.get(g, str(r.dtype))
        a, tt = _tolerance_for(e, ref.manifest.get("default_tolerance") or {}, r, c_dt, 1)
        if np.shape(v) == np.shape(r):
            out.append(
                (
                    g,
                    _compare_one(
                        g, np.asarray(v, np.float64), np.asarray(cand.tensors[g]), a, tt, keep, rule, c_dt
                    ),
                )
            )
    return out
