"""What ``run.py`` and ``sweep.py`` share: the base configs, the settings of a row, loading
either library, seeded inputs, the worker environment and subprocess, and the machine's
description (see ``run.py`` for how the benchmarks measure).

Imports of NumPy, torch and refimpl stay inside the functions: a worker process sets its
thread counts in the environment before either library is imported.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
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

#: The two rows of every case. ``defaults``: each library as a user gets it (only the thread
#: count is set, for both). ``tuned``: each library with its documented tuning, both at once.
SETTINGS = ("defaults", "tuned")

#: Seconds of pause before every timed forward. Both libraries share one process, and at its
#: defaults NumPy's OpenBLAS keeps its idle workers spinning for 2^28 cycles (about 0.1 s)
#: after each GEMM: a torch forward started right after ours ran on one core less (LiLT 1x64
#: float32, 2 threads: 173 ms right after ours, 103 ms after a pause; ours 134 ms either way).
#: The pause lets the other library's threads go idle, so each is timed as in a process of
#: its own.
SETTLE_S = 0.3

#: Environment variables that change either library's threading or allocation; a ``defaults``
#: worker runs without them (a ``tuned`` one gets TORCH_TUNED_ENV and our helpers instead).
TUNING_VARS = (
    "OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "OMP_PLACES", "OMP_SCHEDULE",
    "GOMP_SPINCOUNT", "GOMP_CPU_AFFINITY", "KMP_BLOCKTIME", "KMP_AFFINITY", "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD",
)  # fmt: skip

#: torch's tuned environment beyond ``tune_allocator()`` (its guide's allocator advice, applied
#: process-wide in the worker) and the thread count (set for both). Empty by default: the
#: guide's thread binding (``OMP_PROC_BIND=close OMP_PLACES=cores``) makes libgomp pin the
#: process's main thread to core 0 when torch is imported (``os.sched_getaffinity(0)`` goes
#: from {0, 1} to {0}), and every thread NumPy or refimpl starts afterwards inherits that
#: mask: in a shared process it tunes torch by starving the other library (ours/torch went
#: from about 1.7 to 7.5 at LiLT 1x64). Try other settings with ``--torch-tuned-env``.
TORCH_TUNED_ENV: dict = {}


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


def load_impl(impl: str, model_name: str, dtype: str, device: str, path: str, threads: int):
    """Load ours (``refimpl.from_pretrained``) or the oracle's model from ``path``."""
    if impl == "torch":
        import torch
        import transformers

        torch.set_num_threads(threads)
        cls = transformers.LiltModel if model_name == "lilt" else transformers.LxmertModel
        tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        return cls.from_pretrained(path, dtype=tdtype).eval().to(device)
    import refimpl

    return refimpl.from_pretrained(path, dtype=dtype, device=device)


def make_forward(impl: str, model, model_name: str, dtype: str, device: str, inputs: dict):
    """A no-argument forward of ``model`` on ``inputs`` that returns the main output on the host."""
    from refimpl import backend

    if impl == "torch":
        import torch

        tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        tin = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
        tin = {k: (v.to(tdtype) if v.is_floating_point() else v) for k, v in tin.items()}
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def forward():
            with torch.inference_mode():
                out = _main_output(model(**tin), model_name)
            sync()
            return out.cpu().numpy()

        return forward

    rin = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in inputs.items()}
    rin = {k: backend.to_device(v, device) for k, v in rin.items()}
    sync = backend.cupy().cuda.Device().synchronize if device == "cuda" else (lambda: None)

    def forward():
        out = _main_output(model(**rin), model_name)
        sync()
        return backend.to_numpy(out)

    return forward


def apply_setting(setting: str) -> dict:
    """Apply the in-process part of a row's setting (see :data:`SETTINGS`); returns what was done.

    ``defaults``: nothing. ``tuned``: ``refimpl.backend.tune_allocator()`` (glibc keeps freed
    memory: process-wide, so torch gets it too) and ``refimpl.backend.quiet_blas_threads()``
    (NumPy's OpenBLAS workers sleep after each GEMM); torch's OpenMP settings come from the
    environment the parent gave this process (:data:`TORCH_TUNED_ENV`).
    """
    from refimpl import backend

    if setting == "defaults":
        return {}
    return {"tune_allocator": backend.tune_allocator(), "quiet_blas_threads": backend.quiet_blas_threads()}


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


