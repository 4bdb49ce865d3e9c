"""Which tensors a golden file keeps: the ``--select`` presets and globs, and the test of a
name against a selection."""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PRESETS", "selection_spec", "wants_attentions", "is_selected"]

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
        ValueError: an empty value.
    """
    values = [select] if isinstance(select, str) else list(select or ["all"])
    terms = []
    for i, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"select[{i}]: expected a preset ({', '.join(PRESETS)}) or a glob, got {v!r}")
        if v in PRESETS:
            inc, exc = PRESETS[v]
            terms.append({"include": list(inc), "exclude": list(exc)})
        else:
            terms.append({"include": [fnmatch.translate(v)], "exclude": []})
    return {"select": values, "terms": terms}


@functools.lru_cache(maxsize=64)
def _compiled(spec_json: str) -> list[tuple[re.Pattern, re.Pattern | None]]:
    out = []
    for term in json.loads(spec_json)["terms"]:
        inc = re.compile("|".join(f"(?:{r})" for r in term["include"]) or "(?!)")
        exc = re.compile("|".join(f"(?:{r})" for r in term["exclude"])) if term["exclude"] else None
        out.append((inc, exc))
    return out


def wants_attentions(selection: Mapping[str, Any]) -> bool:
    """Whether a selection (`selection_spec`) keeps any attention output
    (``outputs.attentions.<i>`` and LXMERT's kinds): if not, the forward runs without them."""
    return any(is_selected(selection, f"outputs.{f}.0") for f in _ATTENTION_FIELDS)


def is_selected(manifest: Mapping[str, Any], name: str) -> bool:
    """Whether ``name`` is inside a golden file's selection (so its absence would be a bug,
    not a choice). A manifest without ``selection`` (format version 1, or a plain file)
    selects everything; inputs are always selected.

    Args:
        manifest: a golden file's manifest (``Golden.manifest``) or a selection object
            (`selection_spec`).
        name: a tensor name.
    """
    spec = manifest.get("selection", manifest if "terms" in manifest else None)
    if not spec or name.startswith("inputs."):
        return True
    for inc, exc in _compiled(json.dumps(spec, sort_keys=True)):
        if inc.fullmatch(name) and not (exc is not None and exc.fullmatch(name)):
            return True
    return False
