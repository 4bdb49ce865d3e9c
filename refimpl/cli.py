"""The ``refimpl`` command line.

::

    refimpl golden CHECKPOINT --inputs FILE --out FILE [--dtype float64] [--device cpu]
                   [--select all|modules|blocks|GLOB ...] [--shard I/N] [-q]
    refimpl compare GOLDEN CANDIDATE [--atol A --rtol R] [--rule R] [--strict] [--checkpoint DIR]
    refimpl inspect PATH
    refimpl convert pytorch_model.bin model.safetensors
    refimpl fuse-lilt --text TEXT_CKPT --layout LILT_ONLY_CKPT --out DIR
    refimpl demo [--out DIR]
    refimpl models
    refimpl --version

Exit codes: 0 success; 1 ``compare`` found a tensor out of tolerance; 2 a usage error, a
missing or unreadable file or a checkpoint that does not fit (one line on stderr, no
traceback; set ``REFIMPL_DEBUG=1`` to see the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import backend, data

__all__ = ["main", "build_parser", "read_cases", "encode_case", "CliError"]


#: the ``refimpl golden --inputs`` case schema (also in docs/golden-format.md, "Porting guide").
CASE_SCHEMA = """\
--inputs formats (chosen by extension):
  .npz    one case: arrays named as the forward keywords (input_ids, bbox, attention_mask, ...)
  .json   one case, tokenized with the checkpoint's tokenizer:
            LiLT:   {"words": ["Name:", "Ada"], "boxes": [[x0, y0, x1, y1], ...] (0-1000, one per word),
                     "question": "optional str (QA: question first)", "labels": [optional int per word]}
            LXMERT: {"question": "str", "features": "feats.npy" ([boxes, feat_dim] or [1, boxes, feat_dim]),
                     "boxes": "boxes.npy" ([boxes, 4], 0-1), "matched_label": optional int, "ans": optional int}
            (.npy paths are relative to the JSON file)
  .jsonl  one such JSON case per line; --out is then a directory or a pattern with {index}
"""


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    if len(lines) > 1:
        rest = "; ".join(lines[1:])
        msg = f"{msg} {rest}"
    if len(msg) > 600:
        msg = msg[:597] + "..."
    if isinstance(e, KeyError) and msg.startswith("'"):
        msg = f"missing key {msg}"
    return msg


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
#: The most bytes an ``--inputs`` file (or a ``.npy`` it names, or one ``.npz`` member) may hold.
MAX_INPUT_BYTES = 1 << 30


def _need_file(path: str, what: str) -> str:
    """``path`` if it exists and is a directory or a regular file (a FIFO, device or socket is
    refused before anything opens it)."""
    from .files import regular_file

    if not os.path.lexists(path) or not os.path.exists(path):
        raise CliError(f"{what} not found: {path}")
    if not os.path.isdir(path):
        regular_file(path, what)
    return path


def _load_npz(path: str) -> dict[str, np.ndarray]:
    from .files import read_npz

    return read_npz(path, "inputs file", MAX_INPUT_BYTES)


def _load_npy(path: str, what: str) -> np.ndarray:
    from .files import read_npy

    _need_file(path, what)
    return read_npy(path, what, MAX_INPUT_BYTES)


def _tokenizer(checkpoint: str, model_type: str):
    """The checkpoint's tokenizer (refimpl.lilt.LiltTokenizer / refimpl.lxmert.LxmertTokenizer)."""
    if model_type == "lilt":
        from .lilt.tokenization import LiltTokenizer as Tok
    elif model_type == "lxmert":
        from .lxmert.tokenization import LxmertTokenizer as Tok
    else:
        raise CliError(f"no tokenizer for model_type {model_type!r}")
    try:
        return Tok.from_pretrained(checkpoint)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot read the tokenizer of {checkpoint}: {_one_line(e)}") from None


