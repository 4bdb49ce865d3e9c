"""The forward + backward rows (issue 23's "Cost"): refimpl's ``model.backward`` against torch
autograd on the oracle (transformers 4.56.2), float32, on ``run.py``'s random-weight base
checkpoints (``run.py --only backward``).

Cases (`CASES`): LiLT base ``LiltModel`` 1 x 512 tokens, LXMERT base ``LxmertModel`` batch 8
x 20 tokens x 36 boxes; ``--cases lilt:1x128,lxmert:b1`` picks other shapes of the sweep's
list (`sweep.MODELS`) for a quick check.

Both sides do the same work, one forward and the backward of the same scalar:

    L = sum over the output fields X of sum(X * G_X)

with ``G_X`` drawn by ``refimpl.gradients.upstream_gradients(outputs, seed=0)`` over
refimpl's array output fields (LiLT: ``last_hidden_state``, ``pooler_output``,
``layout_last_hidden_state``; LXMERT: ``language_output``, ``vision_output``,
``pooled_output``). Torch has no ``layout_last_hidden_state`` field: its value is read by a
forward hook on the last layer's ``layout_output.LayerNorm`` (what refimpl's field is), and
its ``G`` enters ``L`` there. Each side returns the gradient of every parameter (ours: the
``Gradients.params`` dict; torch: every ``p.grad``, then ``zero_grad(set_to_none=True)``, so each
call allocates them afresh as ours does). refimpl runs with ``tensor_grads=False`` (no
intermediate gradients kept), torch's parameters require grad and nothing else does.

How it measures (as ``run.py`` does for the forward):

* **Time** (`timing_worker`): one process loads both, warms each up twice, then alternates
  ``ours, torch, ours, torch, ...`` with ``harness.SETTLE_S`` of pause before each; medians.
  After the warm-ups it also compares every parameter gradient:
  ``max |ours - torch| / max(1, max |torch|)`` over all parameters (the parity tests' float32
  bound is 1e-4).
* **Peak memory** (`memory_worker`): each side in its own process: load, make every weight
  resident, one forward without gradients (to draw ``G`` and grow the heap as a user's
  previous step would), read ``VmRSS``, reset the high-water mark, run ONE forward +
  backward, read ``VmHWM`` while the gradients are still held: the extra memory of one
  training step's gradients (activations, tape / autograd graph, the gradients themselves).
  Both call ``refimpl.backend.tune_allocator()``.
"""

from __future__ import annotations

import os
import time

from harness import SETTLE_S, apply_setting, load_impl, make_inputs, reset_peak, status_kib, touch_weights

#: name: (model, batch, seq, boxes)
CASES = {"lilt": ("lilt", 1, 512, 0), "lxmert": ("lxmert", 8, 20, 36)}
TARGET = "time ratio <= 1.5, peak ratio <= 1"


def case_name(model: str, batch: int, seq: int, boxes: int) -> str:
    """``lilt:1x512`` / ``lxmert:b8``, as the sweep names shapes."""
    return f"{model}:{batch}x{seq}" if model == "lilt" else f"{model}:b{batch}"


def shape_label(model: str, batch: int, seq: int, boxes: int) -> str:
    return f"{batch} x {seq}" if model == "lilt" else f"{batch} x {seq} tokens, {boxes} boxes"


def _host_inputs(inputs: dict, dtype: str) -> dict:
    return {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in inputs.items()}


def upstream_for(model_name: str, ours_outputs) -> dict:
    """The seeded ``G_X`` of refimpl's output fields (``seed=0``)."""
    from refimpl.gradients import upstream_gradients

    return upstream_gradients(ours_outputs, 0)


def make_step(impl: str, model, model_name: str, dtype: str, inputs: dict, upstream: dict):
    """A no-argument forward + backward of ``L`` on ``inputs``; returns ``{key: dL/dW}`` (NumPy
    arrays for ours, torch tensors for torch), every parameter."""
    rin = _host_inputs(inputs, dtype)
    if impl == "ours":

        def step():
            return model.backward(upstream=upstream, **rin).params

        return step

    import torch

    tin = {k: torch.from_numpy(v) for k, v in rin.items()}
    g = {k: torch.from_numpy(v) for k, v in upstream.items()}
    captured = {}
    if model_name == "lilt":
        norm = model.encoder.layer[-1].layout_output.LayerNorm
        norm.register_forward_hook(lambda m, a, o: captured.__setitem__("layout_last_hidden_state", o))
    params = list(model.named_parameters())

    def step():
        captured.clear()
        out = model(**tin)
        loss = None
        for field, gx in g.items():
            x = captured[field] if field in captured else getattr(out, field)
            term = (x * gx).sum()
            loss = term if loss is None else loss + term
        loss.backward()
        grads = {k: p.grad for k, p in params}
        model.zero_grad(set_to_none=True)
        return grads

    return step