def run_worker(spec: dict, env: dict) -> dict:
    """Run one worker subprocess and return its JSON result (or the error)."""
    cmd = [sys.executable, os.path.join(HERE, "run.py"), "--worker", json.dumps(spec)]
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        result = dict(spec, error=((p.stderr or p.stdout).strip().splitlines() or ["failed"])[-1])
    else:
        result = json.loads(p.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t
    print(_one_line(result), flush=True)
    return result


def machine_info(threads: list[int]) -> dict:
    import numpy
    import torch
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        flags = set(info.get("flags", "").split())
        isa = [
            name
            for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile"))
            if flag in flags
        ]
        cpu = f"{info['model name']}, family {info.get('cpu family')} model {info.get('model')}, {'/'.join(isa) or 'no AVX2'}"
    except (OSError, KeyError):
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
            p["internal_api"]
            + (f" {p['version']}" if p.get("version") else "")
            + (f" {p['architecture']} kernel" if p.get("architecture") else "")
            + (f", {p['threading_layer']}" if p.get("threading_layer") else "")
            + f" ({p['num_threads']} threads)"
            for p in threadpool_info()
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
        "torch_blas": [
            line.strip()
            for line in torch.__config__.parallel_info().splitlines()
            if "Math Kernel" in line or line.startswith("OpenMP") or "MKL-DNN" in line
        ],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "load_average_at_start": os.getloadavg(),
        "torch_tuned_env": TORCH_TUNED_ENV,
    }


def _env(threads: int, setting: str = "tuned", torch_env: dict | None = None) -> dict:
    """The worker environment: ``threads`` for every BLAS / OpenMP pool, the repo importable,
    no tuning variable (``defaults``) or torch's tuned OpenMP settings (``tuned``)."""
    env = {k: v for k, v in os.environ.items() if k not in TUNING_VARS}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    if setting == "tuned":
        env.update(TORCH_TUNED_ENV if torch_env is None else torch_env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _one_line(r: dict) -> str:
    if "error" in r:
        return f"{r['kind']:>7} {r['case']}: ERROR {r['error']}"
    if r["kind"] == "sweep":
        return f"  sweep {r['model']} {r['config']} {r['setting']}: " + ", ".join(
            f"{x['case']} {x['ratio_median']:.2f}" for x in r["rows"]
        )
    if r["kind"] == "load":
        return f"   load {r['case']}: first {r['first_ms']:.1f} ms, warm {r['warm_ms']:.2f} ms"
    if r["kind"] == "bwd_memory":
        return f" memory {r['case']} {r['impl']} forward+backward: peak +{r['peak_extra_mib']:.0f} MiB"
    if r["kind"] == "bwd_timing":
        return (
            f" timing {r['case']} forward+backward {r['threads']} thread(s) {r['setting']}: "
            + ", ".join(f"{t['impl']} {t['median_s']:.3f} s" for t in r["timings"])
            + f", grad diff {r['grad_rel_diff']:.1e}"
        )
    if r["kind"] == "memory":
        return f" memory {r['case']} {r['impl']} {r['dtype']}: peak +{r['peak_extra_mib']:.0f} MiB"
    return f" timing {r['case']} {r['threads']} thread(s): " + ", ".join(
        f"{t['impl']} {t['dtype']} {t['median_s']:.3f} s" for t in r["timings"]
    )


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` value in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def touch_weights(model, impl: str) -> float:
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


def write_text(path: str, text: str) -> None:
    """Write a results file through refimpl's one atomic writer (a unique temp file in the same
    directory, fsynced and renamed into place; on failure ``path`` keeps its old bytes)."""
    from refimpl.files import atomic_write  # the tree on sys.path: the one the caller measures

    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
