"""examples/c/golden_check.c: a golden file is checkable from C99 with libc only.

The program recomputes LiLT's layout embeddings from the checkpoint and the golden inputs and
compares them with ``lilt.layout_embeddings.LayerNorm``; these tests compile it with the
system ``cc`` (skipped when there is none) and run it on the bundled tiny LiLT.
"""

from __future__ import annotations

import os
import shutil
import subprocess

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