def _batched(enc: Any) -> dict[str, np.ndarray]:
    """Tokenizer output -> forward keywords with a batch axis, NumPy arrays."""
    items = enc.items() if hasattr(enc, "items") else dict(enc).items()
    out = {}
    for k, v in items:
        if v is None or k in (
            "offset_mapping",
            "special_tokens_mask",
            "overflow_to_sample_mapping",
            "word_ids",
        ):
            continue
        a = np.asarray(v)
        if a.dtype == object:
            continue
        if k in ("input_ids", "attention_mask", "token_type_ids", "labels", "position_ids") and a.ndim == 1:
            a = a[None]
        elif k == "bbox" and a.ndim == 2:
            a = a[None]
        if a.dtype.kind in "iub":
            a = a.astype(np.int64)
        out[k] = a
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need_type(value: Any, field: str, ok: Callable[[Any], bool], want: str) -> None:
    """Raise :class:`CliError` naming the case field unless ``ok(value)``."""
    if not ok(value):
        from .files import short_repr

        raise CliError(f"case field {field!r} must be {want}, got {short_repr(value)}")


def encode_case(case: dict[str, Any], checkpoint: str, model_type: str, base_dir: str, tok: Any = None):
    """Turn one JSON case into forward keywords with the checkpoint's tokenizer.

    LiLT: ``{"words": [...], "boxes": [[x0, y0, x1, y1], ...] (0-1000), "question"?: str,
    "labels"?: [int per word]}``. LXMERT: ``{"question": str, "features": "feats.npy"
    ([boxes, feat_dim] or [1, boxes, feat_dim]), "boxes": "boxes.npy" ([boxes, 4], 0-1),
    "matched_label"?: int, "ans"?: int}``, paths relative to ``base_dir``.

    Returns:
        (forward keywords -> arrays with a batch axis of 1, the tokenizer used).
    """
    if not isinstance(case, dict):
        raise CliError(f"a case must be a JSON object, got {type(case).__name__}")
    tok = tok or _tokenizer(checkpoint, model_type)
    if model_type == "lilt":
        for key in ("words", "boxes"):
            if key not in case:
                raise CliError(f"LiLT case needs {key!r} (has {sorted(case)})")
        words, boxes = case["words"], case["boxes"]
        _need_type(
            words,
            "words",
            lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v),
            "a list of strings",
        )
        _need_type(
            boxes,
            "boxes",
            lambda v: (
                isinstance(v, list)
                and all(isinstance(b, list) and len(b) == 4 and all(_is_int(c) for c in b) for b in v)
            ),
            "a list of [x0, y0, x1, y1] integer lists",
        )
        _need_type(case.get("question"), "question", lambda v: v is None or isinstance(v, str), "a string")
        _need_type(
            case.get("labels"),
            "labels",
            lambda v: v is None or (isinstance(v, list) and all(_is_int(x) for x in v)),
            "a list of integers",
        )
        if len(words) != len(boxes):
            raise CliError(f"LiLT case: {len(words)} words but {len(boxes)} boxes")
        kwargs: dict[str, Any] = {"boxes": boxes}
        if case.get("labels") is not None:
            kwargs["word_labels"] = case["labels"]
        if case.get("question"):
            enc = tok(case["question"], words, return_tensors="np", **kwargs)
        else:
            enc = tok(words, return_tensors="np", **kwargs)
        return _batched(enc), tok
    if model_type == "lxmert":
        for key in ("question", "features", "boxes"):
            if key not in case:
                raise CliError(f"LXMERT case needs {key!r} (has {sorted(case)})")
        for key in ("question", "features", "boxes"):
            _need_type(case[key], key, lambda v: isinstance(v, str), "a string")
        feats = _load_npy(os.path.join(base_dir, case["features"]), "features file")
        boxes = _load_npy(os.path.join(base_dir, case["boxes"]), "boxes file")
        feats = feats[None] if feats.ndim == 2 else feats
        boxes = boxes[None] if boxes.ndim == 2 else boxes
        if feats.ndim != 3 or boxes.ndim != 3 or feats.shape[:2] != boxes.shape[:2] or boxes.shape[2] != 4:
            raise CliError(
                f"LXMERT case: features {feats.shape} and boxes {boxes.shape} must be [boxes, feat_dim] and [boxes, 4]"
            )
        enc = _batched(tok(case["question"], return_tensors="np"))
        enc["visual_feats"] = feats.astype(np.float64)
        enc["visual_pos"] = boxes.astype(np.float64)
        for key in ("matched_label", "ans"):  # optional pre-training / QA targets: one int each
            if case.get(key) is not None:
                if not isinstance(case[key], int) or isinstance(case[key], bool):
                    raise CliError(f"LXMERT case: {key!r} must be an integer, got {case[key]!r}")
                enc[key] = np.array([case[key]], dtype=np.int64)
        return enc, tok
    raise CliError(f"model_type {model_type!r} has no JSON input format")


