"""Merge checkpoints into a LiLT one: a RoBERTa-like text model plus a layout-only LiLT checkpoint
(``refimpl fuse-lilt``).

This is the recipe of the original LiLT repository (github.com/jpWang/LiLT,
``gen_weight_roberta_like.py``), which makes e.g. ``lilt-roberta-en-base`` or
``lilt-infoxlm-base`` out of ``roberta-base`` / ``infoxlm-base`` and ``lilt-only-base``:

1. config: the text model's ``config.json`` plus ``channel_shrink_ratio`` and
   ``max_2d_position_embeddings`` (the original hard-codes 4 and 1024; we take them from the
   layout checkpoint's config when it has one, else those values), ``model_type`` set;
2. text weights: every key with ``roberta.`` renamed to ``lilt.`` (``k.replace("roberta.", "lilt.")``);
3. merge: ``{**text, **layout}``: the layout checkpoint's weights win where keys clash.

Differences from the original, so that the result loads strictly (refimpl) and in
transformers 4.56.2 without warnings:

* ``model_type`` is ``"lilt"`` (transformers' name; the original wrote ``"liltrobertalike"``
  for its own code) and ``architectures`` is ``["LiltModel"]``;
* a text checkpoint saved from a bare ``RobertaModel`` has unprefixed keys: they get ``lilt.``;
  a layout checkpoint saved unprefixed (from a base ``LiltModel``) gets ``lilt.`` too;
* keys of the text model's own heads (``lm_head.*``, ``classifier.*``: anything not under
  ``roberta.`` in a prefixed checkpoint) and ``position_ids`` buffers are dropped and listed;
* the result is ``model.safetensors`` (float dtypes kept), not ``pytorch_model.bin``; the text
  checkpoint's tokenizer files are copied beside it.

No torch is needed: weights are read and written through `refimpl.checkpoints`
(safetensors, or a ``pytorch_model.bin`` through its restricted unpickler), bit for bit.

Nothing a user has is lost: the output directory may not be (or hold a hardlink or symlink
to) a file of either input checkpoint, an existing file is replaced only with ``force``, and
every output file is written to a temp file first; only when all are complete are they
renamed into place, ``config.json`` last (`refimpl.files.StagedFiles`). A full disk or a
kill leaves the directory as it was.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import checkpoints
from ..checkpoints.safetensors import write_safetensors
from ..config import LiltConfig, read_config_json
from ..files import DestinationError, StagedFiles, check_destination, input_identities, open_regular
from .modeling import LiltModel

__all__ = ["fuse_lilt", "FuseReport", "TOKENIZER_FILES"]

#: files copied from the text checkpoint when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)

#: the original recipe's values, used when the layout checkpoint has no config.json.
DEFAULT_CHANNEL_SHRINK_RATIO = 4
DEFAULT_MAX_2D_POSITION_EMBEDDINGS = 1024


@dataclass
class FuseReport:
    """What `fuse_lilt` did: key counts, clashes won by the layout, dropped keys."""

    out_dir: str
    n_text: int = 0
    n_layout: int = 0
    n_fused: int = 0
    layout_won: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the command line: counts, clashes the layout won, dropped keys."""
        lines = [
            f"wrote {self.out_dir}: {self.n_fused} tensors "
            f"({self.n_text} from the text model, {self.n_layout} from the layout model)"
        ]
        if self.layout_won:
            lines.append(
                f"  layout weights replaced {len(self.layout_won)} text weights: {', '.join(self.layout_won[:5])}"
            )
        if self.dropped:
            lines.append(
                f"  dropped {len(self.dropped)} text-model keys that are not LiLT weights: {', '.join(self.dropped[:5])}"
            )
        if self.copied:
            lines.append(f"  tokenizer files copied: {', '.join(self.copied)}")
        return "\n".join(lines)


def _read_config(path: str) -> dict[str, Any] | None:
    """The checkpoint's ``config.json`` read strictly (`refimpl.config.read_config_json`), or None."""
    d = path if os.path.isdir(path) else os.path.dirname(path)
    p = os.path.join(d, "config.json")
    if not os.path.lexists(p):
        return None
    return read_config_json(p)


def _destinations(
    text: str, layout: str, out: str, copy_tokenizer: bool, force: bool
) -> tuple[dict[str, str], dict[tuple[int, int], str]]:
    """The files to write (name -> path), each checked before any work
    (`refimpl.files.check_destination`); and the inputs' identities."""
    inputs = input_identities(
        [text, layout, *checkpoints.weight_files(text), *checkpoints.weight_files(layout)]
    )
    if os.path.lexists(out):
        try:
            st = os.stat(out)
        except OSError:
            raise DestinationError(f"--out {out}: is a dangling symlink") from None
        if (st.st_dev, st.st_ino) in inputs:
            raise DestinationError(
                f"--out {out}: is the input checkpoint directory {inputs[(st.st_dev, st.st_ino)]}; refusing to "
                "overwrite an input (--force does not change this)"
            )
        if not os.path.isdir(out):
            raise DestinationError(f"--out {out}: is not a directory")
    names = ["model.safetensors"]
    if copy_tokenizer and os.path.isdir(text):
        names += [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(text, n))]
    names.append("config.json")  # last: a directory with a config is complete
    dests = {
        n: check_destination(
            os.path.join(out, n), inputs, force=force, what="--out file", kind="a file fuse-lilt may replace"
        )
        for n in names
    }
    return dests, inputs


