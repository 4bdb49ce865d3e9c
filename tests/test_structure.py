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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the refimpl modules it imports at module level (not inside functions).

    ``from .pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``."""
    import ast

    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        edges = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        todo = list(tree.body)
        while todo:  # module level, including the bodies of if/try at module level
            node = todo.pop()
            if isinstance(node, (ast.If, ast.Try)):
                todo += node.body + node.orelse + getattr(node, "finalbody", [])
                todo += [s for h in getattr(node, "handlers", []) for s in h.body]
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.split(".")[0] == "refimpl"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    target = ".".join(
                        base[: len(base) - node.level + 1] + ([node.module] if node.module else [])
                    )
                else:
                    target = node.module or ""
                if target.split(".")[0] != "refimpl":
                    continue
                for a in node.names:
                    edges.add(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_the_import_graph_of_refimpl_has_no_circle():
    """Issue 21: one direction of arrows. A module importing (at module level) a module that
    imports it back, directly or through others, is a circle; a package's ``__init__`` that
    re-exports its own modules is the package's facade and counts as a module like any other."""
    graph = _import_graph()
    assert len(graph) > 50 and graph["refimpl.lilt.layers"], "the graph was not read"
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
