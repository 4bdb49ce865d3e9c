"""Golden files at real size: file size, wall time and peak memory of ``refimpl golden`` and
``refimpl compare`` (issue 13).

::

    .venv/bin/python benchmarks/golden_scale.py                       # this tree
    .venv/bin/python benchmarks/golden_scale.py --tree /tmp/base --label before   # another checkout
    .venv/bin/python benchmarks/golden_scale.py --cases lilt --selects all,blocks

Cases (random-weight checkpoints built like ``benchmarks/run.py``'s, float32 on disk, run in
float64): LiLT base (hidden 768, 12 layers, 12 heads, channel_shrink_ratio 4, intermediate
3072), 1 x 512 tokens; LXMERT base (9/5/5 layers, hidden 768, 2048-d features), batch 8,
20 tokens, 36 boxes.

Each command is one subprocess (``python -m refimpl.cli ...`` with ``PYTHONPATH`` = the tree
measured) run under ``/usr/bin/time``: its peak resident memory is that process's
``ru_maxrss`` (anonymous memory and touched file pages alike), its wall time the time to exit. ``compare``
compares the ``all`` file with itself. A tree without ``--select`` (the base commit) runs
``all`` only. Results are printed as a markdown table (and appended as JSON lines to
``--json`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

CASES = {"lilt": ("lilt", 1, 512, 0), "lxmert": ("lxmert", 8, 20, 36)}


def run_measured(cmd: list[str], env: dict, cwd: str | None = None) -> tuple[int, float, float, str]:
    """Run ``cmd`` under ``/usr/bin/time``; return (exit code, wall s, peak RSS in MB, stderr tail).

    ``/usr/bin/time`` forks the command from its own small process. ``os.wait4`` on a direct
    child of this (large, torch-importing) process would not do: Linux carries the parent's
    resident set at fork into the child's ``ru_maxrss`` across ``exec``.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.perf_counter()
        p = subprocess.run(
            ["/usr/bin/time", "-f", "%M %e", "-o", tf.name, *cmd],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wall = time.perf_counter() - t0
        last = [ln for ln in open(tf.name).read().splitlines() if ln.strip()][-1]
    kib, _ = last.split()
    return p.returncode, wall, int(kib) * 1024 / 1e6, p.stderr.decode(errors="replace")[-400:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=ROOT, help="checkout whose refimpl is measured")
    ap.add_argument("--label", default="after")
    ap.add_argument("--cases", default="lilt,lxmert")
    ap.add_argument("--selects", default="all,modules,blocks")
    ap.add_argument("--checkpoints", default=None, help="reuse/build checkpoints here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    from harness import build_checkpoints, make_inputs

    work = args.checkpoints or tempfile.mkdtemp(prefix="golden-bench-")
    os.makedirs(work, exist_ok=True)
    ckpts = build_checkpoints(work)
    # run in the tree: ``python -m`` puts the working directory first on sys.path
    tree = os.path.abspath(args.tree)
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="2")
    py = sys.executable
    rows = []
    for case in args.cases.split(","):
        model, batch, seq, boxes = CASES[case]
        npz = os.path.join(work, f"{case}-inputs.npz")
        np.savez(npz, **make_inputs(model, batch, seq, boxes))
        for sel in args.selects.split(","):
            out = os.path.join(work, f"{case}-{args.label}-{sel}.safetensors")
            cmd = [py, "-m", "refimpl.cli", "golden", ckpts[model], "--inputs", npz, "--out", out, "-q"]
            if sel != "all":
                cmd += ["--select", sel]
            rc, wall, peak, err = run_measured(cmd, env, cwd=tree)
            if rc != 0:
                print(f"{case} golden --select {sel}: exit {rc}: {err}", file=sys.stderr)
                continue
            size = os.path.getsize(out) / 1e6
            rows.append(
                dict(
                    case=case,
                    label=args.label,
                    command=f"golden --select {sel}",
                    size_mb=size,
                    wall_s=wall,
                    peak_mb=peak,
                )
            )
            print(json.dumps(rows[-1]), flush=True)
        ref = os.path.join(work, f"{case}-{args.label}-all.safetensors")
        if os.path.exists(ref):
            rc, wall, peak, err = run_measured(
                [py, "-m", "refimpl.cli", "compare", ref, ref, "--only-failed"], env, cwd=tree
            )
            rows.append(
                dict(
                    case=case,
                    label=args.label,
                    command="compare all vs all",
                    size_mb=None,
                    wall_s=wall,
                    peak_mb=peak,
                    rc=rc,
                )
            )
            print(json.dumps(rows[-1]), flush=True)
            os.unlink(ref)
    print("\n| case | tree | command | file (MB) | wall (s) | peak RSS (MB) |\n|---|---|---|---|---|---|")
    for r in rows:
        size = f"{r['size_mb']:.1f}" if r["size_mb"] is not None else "-"
        print(
            f"| {r['case']} | {r['label']} | `{r['command']}` | {size} | {r['wall_s']:.1f} | {r['peak_mb']:.0f} |"
        )
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