def read_cases(
    path: str, checkpoint: str, model_type: str
) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """Read ``--inputs``: ``.npz`` (one case, arrays named as forward keywords), ``.json`` (one
    case, tokenized) or ``.jsonl`` (one JSON case per line).

    Returns:
        a list of (forward keywords -> arrays, provenance for the manifest).
    """
    from .files import read_bytes, read_json
    from .golden import sha256_file

    _need_file(path, "inputs file")
    ext = os.path.splitext(path)[1].lower()
    src = {"path": os.path.basename(path), "sha256": sha256_file(path)}
    if ext == ".npz":
        return [
            (_load_npz(path), {"kind": "npz", **src, "description": "arrays named as the forward keywords"})
        ]
    base = os.path.dirname(os.path.abspath(path))
    if ext == ".json":
        case = read_json(path, path, max_bytes=MAX_INPUT_BYTES)
        inputs, _ = encode_case(case, checkpoint, model_type, base)
        return [(inputs, {"kind": "json", **src, "description": f"{model_type} tokenizer of the checkpoint"})]
    if ext == ".jsonl":
        cases = []
        tok = None
        lines = read_bytes(path, "inputs file", MAX_INPUT_BYTES).split(b"\n")
        for i, ln in enumerate(lines):
            if not ln.strip():
                continue
            case = read_json(ln, f"{path} line {i + 1}", max_bytes=MAX_INPUT_BYTES)
            inputs, tok = encode_case(case, checkpoint, model_type, base, tok)
            cases.append(
                (inputs, {"kind": "jsonl", **src, "line": i + 1, "description": f"{model_type} tokenizer"})
            )
        if not cases:
            raise CliError(f"{path} holds no cases")
        return cases
    raise CliError(f"--inputs must be .npz, .json or .jsonl, got {path!r}")


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
    from . import golden

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


# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------
def _load_model(checkpoint: str, dtype: str, device: str):
    import refimpl

    _need_file(checkpoint, "checkpoint")
    if not os.path.isdir(checkpoint):
        raise CliError(f"checkpoint must be a directory with config.json and weights: {checkpoint}")
    return refimpl.from_pretrained(checkpoint, dtype=dtype, device=device)


def cmd_golden(args: argparse.Namespace) -> int:
    from . import golden
    from .config import read_config_json

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
    cases = read_cases(args.inputs, ckpt, model_type)
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


def cmd_compare(args: argparse.Namespace) -> int:
    from . import compare as C

    names = C.NameMap(
        add_prefix=args.add_prefix,
        strip_prefix=args.strip_prefix,
        add_suffix=args.add_suffix,
        strip_suffix=args.strip_suffix,
        slash_to_dot=args.slash_to_dot,
    )
    if args.name_map:
        m = C.NameMap.from_json(args.name_map)
        names.mapping = m.mapping
    kw = dict(atol=args.atol, rtol=args.rtol, strict=args.strict, rule=args.rule, names=names)
    if args.checkpoint:
        iso = C.isolate(args.reference, args.candidate, args.checkpoint, **kw)
        print("\n".join([*iso.plain.notes, iso.plain.table(only_failed=args.only_failed)]))
        print(iso.plain.tolerances())
        print(iso.plain.coverage())
        print(iso.plain.summary())
        print()
        print("isolation (local = the block recomputed in float64 from the candidate's own inputs):")
        print(iso.table())
        print(iso.verdict_line())
        return 0 if iso.ok else 1
    res = C.compare(args.reference, args.candidate, **kw)
    print(res.report(only_failed=args.only_failed))
    return 0 if res.ok else 1


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _inspect_checkpoint(path: str) -> None:
    import refimpl

    from .config import load_config, read_config_json

    raw = read_config_json(path)
    cfg = load_config(path)
    arch = refimpl.architecture_of(path)
    print(f"checkpoint  {path}")
    print(f"model_type  {raw.get('model_type')}")
    print(f"architecture {arch}")
    files = sorted(os.listdir(path))
    print("files:")
    for n in files:
        p = os.path.join(path, n)
        if os.path.isfile(p):
            print(f"  {n:<32} {_fmt_bytes(os.path.getsize(p)):>10}")
    shapes = _checkpoint_shapes(path)
    if shapes is not None:
        n_params = sum(int(np.prod(s)) for s, _ in shapes.values())
        dtypes: dict[str, int] = {}
        for _, dt in shapes.values():
            dtypes[dt] = dtypes.get(dt, 0) + 1
        print(f"tensors     {len(shapes)}; parameters {n_params:,}; dtypes {dtypes}")
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    keys += (
        "l_layers",
        "x_layers",
        "r_layers",
        "visual_feat_dim",
        "channel_shrink_ratio",
        "max_2d_position_embeddings",
    )
    print("config:")
    d = cfg.to_dict()
    for k in keys:
        if k in d:
            print(f"  {k:<28} {d[k]}")
    if d.get("id2label") and len(d["id2label"]) <= 20:
        print(f"  {'id2label':<28} {d['id2label']}")


