"""Matching a candidate to the reference: `NameMap` renames candidate tensors, `name_hint`
finds a systematic naming difference, `models_differ` notes two different models."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..files import MAX_JSON_BYTES, read_json
from .candidates import Candidate
from .errors import CompareError

__all__ = ["NameMap", "name_hint", "models_differ"]


@dataclass
class NameMap:
    """Renames candidate tensors to reference names, without rewriting the dump.

    Applied in this order: an explicit ``mapping`` (candidate name -> reference name, e.g. from
    a JSON file) wins; otherwise ``/`` becomes ``.`` (``slash_to_dot``), then ``strip_prefix``
    and ``strip_suffix`` are removed, then ``add_prefix`` and ``add_suffix`` are added.
    """

    add_prefix: str = ""
    strip_prefix: str = ""
    add_suffix: str = ""
    strip_suffix: str = ""
    slash_to_dot: bool = False
    mapping: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: str | os.PathLike, **kw: Any) -> NameMap:
        """A map read from a JSON object ``{"candidate name": "reference name", ...}``, through
        the project's strict JSON reader (`refimpl.files.read_json`: UTF-8, no duplicate
        keys, bounded size and depth, the file named in every message)."""
        p = os.fspath(path)
        if not os.path.lexists(p):
            raise CompareError(f"name map file not found: {p}")
        try:
            m = read_json(p, f"name map {p}", max_bytes=MAX_JSON_BYTES)
        except (ValueError, OSError) as e:
            raise CompareError(str(e) if str(e).startswith("name map") else f"name map {p}: {e}") from None
        if not isinstance(m, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in m.items()
        ):
            raise CompareError(
                f"name map {p} must be a JSON object of strings (candidate name -> reference name)"
            )
        return cls(mapping=m, **kw)

    def __bool__(self) -> bool:
        return bool(
            self.add_prefix
            or self.strip_prefix
            or self.add_suffix
            or self.strip_suffix
            or self.slash_to_dot
            or self.mapping
        )

    def __call__(self, name: str, keep: set[str] | frozenset[str] = frozenset()) -> str:
        """The reference name for candidate ``name``: ``mapping`` wins; otherwise ``/`` -> ``.``,
        the prefix and suffix stripped, and the prefix and suffix added unless the name is then
        already one of ``keep`` (a reference name)."""
        if name in self.mapping:
            return self.mapping[name]
        if self.slash_to_dot:
            name = name.replace("/", ".")
        if self.strip_prefix and name.startswith(self.strip_prefix):
            name = name[len(self.strip_prefix) :]
        if self.strip_suffix and name.endswith(self.strip_suffix):
            name = name[: -len(self.strip_suffix)]
        if name in keep:
            return name
        return self.add_prefix + name + self.add_suffix

    def apply(self, cand: Candidate, keep: set[str] | frozenset[str] = frozenset()) -> Candidate:
        """``cand`` with every tensor renamed; two tensors mapped to one name is an error.

        Names in ``keep`` (the names the reference can match: its golden names and its
        modules' hook names) stay as they are unless ``mapping`` names them, and a name that
        becomes one of them once stripped gets no prefix or suffix added: ``--add-prefix
        lilt.`` leaves ``inputs.*``, ``outputs.*`` and head names such as ``classifier`` alone.
        """
        if not self:
            return cand
        tensors: dict[str, np.ndarray] = {}
        dtypes: dict[str, str] = {}
        stored: dict[str, str] = {}
        origin: dict[str, str] = {}
        for k, v in cand.tensors.items():
            n = k if (k in keep and k not in self.mapping) else self(k, keep)
            if n in tensors:
                raise CompareError(f"name map sends both {origin[n]!r} and {k!r} to {n!r}")
            tensors[n], dtypes[n], origin[n] = v, cand.dtypes[k], cand.origin.get(k, k)
            stored[n] = cand.stored.get(k, cand.dtypes[k])
        renamed = {n: o for n, o in origin.items() if n != o}
        return Candidate(
            cand.path, cand.format, tensors, dtypes, cand.manifest, stored, list(cand.notes), renamed
        )


def _best_affix(unmatched: list[str], ref: set[str]) -> tuple[int, str, str] | None:
    """The affix edit that maps the most unmatched candidate names onto reference names:
    ``(count, kind, affix)`` with kind one of add_prefix/strip_prefix/add_suffix/strip_suffix."""
    guesses: Counter[tuple[str, str]] = Counter()
    refs = list(ref)
    for c in unmatched[:24]:
        for r in refs:
            if len(r) > len(c):
                if r.endswith(c):
                    guesses[("add_prefix", r[: len(r) - len(c)])] += 1
                if r.startswith(c):
                    guesses[("add_suffix", r[len(c) :])] += 1
            elif len(c) > len(r):
                if c.endswith(r):
                    guesses[("strip_prefix", c[: len(c) - len(r)])] += 1
                if c.startswith(r):
                    guesses[("strip_suffix", c[len(r) :])] += 1
    best = None
    for kind, affix in [g for g, _ in guesses.most_common(16)]:
        nm = NameMap(**{kind: affix})
        n = sum(nm(c) in ref for c in unmatched)
        if best is None or n > best[0]:
            best = (n, kind, affix)
    return best


_AFFIX_WORDS = {
    "add_prefix": ("without the prefix", "--add-prefix"),
    "strip_prefix": ("with an extra prefix", "--strip-prefix"),
    "add_suffix": ("without the suffix", "--add-suffix"),
    "strip_suffix": ("with an extra suffix", "--strip-suffix"),
}


def name_hint(reference: list[str] | set[str], candidate: list[str]) -> str | None:
    """One line describing a systematic naming difference, with the option that fixes it.

    Looks at the candidate names that are not reference names for ``/`` used for ``.``, a
    missing or extra prefix, or a missing or extra suffix (and ``/`` plus an affix). Returns
    ``None`` when nothing explains at least half of them.
    """
    ref = set(reference)
    unmatched = [c for c in candidate if c not in ref]
    if not unmatched:
        return None
    need = max(1, (len(unmatched) + 1) // 2)
    slashed = [c.replace("/", ".") for c in unmatched]
    n_slash = sum(s in ref for s in slashed)
    best = _best_affix(unmatched, ref)
    if "/" in "".join(unmatched):
        best_s = _best_affix([s for s in slashed if s not in ref], ref)
        if best_s and best_s[0] > 0 and n_slash + best_s[0] >= need and (not best or best[0] < need):
            words, opt = _AFFIX_WORDS[best_s[1]]
            return (
                f"candidate names use '/' where the reference uses '.', and look like reference names "
                f"{words} {best_s[2]!r}: use --slash-to-dot {opt} {best_s[2]}"
            )
    if n_slash >= need and (not best or n_slash >= best[0]):
        return "candidate names use '/' where the reference uses '.': use --slash-to-dot"
    if best and best[0] >= need:
        words, opt = _AFFIX_WORDS[best[1]]
        return (
            f"candidate names look like reference names {words} {best[2]!r} ({best[0]} of "
            f"{len(unmatched)} unmatched names fit): use {opt} {best[2]}"
        )
    return None


def models_differ(ref_manifest: Mapping[str, Any], cand_manifest: Mapping[str, Any]) -> str | None:
    """One line when two manifests describe different models (architecture or config), else ``None``."""
    if not cand_manifest or not ref_manifest:
        return None
    ra, ca = ref_manifest.get("architecture"), cand_manifest.get("architecture")
    rc, cc = ref_manifest.get("config") or {}, cand_manifest.get("config") or {}
    diffs = []
    if ra != ca:
        diffs.append(f"architecture {ra} vs {ca}")
    keys = sorted(
        k for k in set(rc) | set(cc) if k not in ("transformers_version", "_name_or_path", "torch_dtype")
    )
    changed = [k for k in keys if rc.get(k) != cc.get(k)]
    for k in changed[:4]:
        diffs.append(f"{k} {rc.get(k)!r} vs {cc.get(k)!r}")
    if len(changed) > 4:
        diffs.append(f"... {len(changed) - 4} more config keys")
    if not diffs:
        return None
    return "DIFFERENT MODELS: reference and candidate manifests differ: " + ", ".join(diffs)