def _load(impl: str, spec: dict):
    """``(model, step, upstream)`` for one side of the case in ``spec``; ``upstream`` is drawn from
    a refimpl forward (ours) or from the shapes of torch's outputs with the same generator."""
    import numpy as np

    model_name, batch, seq, boxes = spec["shape"]
    inputs = make_inputs(model_name, batch, seq, boxes)
    model = load_impl(impl, model_name, spec["dtype"], "cpu", spec["path"], spec["threads"])
    if "upstream" in spec:  # given by the caller (the timing worker: ours's, for both)
        upstream = spec["upstream"]
    elif impl == "ours":
        upstream = upstream_for(model_name, model(**_host_inputs(inputs, spec["dtype"])))
    else:
        import torch

        captured = {}
        handle = None
        if model_name == "lilt":
            norm = model.encoder.layer[-1].layout_output.LayerNorm
            handle = norm.register_forward_hook(lambda m, a, o: captured.__setitem__("x", o))
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in _host_inputs(inputs, spec["dtype"]).items()})
        if handle is not None:
            handle.remove()
        if model_name == "lilt":  # refimpl's field order
            fields = {
                "last_hidden_state": out.last_hidden_state,
                "pooler_output": out.pooler_output,
                "layout_last_hidden_state": captured["x"],
            }
        else:
            fields = {k: getattr(out, k) for k in ("language_output", "vision_output", "pooled_output")}
        rng = np.random.default_rng(0)  # as upstream_gradients draws them
        upstream = {k: rng.standard_normal(tuple(v.shape)).astype(spec["dtype"]) for k, v in fields.items()}
    return model, make_step(impl, model, model_name, spec["dtype"], inputs, upstream), upstream


def memory_worker(spec: dict) -> dict:
    """Peak extra memory of ONE forward + backward of one side (its own process)."""
    from refimpl import backend

    backend.tune_allocator()
    result = dict(spec)
    model, step, _ = _load(spec["impl"], spec)
    touch_weights(model, spec["impl"])
    rss_base = status_kib("VmRSS")
    result["hwm_reset"] = reset_peak()
    t = time.perf_counter()
    grads = step()
    result["first_step_s"] = time.perf_counter() - t
    result["peak_extra_mib"] = (status_kib("VmHWM") - rss_base) / 1024
    result["peak_total_mib"] = status_kib("VmHWM") / 1024
    result["grad_count"] = len(grads)
    del grads
    return result


def grad_diff(ours: dict, theirs: dict) -> dict:
    """``max over parameters of max |ours - torch| / max(1, max |torch|)``, the worst key, and the
    keys only one side has."""
    import numpy as np

    worst, worst_key = 0.0, None
    for k, t in theirs.items():
        if k not in ours or t is None:
            continue
        t = t.detach().numpy()
        d = float(np.max(np.abs(ours[k] - t))) / max(1.0, float(np.max(np.abs(t))))
        if d >= worst:
            worst, worst_key = d, k
    return {
        "grad_rel_diff": worst,
        "grad_rel_diff_key": worst_key,
        "only_ours": sorted(set(ours) - set(theirs)),
        "only_torch": sorted(k for k, t in theirs.items() if k not in ours or t is None),
    }


def timing_worker(spec: dict) -> dict:
    """Time ours and torch in one process, alternating steps (see the module docstring)."""
    import numpy as np

    applied = apply_setting(spec.get("setting", "tuned"))
    _, ours_step, upstream = _load("ours", spec)
    _, torch_step, _ = _load("torch", dict(spec, upstream=upstream))
    runs = [("ours", ours_step, []), ("torch", torch_step, [])]
    result = dict(spec, applied=applied)
    ours_grads, torch_grads = ours_step(), torch_step()  # warm-up 1, and the parity check
    result.update(grad_diff(ours_grads, torch_grads))
    del ours_grads, torch_grads
    ours_step(), torch_step()  # warm-up 2
    for _ in range(spec["repeats"]):
        for _, step, times in runs:
            time.sleep(SETTLE_S)  # the other library's idle threads stop spinning
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    result["load_average"] = os.getloadavg()
    result["timings"] = [
        {"impl": impl, "times_s": times, "median_s": float(np.median(times)), "min_s": min(times)}
        for impl, _, times in runs
    ]
    return result


