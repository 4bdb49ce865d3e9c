"""LiLT base, one forward vs one forward + backward: refimpl and torch autograd in one process.

    python benchmarks/bench_backward_lilt.py [--seq 512] [--dtype float32] [--repeats 3] [--threads N]

Both run the same random-weight LiltModel (lilt-roberta-en-base shape, built by the oracle and
saved) on the same 1 x seq inputs. refimpl's forward + backward is ``model.backward(seed=0)``
(``L = sum_X <X, G_X>`` over its three array outputs); torch's is its forward and
``backward()`` of the same ``L`` (``layout_last_hidden_state`` through a hook on the last
layout LayerNorm). Prints the median seconds of each and the ratios; a quiet machine is needed
for numbers worth publishing (``benchmarks/run.py`` is the published harness).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        time.sleep(0.3)  # let the other library's idle threads settle (see harness.SETTLE_S)
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-torch", action="store_true", help="time refimpl only")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    import transformers

    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from _oracle import build, save
    from harness import LILT_BASE, make_inputs

    import refimpl
    from refimpl import backend

    torch.set_num_threads(args.threads)
    backend.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = transformers.LiltConfig(**LILT_BASE)
        path = save(build(transformers.LiltModel, config, std=0.02, dtype=torch.float32), tmp)
        inputs = make_inputs("lilt", 1, args.seq, 0)
        ours = refimpl.from_pretrained(path, dtype=args.dtype)
        out = ours(**inputs)
        rows = {
            "refimpl forward": _median_time(lambda: ours(**inputs), args.repeats),
            "refimpl forward + backward": _median_time(lambda: ours.backward(seed=0, **inputs), args.repeats),
        }
        if not args.no_torch:
            tdtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
            oracle = transformers.LiltModel.from_pretrained(path, dtype=tdtype).eval()
            tin = {k: torch.from_numpy(v) for k, v in inputs.items()}
            g = {k: torch.from_numpy(v) for k, v in ours.backward(seed=0, **inputs).upstream.items()}
            layout = []
            oracle.encoder.layer[-1].layout_output.LayerNorm.register_forward_hook(
                lambda m, a, o: layout.append(o)
            )

            def torch_forward():
                with torch.inference_mode():
                    oracle(**tin)

            def torch_backward():
                layout.clear()
                o = oracle(**tin)
                loss = (o.last_hidden_state * g["last_hidden_state"]).sum()
                loss = loss + (o.pooler_output * g["pooler_output"]).sum()
                loss = loss + (layout[0] * g["layout_last_hidden_state"]).sum()
                loss.backward()
                oracle.zero_grad(set_to_none=True)

            rows["torch forward (inference_mode)"] = _median_time(torch_forward, args.repeats)
            rows["torch forward + backward"] = _median_time(torch_backward, args.repeats)
        del out, np
    print(f"LiLT base 1x{args.seq} {args.dtype}, {args.threads} threads, median of {args.repeats}:")
    for name, t in rows.items():
        print(f"  {name:34s} {t:8.3f} s")
    fb, f = rows["refimpl forward + backward"], rows["refimpl forward"]
    print(f"  refimpl (forward + backward) / forward = {fb / f:.2f}")
    if "torch forward + backward" in rows:
        print(f"  refimpl / torch, forward + backward   = {fb / rows['torch forward + backward']:.2f}")


if __name__ == "__main__":
    main()