def _checkpoint_shapes(path: str) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """key -> (shape, dtype code) of every weight file of the checkpoint, or None without one.

    Read through :func:`refimpl.checkpoints.weight_files` and the loader's own parsers
    (:func:`refimpl.checkpoints.read_safetensors` validates each header; a ``.bin`` goes through
    the restricted unpickler), so ``inspect`` refuses exactly what loading refuses."""
    from . import checkpoints as weights

    try:
        files = weights.weight_files(path)
    except FileNotFoundError:
        return None
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in files:
        if f.endswith(".json"):
            continue  # the shard index: its shards follow
        if f.endswith(".safetensors"):
            tensors = weights.read_safetensors(f)[1]
        else:
            tensors = weights.load_raw_state_dict(f)
        out.update({k: (tuple(v.array.shape), v.dtype) for k, v in tensors.items()})
    return out


def _inspect_golden(path: str) -> None:
    from . import golden

    g = golden.read(path)
    m = g.manifest
    print(f"golden file {path}")
    if not m:
        print("(no refimpl manifest: a plain safetensors file)")
    else:
        print(
            f"format      {m.get('format')} v{m.get('format_version')}  (refimpl {m.get('refimpl_version')}, numpy {m.get('numpy_version')})"
        )
        print(
            f"model       {m.get('architecture')} ({m.get('model_type')}), checkpoint {m.get('checkpoint')}"
        )
        print(f"dtype       {m.get('dtype')} on {m.get('device')}")
        print(f"inputs      {json.dumps(m.get('inputs_source'))}")
        for w in m.get("weights", []):
            print(f"weights     {w['file']} sha256 {w['sha256']} ({_fmt_bytes(w['bytes'])})")
    n_in, n_mid, n_out = len(g.inputs), len(g.intermediates), len(g.outputs)
    print(f"tensors     {len(g.tensors)}: {n_in} inputs, {n_mid} intermediates, {n_out} outputs")
    if m.get("aliases"):
        print(f"stored      {len(g.tensors) - len(g.aliases)} (the other {len(g.aliases)} names are aliases)")
    if m.get("selection"):
        print(f"selection   {' '.join(g.selection.get('select', []))}")
    w = max(len(k) for k in g.tensors) if g.tensors else 10
    entries = {x["name"]: x for x in m.get("tensors", [])}
    for k in g.tensors:
        dt, shape = g.info(k)
        e = entries.get(k, {})
        masks = ",".join(f"{s['input'].split('.', 1)[1]}@{s['axes'][1]}" for s in e.get("masks", []))
        tol = f"atol {e['atol']:.0e}" if e else ""
        alias = f"= {g.aliases[k]}" if k in g.aliases else ""
        print(
            f"  {k:<{w}}  {str(dt):<8} {'x'.join(map(str, shape)) or 'scalar':<16} {tol:<11} {masks} {alias}".rstrip()
        )


def _is_golden_file(path: str) -> bool:
    """Whether ``path`` names a ``.safetensors`` file (a FIFO or device is refused, not guessed)."""
    from .files import regular_file

    if not path.endswith(".safetensors") or os.path.isdir(path):
        return False
    regular_file(path, "golden file")
    return True


def cmd_inspect(args: argparse.Namespace) -> int:
    path = args.path
    _need_file(path, "path")
    if os.path.isdir(path):
        if not os.path.lexists(os.path.join(path, "config.json")):
            raise CliError(f"{path} is not a checkpoint directory (no config.json)")
        _inspect_checkpoint(path)
    elif _is_golden_file(path):
        _inspect_golden(path)
    else:
        raise CliError(f"{path} is neither a checkpoint directory nor a .safetensors golden file")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from . import checkpoints as weights

    src, dst = args.src, args.dst
    _need_file(src, "input")
    if os.path.isdir(dst):
        dst = os.path.join(dst, "model.safetensors")
    weights.convert_bin_to_safetensors(src, dst)
    print(f"wrote {dst}")
    return 0


