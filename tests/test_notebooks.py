"""The step-through notebooks run, and the committed .ipynb files match their jupytext sources.

Each notebook ends by asserting that its step-by-step forward pass equals one call of the
model, so executing it is a test of the layer functions' public API as well as of the prose.
The ``.py`` (py:percent) file is the source; ``notebooks/build.py`` regenerates the executed
``.ipynb`` from it.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["lilt_forward", "lxmert_forward"]
CELL_TIMEOUT = 60  # seconds, per cell

_missing = [
    m
    for m in ("nbclient", "nbformat", "jupytext", "ipykernel", "matplotlib")
    if importlib.util.find_spec(m) is None
]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"notebook tooling not installed: {_missing}")


def _code_cells(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_is_up_to_date_with_its_source(name):
    import jupytext
    import nbformat

    source = jupytext.read(NOTEBOOKS / f"{name}.py")
    committed = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert _code_cells(committed) == _code_cells(source), (
        f"notebooks/{name}.ipynb is stale: run .venv/bin/python notebooks/build.py {name}.py"
    )
    md = [c.source.strip() for c in committed.cells if c.cell_type == "markdown"]
    assert md == [c.source.strip() for c in source.cells if c.cell_type == "markdown"], (
        f"notebooks/{name}.ipynb prose differs from {name}.py: rebuild it"
    )
    # committed WITH outputs: every code cell was executed, in order
    counts = [c.execution_count for c in committed.cells if c.cell_type == "code"]
    assert all(counts) and counts == sorted(counts), f"notebooks/{name}.ipynb was not executed top to bottom"
    assert any(
        o.get("output_type") == "display_data" for c in committed.cells for o in c.get("outputs", [])
    ), f"notebooks/{name}.ipynb has no figures"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # The kernel inherits the environment: make `import refimpl` work from a plain checkout too.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    t = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any error or failed assert
    elapsed = time.perf_counter() - t
    assert elapsed < 30, f"{name} took {elapsed:.1f} s (budget: 30 s each, 60 s for both notebooks)"
    text = "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )
    assert "step-by-step == model(...)" in text, "the notebook's final check did not run"
