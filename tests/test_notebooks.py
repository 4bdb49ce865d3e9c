"""The step-through notebooks run, and the committed .ipynb files match their jupytext sources.

Each notebook ends by asserting that its step-by-step computation equals the library (the
forward notebooks: one call of the model; ``lilt_backward``: ``lilt_layer_backward``, torch
autograd and finite differences; ``lilt_finetune``: the same fine-tuning run in PyTorch), so
executing it is a test of the public API as well as of the prose.
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
#: notebook -> the line its last cell prints once every check has passed
FINAL_CHECK = {
    "lilt_forward": "step-by-step == model(...)",
    "lxmert_forward": "step-by-step == model(...)",
    "lilt_backward": "by hand == lilt_layer_backward == autograd == finite differences",
    "lilt_finetune": "NumPy fine-tuning == PyTorch fine-tuning",
}
NAMES = list(FINAL_CHECK)
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
def test_notebook_executes(name, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # The kernel inherits the environment: make `import refimpl` work from a plain checkout too.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # lilt_finetune saves its loss plot for the site: here, into a scratch folder, not docs/
    monkeypatch.setenv("REFIMPL_NOTEBOOK_FIGURES", str(tmp_path))
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    t = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell on any error or failed assert
    elapsed = time.perf_counter() - t
    assert elapsed < 30, f"{name} took {elapsed:.1f} s (budget: 30 s each)"
    text = "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )
    assert FINAL_CHECK[name] in text, "the notebook's final check did not run"
    if name == "lilt_finetune":
        svg = (tmp_path / "lilt-finetune-loss.svg").read_bytes()
        assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg, "the loss plot was not saved as SVG"
        import matplotlib

        committed = ROOT / "docs" / "figures" / "notebooks" / "lilt-finetune-loss.svg"
        if matplotlib.__version__ == _figures_matplotlib():  # SVG bytes depend on matplotlib's version
            assert svg == committed.read_bytes(), (
                f"{committed.relative_to(ROOT)} is stale: run .venv/bin/python notebooks/build.py lilt_finetune.py"
            )


def _figures_matplotlib() -> str:
    """The matplotlib version docs/figures.py's committed figures were drawn with."""
    import re

    text = (ROOT / "docs" / "figures.py").read_text(encoding="utf-8")
    return re.search(r'^MATPLOTLIB_VERSION = "([^"]+)"', text, flags=re.M).group(1)


def _notebook_cell(name: str, marker: str) -> str:
    """The source of the one code cell of notebooks/<name>.py that contains ``marker``."""
    import jupytext

    cells = [c.source for c in jupytext.read(NOTEBOOKS / f"{name}.py").cells if c.cell_type == "code"]
    found = [c for c in cells if marker in c]
    assert len(found) == 1, f"{name}.py: {len(found)} code cells contain {marker!r}"
    return found[0]


@pytest.mark.parametrize("weight_decay, betas, eps", [(1e-2, (0.9, 0.999), 1e-8), (0.3, (0.8, 0.95), 1e-3)])
def test_finetune_adamw_equals_torch_adamw(weight_decay, betas, eps):
    """The notebook's NumPy AdamW (its own cell's code, executed) gives torch.optim.AdamW's
    parameters after a few float64 steps, including a parameter whose gradient is tiny (where
    eps's placement decides the step) and one with a zero gradient (weight decay alone)."""
    import numpy as np
    import torch

    namespace: dict = {"np": np}
    exec(_notebook_cell("lilt_finetune", "class AdamW"), namespace)
    rng = np.random.default_rng(7)
    shapes = {"w": (4, 3), "b": (3,), "tiny": (2, 2), "zero": (5,)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    expected = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    ours = namespace["AdamW"](params, lr=0.05, betas=betas, eps=eps, weight_decay=weight_decay)
    theirs = torch.optim.AdamW(
        list(expected.values()), lr=0.05, betas=betas, eps=eps, weight_decay=weight_decay
    )
    for _ in range(6):
        grads = {k: rng.standard_normal(s) for k, s in shapes.items()}
        grads["tiny"] *= 1e-7
        grads["zero"] *= 0.0
        for k, p in expected.items():
            p.grad = torch.tensor(grads[k])
        ours.step(grads)
        theirs.step()
    for k in shapes:
        want = expected[k].detach().numpy()
        np.testing.assert_allclose(params[k], want, rtol=0, atol=1e-12, err_msg=k)
