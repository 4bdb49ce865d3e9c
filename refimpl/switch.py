"""The one switch between the plain formulas and their fast kernels.

An op that a fast kernel may replace is written once, as its formula, and marked
``@replaceable``. Calling it looks up one table: when a kernel is registered for the op and
the fast mode is on, the kernel runs; otherwise the formula does:

    @replaceable
    def layer_norm(x, weight, bias, eps):           # refimpl.ops: the formula is the body
        ...

    @kernel_for(ops.layer_norm)                      # refimpl.fast: the same name, one level down
    def layer_norm(x, weight, bias, eps):
        ...                                          # cache-sized blocks of rows on the host threads

The fast mode is the default. ``reference()`` (also ``refimpl.reference()``) runs the
formulas only, for the ``with`` block; the environment variable ``REFIMPL_REFERENCE=1``
makes that the default for the whole process. [mode][refimpl.switch.mode] says which is in
effect (a golden file's manifest records it).

A formula that records named intermediates (``trace.record``) declares them,
``@replaceable(records=("dense", "LayerNorm"))``: its kernel may skip them (a fused kernel
never forms them alone), so while an active recorder wants any of them the formula runs
instead (see [refimpl.trace.Recorder.wants][]).

This module sits below the ops (``refimpl.ops`` imports it, ``refimpl.fast`` fills it), so
the formulas never import their kernels. The mode lives in a
`contextvars.ContextVar`, so threads and nested ``with`` blocks each see their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from . import trace

__all__ = ["replaceable", "kernel_for", "reference", "fast", "mode", "kernels", "ENV_VAR"]

#: Set to ``1`` to run the plain formulas by default (``0`` or unset: the fast kernels).
ENV_VAR = "REFIMPL_REFERENCE"

# op key ("refimpl.ops.layer_norm") -> its fast kernel; filled by refimpl.fast at import
_KERNELS: dict[str, Callable[..., Any]] = {}
_OPS: dict[str, Callable[..., Any]] = {}  # op key -> the replaceable op
_FAST = MappingProxyType(_KERNELS)  # every kernel (a live, read-only view)
_PLAIN: Mapping[str, Callable[..., Any]] = MappingProxyType({})


def _reference_by_default() -> bool:
    value = os.environ.get(ENV_VAR, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{ENV_VAR} must be 0 (fast kernels) or 1 (plain formulas), got {value!r}")
    return value == "1"


# the table the ops consult: _FAST, _PLAIN, or _FAST less some kernels (fast(without=...))
_table: contextvars.ContextVar[Mapping[str, Callable[..., Any]]] = contextvars.ContextVar(
    "refimpl_switch", default=_PLAIN if _reference_by_default() else _FAST
)


def replaceable(formula: Callable | None = None, *, records: tuple[str, ...] = ()):
    """Mark ``formula`` as an op a fast kernel may replace (use as ``@replaceable`` or
    ``@replaceable(records=(...))``).

    The decorated function keeps the formula's name, signature and docstring; the formula
    itself stays reachable as ``op.formula``.

    Args:
        formula: the plain function (its body is the formula).
        records: the names the formula records in the current trace scope (its own and those
            of the ops it calls), which a kernel may skip.
    """

    def wrap(formula: Callable) -> Callable:
        key = f"{formula.__module__}.{formula.__qualname__}"
        names = tuple(records)

        @functools.wraps(formula)
        def op(*args, **kwargs):
            kernel = _table.get().get(key)
            if kernel is None or (names and trace.wants_any(names)):
                return formula(*args, **kwargs)
            return kernel(*args, **kwargs)

        op.formula = formula  # type: ignore[attr-defined]
        op.key = key  # type: ignore[attr-defined]
        op.records = names  # type: ignore[attr-defined]
        _OPS[key] = op
        return op

    return wrap if formula is None else wrap(formula)


def kernel_for(op: Callable):
    """Register the decorated function as ``op``'s fast kernel (``op`` is a
    [replaceable][refimpl.switch.replaceable] op); the kernel gets ``kernel.replaces = op``.

    Raises:
        ValueError: ``op`` is not replaceable, or already has a kernel.
    """
    key = getattr(op, "key", None)
    if key is None or _OPS.get(key) is not op:
        raise ValueError(f"{getattr(op, '__qualname__', op)!r} is not a @replaceable op")
    if key in _KERNELS:
        raise ValueError(f"{key} already has a fast kernel: {_KERNELS[key].__module__}")

    def register(kernel: Callable) -> Callable:
        kernel.replaces = op  # type: ignore[attr-defined]
        _KERNELS[key] = kernel
        return kernel

    return register


@contextlib.contextmanager
def _use(table: Mapping[str, Callable[..., Any]]) -> Iterator[None]:
    token = _table.set(table)
    try:
        yield
    finally:
        _table.reset(token)


def reference():
    """Run the plain formulas only, for the ``with`` block (``with refimpl.reference(): ...``)."""
    return _use(_PLAIN)


def fast(without: Iterable[Callable] = ()):
    """Run the fast kernels for the ``with`` block (also under ``REFIMPL_REFERENCE=1``), except
    those of the ops in ``without``, which run their formulas (to measure what one kernel buys)."""
    skip = {op.key for op in without}
    if not skip:
        return _use(_FAST)
    return _use(MappingProxyType({k: v for k, v in _KERNELS.items() if k not in skip}))


def mode() -> str:
    """``"fast"`` (every registered kernel in use), ``"reference"`` (the plain formulas only),
    or ``"fast without <ops>"`` inside [fast][refimpl.switch.fast]``(without=...)``."""
    table = _table.get()
    if table is _FAST:
        return "fast"
    if not table:
        return "reference"
    return "fast without " + ", ".join(sorted(set(_KERNELS) - set(table)))


def kernels() -> dict[Callable, Callable]:
    """Every registered kernel: replaceable op -> its fast kernel."""
    return {_OPS[k]: kernel for k, kernel in _KERNELS.items()}
