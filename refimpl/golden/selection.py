"""Which tensors a golden file keeps: the ``--select`` presets and globs, and the test of a
name against a selection.

A selection read from a file is bounded before anything is compiled (`check_selection`:
at most ``MAX_SELECTION_TERMS`` terms and ``MAX_SELECTION_CHARS`` characters of regular
expressions in all) and compiled once."""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "PRESETS",
    "SelectionError",
    "MAX_SELECTION_TERMS",
    "MAX_SELECTION_CHARS",
    "selection_spec",
    "check_selection",
    "matching_terms",
    "wants_attentions",
    "is_selected",
]


class SelectionError(ValueError):
    """A ``select`` value kept no tensor of the forward pass (so nothing is written)."""


#: the most ``--select`` values (terms) a selection may hold.
MAX_SELECTION_TERMS = 64
#: the most characters of regular expressions (includes and excludes together) in a selection;
#: the presets together use under 1,000.
MAX_SELECTION_CHARS = 65536

_ATTENTION_SHAPED = (
    r"(.*\.)?[^.@]*(scores|probs)[^.@]*(@\w+)?",  # traced attention scores / probabilities
    r"outputs\.[^.]*attentions\..*",  # outputs.attentions.i, outputs.cross_encoder_attentions.i, ...
)
_BLOCKS = (
    r"(.*\.)?(embeddings|layout_embeddings)(\.LayerNorm)?",  # text and layout embedding outputs
    r"(.*\.)?embeddings\.position_ids",  # the position ids the embeddings computed
    r"(.*\.)?visn_fc",  # LXMERT's visual feature embedding
    r"(.*\.)?(layer|layers|r_layers)\.\d+(\.layout|\.output)?",  # each layer's output(s)
    r"(.*\.)?x_layers\.\d+\.(lang_output|visn_output)",  # LXMERT's cross layers, both streams
    r"(.*\.)?pooler",
    r"(classifier|qa_outputs|answer_head|cls\.predictions|cls\.seq_relationship|loss)(\..*)?",  # heads
    r"dropout",  # the original LiLT heads' joined streams [text; layout]
    r"extractor\.((entity_emb|ffnn_head|ffnn_tail|rel_classifier)@doc\d+(_head|_tail)?|loss_fct)",  # its RE decoder
    r"outputs\..*",
)

#: output fields that hold attention probabilities (``outputs.<field>.<i>``).
_ATTENTION_FIELDS = (
    "attentions",
    "layout_attentions",
    "language_attentions",
    "vision_attentions",
    "cross_encoder_attentions",
    "cross_encoder_vision_attentions",
    "cross_encoder_language_self_attentions",
    "cross_encoder_vision_self_attentions",
)

#: ``--select`` presets: (include, exclude) regular expressions over tensor names.
PRESETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "all": ((r".*",), ()),
    "modules": ((r".*",), _ATTENTION_SHAPED),
    "blocks": (_BLOCKS, _ATTENTION_SHAPED),
}


def selection_spec(select: str | Sequence[str] | None = None) -> dict[str, Any]:
    """The manifest's ``selection`` object for ``--select`` values.

    Args:
        select: preset names (``"all"``, ``"modules"``, ``"blocks"``) and/or glob patterns over
            tensor names (``"*.attention.self.query"``, ``fnmatch`` syntax: ``*`` also matches
            dots); ``None`` or empty means ``"all"``. A name is kept when any value selects it;
            inputs are always kept (they carry the masks).

    Returns:
        ``{"select": [values], "terms": [{"include": [regex], "exclude": [regex]}, ...]}``.

    Raises:
        ValueError: an empty value, a glob with an unclosed ``[`` (tensor names never hold a
            ``[``, so it is a typo, not a literal), or over the bounds of `check_selection`.
    """
    values = [select] if isinstance(select, str) else list(select or ["all"])
    if len(values) > MAX_SELECTION_TERMS:
        raise ValueError(f"{len(values)} selections exceed the limit of {MAX_SELECTION_TERMS}")
    terms = []
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"select[{i}]: expected a preset ({', '.join(PRESETS)}) or a glob, got {v!r}")
        if v not in PRESETS and _unclosed_bracket(v):
            raise ValueError(
                f"{v!r} is not a valid glob: a '[' is not closed by ']' (use [[] for a literal '[')"
            )
        if v in PRESETS:
            inc, exc = PRESETS[v]
            terms.append({"include": list(inc), "exclude": list(exc)})
        else:
            terms.append({"include": [fnmatch.translate(v)], "exclude": []})
    spec = {"select": values, "terms": terms}
    check_selection(spec, "selection")
    return spec


def _unclosed_bracket(glob: str) -> bool:
    """Whether ``glob`` has a ``[`` that ``fnmatch`` would read as a literal for want of ``]``."""
    i, n = 0, len(glob)
    while i < n:
        if glob[i] == "[":
            j = i + 1
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                return True
            i = j
        i += 1
    return False


