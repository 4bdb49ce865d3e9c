"""The package's shape (issue 21): no module in refimpl/ over 600 lines, and the split
``refimpl.files`` package still offers every public name at ``refimpl.files.X``."""

from __future__ import annotations

import importlib
from pathlib import Path

import refimpl
import refimpl.files

PACKAGE = Path(refimpl.__file__).parent
MAX_LINES = 600


def test_no_module_in_refimpl_exceeds_600_lines():
    over = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            over[str(path.relative_to(PACKAGE.parent))] = n
    assert not over, f"modules over {MAX_LINES} lines (split them along their seams): {over}"


def test_every_public_name_of_the_files_modules_is_importable_from_refimpl_files():
    """``refimpl.files.X`` for every name the package's modules export, and nothing else."""
    exported = set()
    for name in ("limits", "reading", "arrays", "writing", "destinations"):
        module = importlib.import_module(f"refimpl.files.{name}")
        exported |= set(module.__all__)
        for x in module.__all__:
            assert getattr(refimpl.files, x) is getattr(module, x), x
    assert set(refimpl.files.__all__) == exported
    # the names every other module of refimpl imports from it (a sample that spans the split)
    for x in (
        "CheckpointError",
        "read_json",
        "read_npz",
        "atomic_write",
        "check_destination",
        "MAX_JSON_BYTES",
    ):
        assert x in refimpl.files.__all__
