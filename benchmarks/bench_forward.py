"""What each speed change buys on a whole forward: ours against ours, paired, in one process.

Variants, run in turn within every repeat (the order rotates), on one loaded model:

* ``plain``: today's layer code, OpenBLAS at its default spin (``quiet_blas_threads(28)``,
  OpenBLAS's built-in 2^28 cycles);
* ``fused``: the layers as they are (they call the fused ops; ``plain`` swaps in the twins
  with ``fused_wiring.plain_ops()``);
* ``quiet``: plain layers, ``quiet_blas_threads(4)``;
* ``fused+quiet``: both.

Prints the median time of each and the median (min-max) of its paired ratio to ``plain``::

    python benchmarks/bench_forward.py --checkpoints /tmp/ck --cases lilt:1x512,lxmert:b32 --reps 5

Not a test; the checkpoints are built as ``run.py`` builds them (and reused from ``--checkpoints``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def main(argv=None) -> int:
    import harness
    import numpy as np
    import sweep
    from fused_wiring import plain_ops

    from refimpl import backend

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", required=True, help="directory for (reused) base checkpoints")
    p.add_argument("--cases", default="lilt:1x512,lxmert:b32")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-tune", action="store_true", help="skip tune_allocator()")
    args = p.parse_args(argv)
    if not args.no_tune:
        backend.tune_allocator()
    paths = harness.build_checkpoints(args.checkpoints)
    variants = {
        "plain": (False, 28),
        "fused": (True, 28),
        "quiet": (False, 4),
        "fused+quiet": (True, 4),
    }
    print(f"{backend.num_threads()} host threads, {args.dtype}, load {os.getloadavg()[0]:.1f}")
    for model_name, shapes in sweep.parse_cases(args.cases).items():
        model = harness.load_impl(
            "ours", model_name, args.dtype, "cpu", paths[model_name], backend.num_threads()
        )
        for shape in shapes:
            forward = harness.make_forward(
                "ours", model, model_name, args.dtype, "cpu", harness.make_inputs(model_name, *shape)
            )
            outs, times = {}, {v: [] for v in variants}
            names = list(variants)
            for rep in range(args.reps + 1):  # the first round is the warm-up
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for v in order:
                    fused, timeout = variants[v]
                    backend.quiet_blas_threads(timeout)
                    with contextlib.nullcontext() if fused else plain_ops():
                        t = time.perf_counter()
                        outs[v] = forward()
                        if rep:
                            times[v].append(time.perf_counter() - t)
            diff = np.abs(outs["fused"].astype(np.float64) - outs["plain"]).max()
            print(f"{sweep.shape_name(model_name, shape)} (fused vs plain max |diff| {diff:.1e}):")
            for v in names:
                r = [a / b for a, b in zip(times[v], times["plain"], strict=True)]
                print(
                    f"  {v:12s} {np.median(times[v]) * 1e3:8.1f} ms   / plain {np.median(r):.3f} "
                    f"({min(r):.3f}-{max(r):.3f})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
