"""Side-by-side benchmarks against the oracle (transformers 4.56.2, torch eager) on this machine.

One command runs every case and writes ``benchmarks/results.json`` and ``benchmarks/results.md``::

    .venv/bin/python benchmarks/run.py            # full: more repeats
    .venv/bin/python benchmarks/run.py --quick    # fewer repeats, same cases

Cases (random-weight checkpoints at real base sizes, built with the oracle's classes and
saved with ``save_pretrained`` into a temporary directory):

* LiLT base (lilt-roberta-en-base shape), batch 1 x 512 tokens: ours vs torch, float32;
  ours float64.
* LXMERT base (9/5/5 layers, 768, 2048-d features), batch 32, 20 tokens, 36 boxes: ours vs
  torch, float32; ours float64.
* Loading LiLT's ``model.safetensors`` (zero-copy memory map), warm.
* GPU rows (CuPy vs torch CUDA) when both see a GPU; otherwise marked "not run".

Every case runs in its own subprocess, so peak memory is measured per case: the worker loads
the model, runs one warm-up forward (which also faults in memory-mapped weights), reads
``VmRSS`` as the baseline, resets the high-water mark (``echo 5 > /proc/self/clear_refs``),
runs one forward and reads ``VmHWM``: the peak *extra* memory of one forward. It then times
``repeats`` forwards. Both libraries use the same thread count: ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` are set before NumPy / torch are imported, and
``torch.set_num_threads`` gets the same number. Both workers call
``refimpl.backend.tune_allocator()`` (process-wide glibc malloc settings), so neither pays for
page faults that the other avoids.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

LILT_BASE = dict(
    vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5,
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    channel_shrink_ratio=4, max_2d_position_embeddings=1024,
)  # fmt: skip
LXMERT_BASE = dict(
    l_layers=9, x_layers=5, r_layers=5, hidden_size=768, visual_feat_dim=2048, visual_pos_dim=4
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


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` value in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _touch_weights(model, impl: str) -> float:
    """Read one value per 4 KiB page of every weight, so memory-mapped weights are resident
    before the memory baseline is taken (torch's are already in anonymous memory)."""
    if impl == "torch":
        tensors = [p.detach().reshape(-1) for p in model.parameters()]
        total = sum(float(t[:: 4096 // t.element_size()].sum()) for t in tensors if t.device.type == "cpu")
    else:
        from refimpl import backend

        total = 0.0
        for v in model.params.values():
            if v.dtype.kind == "f" and not backend.is_device_array(v):
                total += float(v.reshape(-1)[:: 4096 // v.itemsize].sum())
    return total  # the value itself does not matter


def make_inputs(model: str, batch: int, seq: int, boxes: int, seed: int = 0) -> dict:
    """Seeded inputs (NumPy, int64 ids, float32 features) for one case."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if model == "lilt":
        x0 = rng.integers(0, 900, (batch, seq, 1))
        y0 = rng.integers(0, 900, (batch, seq, 1))
        w = rng.integers(0, 100, (batch, seq, 1))
        h = rng.integers(0, 100, (batch, seq, 1))
        return {
            "input_ids": rng.integers(3, LILT_BASE["vocab_size"], (batch, seq)),
            "bbox": np.concatenate([x0, y0, x0 + w, y0 + h], axis=-1),
            "attention_mask": np.ones((batch, seq), np.int64),
        }
    return {
        "input_ids": rng.integers(0, 30522, (batch, seq)),
        "attention_mask": np.ones((batch, seq), np.int64),
        "visual_feats": rng.standard_normal((batch, boxes, LXMERT_BASE["visual_feat_dim"])).astype(
            np.float32
        ),
        "visual_pos": rng.random((batch, boxes, 4)).astype(np.float32),
    }


def _main_output(out, model: str):
    return out.last_hidden_state if model == "lilt" else out.language_output


def worker(spec: dict) -> dict:
    """Run one case (``spec``: impl, case, dtype, device, path, repeats, out) and return its numbers."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from refimpl import backend

    backend.tune_allocator()
    model_name, batch, seq, boxes = CASES[spec["case"]]
    impl, dtype, device, threads = spec["impl"], spec["dtype"], spec["device"], spec["threads"]
    inputs = make_inputs(model_name, batch, seq, boxes)
    result = dict(spec)
    rss0 = _status_kib("VmRSS")

    t0 = time.perf_counter()
    if impl == "torch":
        import torch
        import transformers

        torch.set_num_threads(threads)
        cls = transformers.LiltModel if model_name == "lilt" else transformers.LxmertModel
        tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        model = cls.from_pretrained(spec["path"], torch_dtype=tdtype).eval().to(device)
        tin = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
        if dtype == "float64" and "visual_feats" in tin:
            tin = {k: (v.double() if v.is_floating_point() else v) for k, v in tin.items()}
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def forward():
            with torch.inference_mode():
                out = _main_output(model(**tin), model_name)
            sync()
            return out.float().cpu().numpy() if dtype == "float32" else out.cpu().numpy()

        result["torch_threads"] = torch.get_num_threads()
    else:
        import refimpl

        model = refimpl.from_pretrained(spec["path"], dtype=dtype, device=device)
        rin = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in inputs.items()}
        rin = {k: backend.to_device(v, device) for k, v in rin.items()}
        if device == "cuda":
            cp = backend.cupy()
            sync = cp.cuda.Device().synchronize
        else:
            sync = lambda: None  # noqa: E731

        def forward():
            out = _main_output(model(**rin), model_name)
            sync()
            return backend.to_numpy(out)

    result["load_s"] = time.perf_counter() - t0
    result["rss_after_load_mib"] = (_status_kib("VmRSS") - rss0) / 1024

    # peak memory of the first forward over the loaded model, its weights resident
    _touch_weights(model, impl)
    rss_base = _status_kib("VmRSS")
    result["hwm_reset"] = _reset_peak()
    out = forward()
    result["peak_extra_mib"] = (_status_kib("VmHWM") - rss_base) / 1024
    result["peak_total_mib"] = _status_kib("VmHWM") / 1024
    forward()  # one more warm-up before timing

    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        forward()
        times.append(time.perf_counter() - t)
    result["times_s"] = times
    result["median_s"] = float(np.median(times))
    result["min_s"] = float(np.min(times))
    np.save(spec["out"], out.astype(np.float64))
    return result


def load_worker(spec: dict) -> dict:
    """Time reading LiLT's ``model.safetensors`` (ours: memory-mapped) cold-ish and warm."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from refimpl import weights

    path = os.path.join(spec["path"], "model.safetensors")
    result = dict(spec, file_mib=os.path.getsize(path) / 2**20)
    rss0 = _status_kib("VmRSS")
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        state = weights.load_state_dict(spec["path"], dtype=np.float32)
        times.append(time.perf_counter() - t)
        if len(times) == 1:
            result["rss_after_first_load_mib"] = (_status_kib("VmRSS") - rss0) / 1024
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


# --------------------------------------------------------------------------------------------
# parent side: build checkpoints, run the workers, write the tables
# --------------------------------------------------------------------------------------------


def build_checkpoints(tmp: str) -> dict:
    """Random-weight base-size checkpoints (float32 safetensors) saved with save_pretrained.

    A checkpoint already in ``tmp/<name>`` (from ``--checkpoints``) is reused.
    """
    import torch
    import transformers

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from _oracle import build, save

    paths = {}
    for name, cls, cfg in (
        ("lilt", transformers.LiltModel, transformers.LiltConfig(**LILT_BASE)),
        ("lxmert", transformers.LxmertModel, transformers.LxmertConfig(**LXMERT_BASE)),
    ):
        if os.path.exists(os.path.join(tmp, name, "model.safetensors")):
            paths[name] = os.path.join(tmp, name)
            continue
        t = time.perf_counter()
        model = build(cls, cfg, seed=0, std=0.02, dtype=torch.float32)
        paths[name] = save(model, os.path.join(tmp, name), safe=True)
        del model
        print(f"built {name} checkpoint in {time.perf_counter() - t:.1f} s", flush=True)
    return paths


def run_case(spec: dict, env: dict) -> dict:
    """Run one worker subprocess and return its JSON result (or the error)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return dict(spec, error=(p.stderr or p.stdout).strip().splitlines()[-1:] or ["failed"])
    return json.loads(p.stdout.strip().splitlines()[-1])


def machine_info(threads: int) -> dict:
    import numpy
    import torch
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = "unknown"
    try:
        cfg = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:
        pass
    try:
        from threadpoolctl import threadpool_info

        pools = [
            f"{p['internal_api']} {p['version']} ({p['num_threads']} threads)" for p in threadpool_info()
        ]
        blas += "; runtime: " + ", ".join(pools)
    except ImportError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "blas": blas,
        "torch_parallel": torch.__config__.parallel_info().splitlines()[0:3],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (3 instead of 10)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads for both")
    parser.add_argument("--out", default=HERE, help="directory for results.json / results.md")
    parser.add_argument("--checkpoints", help="keep (and reuse) the built checkpoints in this directory")
    parser.add_argument("--only", help="comma-separated cases to run (lilt, lxmert, load); default all")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        result = load_worker(spec) if spec["impl"] == "load" else worker(spec)
        print(json.dumps(result))
        return 0

    repeats = 3 if args.quick else 10
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")

    sys.path.insert(0, ROOT)
    from refimpl import backend

    gpu = backend.cuda_available()
    results = {"machine": machine_info(args.threads), "quick": args.quick, "repeats": repeats, "cases": []}
    with tempfile.TemporaryDirectory(prefix="refimpl-bench-") as tmp:
        paths = build_checkpoints(args.checkpoints or tmp)
        specs = []
        for case in ("lilt", "lxmert"):
            for impl, dtype in (
                ("ours", "float32"),
                ("torch", "float32"),
                ("ours", "float64"),
                ("torch", "float64"),
            ):
                if dtype == "float64" and impl == "torch" and args.quick:
                    continue
                specs.append(dict(impl=impl, case=case, dtype=dtype, device="cpu"))
        if gpu:
            for case in ("lilt_gpu", "lxmert_gpu"):
                for impl in ("ours", "torch"):
                    specs.append(dict(impl=impl, case=case, dtype="float32", device="cuda"))
        specs.append(dict(impl="load", case="lilt", dtype="float32", device="cpu", repeats=11))
        if args.only:
            keep = set(args.only.split(","))
            specs = [s for s in specs if s["case"].split("_")[0] in keep or s["impl"] in keep]
        for i, spec in enumerate(specs):
            spec.setdefault("repeats", repeats)
            spec.update(
                threads=args.threads, path=paths[CASES[spec["case"]][0]], out=os.path.join(tmp, f"{i}.npy")
            )
            t = time.perf_counter()
            res = run_case(spec, env)
            res["wall_s"] = time.perf_counter() - t
            print(_one_line(res), flush=True)
            results["cases"].append(res)
        _add_ratios_and_diffs(results)
    results["gpu"] = gpu
    for r in results["cases"]:
        r.pop("path", None)
        r.pop("out", None)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(to_markdown(results))
    print(to_markdown(results))
    return 0


def _one_line(r: dict) -> str:
    if "error" in r:
        return f"{r['impl']:>5} {r['case']:<10} {r['dtype']}: ERROR {r['error']}"
    if r["impl"] == "load":
        return f" load {r['case']:<10}: first {r['first_ms']:.1f} ms, warm {r['warm_ms']:.2f} ms"
    return (
        f"{r['impl']:>5} {r['case']:<10} {r['dtype']} {r['device']}: median {r['median_s']:.3f} s "
        f"(min {r['min_s']:.3f}), peak +{r['peak_extra_mib']:.0f} MiB"
    )


def _find(results, impl, case, dtype, device):
    for r in results["cases"]:
        if (r["impl"], r["case"], r["dtype"], r["device"]) == (
            impl,
            case,
            dtype,
            device,
        ) and "error" not in r:
            return r
    return None


def _add_ratios_and_diffs(results: dict) -> None:
    """Ratios ours/torch (time, peak memory) and max |ours - torch| of the main output."""
    import numpy as np

    for r in results["cases"]:
        if r["impl"] != "ours" or "error" in r:
            continue
        t = _find(results, "torch", r["case"], r["dtype"], r["device"])
        if t is not None:
            r["time_ratio"] = r["median_s"] / t["median_s"]
            r["peak_ratio"] = r["peak_extra_mib"] / max(t["peak_extra_mib"], 1e-9)
            r["max_abs_diff_vs_torch"] = float(np.max(np.abs(np.load(r["out"]) - np.load(t["out"]))))
        if r["dtype"] == "float64":
            f32 = _find(results, "ours", r["case"], "float32", r["device"])
            if f32 is not None:
                r["f64_over_f32"] = r["median_s"] / f32["median_s"]


TARGETS = {
    ("lilt", "float32"): "time ratio <= 1.0",
    ("lxmert", "float32"): "time ratio <= 1.1",
    ("lilt", "float64"): "<= 2.5x our float32",
    ("lxmert", "float64"): "<= 2.5x our float32",
}


def to_markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks: refimpl (NumPy) vs transformers 4.56.2 (torch eager)",
        "",
        f"Generated by `benchmarks/run.py{' --quick' if results['quick'] else ''}` on {m['date']}; "
        f"median of {results['repeats']} forwards after one warm-up, each case in its own process.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} ({m['cores']} cores available) |",
        f"| threads | {m['threads']} for both (OMP/OpenBLAS/MKL env vars and `torch.set_num_threads`) |",
        f"| BLAS (NumPy) | {m['blas']} |",
        f"| versions | Python {m['python']}, NumPy {m['numpy']}, torch {m['torch']}, transformers {m['transformers']} |",
        f"| platform | {m['platform']} |",
        "",
        "Peak memory is the extra resident memory of one forward over the resident set after loading "
        "and one warm-up forward (`VmHWM` after `clear_refs` minus `VmRSS`), in a separate process per case. "
        "Both workers call `refimpl.backend.tune_allocator()`. Random-weight base-size checkpoints, float32 on disk.",
        "",
        "## CPU",
        "",
        "| model | input | dtype | ours (s) | torch (s) | ours / torch | ours peak (MiB) | torch peak (MiB) "
        "| peak ratio | max abs diff | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    shapes = {
        "lilt": "1 x 512",
        "lxmert": "32 x 20 tok, 36 boxes",
        "lilt_gpu": "8 x 512",
        "lxmert_gpu": "32 x 20, 36",
    }
    for case in ("lilt", "lxmert"):
        for dtype in ("float32", "float64"):
            o = _find(results, "ours", case, dtype, "cpu")
            t = _find(results, "torch", case, dtype, "cpu")
            if o is None and t is None:
                continue
            target = TARGETS.get((case, dtype), "")
            if dtype == "float64" and o is not None and "f64_over_f32" in o:
                target += f" (is {o['f64_over_f32']:.2f}x)"
            lines.append(
                f"| {case} base | {shapes[case]} | {dtype} | {_s(o, 'median_s')} | {_s(t, 'median_s')} "
                f"| {_r(o, 'time_ratio')} | {_s(o, 'peak_extra_mib', 0)} | {_s(t, 'peak_extra_mib', 0)} "
                f"| {_r(o, 'peak_ratio')} | {_e(o, 'max_abs_diff_vs_torch')} | {target} |"
            )
    load = next((r for r in results["cases"] if r["impl"] == "load" and "error" not in r), None)
    lines += ["", "## Loading LiLT base `model.safetensors`", ""]
    if load:
        lines += [
            "| file | first load | warm load (median) | zero-copy | RSS after load | `from_pretrained` | target |",
            "|---|---|---|---|---|---|---|",
            f"| {load['file_mib']:.0f} MiB | {load['first_ms']:.1f} ms | {load['warm_ms']:.2f} ms | "
            f"{'yes' if load['zero_copy'] else 'no'} | {load['rss_after_first_load_mib']:.0f} MiB | "
            f"{load['from_pretrained_ms']:.1f} ms | warm <= 10 ms, zero-copy |",
        ]
    else:
        lines.append("load benchmark failed: see results.json")
    lines += ["", "## GPU (float32, CuPy vs torch CUDA)", ""]
    if not results.get("gpu"):
        lines.append("not run: no GPU in this environment")
    else:
        lines += [
            "| model | input | ours (s) | torch (s) | ours / torch | max abs diff |",
            "|---|---|---|---|---|---|",
        ]
        for case in ("lilt_gpu", "lxmert_gpu"):
            o = _find(results, "ours", case, "float32", "cuda")
            t = _find(results, "torch", case, "float32", "cuda")
            lines.append(
                f"| {case[:-4]} base | {shapes[case]} | {_s(o, 'median_s', 4)} | {_s(t, 'median_s', 4)} "
                f"| {_r(o, 'time_ratio')} | {_e(o, 'max_abs_diff_vs_torch')} |"
            )
    errors = [r for r in results["cases"] if "error" in r]
    if errors:
        lines += ["", "## Errors", ""] + [
            f"- {r['impl']} {r['case']} {r['dtype']}: {r['error']}" for r in errors
        ]
    return "\n".join(lines) + "\n"


def _s(r, key, digits=3):
    return "n/a" if r is None or key not in r else f"{r[key]:.{digits}f}"


def _r(r, key):
    return "n/a" if r is None or key not in r else f"{r[key]:.2f}"


def _e(r, key):
    return "n/a" if r is None or key not in r else f"{r[key]:.1e}"


if __name__ == "__main__":
    sys.exit(main())
