"""What a traced forward costs: ``golden --select blocks`` against a plain forward plus the write.

::

    .venv/bin/python benchmarks/golden_throughput.py                 # LiLT base, 1 x 512, float64
    .venv/bin/python benchmarks/golden_throughput.py --repeats 3 --checkpoints /tmp/ckpts

One process, one random-weight LiLT base checkpoint (``run.py``'s), float64, the threads the
environment gives. Three steps, alternated ``--repeats`` times after one warm-up each:

* **plain**: ``model(**inputs)``, no trace;
* **golden**: `refimpl.golden.write_case` with ``select="blocks"`` (what ``refimpl golden CKPT
  --inputs CASE --out F --select blocks`` runs after loading: the traced forward, each kept
  tensor streamed to the file, the manifest and the rename; the checkpoint's weight hashes are
  computed once in the warm-up and cached, as in a batch run);
* **write**: `refimpl.golden.write` of exactly the tensors and manifest the golden file holds
  (read back into memory first), i.e. the cost of the file alone.

The target (issue 21) is ``golden <= 1.3 x (plain + write)``: the trace observers compute
nothing the selection does not keep. Medians are printed as a markdown row, with the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import ROOT, build_checkpoints, machine_info, make_inputs  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="alternated repeats of the three steps (default 5)")
    p.add_argument("--checkpoints", help="keep (and reuse) the built checkpoints in this directory")
    args = p.parse_args(argv)

    sys.path.insert(0, ROOT)
    import numpy as np

    import refimpl
    from refimpl import golden

    with tempfile.TemporaryDirectory(prefix="refimpl-golden-") as tmp:
        path = build_checkpoints(args.checkpoints or tmp)["lilt"]
        model = refimpl.from_pretrained(path, dtype="float64")
        inputs = make_inputs("lilt", 1, 512, 0)
        out_a, out_b = os.path.join(tmp, "blocks.safetensors"), os.path.join(tmp, "copy.safetensors")

        def plain():
            model(**inputs)

        def traced():
            golden.write_case(out_a, model, inputs, checkpoint=path, select="blocks", force=True)

        traced()  # warm-up (and the weight hashes, cached)
        case = golden.read(out_a)
        tensors = {name: np.array(case.tensors[name]) for name in case.tensors}  # in memory
        manifest = case.manifest
        n_bytes = sum(a.nbytes for a in tensors.values())

        def write():
            golden.write(out_b, tensors, manifest, force=True)

        steps = {"plain": plain, "golden": traced, "write": write}
        for fn in steps.values():
            fn()
        times = {k: [] for k in steps}
        for _ in range(args.repeats):
            for k, fn in steps.items():
                time.sleep(0.3)
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["golden"] / (med["plain"] + med["write"])
    threads = refimpl.backend.num_threads()
    print(
        f"CPU: {machine_info([threads])['cpu']}; {threads} thread(s); {len(tensors)} tensors, {n_bytes / 2**20:.0f} MiB kept"
    )
    print(
        "| case | plain forward (s) | write (s) | golden --select blocks (s) | golden / (plain + write) | target |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| LiLT base 1 x 512 float64 | {med['plain']:.3f} | {med['write']:.3f} | {med['golden']:.3f} "
        f"| {ratio:.2f} | <= 1.3 |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
