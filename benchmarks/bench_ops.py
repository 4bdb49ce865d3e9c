"""Accuracy and speed of the core ops: erf (vs math.erf and np.vectorize), gelu / softmax /
layer_norm (vs torch, single-threaded). Not a test: it prints numbers and asserts nothing.

    OMP_NUM_THREADS=1 python benchmarks/bench_ops.py            # quick (about a minute)
    OMP_NUM_THREADS=1 python benchmarks/bench_ops.py --exhaustive-float32   # + every float32 (minutes)

Timings are CPU times, the minimum over repeats, with the contenders interleaved so that a busy machine
slows them alike. torch runs with ``torch.set_num_threads(1)``; NumPy with whatever BLAS threads
``OMP_NUM_THREADS`` allows (only ``linear`` uses BLAS, and it is not timed here).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refimpl import backend, ops  # noqa: E402

ERF_REF = np.vectorize(math.erf, otypes=[np.float64])


def best_ms(fns: dict, repeat: int) -> dict:
    """Min CPU time (ms) of each callable, calls interleaved round-robin.

    CPU time (``time.process_time``) rather than wall time, so other processes on a shared
    machine do not inflate the numbers; on a quiet machine the two agree (all single-threaded).
    """
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.process_time()
            f()
            times[k].append(time.process_time() - t0)
    return {k: 1e3 * min(v) for k, v in times.items()}


def erf_accuracy(exhaustive_float32: bool) -> None:
    print("== erf accuracy (max |ours - math.erf|)")
    rng = np.random.default_rng(0)
    grid = np.linspace(-10.0, 10.0, 2_000_001)
    edges = np.array([0.84375, 4.0, 6.0])
    near = np.concatenate([np.nextafter(edges, -np.inf), edges, np.nextafter(edges, np.inf)])
    special = np.array([0.0, -0.0, 5e-324, -5e-324, 1e-300, 2.0**-28, 1e-8, 27.9, 28.0, 1e300, 1.7e308])
    wide = np.concatenate([rng.standard_normal(1_000_000) * s for s in (0.5, 2.0, 5.0)])
    logs = np.exp(rng.uniform(-700, 700, 1_000_000)) * rng.choice([-1.0, 1.0], 1_000_000)
    x = np.concatenate([grid, near, -near, special, -special, wide, logs])
    err64 = np.abs(ops.erf(x) - ERF_REF(x)).max()
    print(
        f"float64: {err64:.3e} over {x.size:,} points (grid [-10, 10] step 1e-5, edges, tiny, huge, random)"
    )
    inf = ops.erf(np.array([np.inf, -np.inf, np.nan, -0.0]))
    print(
        f"         erf(+inf, -inf, nan, -0.0) = {inf.tolist()}  (signbit of the last: {np.signbit(inf[-1])})"
    )
    x32 = x[np.abs(x) < 3e38].astype(np.float32)
    err32 = np.abs(ops.erf(x32).astype(np.float64) - ERF_REF(x32.astype(np.float64))).max()
    print(f"float32: {err32:.3e} on the same points rounded to float32")
    if exhaustive_float32:
        worst, at = 0.0, 0.0
        top = int(np.float32(6.5).view(np.uint32))
        step = 1 << 23
        for start in range(0, top + 1, step):
            bits = np.arange(start, min(start + step, top + 1), dtype=np.uint32)
            xf = bits.view(np.float32)
            d = np.abs(ops.erf(xf).astype(np.float64) - ops.erf(xf.astype(np.float64)))
            i = int(d.argmax())
            if d[i] > worst:
                worst, at = float(d[i]), float(xf[i])
        print(f"float32 exhaustive over every float32 in [0, 6.5] (erf is odd): {worst:.3e} at x = {at!r}")


def erf_speed() -> None:
    print("== erf speed, 1e6 elements (ms of CPU time, min of repeats)")
    rng = np.random.default_rng(1)
    cases = [
        ("N(0, 1/2) (gelu's x/sqrt2)", rng.standard_normal(1_000_000) * math.sqrt(0.5)),
        ("N(0, 4)", rng.standard_normal(1_000_000) * 2.0),
        ("uniform [-6, 6]", rng.uniform(-6, 6, 1_000_000)),
    ]
    for label, x in cases:
        print(f"{label:28s} " + erf_speed_case(x))


def erf_speed_case(x: np.ndarray) -> str:
    x32 = x.astype(np.float32)
    t = best_ms({"vectorize": lambda: ERF_REF(x)}, 3)
    t.update(best_ms({"ours64": lambda: ops.erf(x), "ours32": lambda: ops.erf(x32)}, 15))
    line = (
        f"np.vectorize(math.erf) {t['vectorize']:.1f}, ours float64 {t['ours64']:.2f} "
        f"({t['vectorize'] / t['ours64']:.0f}x), ours float32 {t['ours32']:.2f}"
    )
    try:
        import torch
    except ImportError:
        return line
    torch.set_num_threads(1)
    tx = torch.from_numpy(x)
    t.update(best_ms({"torch64": lambda: torch.erf(tx)}, 15))
    return line + f", torch.erf float64 {t['torch64']:.2f}"


def ops_vs_torch() -> None:
    import torch

    torch.set_num_threads(1)
    print("== ops vs torch (single thread), ms of CPU time, min of repeats")
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        gelu_case(rng, dtype)
        softmax_case(rng, dtype)
        layer_norm_case(rng, dtype)


def gelu_case(rng, dtype) -> None:
    import torch
    import torch.nn.functional as F

    h = rng.standard_normal((512, 3072)).astype(dtype)
    th = torch.from_numpy(h)
    buf = np.empty_like(h)
    t = best_ms(
        {"ours": lambda: ops.gelu(h), "out": lambda: ops.gelu(h, out=buf), "torch": lambda: F.gelu(th)}, 15
    )
    diff = np.abs(ops.gelu(h) - F.gelu(th).numpy()).max()
    print(
        f"gelu [512, 3072] {np.dtype(dtype).name}: ours {t['ours']:.2f} (out= {t['out']:.2f}), "
        f"torch {t['torch']:.2f}; max |diff| {diff:.1e}"
    )


def softmax_case(rng, dtype) -> None:
    import torch

    s = (rng.standard_normal((12, 512, 512)) * 3).astype(dtype)
    ts = torch.from_numpy(s)
    work = np.empty_like(s)

    def fresh_then_in_place():
        np.copyto(work, s)  # stands for a freshly computed score array
        ops.softmax(work, out=work)

    t = best_ms(
        {
            "ours": lambda: ops.softmax(s),
            "in_place": fresh_then_in_place,
            "copy": lambda: np.copyto(work, s),
            "torch": lambda: torch.softmax(ts, dim=-1),
        },
        10,
    )
    diff = np.abs(ops.softmax(s) - torch.softmax(ts, -1).numpy()).max()
    print(
        f"softmax [12, 512, 512] {np.dtype(dtype).name}: ours {t['ours']:.2f} "
        f"(in place {t['in_place'] - t['copy']:.2f}), torch {t['torch']:.2f}; max |diff| {diff:.1e}"
    )


def layer_norm_case(rng, dtype) -> None:
    import torch
    import torch.nn.functional as F

    x = rng.standard_normal((512, 768)).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(768)).astype(dtype)
    b = (0.1 * rng.standard_normal(768)).astype(dtype)
    tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
    t = best_ms(
        {
            "ours": lambda: ops.layer_norm(x, w, b, 1e-12),
            "torch": lambda: F.layer_norm(tx, (768,), tw, tb, 1e-12),
        },
        30,
    )
    diff = np.abs(ops.layer_norm(x, w, b, 1e-12) - F.layer_norm(tx, (768,), tw, tb, 1e-12).numpy()).max()
    print(
        f"layer_norm [512, 768] {np.dtype(dtype).name}: ours {t['ours']:.2f}, torch {t['torch']:.2f}; "
        f"max |diff| {diff:.1e}"
    )


def paired_ms(a, b, reps: int = 15) -> tuple[float, float, float, float]:
    """Wall-clock medians (ms) of ``a`` and ``b`` run alternately, and the median / max of the
    paired ratios ``a_i / b_i`` (threaded ops: CPU time would add the threads up)."""
    a(), b()
    ta, tb = [], []
    for i in range(reps):
        for f, ts in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
    ratios = [x / y for x, y in zip(ta, tb, strict=True)]
    return 1e3 * float(np.median(ta)), 1e3 * float(np.median(tb)), float(np.median(ratios)), max(ratios)


def fused_vs_plain() -> None:
    """Each fused kernel of refimpl._fused against its plain twin, at LXMERT b32 / LiLT 1x512 shapes."""
    from refimpl import _fused, attention

    rng = np.random.default_rng(0)
    print(f"== fused kernels vs plain twins (wall ms, paired medians; {backend.num_threads()} host threads)")

    def run_dtype(dtype):
        name = np.dtype(dtype).name
        x = rng.standard_normal((640, 768)).astype(dtype)
        w, bias = (
            (0.03 * rng.standard_normal((3072, 768))).astype(dtype),
            rng.standard_normal(3072).astype(dtype),
        )
        h = rng.standard_normal((640, 3072)).astype(dtype)
        w2, b2 = (
            (0.02 * rng.standard_normal((768, 3072))).astype(dtype),
            rng.standard_normal(768).astype(dtype),
        )
        g, b = (1 + 0.1 * rng.standard_normal(768)).astype(dtype), rng.standard_normal(768).astype(dtype)

        def plain_add_norm():
            y = ops.linear(h, w2, b2)
            y += x
            return ops.layer_norm(y, g, b, 1e-12, out=y)

        cases = {
            "linear_gelu [640,768]->[640,3072]": (
                lambda: _fused.linear_gelu(x, w, bias),
                lambda: ops.gelu(ops.linear(x, w, bias)),
            ),
            "linear_add_layer_norm [640,3072]->[640,768]": (
                lambda: _fused.linear_add_layer_norm(h, w2, b2, x, g, b, 1e-12),
                plain_add_norm,
            ),
        }
        for shape, mshape in (((32, 12, 20, 36), (32, 1, 1, 36)), ((1, 12, 512, 512), (1, 1, 1, 512))):
            s0 = rng.standard_normal(shape).astype(dtype)
            mask = np.zeros(mshape, dtype)
            mask[..., -3:] = np.finfo(dtype).min  # some padded keys
            zero = np.zeros(mshape, dtype)
            work = s0.copy()
            for label, m in (("masked", mask), ("all-zero mask", zero)):
                cases[f"masked_softmax {list(shape)} {label}"] = (
                    lambda m=m, s0=s0, work=work: _fused.masked_softmax(np.copyto(work, s0) or work, m),
                    lambda m=m, s0=s0, work=work: attention.attention_probs(np.copyto(work, s0) or work, m),
                )
            v = rng.standard_normal(shape[:3][:2] + (shape[3], 64)).astype(dtype)
            cases[f"attention_context {list(shape)}"] = (
                lambda p=s0, v=v: _fused.attention_context(p, v),
                lambda p=s0, v=v: attention.merge_heads(np.matmul(p, v)),
            )
        for label, (fused, plain) in cases.items():
            tf, tp, r, rmax = paired_ms(fused, plain)
            print(
                f"{name} {label}: fused {tf:.2f} ms, plain {tp:.2f} ms, fused/plain {r:.2f} (max {rmax:.2f})"
            )

    for dtype in (np.float32, np.float64):
        run_dtype(dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exhaustive-float32", action="store_true", help="check erf on every float32 in [0, 6.5]")
    p.add_argument("--no-tune", action="store_true", help="leave glibc malloc settings alone")
    p.add_argument("--fused", action="store_true", help="only: each fused kernel vs its plain twin")
    args = p.parse_args()
    if not args.no_tune:
        backend.tune_allocator()
    print(f"numpy {np.__version__}")
    if args.fused:
        fused_vs_plain()
        return
    erf_accuracy(args.exhaustive_float32)
    erf_speed()
    ops_vs_torch()


if __name__ == "__main__":
    main()