def cmd_fuse_lilt(args: argparse.Namespace) -> int:
    from .lilt.merge_checkpoints import fuse_lilt

    _need_file(args.text, "text checkpoint")
    _need_file(args.layout, "layout checkpoint")
    report = fuse_lilt(args.text, args.layout, args.out, copy_tokenizer=not args.no_tokenizer)
    print(report.summary())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import refimpl

    print("supported architectures (config.json architectures[0]):")
    for name, target in refimpl.SUPPORTED_ARCHITECTURES.items():
        print(f"  {name:<34} {target.replace(':', '.')}")
    print("model_type fallbacks: " + ", ".join(f"{k} -> {v}" for k, v in refimpl.BASE_MODELS.items()))
    return 0


def _id_to_token(tok: Any, i: int) -> str:
    for getter in (
        getattr(tok, "id_to_token", None),
        getattr(getattr(tok, "backend", None), "id_to_token", None),
    ):
        if getter is not None:
            t = getter(int(i))
            if t is not None:
                return t.replace("\u0120", "_")
    return str(int(i))


def _top_attention(probs: np.ndarray, q_names: list[str], k_names: list[str], q_keep, k_keep) -> str:
    """'a' -> 'b' (p): the strongest off-diagonal entry of the head-mean probabilities [q, k]."""
    a = probs.mean(axis=0).copy()  # [heads, q, k] -> [q, k]
    a[~np.asarray(q_keep, bool), :] = -1.0
    a[:, ~np.asarray(k_keep, bool)] = -1.0
    if a.shape[0] == a.shape[1] and q_names is k_names:
        np.fill_diagonal(a, -1.0)
    q, k = np.unravel_index(int(np.argmax(a)), a.shape)
    return f"{q_names[q]!r} -> {k_names[k]!r} ({a[q, k]:.2f})"


def _stat_row(label: str, x: np.ndarray, keep: np.ndarray) -> str:
    rows = x[0][np.asarray(keep, bool)]  # [kept tokens, hidden]
    shape = "x".join(map(str, x.shape))
    return f"  {label:<22} {shape:<12} mean {rows.mean():+.4f}  norm {np.linalg.norm(rows):8.4f}"


def _demo_case(kind: str, example: str, out_dir: str, dtype: str, description: str):
    """Load the bundled ``<kind>-tiny`` model, encode ``example/<example>`` with its tokenizer and
    write the golden file ``<kind>-<example stem>.safetensors``.

    Returns:
        ``(model, case, inputs, tokenizer, path, golden case)``.
    """
    import refimpl

    from . import golden

    ckpt, case_file = data.path(f"{kind}-tiny"), data.path("example", example)
    model = refimpl.from_pretrained(ckpt, dtype=dtype)
    with open(case_file, encoding="utf-8") as f:
        case = json.load(f)
    inputs, tok = encode_case(case, ckpt, kind, os.path.dirname(case_file))
    path = os.path.join(out_dir, f"{kind}-{os.path.splitext(example)[0]}.safetensors")
    g = golden.write_case(
        path,
        model,
        inputs,
        checkpoint=ckpt,
        inputs_source={"kind": "json", "path": f"example/{example}", "description": description},
    )
    return model, case, inputs, tok, path, g