def check_selection(spec: Any, what: str) -> None:
    """Bound a selection object (from ``--select`` or a file's manifest) before it is compiled.

    Args:
        spec: ``{"select": [...], "terms": [{"include": [regex], "exclude": [regex]}, ...]}``.
        what: names the source in messages (a path and field, or ``--select``).

    Raises:
        ValueError: more than ``MAX_SELECTION_TERMS`` terms, more than
            ``MAX_SELECTION_CHARS`` characters of regular expressions, a malformed term or
            an invalid regular expression (compiled once here; the compiled form is cached).
    """
    terms = spec.get("terms") if isinstance(spec, dict) else None
    if not isinstance(terms, list):
        raise ValueError(f"{what}.terms must be a list")
    if len(terms) > MAX_SELECTION_TERMS:
        raise ValueError(f"{what}: {len(terms)} terms exceed the limit of {MAX_SELECTION_TERMS}")
    chars = 0
    for i, t in enumerate(terms):
        if not isinstance(t, dict):
            raise ValueError(f"{what}.terms[{i}] must be an object")
        for k in ("include", "exclude"):
            rx = t.get(k)
            if not isinstance(rx, list) or not all(isinstance(r, str) for r in rx):
                raise ValueError(f"{what}.terms[{i}].{k} must be a list of strings")
            chars += sum(len(r) for r in rx)
            if chars > MAX_SELECTION_CHARS:
                raise ValueError(
                    f"{what}: the patterns exceed the limit of {MAX_SELECTION_CHARS} characters in all "
                    f"(at terms[{i}].{k})"
                )
    for i, t in enumerate(terms):
        for k in ("include", "exclude"):
            try:
                re.compile("|".join(f"(?:{r})" for r in t[k]) or "(?!)")
            except re.error as e:
                raise ValueError(f"{what}.terms[{i}].{k} holds an invalid regular expression: {e}") from None
            except RecursionError:
                raise ValueError(
                    f"{what}.terms[{i}].{k} holds a regular expression nested too deeply"
                ) from None
    _compiled(_key(spec))  # compiled once (cached)


def _key(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec.get("terms"), sort_keys=True)


@functools.lru_cache(maxsize=64)
def _compiled(terms_json: str) -> list[tuple[re.Pattern, re.Pattern | None]]:
    out = []
    for term in json.loads(terms_json):
        inc = re.compile("|".join(f"(?:{r})" for r in term["include"]) or "(?!)")
        exc = re.compile("|".join(f"(?:{r})" for r in term["exclude"])) if term["exclude"] else None
        out.append((inc, exc))
    return out


def _as_selected(name: str) -> tuple[str, ...]:
    """The names a selection is tried on for ``name``: a gradient ``grad.<x>`` is kept where
    ``grad.<x>`` or ``<x>`` is (so a preset keeps the gradients of the tensors it keeps, and a
    glob such as ``grad.*`` keeps gradients alone)."""
    return (name, name[5:]) if name.startswith("grad.") else (name,)


def matching_terms(selection: Mapping[str, Any], name: str) -> list[int]:
    """Indices of the selection's terms that keep ``name`` (`selection_spec` order), so a
    writer can tell a ``--select`` value that matched nothing."""
    return [
        i
        for i, (inc, exc) in enumerate(_compiled(_key(selection)))
        if any(inc.fullmatch(n) and not (exc is not None and exc.fullmatch(n)) for n in _as_selected(name))
    ]


def wants_attentions(selection: Mapping[str, Any]) -> bool:
    """Whether a selection (`selection_spec`) keeps any attention output
    (``outputs.attentions.<i>`` and LXMERT's kinds): if not, the forward runs without them."""
    return any(is_selected(selection, f"outputs.{f}.0") for f in _ATTENTION_FIELDS)


def is_selected(manifest: Mapping[str, Any], name: str) -> bool:
    """Whether ``name`` is inside a golden file's selection (so its absence would be a bug,
    not a choice). A manifest without ``selection`` (format version 1, or a plain file)
    selects everything; inputs and the upstream gradients ``upstream.*`` (needed to rebuild
    ``L``) are always selected; a gradient ``grad.<x>`` is selected where ``grad.<x>`` or
    ``<x>`` is.

    Args:
        manifest: a golden file's manifest (``Golden.manifest``) or a selection object
            (`selection_spec`).
        name: a tensor name.
    """
    spec = manifest.get("selection", manifest if "terms" in manifest else None)
    if not spec or name.startswith(("inputs.", "upstream.")):
        return True
    for inc, exc in _compiled(_key(spec)):
        for n in _as_selected(name):
            if inc.fullmatch(n) and not (exc is not None and exc.fullmatch(n)):
                return True
    return False
