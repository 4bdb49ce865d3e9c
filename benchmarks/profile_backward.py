"""Where one ``model.backward`` step's time goes: cProfile, grouped into a few categories.

    .venv/bin/python benchmarks/profile_backward.py lilt:1x128          # LiLT base, 1 x 128 tokens
    .venv/bin/python benchmarks/profile_backward.py lxmert:b8 --top 25   # and the 25 costliest functions

Runs on a random-weight base checkpoint (``run.py``'s; ``--checkpoints DIR`` reuses built ones),
float32, on the threads the environment gives (set ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS``
before running). One warm-up step, then one profiled step of ``model.backward(upstream=G,
**inputs)`` (the forward under the tape and its backward). Each category is the *cumulative*
time of the functions it names, as a share of the profiled step; the functions named are
chosen so that no category's functions call another's (``other`` is the rest: recording,
flattening the gradients, zeros for unused weights, Python). cProfile adds a little per call,
so the shares are a guide to where the time goes, not a measurement of it.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import ROOT, build_checkpoints, make_inputs  # noqa: E402

#: category: (module path suffix, function name) pairs whose cumulative times it sums
CATEGORIES = {
    "forward (under the tape)": [("refimpl/modeling.py", "__call__")],
    "linear backward GEMMs (dX, dW, db)": [("refimpl/ops.py", "linear_backward")],
    "attention backward (P V, Q K^T products, softmax', head split/merge)": [
        ("refimpl/bi_acm.py", "bi_acm_backward"),
        ("refimpl/attention.py", "scaled_dot_product_attention_backward"),
        ("refimpl/attention.py", "merge_heads"),
        ("refimpl/attention.py", "split_heads"),
    ],
    "GELU backward": [("refimpl/activations.py", "gelu_backward"), ("refimpl/fast/erf.py", "gelu_backward")],
    "LayerNorm backward": [
        ("refimpl/ops.py", "layer_norm_backward"),
        ("refimpl/fast/dense.py", "layer_norm_backward"),
    ],
    "embedding backward (scatter-add)": [("refimpl/ops.py", "embedding_backward")],
}


def categorize(stats: pstats.Stats, total: float) -> dict[str, float]:
    """category -> seconds (cumulative over its functions), plus ``other``.

    A fast kernel calls its formula (per block, or whole on a small array), so where a
    category names both and the kernel ran, only the kernel's time is counted."""
    ran = {(path, func) for (path, _, func), (_, nc, _, _, _) in stats.stats.items() if nc}
    out = {}
    for cat, names in CATEGORIES.items():
        kernels = {f for p, f in names if "/fast/" in p and any(r[0].endswith(p) and r[1] == f for r in ran)}
        s = 0.0
        for (path, _, func), (_, _, _, ct, _) in stats.stats.items():
            if any(path.endswith(p) and func == f for p, f in names):
                if func in kernels and "/fast/" not in path:
                    continue  # the formula under its kernel: counted in the kernel's time
                s += ct
        out[cat] = s
    out["other (Python, recording, flattening, residual adds, zeros)"] = total - sum(out.values())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("case", help="lilt:BxS (e.g. lilt:1x128) or lxmert:bB (e.g. lxmert:b8)")
    p.add_argument("--checkpoints", help="keep (and reuse) the built checkpoints in this directory")
    p.add_argument("--top", type=int, default=0, help="also print the N costliest functions (own time)")
    args = p.parse_args(argv)
    model_name, shape = args.case.split(":")
    if model_name == "lilt":
        batch, seq = map(int, shape.split("x"))
        boxes = 0
    else:
        batch, seq, boxes = int(shape.lstrip("b")), 20, 36

    sys.path.insert(0, ROOT)
    import refimpl
    from refimpl.gradients import upstream_gradients

    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoints(args.checkpoints or tmp)[model_name]
        model = refimpl.from_pretrained(path, dtype="float32")
        inputs = make_inputs(model_name, batch, seq, boxes)
        upstream = upstream_gradients(model(**inputs), 0)
        model.backward(upstream=upstream, **inputs)  # warm-up
        t = time.perf_counter()
        model(**inputs)
        forward_s = time.perf_counter() - t
        t = time.perf_counter()
        model.backward(upstream=upstream, **inputs)
        step_s = time.perf_counter() - t
        prof = cProfile.Profile()
        prof.enable()
        model.backward(upstream=upstream, **inputs)
        prof.disable()
    stats = pstats.Stats(prof)
    total = stats.total_tt
    print(
        f"{args.case} float32, {os.environ.get('OMP_NUM_THREADS', '?')} thread(s): plain forward "
        f"{forward_s:.3f} s, forward + backward {step_s:.3f} s (profiled: {total:.3f} s)"
    )
    for cat, s in categorize(stats, total).items():
        print(f"  {100 * s / total:5.1f} %  {s:7.3f} s  {cat}")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