def _demo_lilt(out_dir: str, dtype: str, say: Callable[[str], None]) -> str:
    model, case, inputs, tok, path, g = _demo_case(
        "lilt", "form.json", out_dir, dtype, "bundled example form page, lilt-tiny tokenizer"
    )
    t = g.tensors
    ids = inputs["input_ids"][0]
    keep = inputs["attention_mask"][0] != 0
    names = [_id_to_token(tok, i) for i in ids]
    say(f"== LiLT: {type(model).__name__} (bundled lilt-tiny, {dtype}) on example/form.json")
    say(f"   {len(case['words'])} words -> {len(ids)} tokens: {' '.join(names)}")
    n_layers = model.config.num_hidden_layers
    for i in range(n_layers + 1):
        label = "embeddings" if i == 0 else f"layer {i - 1}"
        line = _stat_row(label + " (text)", t[f"outputs.hidden_states.{i}"], keep)
        if i > 0:
            line += "  top attention " + _top_attention(
                t[f"outputs.attentions.{i - 1}"][0], names, names, keep, keep
            )
        say(line)
        if f"outputs.layout_hidden_states.{i}" in t:
            say(_stat_row(label + " (layout)", t[f"outputs.layout_hidden_states.{i}"], keep))
    if "outputs.logits" in t:
        id2label = model.config.id2label
        pred = t["outputs.logits"][0].argmax(-1)
        shown = [f"{names[j]}={id2label[int(pred[j])]}" for j in range(len(ids)) if keep[j]][1:9]
        say(f"   predictions (random weights, meaningless): {' '.join(shown)} ...")
    if "outputs.loss" in t:
        say(f"   loss {float(np.asarray(t['outputs.loss']).reshape(-1)[0]):.6f}")
    say(f"   wrote {path}: {len(t)} tensors ({len(g.intermediates)} intermediates)")
    return path


def _demo_padded(out_dir: str, dtype: str, say: Callable[[str], None]) -> str:
    """LiLT on the bundled padded batch (``example/forms.json``: a form and a shorter receipt,
    tokenized together): the golden file carries mask specs, and comparing skips padded positions."""
    import refimpl

    from . import golden

    ckpt, case_file = data.path("lilt-tiny"), data.path("example", "forms.json")
    model = refimpl.from_pretrained(ckpt, dtype=dtype)
    with open(case_file, encoding="utf-8") as f:
        pages = json.load(f)["pages"]
    tok = _tokenizer(ckpt, "lilt")
    enc = tok(
        [p["words"] for p in pages],
        boxes=[p["boxes"] for p in pages],
        word_labels=[p["labels"] for p in pages],
        padding=True,
        return_tensors="np",
    )
    inputs = _batched(enc)
    path = os.path.join(out_dir, "lilt-forms-padded.safetensors")
    g = golden.write_case(
        path,
        model,
        inputs,
        checkpoint=ckpt,
        inputs_source={
            "kind": "json",
            "path": "example/forms.json",
            "description": "bundled batch of two pages, the second padded; lilt-tiny tokenizer",
        },
    )
    real = inputs["attention_mask"].sum(axis=1).tolist()
    masked = sum(1 for e in g.manifest["tensors"] if e["masks"])
    say(
        f"== LiLT, padded batch (example/forms.json): rows of {real} real tokens, padded to {inputs['input_ids'].shape[1]}"
    )
    say(
        f"   {masked} of {len(g.tensors)} tensors carry mask specs: compare skips the padded rows (and the "
        f"padded query rows / key columns of attention)"
    )
    say(f"   wrote {path}")
    return path


