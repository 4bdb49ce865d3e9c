"""``refimpl golden``: run a checkpoint on input cases and write one golden file per case
(batches sharded and resumed).

Before any work: the cases are read and bounded (`refimpl.cli.cases`), the ``--out``
pattern is checked (`_out_paths`), and every destination is checked
(`refimpl.files.check_destination`: never an input, never a FIFO, device or directory, an
existing file only when it is a golden file or with ``--force``). A resumed batch skips a
case only when its file's manifest matches the case *and* its data digests verify."""

from __future__ import annotations

import argparse
import os
import re
import string
import sys
import time
import warnings
from typing import Any

from .. import architecture_of, from_pretrained, golden
from ..config import CheckpointWarning, load_config
from ..files import check_destination, input_identities
from .cases import read_cases
from .common import CliError, _need_file

__all__ = ["cmd_golden"]


class _Progress:
    """A one-line progress display on stderr: count, rate and ETA (no dependency).

    Shown only on a terminal (``stream.isatty()``) and when not ``quiet``; otherwise silent.
    """

    def __init__(self, total: int, quiet: bool = False, stream: Any = None, width: int = 24):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.width, self.t0 = total, width, time.perf_counter()
        self.on = not quiet and bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, done: int, label: str = "", skipped: int = 0) -> None:
        """Show ``done`` of ``total`` cases (``skipped`` of them resumed, not recomputed)."""
        if not self.on:
            return
        n = int(self.width * done / max(self.total, 1))
        el = time.perf_counter() - self.t0
        worked = done - skipped
        rate = worked / el if el > 0 and worked else 0.0
        eta = (self.total - done) / rate if rate else float("nan")
        eta_s = f"ETA {eta:5.0f}s" if eta == eta else "ETA     ?"
        self.stream.write(
            f"\r[{'#' * n}{'.' * (self.width - n)}] {done}/{self.total} {rate:5.2f} cases/s {eta_s} "
            f"{label[:32]:<32}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.on:
            self.stream.write("\n")
            self.stream.flush()


#: ``{index}`` may carry a plain format spec: an optional ``0`` and a width of at most 2 digits, then ``d``.
_INDEX_SPEC = re.compile(r"0?[0-9]{0,2}d?")


def _check_pattern(out: str) -> None:
    """An ``--out`` pattern may only hold ``{index}`` fields with a plain format spec
    (``{index}``, ``{index:04d}``; no attribute or item access, no conversion, width <= 99)
    and no ``..`` path component (it may not leave its own directory)."""
    try:
        fields = list(string.Formatter().parse(out))
    except ValueError as e:
        raise CliError(f"--out pattern {out!r} is not valid: {e}") from None
    for _, field, spec, conv in fields:
        if field is None:
            continue
        if field != "index" or conv is not None or not _INDEX_SPEC.fullmatch(spec or ""):
            shown = "{" + field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise CliError(
                f"--out pattern {out!r}: field {shown!r} is not allowed: use {{index}} with an optional plain "
                "format spec of a zero pad and a width of at most 2 digits, e.g. {index:04d}"
            )
    parts = re.split(r"[/\\]", out)
    if ".." in parts:
        raise CliError(f"--out pattern {out!r}: a '..' component would leave the pattern's directory")


def _out_paths(out: str, n: int, many: bool) -> list[str]:
    """Output file per case: ``out`` itself for one case; for a batch, ``out`` as a directory
    (``case-0000.safetensors``...) or a pattern with ``{index}`` (checked by `_check_pattern`;
    every path must stay inside the pattern's directory)."""
    if not many:
        return [out]
    if "{" in out or "}" in out:
        _check_pattern(out)
        try:
            paths = [out.format(index=i) for i in range(n)]
        except (KeyError, IndexError, ValueError) as e:
            raise CliError(f"--out pattern {out!r} is not valid: {e}") from None
        if len(set(paths)) != n:
            raise CliError(f"--out pattern {out!r} gives the same name to several cases")
        top = os.path.normpath(os.path.dirname(out.split("{", 1)[0]) or ".")
        for p in paths:
            rel = os.path.relpath(os.path.normpath(p), top)
            if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
                raise CliError(f"--out pattern {out!r}: {p} leaves the pattern's directory {top}")
        return paths
    if out.endswith(".safetensors"):
        raise CliError(
            "several cases need --out DIR or a pattern with {index}, e.g. out/case-{index:03d}.safetensors"
        )
    return [os.path.join(out, f"case-{i:04d}.safetensors") for i in range(n)]


def _parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    if text is None:
        return 0, 1
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise CliError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise CliError(f"--shard {text}: need N >= 1 and 0 <= I < N (I in 0..{max(n - 1, 0)})")
    return i, n


def _up_to_date(
    path: str, inputs_sha: str, weights: list[dict], dtype: str, selection: dict, grads: dict | None = None
) -> bool:
    """Whether ``path`` is a golden file of the same case (inputs and weights hashes, dtype,
    selection, and with ``grads`` = ``{"seed": n}`` gradients of that seed) whose data
    verifies against its ``tensor_sha256``: a batch run skips it (resume). A file that fails,
    or records no digests, is rewritten."""
    if not os.path.isfile(path):
        return False
    try:
        g = golden.read(path)
        m = g.manifest
        same = (
            m.get("inputs_sha256") == inputs_sha
            and [w.get("sha256") for w in m.get("weights", [])] == [w["sha256"] for w in weights]
            and m.get("dtype") == dtype
            and m.get("selection") == selection
            and ("gradients" in m) == (grads is not None)
            and (grads is None or m["gradients"].get("seed") in (None, grads["seed"]))
        )
        return same and not g.verify()
    except (ValueError, OSError):
        return False


def _load_model(checkpoint: str, dtype: str, device: str, strict: bool = False):
    _need_file(checkpoint, "checkpoint")
    if not os.path.isdir(checkpoint):
        raise CliError(f"checkpoint must be a directory with config.json and weights: {checkpoint}")
    return from_pretrained(checkpoint, dtype=dtype, device=device, strict=strict)


def cmd_golden(args: argparse.Namespace) -> int:
    """``refimpl golden CHECKPOINT --inputs FILE --out FILE``: write one golden file per case; 0 on success."""
    ckpt = args.checkpoint
    _need_file(ckpt, "checkpoint")
    _need_file(args.inputs, "inputs file")
    if not os.path.isdir(ckpt):
        raise CliError(f"checkpoint must be a directory with config.json and weights: {ckpt}")
    shard_i, shard_n = _parse_shard(args.shard)
    grads = getattr(args, "grads", False)
    seed = getattr(args, "seed", None)
    if seed is not None and not grads:
        raise CliError("--seed is the seed of the gradients' upstream G_X: give it with --grads")
    seed = golden.DEFAULT_SEED if seed is None else seed
    if seed < 0:
        raise CliError(f"--seed must be a non-negative integer (numpy.random.default_rng), got {seed}")
    try:
        selection = golden.selection_spec(args.select)
    except ValueError as e:
        raise CliError(f"--select: {e}") from None
    with warnings.catch_warnings():  # loading the model says them once, below
        warnings.simplefilter("ignore", CheckpointWarning)
        config = load_config(ckpt)
        architecture = architecture_of(ckpt)  # which targets a case may carry (no weights read yet)
    model_type = config.model_type  # "liltrobertalike" (the original LiLT recipe's) reads as "lilt"
    files: list[str] = []
    cases = read_cases(args.inputs, ckpt, model_type, config=config, files=files, architecture=architecture)
    many = args.inputs.lower().endswith(".jsonl")
    paths = _out_paths(args.out, len(cases), many)
    mine = [i for i in range(len(cases)) if i % shard_n == shard_i]
    inputs = input_identities([ckpt, *files])
    force = getattr(args, "force", False)
    for i in mine:  # every destination, before any work
        paths[i] = check_destination(
            paths[i], inputs, force=force, ours=golden.is_golden_file, what="--out",
            kind="a golden file refimpl wrote",
        )  # fmt: skip
    model = _load_model(ckpt, args.dtype, args.device, strict=getattr(args, "strict", False))
    if grads and not hasattr(model, "_backward"):
        raise CliError(f"--grads: {type(model).__name__} has no backward written (see docs/backward.md)")
    weights = golden.weight_entries(ckpt)  # hashed once for the whole batch
    bar = _Progress(len(mine), quiet=args.quiet) if many else None
    written = skipped = 0
    for done, i in enumerate(mine, 1):
        (inputs_i, source), path = cases[i], paths[i]
        arrays, flags = golden.prepare_inputs(model, inputs_i)
        fwd = {"output_attentions": golden.wants_attentions(selection), "output_hidden_states": True, **flags}
        same = {"seed": seed} if grads else None
        if many and _up_to_date(path, golden.inputs_hash(arrays, fwd), weights, args.dtype, selection, same):
            skipped += 1
        else:
            try:
                g = golden.write_case(
                    path,
                    model,
                    inputs_i,
                    checkpoint=ckpt,
                    inputs_source=source,
                    select=args.select,
                    weights=weights,
                    force=force,
                    inputs_files=files,
                    grads=grads,
                    seed=seed,
                )
            except golden.SelectionError as e:
                raise CliError(f"--{e}") from None
            except ValueError as e:  # a case the model refuses (a label out of range...)
                raise CliError(f"{args.inputs}: {e}") from None
            written += 1
            if not many and not args.quiet:
                n_stored = len(g.tensors) - len(g.aliases)
                grad_note = ""
                if grads:
                    sec = g.manifest["gradients"]
                    L = "L = loss" if sec["L"] == "loss" else f"L = sum X*G_X, seed {sec['seed']}"
                    grad_note = f"; {len(g.gradients)} gradients, {L}"
                print(
                    f"wrote {path}: {len(g.tensors)} tensors ({len(g.intermediates)} intermediates; "
                    f"{n_stored} stored, {len(g.aliases)} aliases{grad_note}), {args.dtype}"
                )
        if bar:
            bar.update(done, os.path.basename(path), skipped)
    if bar:
        bar.close()
        if not args.quiet:
            shard = f" (shard {shard_i}/{shard_n})" if shard_n > 1 else ""
            print(f"{len(mine)} cases{shard}: wrote {written}, skipped {skipped} up to date")
    return 0
