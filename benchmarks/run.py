"""Side-by-side benchmarks against the oracle (transformers 4.56.2, torch eager) on this machine.

One command runs every case and writes ``benchmarks/results.json`` and ``benchmarks/results.md``
(the table the docs site publishes)::

    .venv/bin/python benchmarks/run.py            # 10 timed forwards per variant, torch float64 too
    .venv/bin/python benchmarks/run.py --quick    # 3 timed forwards, no torch float64

Cases, on random-weight checkpoints at real base sizes built with the oracle's classes and
saved with ``save_pretrained`` (float32 safetensors) into a temporary directory:

* LiLT base (lilt-roberta-en-base shape), batch 1 x 512 tokens: ours vs torch in float32;
  ours (and torch, full run) in float64.
* LXMERT base (9/5/5 layers, 768, 2048-d features), batch 32, 20 tokens, 36 boxes: the same.
* Loading LiLT's ``model.safetensors`` (zero-copy memory map), first and warm.
* GPU rows (LiLT 8 x 512, LXMERT 32; CuPy vs torch CUDA, float32) when both see a GPU;
  otherwise the table says "not run".
* Forward + backward (``backward.py``, issue 23): LiLT base 1 x 512 and LXMERT base batch 8,
  float32, refimpl's ``model.backward`` vs torch autograd of the same scalar ``L``, time
  (paired, one process) and peak memory (one process per side), into ``backward.json`` and
  ``backward.md``. Only these rows: ``run.py --only backward`` (``--cases lilt:1x128,lxmert:b1``
  for other shapes, ``--quick`` for 3 repeats).

How it measures:

* **Threads**: each thread count in ``--threads`` (default: every core, then 1) is used by both
  libraries: ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` are set
  before NumPy / torch are imported, and ``torch.set_num_threads`` gets the same number.
* **Time**: one process per (case, thread count, setting) loads every variant (ours / torch, float32 /
  float64), warms each up twice, then runs them in turn, ``ours, torch, ours, torch, ...``,
  so background load on a shared machine hits both alike. Medians are reported.
* **Peak memory**: one process per (case, implementation, dtype): load, read one value per
  page of every weight (memory-mapped weights become resident, as torch's are), read
  ``VmRSS``, reset the high-water mark (``echo 5 > /proc/self/clear_refs``), run one
  forward, read ``VmHWM``: the extra memory one forward needs.
* **Two rows per case** (``SETTINGS``), never one side tuned only: ``defaults`` runs each
  library as a user gets it (tuning variables such as ``OPENBLAS_THREAD_TIMEOUT`` or
  ``OMP_WAIT_POLICY`` are removed from the worker's environment; only the thread count is
  set, for both); ``tuned`` gives both ``refimpl.backend.tune_allocator()`` (process-wide
  glibc settings, torch's guide's allocator advice), ours also
  ``refimpl.backend.quiet_blas_threads()``, torch ``TORCH_TUNED_ENV`` (see there why it is
  empty by default; ``--torch-tuned-env`` sets it).
* Memory runs call ``tune_allocator()`` for both.

``--sweep`` runs the issue-16 table instead (``sweep.py``: LiLT 1x/8x {64..512}, LXMERT
b1/8/32/64; f32 and f64 on every core, f32 on one thread; both settings), as medians of
paired ratios with their min-max, into ``sweep.json`` and ``sweep.md``. It prints its
estimated time first; ``--cases lilt:1x512,lxmert:b32``, ``--configs f32``, ``--settings
defaults``, ``--quick`` (3 repeats) or ``--repeats N`` make it fit a budget, ``--dry-run``
prints the plan only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from harness import (
    HERE,
    ROOT,
    SETTINGS,
    SETTLE_S,
    _env,
    apply_setting,
    build_checkpoints,
    load_impl,
    machine_info,
    make_forward,
    make_inputs,
    reset_peak,
    run_worker,
    status_kib,
    touch_weights,
    write_text,
)

CASES = {
    # name: (model, batch, seq, boxes)
    "lilt": ("lilt", 1, 512, 0),
    "lxmert": ("lxmert", 32, 20, 36),
    "lilt_gpu": ("lilt", 8, 512, 0),
    "lxmert_gpu": ("lxmert", 32, 20, 36),
}


# --------------------------------------------------------------------------------------------
# worker side: one case per process
# --------------------------------------------------------------------------------------------


def load_model(impl: str, case: str, dtype: str, device: str, path: str, threads: int):
    """Load one implementation and return ``(model, forward)``; ``forward()`` runs the case's
    inputs and returns the main output (LiLT ``last_hidden_state``, LXMERT ``language_output``)
    as a host NumPy array, synchronising the device first."""
    model_name, batch, seq, boxes = CASES[case]
    model = load_impl(impl, model_name, dtype, device, path, threads)
    return model, make_forward(
        impl, model, model_name, dtype, device, make_inputs(model_name, batch, seq, boxes)
    )


def memory_worker(spec: dict) -> dict:
    """Peak extra memory of one forward of one implementation (its own process), and its output."""
    import numpy as np

    from refimpl import backend

    backend.tune_allocator()
    result = dict(spec)
    rss0 = status_kib("VmRSS")
    t0 = time.perf_counter()
    model, forward = load_model(
        spec["impl"], spec["case"], spec["dtype"], spec["device"], spec["path"], spec["threads"]
    )
    result["load_s"] = time.perf_counter() - t0
    result["rss_after_load_mib"] = (status_kib("VmRSS") - rss0) / 1024
    # peak memory of the first forward over the loaded model, its weights resident
    touch_weights(model, spec["impl"])
    rss_base = status_kib("VmRSS")
    result["hwm_reset"] = reset_peak()
    out = forward()
    result["peak_extra_mib"] = (status_kib("VmHWM") - rss_base) / 1024
    result["peak_total_mib"] = status_kib("VmHWM") / 1024
    np.save(spec["out"], out.astype(np.float64))
    return result


def timing_worker(spec: dict) -> dict:
    """Time every implementation of one case in one process, alternating forwards.

    On a shared machine the background load drifts; alternating ``ours, torch, ours, torch,
    ...`` gives both the same conditions, so the ratio of medians is fair even when the
    absolute times are not repeatable.
    """
    import numpy as np

    applied = apply_setting(spec.get("setting", "tuned"))
    runs = []
    for impl, dtype in spec["variants"]:
        _, forward = load_model(impl, spec["case"], dtype, spec["device"], spec["path"], spec["threads"])
        forward()
        forward()  # warm-up: BLAS threads started, heap grown
        runs.append((impl, dtype, forward, []))
    for _ in range(spec["repeats"]):
        for _, _, forward, times in runs:
            time.sleep(SETTLE_S)  # the other library's idle threads stop spinning
            t = time.perf_counter()
            forward()
            times.append(time.perf_counter() - t)
    result = dict(spec, load_average=os.getloadavg(), applied=applied)
    result["timings"] = [
        {
            "impl": impl,
            "dtype": dtype,
            "times_s": times,
            "median_s": float(np.median(times)),
            "min_s": min(times),
        }
        for impl, dtype, _, times in runs
    ]
    return result


def load_worker(spec: dict) -> dict:
    """Time reading LiLT's ``model.safetensors`` (ours: memory-mapped) cold-ish and warm."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from refimpl import checkpoints

    path = os.path.join(spec["path"], "model.safetensors")
    result = dict(spec, file_mib=os.path.getsize(path) / 2**20)
    rss0 = status_kib("VmRSS")
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        state = checkpoints.load_state_dict(spec["path"], dtype=np.float32)
        times.append(time.perf_counter() - t)
        if len(times) == 1:
            result["rss_after_first_load_mib"] = (status_kib("VmRSS") - rss0) / 1024
            big = max(state.values(), key=lambda a: a.size)
            result["zero_copy"] = bool(not big.flags.owndata)
        del state
    result["first_ms"] = times[0] * 1e3
    result["warm_ms"] = float(np.median(times[1:])) * 1e3 if len(times) > 1 else times[0] * 1e3
    result["warm_min_ms"] = float(np.min(times[1:])) * 1e3 if len(times) > 1 else times[0] * 1e3

    import refimpl

    t = time.perf_counter()
    model = refimpl.from_pretrained(spec["path"], dtype="float32")
    result["from_pretrained_ms"] = (time.perf_counter() - t) * 1e3
    del model
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats (3 instead of 10), no torch float64"
    )
    cores = len(os.sched_getaffinity(0))
    parser.add_argument(
        "--threads",
        default=f"{cores},1" if cores > 1 else "1",
        help="comma-separated thread counts, each used by both libraries (default: all cores, then 1)",
    )
    parser.add_argument("--out", default=HERE, help="directory for results.json / results.md")
    parser.add_argument("--checkpoints", help="keep (and reuse) the built checkpoints in this directory")
    parser.add_argument("--only", help="comma-separated subset of: lilt, lxmert, load, backward")
    parser.add_argument("--sweep", action="store_true", help="run the issue-16 sweep (see sweep.py)")
    parser.add_argument(
        "--cases",
        help="sweep subset, e.g. lilt:1x512,lxmert:b32 (or lilt, lxmert); with --only backward, "
        "the forward + backward shapes (default lilt:1x512,lxmert:b8)",
    )
    parser.add_argument("--configs", help="sweep subset of f32,f64,f32x1 (default: all)")
    parser.add_argument("--settings", help="sweep subset of defaults,tuned (default: both)")
    parser.add_argument("--repeats", type=int, help="sweep: paired repeats per shape (default 7, --quick 3)")
    parser.add_argument("--dry-run", action="store_true", help="sweep: print the plan and estimate only")
    parser.add_argument(
        "--torch-tuned-env", help="torch's tuned settings as KEY=VAL,... (default: TORCH_TUNED_ENV)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        sys.path.insert(0, ROOT)
        sys.path.insert(0, HERE)
        spec = json.loads(args.worker)
        if spec["kind"] == "sweep":
            from sweep import sweep_worker

            print(json.dumps(sweep_worker(spec)))
            return 0
        import backward

        run = {
            "load": load_worker,
            "memory": memory_worker,
            "timing": timing_worker,
            "bwd_memory": backward.memory_worker,
            "bwd_timing": backward.timing_worker,
        }[spec["kind"]]
        print(json.dumps(run(spec)))
        return 0

    if args.sweep:
        sys.path.insert(0, ROOT)
        sys.path.insert(0, HERE)
        from sweep import run_sweep

        return run_sweep(args, cores, args.out)

    repeats = 3 if args.quick else 10
    thread_counts = [int(t) for t in args.threads.split(",")]
    only = set(args.only.split(",")) if args.only else {"lilt", "lxmert", "load", "backward"}
    unknown = only - {"lilt", "lxmert", "load", "backward"}
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from lilt, lxmert, load, backward")
    if "backward" in only:
        return run_backward(args, repeats, thread_counts, forward_too=bool(only - {"backward"}))
    return run_forward(args, repeats, thread_counts, only)


def _shown_command(argv: list[str]) -> str:
    """The command line a results file shows, less the options that name this machine's
    directories (``--out``, ``--checkpoints``), which do not change a number."""
    shown, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--out", "--checkpoints"):
            skip = True
        elif not a.startswith(("--out=", "--checkpoints=")):
            shown.append(a)
    return " ".join(shown)


def run_backward(args, repeats: int, thread_counts: list[int], forward_too: bool) -> int:
    """The forward + backward rows (``backward.py``) into ``backward.json`` / ``backward.md``; then
    the forward rows too when ``forward_too``."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, HERE)
    import backward
    from sweep import parse_cases

    if args.cases:
        shapes = [(m, *sh) for m, v in parse_cases(args.cases).items() for sh in v]
    else:
        shapes = list(backward.CASES.values())
    results = {
        "machine": machine_info(thread_counts),
        "command": _shown_command(sys.argv[1:]) or "--only backward",
        "repeats": repeats,
        "threads": thread_counts,
        "workers": [],
    }
    with tempfile.TemporaryDirectory(prefix="refimpl-bench-") as tmp:
        paths = build_checkpoints(args.checkpoints or tmp)
        for spec, threads, setting in backward.specs(shapes, paths, thread_counts, SETTINGS, repeats):
            results["workers"].append(run_worker(spec, _env(threads, setting)))
    for w in results["workers"]:
        w.pop("path", None)
    results["rows"] = backward.summarize(results["workers"])
    text = backward.to_markdown(results)
    write_text(os.path.join(args.out, "backward.json"), json.dumps(results, indent=1))
    write_text(os.path.join(args.out, "backward.md"), text)
    print(text)
    if forward_too:
        only = set(args.only.split(",")) - {"backward"} if args.only else {"lilt", "lxmert", "load"}
        return run_forward(args, repeats, thread_counts, only)
    return 0


def run_forward(args, repeats: int, thread_counts: list[int], only: set) -> int:
    """The forward rows, the load row and the GPU rows into ``results.json`` / ``results.md``."""

    sys.path.insert(0, ROOT)
    from refimpl import backend

    gpu = backend.cuda_available()
    results = {
        "machine": machine_info(thread_counts),
        "quick": args.quick,
        "repeats": repeats,
        "gpu": gpu,
        "memory": [],
        "timing": [],
        "load": None,
    }
    variants = [("ours", "float32"), ("torch", "float32"), ("ours", "float64")]
    if not args.quick:
        variants.append(("torch", "float64"))
    with tempfile.TemporaryDirectory(prefix="refimpl-bench-") as tmp:
        paths = build_checkpoints(args.checkpoints or tmp)
        for case in ("lilt", "lxmert"):
            if case not in only:
                continue
            env = _env(thread_counts[0])
            common = dict(threads=thread_counts[0], device="cpu", case=case, path=paths[case])
            for impl, dtype in variants:
                out = os.path.join(tmp, f"{case}-{impl}-{dtype}.npy")
                spec = dict(common, kind="memory", impl=impl, dtype=dtype, out=out)
                results["memory"].append(run_worker(spec, env))
            for threads in thread_counts:
                for setting in SETTINGS:
                    spec = dict(
                        common,
                        kind="timing",
                        threads=threads,
                        variants=variants,
                        repeats=repeats,
                        setting=setting,
                    )
                    results["timing"].append(run_worker(spec, _env(threads, setting)))
            if gpu:
                gpu_variants = [("ours", "float32"), ("torch", "float32")]
                spec = dict(
                    common,
                    kind="timing",
                    case=case + "_gpu",
                    device="cuda",
                    variants=gpu_variants,
                    setting="tuned",
                )
                results["timing"].append(run_worker(dict(spec, repeats=repeats), env))
        if "load" in only:
            spec = dict(kind="load", case="lilt", threads=thread_counts[0], path=paths["lilt"], repeats=11)
            results["load"] = run_worker(spec, _env(thread_counts[0]))
        results["rows"] = summarize(results)
    for r in results["memory"] + results["timing"] + [results["load"] or {}]:
        r.pop("path", None)
        r.pop("out", None)
    write_text(os.path.join(args.out, "results.json"), json.dumps(results, indent=1))
    write_text(os.path.join(args.out, "results.md"), to_markdown(results))
    print(to_markdown(results))
    return 0


def summarize(results: dict) -> list[dict]:
    """One row per (case, dtype): medians, ours/torch time and peak-memory ratios, max |ours - torch|."""
    import numpy as np

    mem = {(m["case"], m["impl"], m["dtype"]): m for m in results["memory"] if "error" not in m}
    rows = []
    for timing in results["timing"]:
        if "error" in timing:
            continue
        t = {(x["impl"], x["dtype"]): x["median_s"] for x in timing["timings"]}
        for dtype in ("float32", "float64"):
            if ("ours", dtype) not in t:
                continue
            row = {
                "case": timing["case"],
                "device": timing["device"],
                "dtype": dtype,
                "threads": timing["threads"],
                "setting": timing.get("setting", "tuned"),
                "load_average": timing.get("load_average", [float("nan")])[0],
                "ours_s": t["ours", dtype],
            }
            if ("torch", dtype) in t:
                row["torch_s"] = t["torch", dtype]
                row["time_ratio"] = row["ours_s"] / row["torch_s"]
            if dtype == "float64" and ("ours", "float32") in t:
                row["f64_over_f32"] = t["ours", "float64"] / t["ours", "float32"]
            ours_m, torch_m = (
                mem.get((timing["case"], "ours", dtype)),
                mem.get((timing["case"], "torch", dtype)),
            )
            if ours_m:
                row["ours_peak_mib"] = ours_m["peak_extra_mib"]
            if torch_m:
                row["torch_peak_mib"] = torch_m["peak_extra_mib"]
            if ours_m and torch_m:
                row["peak_ratio"] = ours_m["peak_extra_mib"] / max(torch_m["peak_extra_mib"], 1e-9)
                diff = np.abs(np.load(ours_m["out"]) - np.load(torch_m["out"]))
                row["max_abs_diff_vs_torch"] = float(diff.max())
            rows.append(row)
    return rows


TARGETS = {
    ("lilt", "float32"): "time ratio <= 1.0 (<= 0.85 at defaults), peak ratio <= 1",
    ("lxmert", "float32"): "time ratio <= 1.0, peak ratio <= 1",
    ("lilt", "float64"): "time ratio <= 1.0, ours f64 <= 2.2x ours f32",
    ("lxmert", "float64"): "time ratio <= 1.0, ours f64 <= 2.2x ours f32",
}
SHAPES = {
    "lilt": "1 x 512",
    "lxmert": "32 x 20 tokens, 36 boxes",
    "lilt_gpu": "8 x 512",
    "lxmert_gpu": "32 x 20, 36",
}


def to_markdown(results: dict) -> str:
    """The published table (docs/benchmarks includes this file)."""
    m = results["machine"]
    load_avg = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"])
    lines = [
        "# Benchmarks: refimpl (NumPy) vs transformers 4.56.2 (torch eager)",
        "",
        f"Generated by `benchmarks/run.py{' --quick' if results['quick'] else ''}` on {m['date']}. "
        "Random-weight checkpoints at real base sizes, float32 on disk.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} ({m['cores']} cores available) |",
        f"| threads | {', '.join(map(str, m['threads']))}: each count used by both "
        "(`OMP/OPENBLAS/MKL_NUM_THREADS` and `torch.set_num_threads`) |",
        f"| BLAS (NumPy) | {m['blas']} |",
        f"| versions | Python {m['python']}, NumPy {m['numpy']}, torch {m['torch']}, transformers {m['transformers']} |",
        "| settings | **defaults**: both libraries as a user gets them (only the thread count set); **tuned**: "
        "both call `tune_allocator()`, ours `quiet_blas_threads()`, torch "
        f"`{' '.join(f'{k}={v}' for k, v in m['torch_tuned_env'].items()) or 'no extra environment'}` |",
        f"| platform | {m['platform']} |",
        f"| load average at start | {load_avg} |",
        "",
        f"**Time**: median of {results['repeats']} forwards per variant after two warm-ups, ours and "
        "torch loaded in one process and run alternately, so both see the same background load. "
        "**Peak**: extra resident memory of one forward (`VmHWM` after `clear_refs` minus `VmRSS` with the "
        f"weights resident), each implementation in its own process, at {m['threads'][0]} thread(s). "
        "Both call `refimpl.backend.tune_allocator()` in the memory runs. "
        "**Diff**: max |ours - torch| of the main output (LiLT `last_hidden_state`, LXMERT `language_output`). "
        "**Load**: the machine's 1-minute load average when that timing ended: other work on the machine "
        "(with fewer free cores than threads) moves the 2-thread ratio by several percent either way.",
        "",
        "## CPU",
        "",
        "| model | input | dtype | threads | setting | ours (s) | torch (s) | ours / torch | load | ours peak (MiB) "
        "| torch peak (MiB) | peak ratio | diff | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results.get("rows", []):
        if row["device"] != "cpu":
            continue
        target = TARGETS.get((row["case"], row["dtype"]), "")
        if "f64_over_f32" in row:
            target += f" (is {row['f64_over_f32']:.2f}x)"
        lines.append(
            f"| {row['case']} base | {SHAPES[row['case']]} | {row['dtype']} | {row['threads']} | {row['setting']} "
            f"| {_f(row, 'ours_s', 3)} "
            f"| {_f(row, 'torch_s', 3)} | {_f(row, 'time_ratio', 2)} | {_f(row, 'load_average', 1)} "
            f"| {_f(row, 'ours_peak_mib', 0)} "
            f"| {_f(row, 'torch_peak_mib', 0)} | {_f(row, 'peak_ratio', 2)} | {_e(row, 'max_abs_diff_vs_torch')} "
            f"| {target} |"
        )
    load = results.get("load")
    lines += ["", "## Loading LiLT base `model.safetensors`", ""]
    if load and "error" not in load:
        lines += [
            "| file | first load | warm load (median) | zero-copy | RSS after load | `from_pretrained` (float32) | target |",
            "|---|---|---|---|---|---|---|",
            f"| {load['file_mib']:.0f} MiB | {load['first_ms']:.1f} ms | {load['warm_ms']:.2f} ms | "
            f"{'yes' if load['zero_copy'] else 'no'} | {load['rss_after_first_load_mib']:.0f} MiB | "
            f"{load['from_pretrained_ms']:.1f} ms | warm <= 10 ms, zero-copy |",
        ]
    else:
        lines.append(f"not run{': ' + load['error'] if load else ''}")
    lines += ["", "## GPU (float32, CuPy vs torch CUDA)", ""]
    gpu_rows = [r for r in results.get("rows", []) if r["device"] == "cuda"]
    if not results.get("gpu"):
        lines.append("not run: no GPU in this environment")
    else:
        lines += ["| model | input | ours (s) | torch (s) | ours / torch |", "|---|---|---|---|---|"]
        for row in gpu_rows:
            lines.append(
                f"| {row['case'][:-4]} base | {SHAPES[row['case']]} | {_f(row, 'ours_s', 4)} "
                f"| {_f(row, 'torch_s', 4)} | {_f(row, 'time_ratio', 2)} |"
            )
    errors = [r for r in results["memory"] + results["timing"] + [load or {}] if "error" in r]
    if errors:
        lines += ["", "## Errors", ""] + [
            f"- {r['kind']} {r['case']} {r.get('impl', '')}: {r['error']}" for r in errors
        ]
    return "\n".join(lines) + "\n"


def _f(row, key, digits):
    return "n/a" if key not in row else f"{row[key]:.{digits}f}"


def _e(row, key):
    return "n/a" if key not in row else f"{row[key]:.1e}"


if __name__ == "__main__":
    sys.exit(main())
