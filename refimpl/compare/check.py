"""The plain check: every reference tensor against the candidate's of the same name (after
the name options and the hook-name matching)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..golden.masks import keep_mask
from .candidates import Candidate, read_candidate, read_reference
from .errors import CompareError
from .matching import NameMatch, match_names, matchable_names
from .names import NameMap, models_differ, name_hint
from .report import CompareResult
from .rules import RULES, CompareRow, _compare_one, _tolerance_for

__all__ = ["compare", "prepare"]


def prepare(
    reference: Any,
    candidate: Any,
    names: NameMap | None = None,
    candidate_dtype: str | None = None,
) -> tuple[Any, Candidate, list[NameMatch], list[str]]:
    """Read both sides and put the candidate's tensors under golden names.

    Returns:
        ``(reference Golden, candidate, matches, raw candidate names)``: ``matches`` says how
        each candidate name was read (see `refimpl.compare.matching.match_names`).
    """
    ref = read_reference(reference, candidate)
    cand = candidate if isinstance(candidate, Candidate) else read_candidate(candidate, candidate_dtype)
    raw_names = list(cand.tensors)
    if names:
        cand = names.apply(cand, matchable_names(ref))
    cand, matches = match_names(cand, ref)
    return ref, cand, matches, raw_names


def _hint(matchable: set[str], extra: list[str]) -> str | None:
    """`name_hint`, with gradients (``grad.*``) looked at apart: a gradient golden file holds
    ``grad.<name>`` beside ``<name>``, so a port's gradient of a module the file does not name
    (a dropout, a module called twice) is an extra name, not a sign of an extra ``grad.`` prefix."""
    grads = [n for n in extra if n.startswith("grad.")]
    if not grads or not any(n.startswith("grad.") for n in matchable):
        return name_hint(matchable, extra)
    rest = [n for n in extra if not n.startswith("grad.")]
    ref_grads = {n[5:] for n in matchable if n.startswith("grad.")}
    return (name_hint(matchable, rest) if rest else None) or name_hint(ref_grads, [n[5:] for n in grads])


def compare(
    reference: Any,
    candidate: Any,
    atol: float | None = None,
    rtol: float | None = None,
    strict: bool = False,
    rule: str = "max_abs",
    names: NameMap | None = None,
    candidate_dtype: str | None = None,
) -> CompareResult:
    """Compare a candidate (a port's dump) with a reference golden file, tensor by tensor.

    Args:
        reference: a golden file path or `Golden` (its manifest gives
            the order, tolerances, masks and module calls). Anything without a golden
            manifest is refused.
        candidate: a path (safetensors, ``.npz`` or ``.npy`` directory; see
            `read_candidate`), a `Candidate`, a Golden or a mapping name -> array. Golden
            names, and the names a forward hook on every module gives (``name``, ``name.1``,
            ...; see `refimpl.compare.matching`), are understood with no option.
        atol, rtol: override every float tensor's tolerance.
        strict: count tensors missing in the candidate as failures.
        rule: the pass rule for float tensors, one of `RULES`.
        names: a `NameMap` applied to the candidate's names first.
        candidate_dtype: the precision the port computed in (``"bfloat16"``...); by default
            found from the values (see `read_candidate`).

    Returns:
        `CompareResult`, one row per reference tensor, forward order. Without
        overrides a float tensor gets the manifest's tolerance, widened to
        `dtype_tolerance` of the dtype the candidate tensor is judged as when that is
        coarser. Masked positions (see `refimpl.golden.mask_specs_for`) are not compared.

    Raises:
        CompareError: a reference that is not a golden file, an unreadable candidate, a bad rule.
    """
    if rule not in RULES:
        raise CompareError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    for n, v in (("atol", atol), ("rtol", rtol)):
        if v is not None and not (v >= 0 and math.isfinite(v)):
            raise CompareError(f"{n} must be a finite number >= 0, got {v}")
    ref, cand, matches, raw_names = prepare(reference, candidate, names, candidate_dtype)
    notes = list(cand.notes)
    diff = models_differ(ref.manifest, cand.manifest)
    if diff:
        notes.insert(0, diff)
    entries = {e["name"]: e for e in ref.manifest.get("tensors", [])}
    default = ref.manifest.get("default_tolerance") or {}
    rows: list[CompareRow] = []
    first_marked = False
    for name in ref.tensors:
        e = entries.get(name, {})
        r_dtype, r_shape = ref.info(name)
        c = cand.tensors.get(name)
        c_dtype = cand.dtypes.get(name, str(r_dtype))
        a, t = _tolerance_for(e, default, np.empty(0, r_dtype), c_dtype, None)
        if np.dtype(r_dtype).kind in "fc":
            a = a if atol is None else float(atol)
            t = t if rtol is None else float(rtol)
        if c is None:
            rows.append(CompareRow(name, tuple(r_shape), "missing", atol=a, rtol=t, rule=rule))
            continue
        r = ref.tensors[name]
        specs = e.get("masks") or []
        keep = keep_mask(tuple(r.shape), specs, ref.tensors) if specs else None
        row = _compare_one(name, r, np.asarray(c), a, t, keep, rule, c_dtype)
        if not row.ok and not first_marked:
            row.first_divergent = first_marked = True
        rows.append(row)
    extra = [k for k in cand.tensors if k not in ref.tensors]
    missing = [r.name for r in rows if r.status == "missing"]
    if extra and missing:
        matchable = matchable_names(ref)
        hint = _hint(matchable, extra)
        if hint is None and names:  # say what the names looked like before the map
            hint = _hint(matchable, [n for n in raw_names if n not in ref.tensors])
        if hint:
            notes.append("name hint: " + hint)
    return CompareResult(
        rows,
        extra,
        strict,
        notes,
        rule,
        cand.format,
        name_mismatch=any(n.startswith("name hint") for n in notes),
        matches=matches,
        candidate_path=cand.path,
        reference_path=ref.path,
    )
