"""Rebuild the executed notebooks (.ipynb, committed with outputs) from their jupytext sources.

    .venv/bin/python notebooks/build.py                    # every notebooks/*.py with a jupytext header
    .venv/bin/python notebooks/build.py lilt_forward.py    # just one

The ``.py`` files (py:percent) are the sources: edit them, then run this script. It converts
each to a notebook, executes it with nbclient in a fresh kernel (working directory: the
repository root, so ``import refimpl`` works from a checkout) and writes the ``.ipynb`` beside
it. ``tests/test_notebooks.py`` re-executes the committed ``.ipynb`` files and checks that
their code cells still equal the sources.

``lilt_finetune`` also saves its loss plot for the site, ``docs/figures/notebooks/lilt-finetune-loss.svg``
(``REFIMPL_NOTEBOOK_FIGURES`` names another folder; the tests point it at a scratch folder and
compare the result with the committed file).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CELL_TIMEOUT = 120  # seconds per cell


def sources() -> list[str]:
    """The jupytext sources in this folder (``.py`` files whose header pairs them with an .ipynb)."""
    out = []
    for name in sorted(os.listdir(HERE)):
        if name.endswith(".py") and name != os.path.basename(__file__):
            with open(os.path.join(HERE, name), encoding="utf-8") as f:
                if "jupytext:" in f.read(400):
                    out.append(os.path.join(HERE, name))
    return out


def execute(nb, timeout: int = CELL_TIMEOUT):
    """Run every cell of ``nb`` (a nbformat notebook) in a fresh python3 kernel, in place."""
    from nbclient import NotebookClient

    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + env_path if env_path else "")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": ROOT}}
    )
    client.execute()
    return nb


def build(path: str) -> str:
    """Convert ``path`` (.py) to an executed .ipynb beside it; return the .ipynb's path."""
    import jupytext

    nb = jupytext.read(path)
    t = time.perf_counter()
    execute(nb)
    for i, cell in enumerate(nb.cells):  # keep diffs small: stable ids, no per-run metadata
        cell["id"] = f"cell-{i:03d}"
        cell.get("metadata", {}).pop("execution", None)
    out = os.path.splitext(path)[0] + ".ipynb"
    jupytext.write(nb, out, fmt="ipynb")
    print(f"{os.path.relpath(out, ROOT)}: executed in {time.perf_counter() - t:.1f} s")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="notebook sources (default: all)")
    args = p.parse_args(argv)
    paths = [os.path.join(HERE, os.path.basename(n)) for n in args.names] or sources()
    for path in paths:
        build(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
