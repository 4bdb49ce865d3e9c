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

from refimpl import attention, backend, bert, bi_acm, ops, switch  # noqa: E402

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
    t = best_ms(
        {"ours": lambda: ops.gelu(h), "formula": lambda: ops.gelu.formula(h), "torch": lambda: F.gelu(th)}, 15
    )
    diff = np.abs(ops.gelu(h) - F.gelu(th).numpy()).max()
    print(
        f"gelu [512, 3072] {np.dtype(dtype).name}: ours {t['ours']:.2f} (the formula alone {t['formula']:.2f}), "
        f"torch {t['torch']:.2f}; max |diff| {diff:.1e}"
    )


def softmax_case(rng, dtype) -> None:
    import torch

    s = (rng.standard_normal((12, 512, 512)) * 3).astype(dtype)
    ts = torch.from_numpy(s)
    t = best_ms(
        {
            "ours": lambda: ops.softmax(s),
            "formula": lambda: ops.softmax.formula(s),
            "torch": lambda: torch.softmax(ts, dim=-1),
        },
        10,
    )
    diff = np.abs(ops.softmax(s) - torch.softmax(ts, -1).numpy()).max()
    print(
        f"softmax [12, 512, 512] {np.dtype(dtype).name}: ours {t['ours']:.2f} "
        f"(the formula alone {t['formula']:.2f}), torch {t['torch']:.2f}; max |diff| {diff:.1e}"
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


def kernels_vs_formulas() -> None:
    """Each fast kernel of refimpl.fast against its op's formula (run with refimpl.reference()),
    at LXMERT b32 / LiLT 1x512 shapes."""
    rng = np.random.default_rng(0)
    print(f"== fast kernels vs formulas (wall ms, paired medians; {backend.num_threads()} host threads)")

    def formula(fn):
        def run():
            with switch.reference():
                return fn()

        return run

    def run_dtype(dtype):
        name = np.dtype(dtype).name
        r = lambda *shape, scale=1.0: (scale * rng.standard_normal(shape)).astype(dtype)  # noqa: E731
        x, h = r(640, 768), r(640, 3072)
        inter = {"weight": r(3072, 768, scale=0.03), "bias": r(3072)}
        out = {"weight": r(768, 3072, scale=0.02), "bias": r(768)}
        norm = {"weight": 1 + r(768, scale=0.1), "bias": r(768)}
        cases = {
            "intermediate [640,768]->[640,3072]": lambda: bert.intermediate(
                x, dense=inter, hidden_act="gelu"
            ),
            "add_and_norm [640,3072]->[640,768]": lambda: bert.add_and_norm(
                h, x, dense=out, LayerNorm=norm, layer_norm_eps=1e-12
            ),
            "layer_norm [640,3072]": lambda: ops.layer_norm(h, 1 + h[0] * 0.1, h[1], 1e-12),
            "gelu [640,3072]": lambda: ops.gelu(h),
        }
        for b, s, n_keys in ((32, 20, 36), (1, 512, 512)):
            q, k, v = r(b, 12, s, 64), r(b, 12, n_keys, 64), r(b, 12, n_keys, 64)
            mask = np.zeros((b, 1, 1, n_keys), dtype)
            mask[..., -3:] = np.finfo(dtype).min  # some padded keys
            scores = r(b, 12, s, n_keys, scale=3.0)
            cases[f"attention_probs {list(scores.shape)}"] = lambda s_=scores, m=mask: (
                attention.attention_probs(s_, m)
            )
            cases[f"attention_context {list(scores.shape)}"] = lambda p=scores, v=v: (
                attention.attention_context(p, v)
            )
            cases[f"scaled_dot_product_attention {list(scores.shape)}"] = lambda q=q, k=k, v=v, m=mask: (
                attention.scaled_dot_product_attention(q, k, v, m)
            )
        lq, lk, lv = r(1, 12, 512, 16), r(1, 12, 512, 16), r(1, 12, 512, 16)
        q, k, v = r(1, 12, 512, 64), r(1, 12, 512, 64), r(1, 12, 512, 64)
        mask = np.zeros((1, 1, 1, 512), dtype)
        cases["bi_acm_attention [1,12,512,512]"] = lambda: bi_acm.bi_acm_attention(
            q, k, v, lq, lk, lv, 4, mask
        )
        for label, fn in cases.items():
            tf, tp, ratio, rmax = paired_ms(fn, formula(fn))
            print(
                f"{name} {label}: kernel {tf:.2f} ms, formula {tp:.2f} ms, kernel/formula {ratio:.2f} (max {rmax:.2f})"
            )

    for dtype in (np.float32, np.float64):
        run_dtype(dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exhaustive-float32", action="store_true", help="check erf on every float32 in [0, 6.5]")
    p.add_argument("--no-tune", action="store_true", help="leave glibc malloc settings alone")
    p.add_argument("--fused", action="store_true", help="only: each fast kernel vs its op's formula")
    args = p.parse_args()
    if not args.no_tune:
        backend.tune_allocator()
    print(f"numpy {np.__version__}")
    if args.fused:
        kernels_vs_formulas()
        return
    erf_accuracy(args.exhaustive_float32)
    erf_speed()
    ops_vs_torch()


if __name__ == "__main__":
    main()
