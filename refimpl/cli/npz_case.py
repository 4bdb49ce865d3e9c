"""The members an ``.npz`` case (``refimpl golden --inputs case.npz``) may hold, and their
checks before any work.

An ``.npz`` case holds arrays named as the forward keywords. Besides the model inputs it may
carry every label the oracle accepts (`NPZ_LABELS`, per architecture): ``labels``,
``start_positions``, ``end_positions``, ``masked_lm_labels``, ``matched_label``, ``ans``,
LXMERT's ``obj_labels.<kind>`` and ``obj_labels.<kind>.weights`` for kind in obj, attr, feat,
and LiLT's ``head_mask``. Each is checked here against the checkpoint's config (shape, dtype,
range), naming the member, the first bad position and the allowed range; the model checks
them again when it runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import check_head_mask, first_bad
from ..lilt.modeling import MODEL_INPUTS as LILT_INPUTS
from ..lxmert.heads import visual_losses
from ..lxmert.modeling_backward import MODEL_INPUTS as LXMERT_INPUTS
from .common import CliError

__all__ = ["NPZ_INPUTS", "NPZ_LABELS", "check_npz_case"]

#: model inputs an ``.npz`` case may hold, per model type: each family's model keywords (LXMERT
#: has no ``head_mask``: transformers' LxmertModel takes none).
NPZ_INPUTS = {"lilt": LILT_INPUTS, "lxmert": LXMERT_INPUTS}
_OBJ = tuple(f"obj_labels.{k}{w}" for k in ("obj", "attr", "feat") for w in ("", ".weights"))
#: labels an ``.npz`` case may hold, per architecture (the oracle's keyword names).
NPZ_LABELS = {
    "LiltModel": (),
    "LiltForTokenClassification": ("labels",),
    "LiltForSequenceClassification": ("labels",),
    "LiltForQuestionAnswering": ("start_positions", "end_positions"),
    "LxmertModel": (),
    "LxmertForPreTraining": ("labels", "masked_lm_labels", "matched_label", "ans", *_OBJ),
    "LxmertForQuestionAnswering": ("labels",),
}


def _where(path: str, member: str) -> str:
    return f"inputs file {path}: member {member!r}"


def _shape(a: np.ndarray) -> list[int]:
    return [int(d) for d in a.shape]


def _need_shape(a: np.ndarray, want: list[int], path: str, member: str, what: str) -> None:
    if _shape(a) != want:
        raise CliError(f"{_where(path, member)} has shape {_shape(a)}; expected {what} = {want}")


def _need_kind(a: np.ndarray, kinds: str, path: str, member: str, what: str) -> None:
    if a.dtype.kind not in kinds:
        raise CliError(f"{_where(path, member)} must hold {what}, got dtype {a.dtype}")


def _class_ids(a: np.ndarray, n: int, path: str, member: str, count: str) -> None:
    """Integer ids in ``[0, n - 1]`` or -100 (ignored), naming the first bad position."""
    _need_kind(a, "iu", path, member, "integers (class ids, -100 to ignore)")
    bad = (a != -100) & ((a < 0) | (a >= n))
    if bool(bad.any()):
        pos = first_bad(bad)
        raise CliError(
            f"{_where(path, member)}[{', '.join(map(str, pos))}] = {int(a[pos])} is outside the allowed range "
            f"[0, {n - 1}] ({count} = {n}), or -100 to ignore the position"
        )


def _finite(a: np.ndarray, path: str, member: str) -> None:
    _need_kind(a, "fiu", path, member, "real numbers")
    ok = np.isfinite(a)
    if not bool(ok.all()):
        pos = first_bad(~ok)
        raise CliError(
            f"{_where(path, member)}[{', '.join(map(str, pos))}] = {a[pos]} is not finite; allowed: finite numbers"
        )


def _sizes(arrays: dict[str, np.ndarray]) -> tuple[int | None, int | None, int | None]:
    """(batch, seq, boxes) from the model inputs (``None`` where absent)."""
    text = arrays.get("input_ids", arrays.get("inputs_embeds"))
    b = s = n_box = None
    if text is not None and text.ndim >= 2:
        b, s = int(text.shape[0]), int(text.shape[1])
    feats = arrays.get("visual_feats")
    if feats is not None and feats.ndim == 3:
        n_box = int(feats.shape[1])
        b = b if b is not None else int(feats.shape[0])
    return b, s, n_box


def _lilt_labels(arrays, config, architecture, path, b, s) -> None:
    n = int(config.num_labels)
    if architecture == "LiltForTokenClassification" and "labels" in arrays:
        a = arrays["labels"]
        _need_shape(a, [b, s], path, "labels", "[batch, seq]")
        _class_ids(a, n, path, "labels", "config num_labels")
    if architecture == "LiltForSequenceClassification" and "labels" in arrays:
        a = arrays["labels"]
        problem = config.problem_type or (
            "regression"
            if n == 1
            else "single_label_classification"
            if a.dtype.kind in "iu"
            else "multi_label_classification"
        )
        if problem == "single_label_classification":
            _need_shape(a, [b], path, "labels", "[batch]")
            _class_ids(a, n, path, "labels", "config num_labels")
        elif problem == "multi_label_classification":
            _need_shape(a, [b, n], path, "labels", "[batch, num_labels] (multi-label targets)")
            _finite(a, path, "labels")
        else:  # regression: [batch] or [batch, num_labels]
            if _shape(a) not in ([b], [b, n]):
                _need_shape(a, [b] if n == 1 else [b, n], path, "labels", "[batch] (regression targets)")
            _finite(a, path, "labels")
    if architecture == "LiltForQuestionAnswering":
        for m in ("start_positions", "end_positions"):
            if m in arrays:  # any integer: the oracle clamps to [0, seq] and ignores seq
                _need_kind(arrays[m], "iu", path, m, "integers (token positions)")
                _need_shape(arrays[m], [b], path, m, "[batch]")
    if "head_mask" in arrays:
        a = arrays["head_mask"]
        _finite(a, path, "head_mask")
        try:
            check_head_mask(a, config.num_hidden_layers, config.num_attention_heads, b, s)
        except ValueError as e:
            raise CliError(f"inputs file {path}: member {e}") from None


def _lxmert_labels(arrays, config, architecture, path, b, s, n_box) -> None:
    if architecture == "LxmertForQuestionAnswering" and "labels" in arrays:
        _need_shape(arrays["labels"], [b], path, "labels", "[batch] (answer ids)")
        _class_ids(arrays["labels"], int(config.num_qa_labels), path, "labels", "config num_qa_labels")
        return
    if architecture != "LxmertForPreTraining":
        return
    for m in ("labels", "masked_lm_labels"):
        if m in arrays:
            _need_shape(arrays[m], [b, s], path, m, "[batch, seq] (masked-LM targets)")
            _class_ids(arrays[m], int(config.vocab_size), path, m, "config vocab_size")
    for m, n, count in (
        ("matched_label", 2, "classes: 0 mismatched, 1 matched"),
        ("ans", int(config.num_qa_labels), "config num_qa_labels"),
    ):
        if m in arrays:
            _need_shape(arrays[m], [b], path, m, "[batch]")
            _class_ids(arrays[m], n, path, m, count)
    given = {
        k
        for k in ("obj", "attr", "feat")
        if f"obj_labels.{k}" in arrays or f"obj_labels.{k}.weights" in arrays
    }
    if not given or n_box is None:
        return  # (without visual_feats the model names what is missing)
    enabled = visual_losses(config)
    extra = sorted(given - set(enabled))
    if extra:
        raise CliError(
            f"{_where(path, 'obj_labels.' + extra[0])}: the config has no visual_{extra[0]}_loss "
            f"(its visual losses: {', '.join(enabled) or 'none'})"
        )
    for kind, info in enabled.items():
        t, w = f"obj_labels.{kind}", f"obj_labels.{kind}.weights"
        for m in (t, w):
            if m not in arrays:
                raise CliError(
                    f"inputs file {path}: obj_labels given without member {m!r}: the oracle needs targets and "
                    f"weights of every visual loss the config has ({', '.join(enabled)})"
                )
        if info["loss"] == "visual_ce":
            _need_shape(arrays[t], [b, n_box], path, t, "[batch, boxes] (class ids)")
            count = "config num_object_labels" if kind == "obj" else "config num_attr_labels"
            _class_ids(arrays[t], int(info["num"]), path, t, count)
        else:
            _need_shape(arrays[t], [b, n_box, int(info["num"])], path, t, "[batch, boxes, visual_feat_dim]")
            _finite(arrays[t], path, t)
        _need_shape(arrays[w], [b, n_box], path, w, "[batch, boxes] (per-box weights)")
        _finite(arrays[w], path, w)


def check_npz_case(arrays: dict[str, np.ndarray], config: Any, architecture: str | None, path: str) -> None:
    """Check an ``.npz`` case's member names and its labels before any work.

    Args:
        arrays: member -> array (``input_ids [batch, seq]``, ``labels``, ``obj_labels.obj
            [batch, boxes]``, ``obj_labels.feat [batch, boxes, visual_feat_dim]``...).
        config: the checkpoint's config (``None``: nothing is checked).
        architecture: the checkpoint's class; members are checked for the classes in
            `NPZ_LABELS` (others, such as the original LiLT heads, are left to the model).
        path: the file, named in messages.

    Raises:
        CliError: an unknown member (listing the accepted ones), or a label of the wrong
            shape or dtype or out of range, naming the member, the first bad position and the
            allowed range.
    """
    model_type = getattr(config, "model_type", None)
    if config is None or architecture not in NPZ_LABELS or model_type not in NPZ_INPUTS:
        return
    if model_type == "lxmert" and "head_mask" in arrays:
        raise CliError(
            f"{_where(path, 'head_mask')}: LXMERT takes no head mask (transformers' LxmertModel has none); leave it out"
        )
    known = (*NPZ_INPUTS[model_type], *NPZ_LABELS[architecture])
    unknown = [k for k in arrays if k not in known]
    if unknown:
        raise CliError(
            f"{_where(path, unknown[0])} is not an input of {architecture}; an .npz case may hold "
            f"{', '.join(known)}"
        )
    b, s, n_box = _sizes(arrays)
    if b is None:
        return  # the model names the missing input
    if model_type == "lilt":
        _lilt_labels(arrays, config, architecture, path, b, s)
    else:
        _lxmert_labels(arrays, config, architecture, path, b, s, n_box)
