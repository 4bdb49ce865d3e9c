"""Readable above, fast below: what the layer modules may import, and what the ops may not.

A click on any op in a layer file must land on its formula: the layer modules import no fused
name, no kernel module and no trailing-underscore (in-place) name, and the ops never import
their kernels (the switch between them sits below both).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import refimpl

PACKAGE = Path(refimpl.__file__).parent
LAYER_MODULES = [
    "bert.py",
    "lilt/embeddings.py",
    "lilt/layers.py",
    "lilt/backward.py",
    "lilt/modeling_backward.py",
    "lilt/heads.py",
    "lilt/modeling.py",
    "lxmert/layers.py",
    "lxmert/heads.py",
    "lxmert/modeling.py",
    "lxmert/backward.py",
    "lxmert/modeling_backward.py",
]
FORMULA_MODULES = [
    "ops.py",
    "activations.py",
    "attention.py",
    "bert.py",
    "losses.py",
    "switch.py",
    "trace.py",
]
BANNED_WORDS = ("fused", "fast", "kernel", "_plain")


def _imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``import`` / ``from ... import`` in the file (relative
    modules resolved against the package)."""
    tree = ast.parse(path.read_text())
    package = ".".join(("refimpl", *path.relative_to(PACKAGE).parent.parts))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            out += [(module, alias.name) for alias in node.names]
    return out


def _attributes_of_imported_modules(path: Path) -> set[str]:
    """Names used as ``module.name`` where ``module`` was imported (``bert.add_and_norm``)."""
    tree = ast.parse(path.read_text())
    modules = {alias.asname or alias.name for module, alias in _aliases(tree)}
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
    }


def _aliases(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            for alias in node.names:
                yield node.module, alias


@pytest.mark.parametrize("module", LAYER_MODULES)
def test_layer_modules_import_only_plain_ops(module):
    path = PACKAGE / module
    for source, name in _imports(path):
        for part in (*source.split("."), name):
            assert not part.endswith("_") or part.startswith("__"), f"{module} imports {source}.{name}"
            assert not any(w in part for w in BANNED_WORDS), f"{module} imports {source}.{name}"
            assert not part.startswith("_") or part.startswith("__"), (
                f"{module} imports private {source}.{name}"
            )
    for attr in _attributes_of_imported_modules(path):  # trace.record, bert.add_and_norm, ...
        assert not attr.endswith("_") and not any(w in attr for w in BANNED_WORDS), f"{module} uses .{attr}"


@pytest.mark.parametrize("module", FORMULA_MODULES)
def test_the_formulas_never_import_their_kernels(module):
    for source, name in _imports(PACKAGE / module):
        assert not source.startswith("refimpl.fast") and name != "fast", f"{module} imports {source} {name}"


def test_every_replaceable_op_is_its_formula_for_a_reader():
    """The op a layer calls is a thin wrapper whose ``__wrapped__`` is the formula, so
    ``inspect.getsource`` (a docs page, an editor's go-to-definition) shows the formula, whose
    code names no kernel."""
    import inspect

    from refimpl import switch

    for op in switch.kernels():
        assert op.__wrapped__ is op.formula and op.__doc__ == op.formula.__doc__
        assert inspect.getsource(op) == inspect.getsource(op.formula)  # the decorated def
        tree = ast.parse(inspect.getsource(op.formula))
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not [u for u in used if any(w in u for w in BANNED_WORDS)], op.key
