"""examples/c/golden_check.c: a golden file is checkable from C99 with libc only.

The program recomputes LiLT's layout embeddings from the checkpoint and the golden inputs and
compares them with ``lilt.layout_embeddings.LayerNorm``; these tests compile it with the
system ``cc`` (skipped when there is none) and run it on the bundled tiny LiLT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import refimpl
from refimpl import golden
from refimpl.data import path as bundled_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "examples", "c", "golden_check.c")
NAME = "lilt.layout_embeddings.LayerNorm"
CC = shutil.which("cc")

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc) on PATH")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("c")
    exe = d / "golden_check"
    cmd = [CC, "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-o", str(exe), SOURCE, "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr, r.stderr
    ckpt = bundled_path("lilt-tiny")
    model = refimpl.from_pretrained(ckpt, dtype="float64")
    rng = np.random.default_rng(3)
    x0, y0 = rng.integers(0, 800, (2, 12, 1)), rng.integers(0, 800, (2, 12, 1))
    bbox = np.concatenate(
        [x0, y0, x0 + rng.integers(0, 150, x0.shape), y0 + rng.integers(0, 60, y0.shape)], -1
    )
    mask = np.ones((2, 12), np.int64)
    mask[1, 8:] = 0  # the second row is shorter: padded
    ids = rng.integers(3, model.config.vocab_size, (2, 12))
    ids[1, 8:] = model.config.pad_token_id
    path = d / "case.safetensors"
    golden.write_case(path, model, {"input_ids": ids, "bbox": bbox, "attention_mask": mask}, checkpoint=ckpt)
    return exe, path, os.path.join(ckpt, "model.safetensors")


def run(exe, case, weights):
    return subprocess.run([str(exe), str(case), str(weights)], capture_output=True, text=True, timeout=60)


def test_c_program_matches_the_golden_layout_embeddings(built):
    exe, case, weights = built
    r = run(exe, case, weights)
    assert r.returncode == 0, r.stdout + r.stderr
    line = [ln for ln in r.stdout.splitlines() if ln.startswith(NAME)]
    assert line and line[0].endswith("OK") and "compared 480" in line[0]  # 20 unpadded tokens x 24


def _rewrite(case, out, change):
    g = golden.read(case)
    t = dict(g.tensors)
    t[NAME] = t[NAME].copy()
    change(t[NAME])
    golden.write(out, t, g.manifest)
    return out


def test_c_program_fails_on_a_corrupted_tensor_naming_it(built, tmp_path):
    exe, case, weights = built

    def corrupt(a):
        a[0, 3, 5] += 1e-6

    r = run(exe, _rewrite(case, tmp_path / "bad.safetensors", corrupt), weights)
    assert r.returncode == 1, r.stdout + r.stderr
    assert NAME in r.stderr and "1 of 480" in r.stderr and "NOT OK" in r.stdout


def test_c_program_skips_padded_rows_as_the_manifest_says(built, tmp_path):
    exe, case, weights = built

    def pad_only(a):
        a[1, 9, :] = 1e3  # a padded token: inputs.attention_mask is 0 there

    assert run(exe, _rewrite(case, tmp_path / "pad.safetensors", pad_only), weights).returncode == 0


def test_c_program_rejects_a_truncated_file(built, tmp_path):
    exe, case, weights = built
    bad = tmp_path / "short.safetensors"
    bad.write_bytes(case.read_bytes()[:100])
    r = run(exe, bad, weights)
    assert r.returncode == 2 and "golden_check:" in r.stderr


def test_c_program_reads_only_the_tensors_it_checks(built, tmp_path):
    """A golden file with a 96 MB tensor it does not check: the program's peak memory stays far
    below the file's size (it seeks to the tensors it needs instead of reading the file)."""
    exe, case, weights = built
    g = golden.read(case)
    t = dict(g.tensors)
    big = np.arange(12 << 20, dtype=np.float64)  # 96 MB, stored once (no alias)
    t["zz.unchecked"] = big
    manifest = dict(g.manifest)
    manifest["tensors"] = [*g.manifest["tensors"], {**g.manifest["tensors"][-1], "name": "zz.unchecked",
                           "shape": [big.size], "dtype": "float64", "masks": []}]  # fmt: skip
    path = golden.write(tmp_path / "big.safetensors", t, manifest)
    assert os.path.getsize(path) > 96e6
    # measured from a small fresh interpreter: a child forked from this process would count
    # this process's own pages in its peak
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    r = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(exe), str(path), str(weights)], capture_output=True, text=True
    )
    rc, peak_kib = map(int, r.stdout.split())
    assert rc == 0, r.stderr
    assert peak_kib < 40_000, f"peak RSS {peak_kib} KiB for a {os.path.getsize(path)} byte file"


def _section_10_commands() -> tuple[str, list[str]]:
    """The first bash block of docs/golden-format.md section 10: its commands and the output
    lines it shows (its ``#`` comments)."""
    text = open(os.path.join(ROOT, "docs", "golden-format.md"), encoding="utf-8").read()
    sec = text[text.index("## 10.") :]
    block = sec[sec.index("```bash\n") + 8 :]
    block = block[: block.index("```")]
    shown = [ln[1:].strip() for ln in block.splitlines() if ln.startswith("#")]
    return block, shown


def test_the_format_page_section_10_commands_run_as_written(tmp_path):
    """The commands of "A porter's first step, in C", run in a fresh directory holding
    examples/c, print what the page shows (no stale helper such as refimpl.cli.bundled_path)."""
    commands, shown = _section_10_commands()
    assert "bundled_path" not in commands
    shutil.copytree(os.path.join(ROOT, "examples"), tmp_path / "examples")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        ["bash", "-e", "-c", commands], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout.splitlines()
    first, last = shown[0], shown[-1]
    got0, want0 = out[0].split(), first.split()
    assert got0[:2] == want0[:2] and got0[3] == want0[3], (out[0], first)
    assert float(got0[2]) == pytest.approx(float(want0[2]), abs=1e-12)
    assert float(got0[4]) == pytest.approx(float(want0[4]), abs=1e-12)
    got, want = out[-1].split(), last.split()
    assert got[:2] == want[:2] and got[4:] == want[4:], (out[-1], last)  # all but the max_abs value
    assert float(got[3]) <= 1e-10
