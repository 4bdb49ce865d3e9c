"""``refimpl golden``: run a checkpoint on input cases and write one golden file per case
(batches sharded and resumed)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .. import from_pretrained, golden
from ..config import read_config_json
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


def _out_paths(out: str, n: int, many: bool) -> list[str]:
    """Output file per case: ``out`` itself for one case; for a batch, ``out`` as a directory
    (``case-0000.safetensors``...) or a pattern with ``{index}``."""
    if not many:
        return [out]
    if "{index" in out:
        try:
            paths = [out.format(index=i) for i in range(n)]
        except (KeyError, IndexError, ValueError) as e:
            raise CliError(f"--out pattern {out!r} is not valid: {e}") from None
        if len(set(paths)) != n:
            raise CliError(f"--out pattern {out!r} gives the same name to several cases")
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


def _up_to_date(path: str, inputs_sha: str, weights: list[dict], dtype: str, selection: dict) -> bool:
    """Whether ``path`` is a golden file of the same case (inputs and weights hashes, dtype
    and selection): a batch run skips it (resume)."""
    if not os.path.isfile(path):
        return False
    try:
        m = golden.read(path).manifest
    except (ValueError, OSError):
        return False
    return (
        m.get("inputs_sha256") == inputs_sha
        and [w.get("sha256") for w in m.get("weights", [])] == [w["sha256"] for w in weights]
        and m.get("dtype") == dtype
        and m.get("selection") == selection
    )


def _load_model(checkpoint: str, dtype: str, device: str):
    _need_file(checkpoint, "checkpoint")
    if not os.path.isdir(checkpoint):
        raise CliError(f"checkpoint must be a directory with config.json and weights: {checkpoint}")
    return from_pretrained(checkpoint, dtype=dtype, device=device)


def cmd_golden(args: argparse.Namespace) -> int:
    """``refimpl golden CHECKPOINT --inputs FILE --out FILE``: write one golden file per case; 0 on success."""
    ckpt = args.checkpoint
    _need_file(ckpt, "checkpoint")
    _need_file(args.inputs, "inputs file")
    shard_i, shard_n = _parse_shard(args.shard)
    try:
        selection = golden.selection_spec(args.select)
    except ValueError as e:
        raise CliError(f"--select: {e}") from None
    model_type = read_config_json(ckpt).get("model_type")
    model = _load_model(ckpt, args.dtype, args.device)
    cases = read_cases(args.inputs, ckpt, model_type, type(model).__name__)
    many = args.inputs.lower().endswith(".jsonl")
    paths = _out_paths(args.out, len(cases), many)
    mine = [i for i in range(len(cases)) if i % shard_n == shard_i]
    weights = golden.weight_entries(ckpt)  # hashed once for the whole batch
    bar = _Progress(len(mine), quiet=args.quiet) if many else None
    written = skipped = 0
    for done, i in enumerate(mine, 1):
        (inputs, source), path = cases[i], paths[i]
        arrays, flags = golden.prepare_inputs(model, inputs)
        fwd = {"output_attentions": golden.wants_attentions(selection), "output_hidden_states": True, **flags}
        if many and _up_to_date(path, golden.inputs_hash(arrays, fwd), weights, args.dtype, selection):
            skipped += 1
        else:
            g = golden.write_case(
                path,
                model,
                inputs,
                checkpoint=ckpt,
                inputs_source=source,
                select=args.select,
                weights=weights,
            )
            written += 1
            if not many and not args.quiet:
                n_stored = len(g.tensors) - len(g.aliases)
                print(
                    f"wrote {path}: {len(g.tensors)} tensors ({len(g.intermediates)} intermediates; "
                    f"{n_stored} stored, {len(g.aliases)} aliases), {args.dtype}"
                )
        if bar:
            bar.update(done, os.path.basename(path), skipped)
    if bar:
        bar.close()
        if not args.quiet:
            shard = f" (shard {shard_i}/{shard_n})" if shard_n > 1 else ""
            print(f"{len(mine)} cases{shard}: wrote {written}, skipped {skipped} up to date")
    return 0
