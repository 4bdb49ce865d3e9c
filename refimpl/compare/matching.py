"""Reading a hook dump: the names a forward hook on every module produces, matched to golden
names through the golden manifest's module calls (`refimpl.golden.module_calls`).

A dump made by a hook on every ``named_modules()`` entry saves each call's output under the
module's path: the first tensor as ``name``, further tensors of a tuple output as ``name.1``,
``name.2``... (LiLT's layout stream at ``lilt.encoder.layer.N.1``). A module called twice
(LXMERT's ``visual_attention``, LiLT's ``x_position_embeddings``) keeps its last call under
``name``, or saves each call as ``name.0``/``name.1`` or ``name#0``/``name#1`` (then
``name.0.1`` or ``name#0.1`` for a further tensor of a call). Dropout modules (the identity
at inference) are ignored. Where two names hold the same golden tensor (a layer's output is
also its ``output`` block's and its ``output.LayerNorm``'s), the golden name itself wins,
then the innermost module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..golden.manifest import module_calls
from .candidates import Candidate

__all__ = ["NameMatch", "match_names", "matchable_names", "calls_of", "fill_from_aliases"]

_CALL = re.compile(r"^(?P<path>.*)#(?P<call>\d+)(?:\.(?P<k>\d+))?$")
_INDEX = re.compile(r"^(?P<path>.*)\.(?P<i>\d+)$")
_INDEX2 = re.compile(r"^(?P<path>.*)\.(?P<i>\d+)\.(?P<k>\d+)$")


@dataclass
class NameMatch:
    """How one candidate name was read: ``golden`` is the golden tensor it is compared as
    (``None``: not compared), ``how`` says why, in words."""

    candidate: str
    golden: str | None
    how: str

    def line(self) -> str:
        """``candidate -> golden (how)`` or ``candidate: how``."""
        shown = self.candidate if self.candidate else "'' (the root module)"
        if self.golden is not None:
            return f"{shown} -> {self.golden} ({self.how})"
        return f"{shown}: {self.how}"


def calls_of(ref: Any) -> list[dict[str, Any]]:
    """The golden file's module calls: its manifest's ``modules``, or (a file written before
    they were recorded) computed from its config and architecture; ``[]`` when unknown."""
    m = ref.manifest
    calls = m.get("modules")
    if calls:
        return calls
    return (
        module_calls(
            m.get("model_type"),
            m.get("architecture"),
            m.get("config"),
            list(ref.tensors),
            m.get("forward_kwargs"),
        )
        or []
    )


def _by_path(calls: list[dict[str, Any]]) -> dict[str, list[list[str] | None]]:
    """module path -> per call its output names (``None``: an ignored call, a dropout)."""
    out: dict[str, list[list[str] | None]] = {}
    for c in calls:
        out.setdefault(c["module"], []).append(None if "ignored" in c else list(c.get("outputs") or []))
    return out


def matchable_names(ref: Any) -> set[str]:
    """Every name a hook dump may use for a golden tensor (the golden names themselves, each
    module path, ``path.k``, and ``path.c``/``path#c``/``path#c.k`` for a module called more
    than once): what a name hint is looked for in."""
    out = set(ref.tensors)
    for path, calls in _by_path(calls_of(ref)).items():
        out.add(path)
        width = max((len(c) for c in calls if c is not None), default=1)
        out.update(f"{path}.{k}" for k in range(1, width))
        if len(calls) > 1:
            for c in range(len(calls)):
                out.update((f"{path}.{c}", f"{path}#{c}"))
                out.update(f"{s}.{k}" for s in (f"{path}.{c}", f"{path}#{c}") for k in range(1, width))
    return out


def _parse(name: str, by_path: dict, per_call: set[str]) -> tuple[str, int, int] | None:
    """``name`` as (module path, call index (-1: the last), output index), or ``None``."""
    m = _CALL.match(name)
    if m and m["path"] in by_path:
        return m["path"], int(m["call"]), int(m["k"] or 0)
    if name in by_path:
        return name, -1, 0
    m = _INDEX2.match(name)
    if m and m["path"] in per_call:
        return m["path"], int(m["i"]), int(m["k"])
    m = _INDEX.match(name)
    if m and m["path"] in by_path:
        if m["path"] in per_call:
            return m["path"], int(m["i"]), 0
        return m["path"], -1, int(m["i"])
    return None


def _resolve(name: str, cand: Candidate, ref: Any, by_path: dict, per_call: set[str]):
    """``(golden name or None, how, depth)`` for a name that is not a golden name."""
    got = _parse(name, by_path, per_call)
    if got is None:
        return None, "no golden tensor and no module of the reference model by this name", 0
    path, call, k = got
    calls = by_path[path]
    shown = path or "the root module"
    if not -1 <= call < len(calls):
        return None, f"{shown} is called {len(calls)} time(s); there is no call {call}", 0
    outs = calls[call]
    which = f"call {call if call >= 0 else len(calls) - 1} of " if len(calls) > 1 else ""
    if outs is None:
        return None, f"ignored: {which}{shown} is a dropout (the identity at inference)", 0
    if k >= len(outs):
        return None, f"{which}{shown} returns {len(outs)} tensor(s); there is no tensor {k}", 0
    g = outs[k]
    how = f"tensor {k} of {which}{shown}'s output" if (k or len(outs) > 1) else f"{which}{shown}'s output"
    if g not in ref.tensors:
        return None, f"{how} is {g}, which this golden file does not hold (its selection)", 0
    shape, want = tuple(np.shape(cand.tensors[name])), tuple(ref.info(g)[1]) if hasattr(ref, "info") else ()
    if want and shape != want:
        return None, f"{how} would be {g}, but its shape {list(shape)} is not the golden {list(want)}", 0
    return g, how, path.count(".") + (1 if path else 0)


def fill_from_aliases(cand: Candidate, ref: Any) -> list[NameMatch]:
    """Give a block output the candidate lacks the candidate's value of a golden name the
    golden file stores as the same tensor (``outputs.hidden_states.2`` is layer 1's output):
    a dump of the returned hidden states can then be isolated block by block. Only block
    outputs of the oracle's own tuples are filled: names the golden file aliases to them.
    Isolation uses it (the plain check compares each name as the dump holds it)."""
    aliases = dict(ref.manifest.get("aliases") or {})
    filled: list[NameMatch] = []
    if not aliases:
        return filled
    groups: dict[str, list[str]] = {}
    for name in ref.tensors:
        groups.setdefault(aliases.get(name, name), []).append(name)
    for names in groups.values():
        held = [n for n in names if n in cand.tensors]
        if not held or len(held) == len(names):
            continue
        src = held[0]
        if not src.startswith("outputs."):
            continue
        for n in names:
            if n not in cand.tensors and not n.startswith("outputs."):
                cand.tensors[n], cand.dtypes[n] = cand.tensors[src], cand.dtypes[src]
                cand.stored[n] = cand.stored.get(src, cand.dtypes[src])
                filled.append(NameMatch(src, n, f"also as {n}: the golden file stores both as one tensor"))
    return filled


def match_names(cand: Candidate, ref: Any) -> tuple[Candidate, list[NameMatch]]:
    """Rename a hook dump's tensors to golden names.

    Args:
        cand: the candidate (any names).
        ref: the reference `refimpl.golden.Golden` (its manifest's module calls).

    Returns:
        ``(candidate, matches)``: the candidate with every matched tensor under its golden
        name, unmatched ones under their own (they show as extra), ignored and duplicate ones
        dropped; one `NameMatch` per original name, in the dump's order.
    """
    by_path = _by_path(calls_of(ref))
    names = list(cand.tensors)
    have = set(names)
    per_call = {
        p
        for p, calls in by_path.items()
        if len(calls) > 1 and (f"{p}.0" in have or any(n.startswith(f"{p}#") for n in names))
    }
    matches: dict[str, NameMatch] = {}
    proposals: dict[str, list[tuple[int, str, str]]] = {}
    shown = {n: cand.origin.get(n, n) for n in names}  # as the dump names them
    via = {n: (f"renamed to {n} by the name options; " if shown[n] != n else "") for n in names}
    for n in names:
        if n in ref.tensors:
            matches[n] = NameMatch(shown[n], n, via[n] + "exact")
            continue
        g, how, depth = _resolve(n, cand, ref, by_path, per_call)
        if g is None:
            matches[n] = NameMatch(shown[n], None, via[n] + how)
        else:
            proposals.setdefault(g, []).append((depth, n, via[n] + how))
    for g, props in proposals.items():
        props.sort(key=lambda t: -t[0])
        for i, (_, n, how) in enumerate(props):
            if g in have:
                matches[n] = NameMatch(
                    shown[n], None, f"{how}: the same tensor as {g}, compared under that name"
                )
            elif i == 0:
                matches[n] = NameMatch(shown[n], g, how)
            else:
                matches[n] = NameMatch(
                    shown[n], None, f"{how}: the same tensor as {shown[props[0][1]]!r}, compared once"
                )
    if not proposals and not any("ignored: " in m.how for m in matches.values()):
        return cand, [matches[n] for n in names]
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    stored: dict[str, str] = {}
    for n in names:
        m = matches[n]
        if m.golden is None and ("ignored: " in m.how or "the same tensor as" in m.how):
            continue
        new = m.golden if m.golden is not None else n
        if new in tensors:  # an unmatched name that collides with a matched one: keep the match
            continue
        tensors[new], dtypes[new] = cand.tensors[n], cand.dtypes[n]
        stored[new] = cand.stored.get(n, cand.dtypes[n])
    out = Candidate(
        cand.path, cand.format, tensors, dtypes, cand.manifest, stored, list(cand.notes), dict(cand.origin)
    )
    twice = sorted(
        p
        for p, calls in by_path.items()
        if len(calls) > 1
        and calls[0] is not None
        and p not in per_call
        and p in have
        and calls[0][0] not in have
    )
    if twice:
        out.notes.append(
            f"{len(twice)} module(s) run more than once per forward (e.g. {twice[0]}); the dump holds their last "
            "call only: save each call as name.0, name.1 (or name#0, name#1) to compare the earlier ones too"
        )
    n_hook = sum(1 for m in matches.values() if m.golden is not None and m.how != "exact")
    if n_hook:
        out.notes.append(
            f"hook names: {n_hook} candidate tensors matched by module output (see --explain-names)"
        )
    return out, [matches[n] for n in names]
