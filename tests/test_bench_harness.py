"""The benchmark harness's fairness rules and the sweep's plan (no model is run here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import harness  # noqa: E402
import sweep  # noqa: E402


def test_defaults_rows_carry_no_tuning_for_either_library(monkeypatch):
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "4")  # as the old harness gave ours only
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    env = harness._env(2, "defaults")
    assert not any(var in env for var in harness.TUNING_VARS)
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    tuned = harness._env(1, "tuned", {"OMP_WAIT_POLICY": "ACTIVE"})
    assert tuned["OMP_WAIT_POLICY"] == "ACTIVE" and "OPENBLAS_THREAD_TIMEOUT" not in tuned
    assert tuned["MKL_NUM_THREADS"] == "1"


def test_sweep_plans_the_issue_table():
    specs = sweep.plan(sweep.parse_cases(None), sweep.CONFIGS, list(harness.SETTINGS), reps=7, cores=2)
    assert len(specs) == 2 * 3 * 2  # models x configs x settings
    rows = {(s["model"], s["config"], s["setting"], tuple(sh)) for s in specs for sh in s["shapes"]}
    assert len(rows) == (8 + 4) * 3 * 2
    assert ("lilt", "f32x1", "defaults", (8, 512, 0)) in rows
    assert ("lxmert", "f64", "tuned", (64, 20, 36)) in rows
    assert {s["threads"] for s in specs} == {1, 2}


def test_sweep_cases_subset_and_errors():
    assert sweep.parse_cases("lilt:1x512,lxmert:b32") == {"lilt": [(1, 512, 0)], "lxmert": [(32, 20, 36)]}
    assert sweep.parse_cases("lxmert") == {"lxmert": sweep.LXMERT_SHAPES}
    with pytest.raises(SystemExit, match=r"unknown case 'lilt:2x64'"):
        sweep.parse_cases("lilt:2x64")


def test_plain_ops_switches_every_kernel_off_and_back_on():
    import numpy as np
    from fused_wiring import GROUPS, plain_ops

    from refimpl import data, switch
    from refimpl.lilt import LiltForTokenClassification

    grouped = [op for ops_ in GROUPS.values() for op in ops_]
    assert sorted(op.key for op in grouped) == sorted(op.key for op in switch.kernels())  # each once
    model = LiltForTokenClassification.from_pretrained(data.path("lilt-tiny"), dtype="float32")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, model.config.vocab_size, (2, 9))
    x0, y0 = rng.integers(0, 500, (2, 9)), rng.integers(0, 500, (2, 9))
    bbox = np.stack([x0, y0, x0 + 10, y0 + 10], axis=-1)
    with switch.fast():
        want = model(input_ids=ids, bbox=bbox).logits
        with plain_ops():
            assert switch.mode() == "reference"  # every kernel off
            got = model(input_ids=ids, bbox=bbox).logits
        with plain_ops(gelu=False, softmax=False, context=False, gemm=False):
            assert switch.mode() == (
                "fast without refimpl.bert.add_and_norm, refimpl.ops.layer_norm, refimpl.ops.layer_norm_backward"
            )
        assert switch.mode() == "fast"
    with switch.reference():
        np.testing.assert_array_equal(model(input_ids=ids, bbox=bbox).logits, got)
    # float32: the fast GELU is within 1e-6 * max(1, |x|) of the exact one the formula evaluates
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _synthetic_results():
    def row(case, ratio, ours_s):
        return {
            "case": case,
            "ratio_median": ratio,
            "ratio_min": ratio,
            "ratio_max": ratio,
            "ours_s": ours_s,
            "torch_s": 1.0,
        }

    machine = {
        "cpu": "test CPU",
        "cores": 2,
        "blas": "b",
        "torch_blas": [],
        "python": "3",
        "numpy": "2",
        "torch": "2",
        "transformers": "4.56.2",
        "platform": "p",
        "load_average_at_start": [0.0],
    }
    workers = [
        {
            "setting": "defaults",
            "config": "f32",
            "rows": [row("lilt:1x512", 0.90, 1.0), row("lxmert:b1", 1.0, 1.0)],
        },
        {
            "setting": "defaults",
            "config": "f64",
            "rows": [row("lilt:1x512", 0.80, 2.3), row("lxmert:b1", 1.01, 2.0)],
        },
        {"setting": "tuned", "config": "f32", "rows": [row("lilt:1x512", 0.90, 1.0)]},
        {"setting": "tuned", "config": "f32x1", "error": "boom", "model": "lilt"},
    ]
    return {"machine": machine, "workers": workers, "date": "today", "wall_s": 60.0}


def test_sweep_flags_every_cell_above_the_issue_targets():
    # targets from the issue: LiLT 1x512 f32 <= 0.85 against torch at its defaults, <= 1.0
    # elsewhere (1x512 tuned included), ours f64 at most 2.2x ours f32
    assert sweep.target("lilt:1x512", "f32", "defaults") == 0.85
    assert sweep.target("lilt:1x512", "f32", "tuned") == 1.0
    assert sweep.target("lxmert:b64", "f64", "defaults") == 1.0
    results = _synthetic_results()
    assert sweep.misses(results) == [
        "defaults lilt:1x512 f32: 0.90 > 0.85",
        "defaults lilt:1x512 ours f64 / f32: 2.30 > 2.2",
        "defaults lxmert:b1 f64: 1.01 > 1.00",
    ]
    text = sweep.to_markdown(results, reps=3)
    assert (
        "| lilt:1x512 | **0.90** (0.90-0.90); 1000 / 1000 ms | 0.80 (0.80-0.80); 2300 / 1000 ms | n/a | **2.30** |"
        in text
    )
    assert "| lxmert:b1 | 1.00 (1.00-1.00); 1000 / 1000 ms | **1.01**" in text
    assert "| lilt:1x512 | 0.90 (0.90-0.90); 1000 / 1000 ms | n/a | n/a | n/a |" in text  # tuned: 1.0
    assert "- lilt f32x1 tuned: boom" in text


def test_backward_rows_plan_and_table():
    import backward

    paths = {"lilt": "/ckpt/lilt", "lxmert": "/ckpt/lxmert"}
    plan = backward.specs(list(backward.CASES.values()), paths, [2, 1], list(harness.SETTINGS), repeats=3)
    kinds = [(s["kind"], s["case"], s.get("impl"), threads, setting) for s, threads, setting in plan]
    # the issue's two shapes, f32; each side's memory in its own process, paired timings per setting
    assert ("bwd_memory", "lilt:1x512", "ours", 2, "tuned") in kinds
    assert ("bwd_memory", "lxmert:b8", "torch", 2, "tuned") in kinds
    assert ("bwd_timing", "lxmert:b8", None, 1, "defaults") in kinds
    assert len(kinds) == 2 * (2 + 2 * 2) and {s["dtype"] for s, _, _ in plan} == {"float32"}

    def timing(case, shape, ours, torch, setting="defaults"):
        return {
            "kind": "bwd_timing",
            "case": case,
            "shape": shape,
            "threads": 2,
            "setting": setting,
            "load_average": [0.5],
            "grad_rel_diff": 2e-6,
            "timings": [{"impl": "ours", "median_s": ours}, {"impl": "torch", "median_s": torch}],
        }

    workers = [
        {"kind": "bwd_memory", "case": "lilt:1x512", "impl": "ours", "peak_extra_mib": 900.0},
        {"kind": "bwd_memory", "case": "lilt:1x512", "impl": "torch", "peak_extra_mib": 1000.0},
        timing("lilt:1x512", ["lilt", 1, 512, 0], 6.0, 4.0),
        timing("lxmert:b8", ["lxmert", 8, 20, 36], 3.0, 2.0),
        {"kind": "bwd_timing", "case": "lxmert:b8", "error": "boom"},
    ]
    rows = backward.summarize(workers)
    assert [(r["case"], r["time_ratio"]) for r in rows] == [("lilt:1x512", 1.5), ("lxmert:b8", 1.5)]
    assert rows[0]["peak_ratio"] == 0.9 and "peak_ratio" not in rows[1]
    results = {
        "machine": _synthetic_results()["machine"] | {"date": "today"},
        "command": "--only backward",
        "repeats": 3,
        "threads": [2],
        "workers": workers,
        "rows": rows,
    }
    text = backward.to_markdown(results)
    assert (
        "| lilt base | 1 x 512 | 2 | defaults | 6.000 | 4.000 | 1.50 | 0.5 | 900 | 1000 | 0.90 | 2.0e-06 |"
        in text
    )
    assert "| CPU | test CPU (2 cores available) |" in text
    assert "- bwd_timing lxmert:b8 : boom" in text