def fuse_lilt(
    text: str | os.PathLike,
    layout: str | os.PathLike,
    out: str | os.PathLike,
    copy_tokenizer: bool = True,
    validate: bool = True,
    force: bool = False,
) -> FuseReport:
    """Fuse a RoBERTa-like text checkpoint with a layout-only LiLT checkpoint into ``out``.

    Args:
        text: text checkpoint dir (``config.json`` + weights with ``roberta.`` keys, or a bare
            ``RobertaModel`` save).
        layout: LiLT layout checkpoint dir (``lilt.layout_embeddings.*``,
            ``lilt.encoder.layer.N.attention.self.layout_*``, ... ; ``config.json`` optional).
        out: output dir: ``config.json``, ``model.safetensors`` and the tokenizer files.
        copy_tokenizer: copy the text checkpoint's tokenizer files.
        validate: check the fused keys and shapes against ``refimpl.lilt.LiltModel`` and raise
            listing every missing or misshaped key.
        force: replace files that already exist in ``out``.

    Returns:
        a `FuseReport`.

    Raises:
        refimpl.files.DestinationError: before any work: ``out`` is (or holds a link to a file
            of) an input checkpoint, is not a directory, or holds an output file already and
            ``force`` is not given.
    """
    text, layout, out = os.fspath(text), os.fspath(layout), os.fspath(out)
    dests, inputs = _destinations(text, layout, out, copy_tokenizer, force)
    text_cfg = _read_config(text)
    if text_cfg is None:
        raise FileNotFoundError(f"no config.json in the text checkpoint {text}")
    layout_cfg = _read_config(layout) or {}

    config = dict(text_cfg)
    config["channel_shrink_ratio"] = layout_cfg.get("channel_shrink_ratio", DEFAULT_CHANNEL_SHRINK_RATIO)
    config["max_2d_position_embeddings"] = layout_cfg.get(
        "max_2d_position_embeddings", DEFAULT_MAX_2D_POSITION_EMBEDDINGS
    )
    config["model_type"] = "lilt"
    config["architectures"] = ["LiltModel"]

    report = FuseReport(out)
    text_sd = dict(checkpoints.load_raw_state_dict(text))
    prefixed = any(k.startswith("roberta.") for k in text_sd)
    fused_text: dict[str, np.ndarray] = {}
    for k, v in text_sd.items():
        if k.endswith("position_ids"):
            report.dropped.append(k)  # a buffer, rebuilt by the model
        elif prefixed and not k.startswith("roberta."):
            report.dropped.append(k)  # the text model's own head (lm_head, classifier, ...)
        elif prefixed:
            fused_text[k.replace("roberta.", "lilt.")] = v
        else:
            fused_text["lilt." + k] = v
    layout_sd = dict(checkpoints.load_raw_state_dict(layout))
    layout_prefixed = any(k.startswith("lilt.") for k in layout_sd)
    fused_layout = {}
    for k, v in layout_sd.items():
        if k.endswith("position_ids"):
            continue
        fused_layout[k if layout_prefixed else "lilt." + k] = v
    report.layout_won = sorted(k for k in fused_layout if k in fused_text)
    fused = {**fused_text, **fused_layout}
    report.n_text, report.n_layout, report.n_fused = len(fused_text), len(fused_layout), len(fused)

    if validate:
        _validate(fused, config, f"fused {text} + {layout}")

    os.makedirs(out, exist_ok=True)
    for p in dests.values():  # again, now that the inputs are read (and mapped)
        check_destination(p, inputs, force=force, what="--out file", kind="a file fuse-lilt may replace")
    with StagedFiles() as staged:
        write_safetensors(staged.open(dests["model.safetensors"]), fused, metadata={"format": "pt"})
        for name in dests:
            if name in ("model.safetensors", "config.json"):
                continue
            dst = staged.open(dests[name])
            with open_regular(os.path.join(text, name), "tokenizer file") as src:
                while block := src.read(16 << 20):
                    dst.write(block)
            report.copied.append(name)
        text_out = json.dumps(config, sort_keys=True, indent=2, separators=(",", ": ")) + "\n"
        staged.open(dests["config.json"]).write(text_out.encode("utf-8"))
    return report


def _validate(state: dict[str, Any], config: dict[str, Any], source: str) -> None:
    """Strict key/shape check of the fused weights against LiltModel (prefixed keys)."""
    cfg = LiltConfig.from_dict(config)
    checkpoints.match_state_dict(
        {k: getattr(v, "array", v) for k, v in state.items()},
        LiltModel.expected_shapes(cfg),
        prefix=LiltModel.base_model_prefix,
        is_base_model=True,
        tied=LiltModel.tied_keys_for(cfg),
        ignored_unexpected=LiltModel.ignored_unexpected,
        source=source,
    )
