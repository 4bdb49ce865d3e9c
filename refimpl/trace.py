"""Named-intermediate recorder for golden outputs. Off by default, and then nearly free.

Layer functions call :func:`record` with a name relative to the current :func:`scope`.
Names follow the checkpoint's module paths, so ``lilt.encoder.layer.3.attention.self.query``
in a golden file is exactly what a PyTorch forward hook on that module of the oracle sees::

    with trace.tracing() as rec:
        out = model(input_ids=ids, bbox=boxes)
    rec.tensors["lilt.encoder.layer.0.attention.self.query"]   # [batch, seq, hidden]

Inside the model::

    with trace.scope("encoder.layer.0"):
        with trace.scope("attention.self"):
            q = trace.record("query", linear(x, **w["query"]))

When tracing is off, :func:`scope` returns a shared no-op context and :func:`record` returns
its argument after one global check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["Recorder", "tracing", "scope", "record", "active", "current_name"]


class Recorder:
    """Collects named arrays in forward order.

    Attributes:
        tensors: name -> array, in the order they were recorded.
        copy: store copies (default) so later in-place work cannot change a recorded value.
    """

    def __init__(self, copy: bool = True):
        self.tensors: dict[str, Any] = {}
        self.copy = copy
        self._prefix: list[str] = []

    def name(self, name: str) -> str:
        """The full dotted name ``name`` gets under the current scopes."""
        return ".".join([*self._prefix, name]) if name else ".".join(self._prefix)

    def add(self, name: str, value: Any) -> None:
        """Store ``value`` (an array of any shape, or a scalar) under its full name; a repeated name is a ``KeyError``."""
        full = self.name(name)
        if full in self.tensors:
            raise KeyError(
                f"trace name {full!r} recorded twice: a module called more than once needs a per-call suffix"
            )
        self.tensors[full] = value.copy() if (self.copy and hasattr(value, "copy")) else value


_active: Recorder | None = None
_null = contextlib.nullcontext()


def active() -> Recorder | None:
    """The recorder in use, or ``None`` when tracing is off."""
    return _active


@contextlib.contextmanager
def tracing(copy: bool = True) -> Iterator[Recorder]:
    """Turn tracing on for the ``with`` block and yield the :class:`Recorder`."""
    global _active
    previous = _active
    _active = Recorder(copy=copy)
    try:
        yield _active
    finally:
        _active = previous


@contextlib.contextmanager
def _scope(rec: Recorder, name: str) -> Iterator[None]:
    rec._prefix.append(name)
    try:
        yield
    finally:
        rec._prefix.pop()


def scope(name: str):
    """Prefix every name recorded inside the ``with`` block by ``name`` (joined with '.')."""
    rec = _active
    if rec is None or not name:
        return _null
    return _scope(rec, name)


def record(name: str, value: Any) -> Any:
    """Record ``value`` under ``<scope>.<name>`` when tracing is on; return ``value`` unchanged.

    Args:
        name: module-path suffix, e.g. ``"attention.self.query"`` or ``"attention_probs"``.
        value: an array (any shape) or a scalar (losses).
    """
    rec = _active
    if rec is not None:
        rec.add(name, value)
    return value


def current_name(name: str = "") -> str:
    """The full name ``name`` would get now (empty prefix when tracing is off)."""
    rec = _active
    return rec.name(name) if rec is not None else name