def specs(shapes: list, paths: dict, thread_counts: list[int], settings, repeats: int) -> list[tuple]:
    """``(spec, threads, setting)`` per worker: for each shape, one memory worker per side (at the
    first thread count), then one timing worker per (thread count, setting)."""
    out = []
    for shape in shapes:
        model_name = shape[0]
        common = dict(
            case=case_name(*shape), shape=list(shape), dtype="float32", path=paths[model_name], device="cpu"
        )
        for impl in ("ours", "torch"):
            out.append(
                (
                    dict(common, kind="bwd_memory", impl=impl, threads=thread_counts[0]),
                    thread_counts[0],
                    "tuned",
                )
            )
        for threads in thread_counts:
            for setting in settings:
                spec = dict(common, kind="bwd_timing", threads=threads, setting=setting, repeats=repeats)
                out.append((spec, threads, setting))
    return out


def summarize(workers: list[dict]) -> list[dict]:
    """One row per timing worker, with both sides' peak memory from the memory workers."""
    mem = {(w["case"], w["impl"]): w for w in workers if w["kind"] == "bwd_memory" and "error" not in w}
    rows = []
    for w in workers:
        if w["kind"] != "bwd_timing" or "error" in w:
            continue
        t = {x["impl"]: x["median_s"] for x in w["timings"]}
        row = {
            "case": w["case"],
            "shape": w["shape"],
            "threads": w["threads"],
            "setting": w["setting"],
            "load_average": w["load_average"][0],
            "ours_s": t["ours"],
            "torch_s": t["torch"],
            "time_ratio": t["ours"] / t["torch"],
            "grad_rel_diff": w["grad_rel_diff"],
        }
        ours_m, torch_m = mem.get((w["case"], "ours")), mem.get((w["case"], "torch"))
        if ours_m and torch_m:
            row["ours_peak_mib"] = ours_m["peak_extra_mib"]
            row["torch_peak_mib"] = torch_m["peak_extra_mib"]
            row["peak_ratio"] = ours_m["peak_extra_mib"] / max(torch_m["peak_extra_mib"], 1e-9)
        rows.append(row)
    return rows


def _f(row, key, digits):
    return "n/a" if key not in row else f"{row[key]:.{digits}f}"


def to_markdown(results: dict) -> str:
    """The published forward + backward table (``benchmarks/backward.md``)."""
    m = results["machine"]
    lines = [
        "# Forward + backward: refimpl `model.backward` vs torch autograd (transformers 4.56.2)",
        "",
        f"Generated by `benchmarks/run.py {results['command']}` on {m['date']}. Random-weight "
        "checkpoints at real base sizes (float32 on disk), run in float32.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} ({m['cores']} cores available) |",
        f"| BLAS (NumPy) | {m['blas']} |",
        f"| versions | Python {m['python']}, NumPy {m['numpy']}, torch {m['torch']}, transformers {m['transformers']} |",
        f"| platform | {m['platform']} |",
        f"| load average at start | {', '.join(f'{x:.1f}' for x in m['load_average_at_start'])} |",
        "",
        f"**Time**: median of {results['repeats']} forward + backward steps per side after two warm-ups, "
        "both loaded in one process and run alternately. One step: the forward and the gradient of "
        "every parameter of `L = sum_X <X, G_X>` over the output fields (seeded `G_X`, the same for "
        "both). **Peak**: extra resident memory of one step with its gradients still held "
        "(`VmHWM` after `clear_refs` minus `VmRSS` with the weights resident), each side in its own "
        f"process, at {results['threads'][0]} thread(s), both with `tune_allocator()`. **Grad diff**: "
        "max over parameters of max |ours - torch| / max(1, max |torch|).",
        "",
        "| model | input | threads | setting | ours (s) | torch (s) | ours / torch | load | ours peak (MiB) "
        "| torch peak (MiB) | peak ratio | grad diff | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        shape = row["shape"]
        lines.append(
            f"| {shape[0]} base | {shape_label(*shape)} | {row['threads']} | {row['setting']} "
            f"| {_f(row, 'ours_s', 3)} | {_f(row, 'torch_s', 3)} | {_f(row, 'time_ratio', 2)} "
            f"| {_f(row, 'load_average', 1)} | {_f(row, 'ours_peak_mib', 0)} | {_f(row, 'torch_peak_mib', 0)} "
            f"| {_f(row, 'peak_ratio', 2)} | {row['grad_rel_diff']:.1e} | {TARGET} |"
        )
    errors = [w for w in results["workers"] if "error" in w]
    if errors:
        lines += ["", "## Errors", ""] + [
            f"- {w['kind']} {w['case']} {w.get('impl', '')}: {w['error']}" for w in errors
        ]
    return "\n".join(lines) + "\n"