def _demo_lxmert(out_dir: str, dtype: str, say: Callable[[str], None]) -> str:
    model, case, inputs, tok, path, g = _demo_case(
        "lxmert",
        "question.json",
        out_dir,
        dtype,
        "bundled example question + region features, lxmert-tiny tokenizer",
    )
    t = g.tensors
    ids = inputs["input_ids"][0]
    words = [_id_to_token(tok, i) for i in ids]
    n_reg = inputs["visual_feats"].shape[1]
    regions = [f"region{j}" for j in range(n_reg)]
    lkeep, vkeep = inputs["attention_mask"][0] != 0, np.ones(n_reg, bool)
    cfg = model.config
    say(f"== LXMERT: {type(model).__name__} (bundled lxmert-tiny, {dtype}) on example/question.json")
    say(
        f"   question -> {len(ids)} tokens: {' '.join(words)}; {n_reg} regions x {inputs['visual_feats'].shape[2]} features"
    )
    lang = sorted(
        (k for k in t if k.startswith("outputs.language_hidden_states.")),
        key=lambda k: int(k.rsplit(".", 1)[1]),
    )
    vis = sorted(
        (k for k in t if k.startswith("outputs.vision_hidden_states.")),
        key=lambda k: int(k.rsplit(".", 1)[1]),
    )
    for i, k in enumerate(lang):
        stage = f"language layer {i}" if i < cfg.l_layers else f"cross layer {i - cfg.l_layers} (lang)"
        line = _stat_row(stage, t[k], lkeep)
        if i < cfg.l_layers and f"outputs.language_attentions.{i}" in t:
            line += "  top attention " + _top_attention(
                t[f"outputs.language_attentions.{i}"][0], words, words, lkeep, lkeep
            )
        elif f"outputs.cross_encoder_attentions.{i - cfg.l_layers}" in t:
            a = t[f"outputs.cross_encoder_attentions.{i - cfg.l_layers}"][0]
            line += "  top cross-attention " + _top_attention(a, words, regions, lkeep, vkeep)
        say(line)
    for i, k in enumerate(vis):
        stage = f"vision layer {i}" if i < cfg.r_layers else f"cross layer {i - cfg.r_layers} (vision)"
        line = _stat_row(stage, t[k], vkeep)
        if i < cfg.r_layers and f"outputs.vision_attentions.{i}" in t:
            line += "  top attention " + _top_attention(
                t[f"outputs.vision_attentions.{i}"][0], regions, regions, vkeep, vkeep
            )
        elif f"outputs.cross_encoder_vision_attentions.{i - cfg.r_layers}" in t:
            a = t[f"outputs.cross_encoder_vision_attentions.{i - cfg.r_layers}"][0]
            line += "  top cross-attention " + _top_attention(a, regions, words, vkeep, lkeep)
        say(line)
    if "outputs.cross_relationship_score" in t:
        s = t["outputs.cross_relationship_score"][0]
        say(
            f"   image-text match score {s.tolist()}; best answer index {int(t['outputs.question_answering_score'][0].argmax())}"
            if "outputs.question_answering_score" in t
            else f"   image-text match score {s.tolist()}"
        )
    say(f"   wrote {path}: {len(t)} tensors ({len(g.intermediates)} intermediates)")
    return path


