"""``refimpl inspect``: summarise a checkpoint directory or a golden file (``--verify``: and
check a golden file's data against its ``tensor_sha256``)."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from .. import architecture_of, checkpoints, golden
from ..config import load_config, read_config_json
from ..files import regular_file
from .answers import RANDOM_WEIGHTS, answer_lines, bundled_weights, head_vocabulary_line
from .common import CliError, _need_file

__all__ = ["cmd_inspect"]


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _inspect_checkpoint(path: str) -> None:
    raw = read_config_json(path)
    cfg = load_config(path)
    arch = architecture_of(path)
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
    for label, width, head in _lxmert_heads(arch, d):
        print(f"{label:<12}{head_vocabulary_line(width, head)}")
    if bundled_weights(path):
        print(f"note        {RANDOM_WEIGHTS}")


def _lxmert_heads(arch: str, d: dict) -> list[tuple[str, int, str]]:
    """``(label, width, head)`` of the label heads an LXMERT architecture builds (the answer
    head; LxmertForPreTraining's visual object and attribute decoders)."""
    out = []
    qa = arch == "LxmertForQuestionAnswering" or (arch == "LxmertForPreTraining" and d.get("task_qa", True))
    if qa and "num_qa_labels" in d:
        out.append(("answers", int(d["num_qa_labels"]), "answer"))
    if arch == "LxmertForPreTraining" and d.get("task_obj_predict", True):
        if d.get("visual_obj_loss", True) and "num_object_labels" in d:
            out.append(("objects", int(d["num_object_labels"]), "obj"))
        if d.get("visual_attr_loss", True) and "num_attr_labels" in d:
            out.append(("attributes", int(d["num_attr_labels"]), "attr"))
    return out


def _checkpoint_shapes(path: str) -> dict[str, tuple[tuple[int, ...], str]] | None:
    """key -> (shape, dtype code) of every weight file of the checkpoint, or None without one.

    Read through `refimpl.checkpoints.weight_files` and the loader's own parsers
    (`refimpl.checkpoints.read_safetensors` validates each header; a ``.bin`` goes through
    the restricted unpickler), so ``inspect`` refuses exactly what loading refuses."""
    try:
        files = checkpoints.weight_files(path)
    except FileNotFoundError:
        return None
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in files:
        if f.endswith(".json"):
            continue  # the shard index: its shards follow
        if f.endswith(".safetensors"):
            tensors = checkpoints.read_safetensors(f)[1]
        else:
            tensors = checkpoints.load_raw_state_dict(f)
        out.update({k: (tuple(v.array.shape), v.dtype) for k, v in tensors.items()})
    return out


def _verify_golden(g: golden.Golden) -> None:
    """Recompute every stored tensor's SHA-256 (`refimpl.golden.Golden.verify`); raise naming
    the tensors that differ."""
    bad = g.verify()
    n = len(g.tensors) - len(g.aliases)
    if bad:
        shown = ", ".join(repr(b) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CliError(
            f"{g.path}: data of {len(bad)} of {n} stored tensors does not match the manifest's "
            f"{golden.DIGEST_KEY}: {shown} (the file is damaged; regenerate it)"
        )
    print(f"verified    {n} stored tensors: every SHA-256 matches the manifest")


def _inspect_golden(path: str, verify: bool = False) -> None:
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
        if m.get("mode"):
            print(f"mode        {m['mode']}")
        for key in ("inputs_json", "outputs_json"):
            if m.get(key):
                print(f"{key:<12}{', '.join(sorted(m[key]))} (JSON in the manifest)")
        for w in m.get("weights", []):
            print(f"weights     {w['file']} sha256 {w['sha256']} ({_fmt_bytes(w['bytes'])})")
        if bundled_weights(m.get("weights")):
            print(f"note        {RANDOM_WEIGHTS}")
    if "outputs.question_answering_score" in g.tensors:
        for line in answer_lines(g.tensors["outputs.question_answering_score"]):
            print(f"answers     {line}")
    n_in, n_mid, n_out = len(g.inputs), len(g.intermediates), len(g.outputs)
    n_grad, n_up = len(g.gradients), len(g.upstream)
    n_fwd = n_in + n_mid + n_out
    print(f"tensors     {n_fwd} forward: {n_in} inputs, {n_mid} intermediates, {n_out} outputs")
    sec = m.get("gradients")
    if isinstance(sec, dict):
        params = sec.get("parameters")
        n_par = len(params) if isinstance(params, list) else 0
        how = (
            "L = the loss"
            if sec.get("L") == "loss"
            else f"L = sum_X sum(X * G_X), G_X seeded {sec.get('seed')}"
        )
        print(
            f"gradients   {n_grad}: {n_par} parameters (grad.<checkpoint key>), {n_grad - n_par} tensors "
            f"(grad.<name>); {n_up} upstream G_X; {how}"
        )
    if m.get("aliases"):
        print(f"stored      {len(g.tensors) - len(g.aliases)} (the other {len(g.aliases)} names are aliases)")
    if m.get("selection"):
        print(f"selection   {' '.join(g.selection.get('select', []))}")
    w = max(len(k) for k in g.tensors) if g.tensors else 10
    entries = {x["name"]: x for x in m.get("tensors", [])}
    forward = [k for k in g.tensors if not k.startswith(("grad.", "upstream."))]
    upstream = [k for k in g.tensors if k.startswith("upstream.")]
    grads = [k for k in g.tensors if k.startswith("grad.")]
    for title, names in (("forward tensors:", forward), ("upstream G_X:", upstream), ("gradients:", grads)):
        if names and (upstream or grads):
            print(title)
        _list(g, names, entries, w)
    if verify:
        _verify_golden(g)


def _list(g: golden.Golden, names: list[str], entries: dict, w: int) -> None:
    """One line per tensor: name, dtype, shape, atol, mask specs, alias target."""
    for k in names:
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
    if not path.endswith(".safetensors") or os.path.isdir(path):
        return False
    regular_file(path, "golden file")
    return True


def cmd_inspect(args: argparse.Namespace) -> int:
    """``refimpl inspect PATH [--verify]``: print a summary of a checkpoint directory or a golden
    file (with ``--verify``, check its data digests: exit 2 naming the damaged tensors); 0."""
    path = args.path
    _need_file(path, "path")
    if os.path.isdir(path):
        if not os.path.lexists(os.path.join(path, "config.json")):
            raise CliError(f"{path} is not a checkpoint directory (no config.json)")
        if getattr(args, "verify", False):
            raise CliError("--verify checks a golden file's data; give a .safetensors golden file")
        _inspect_checkpoint(path)
    elif _is_golden_file(path):
        _inspect_golden(path, verify=getattr(args, "verify", False))
    else:
        raise CliError(f"{path} is neither a checkpoint directory nor a .safetensors golden file")
    return 0