def run_demo(out_dir: str = "refimpl-demo", dtype: str = "float64", quiet: bool = False) -> int:
    """Run both bundled models on the bundled example, print a step-through summary and write
    the golden files ``lilt-form.safetensors``, ``lilt-forms-padded.safetensors`` (a padded
    batch of two pages) and ``lxmert-question.safetensors`` to ``out_dir``."""
    from .compare import compare

    t0 = time.perf_counter()
    say: Callable[[str], None] = (lambda s: None) if quiet else print
    os.makedirs(out_dir, exist_ok=True)
    paths = [
        _demo_lilt(out_dir, dtype, say),
        _demo_padded(out_dir, dtype, say),
        _demo_lxmert(out_dir, dtype, say),
    ]
    for p in paths:  # the files read back and compare equal to themselves' reference layout
        if not compare(p, p).ok:
            raise CliError(f"{p} does not read back")
    say(
        f"done in {time.perf_counter() - t0:.2f}s. Next: refimpl inspect {paths[0]}  |  refimpl compare {paths[0]} YOUR_PORT.safetensors"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(out_dir=args.out, dtype=args.dtype, quiet=args.quiet)


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``refimpl`` (subcommands golden, compare, inspect, convert,
    fuse-lilt, demo, models)."""
    import refimpl

    p = _Parser(
        prog="refimpl",
        description="NumPy reference implementation of LiLT and LXMERT: golden outputs for porters.",
    )
    p.add_argument("--version", action="version", version=f"refimpl {refimpl.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser(
        "golden",
        help="run a checkpoint on inputs and write a golden file (every intermediate)",
        epilog=CASE_SCHEMA,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("checkpoint", help="checkpoint directory (config.json + weights)")
    g.add_argument(
        "--inputs", required=True, help=".npz (forward keywords), .json (one case) or .jsonl (cases)"
    )
    g.add_argument(
        "--out", required=True, help="output .safetensors (for .jsonl: a dir or a pattern with {index})"
    )
    g.add_argument(
        "--dtype", choices=backend.DTYPES, default="float64", help="compute dtype (default float64)"
    )
    g.add_argument("--device", choices=backend.DEVICES, default="cpu")
    g.add_argument(
        "--select",
        action="append",
        metavar="WHAT",
        help="which tensors to keep (repeatable, combined): all (default), modules (every module "
        "output, no attention scores/probabilities), blocks (embeddings, layer outputs, poolers, "
        "heads, outputs), or a glob over names such as '*.attention.self.query'",
    )
    g.add_argument(
        "--shard", metavar="I/N", help="process every N-th case of a .jsonl, starting at case I (0-based)"
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    g.set_defaults(func=cmd_golden)

    c = sub.add_parser(
        "compare",
        help="compare a candidate (a port's dump) with a reference golden file, tensor by tensor",
        description="Compare a port's dump with a golden file. Exit 0 all within tolerance and at least one "
        "tensor compared; 1 a tensor out of tolerance, nothing compared, or (--checkpoint) a culprit block "
        "or accumulated drift; 2 usage and file errors (a reference that is not a golden file, say).",
    )
    c.add_argument("reference", help="golden .safetensors file (refimpl golden / refimpl demo)")
    c.add_argument(
        "candidate",
        help="the port's dump: safetensors, .npz, or a directory of <tensor name>.npy files (detected by content)",
    )
    c.add_argument("--atol", type=float, default=None, help="override every float tensor's atol")
    c.add_argument("--rtol", type=float, default=None, help="override every float tensor's rtol")
    c.add_argument(
        "--rule",
        choices=("max_abs", "rel", "nmse", "cosine"),
        default="max_abs",
        help="pass rule for float tensors: max_abs |c-r| <= atol + rtol|r| (default); rel |c-r|/max(|r|, atol) "
        "<= rtol; nmse sum(c-r)^2/sum r^2 <= rtol^2; cosine 1 - cos <= rtol^2/2",
    )
    c.add_argument("--strict", action="store_true", help="tensors missing in the candidate fail too")
    c.add_argument(
        "--only-failed", action="store_true", help="print only failing rows (missing ones only with --strict)"
    )
    c.add_argument("--add-prefix", default="", metavar="P", help="prepend P to every candidate name")
    c.add_argument(
        "--strip-prefix", default="", metavar="P", help="remove P from the start of candidate names"
    )
    c.add_argument("--add-suffix", default="", metavar="S", help="append S to every candidate name")
    c.add_argument("--strip-suffix", default="", metavar="S", help="remove S from the end of candidate names")
    c.add_argument("--slash-to-dot", action="store_true", help="read '/' in candidate names as '.'")
    c.add_argument(
        "--name-map",
        metavar="JSON",
        default=None,
        help='JSON object {"candidate name": "reference name"}; wins over the prefix/suffix options',
    )
    c.add_argument(
        "--checkpoint",
        metavar="DIR",
        default=None,
        help="isolation: recompute every block from the candidate's own inputs with this checkpoint and "
        "name the culprit block, or say the divergence is accumulated drift",
    )
    c.set_defaults(func=cmd_compare)

    i = sub.add_parser("inspect", help="summarise a checkpoint directory or a golden file")
    i.add_argument("path")
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("convert", help="pytorch_model.bin -> model.safetensors without torch")
    v.add_argument("src", metavar="pytorch_model.bin")
    v.add_argument("dst", metavar="model.safetensors")
    v.set_defaults(func=cmd_convert)

    f = sub.add_parser("fuse-lilt", help="LiLT = RoBERTa-like text model + lilt-only layout weights")
    f.add_argument("--text", required=True, help="text checkpoint dir (e.g. roberta-base)")
    f.add_argument("--layout", required=True, help="layout-only LiLT checkpoint dir (e.g. lilt-only-base)")
    f.add_argument("--out", required=True, help="output directory")
    f.add_argument("--no-tokenizer", action="store_true", help="do not copy the text model's tokenizer files")
    f.set_defaults(func=cmd_fuse_lilt)

    d = sub.add_parser("demo", help="run the bundled tiny LiLT and LXMERT on the bundled example")
    d.add_argument(
        "--out", default="refimpl-demo", help="where to write the golden files (default ./refimpl-demo)"
    )
    d.add_argument("--dtype", choices=backend.DTYPES, default="float64")
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("models", help="list the supported architectures")
    m.set_defaults(func=cmd_models)
    return p


_tuned = False


def _tune_process() -> None:
    """``backend.tune_allocator()`` and ``backend.quiet_blas_threads()``, once per process."""
    global _tuned
    if not _tuned:
        backend.tune_allocator()
        backend.quiet_blas_threads()
        _tuned = True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``refimpl`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    # the command owns its process: keep freed memory for the next forward, and let OpenBLAS's
    # idle threads sleep after each product instead of taking a core from the elementwise work
    _tune_process()
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("refimpl: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # every failure is one line, exit 2
        if os.environ.get("REFIMPL_DEBUG"):
            raise
        sys.stderr.write(f"refimpl {args.command}: error: {_one_line(e)}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
