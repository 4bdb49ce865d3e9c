"""Named-intermediate recorder for golden outputs: a quiet observer of the forward pass.

Off by default, and then nearly free: every verb below looks up one context variable and
returns. Names follow the checkpoint's module paths, so
``lilt.encoder.layer.3.attention.self.query`` in a golden file is exactly what a PyTorch
forward hook on that module of the oracle sees:

    with trace.tracing() as rec:
        out = model(input_ids=ids, bbox=boxes)
    rec.tensors["lilt.encoder.layer.0.attention.self.query"]   # [batch, seq, hidden]

Inside the model, recording is a statement of its own, never wrapped around an expression:

    with trace.scope("encoder.layer.0"):
        with trace.scope("attention.self"):
            query = linear(hidden_states, **query_weights)        # [b, s, h]
            trace.record("query", query)
        ...
        trace.output(layer_output)                                # the module's own output

Three verbs:

* [scope][refimpl.trace.scope] prefixes every name recorded inside it (``call="lang"`` also
  appends the per-call suffix ``@lang`` to those names, for a module the oracle calls more
  than once);
* [record][refimpl.trace.record] stores one value under ``<scope>.<name>`` (``also=`` names
  the same value under the oracle's other names for it);
* [output][refimpl.trace.output] stores a module's own output under the scope's name.

A recorder chooses what it keeps ([Recorder.wants][refimpl.trace.Recorder.wants]). A fast
kernel may skip intermediates its formula records; while the recorder wants one of them,
the formula runs instead (see `refimpl.switch`), so a recorder never misses a name and never
pays for one it does not want.

The contract a recorder relies on: an array passed to ``record`` or ``output`` is never
written again by the forward pass (in the fast and the reference mode alike), so a recorder
may keep references instead of copies (``tests/test_tape.py`` checks every recorded array of
both models bit for bit after the forward).

The active recorder and the scope live in one `contextvars.ContextVar`, so threads and
nested runs each see their own.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

__all__ = ["Recorder", "tracing", "scope", "record", "output", "wants_any", "active", "current_name"]


class Recorder:
    """Collects named arrays in forward order.

    Subclass it and override ``store`` to send each value elsewhere as it is recorded
    (a streaming file writer, say), and ``wants`` to choose names; ``add`` checks the name first.

    Attributes:
        tensors: name -> array, in the order they were recorded.
        copy: store copies (default), so that the caller's own later writes to the returned
            arrays cannot change what was recorded. ``copy=False`` keeps references: the
            forward never writes a recorded array again.
    """

    def __init__(self, copy: bool = True):
        self.tensors: dict[str, Any] = {}
        self.copy = copy
        self._names: set[str] = set()

    def add(self, name: str, value: Any, aliases: tuple[str, ...] = ()) -> None:
        """Record ``value`` (an array of any shape, or a scalar) under the full ``name`` and
        every full name in ``aliases``; a name recorded twice is a ``KeyError``."""
        for n in (name, *aliases):
            if n in self._names:
                raise KeyError(
                    f"trace name {n!r} recorded twice: a module called more than once needs a "
                    f"per-call scope (trace.scope(name, call=...))"
                )
            self._names.add(n)
        self.store(name, value, aliases)

    def wants(self, name: str) -> bool:
        """Whether this recorder keeps the tensor of the full ``name`` (default: every name).

        A fast kernel that would skip a wanted name gives way to its formula, which records it.
        """
        return True

    def store(self, name: str, value: Any, aliases: tuple[str, ...] = ()) -> None:
        """Keep ``value`` (an array of any shape, or a scalar) under ``name`` and its ``aliases``
        (all full names, already checked)."""
        kept = value.copy() if (self.copy and hasattr(value, "copy")) else value
        for n in (name, *aliases):
            self.tensors[n] = kept


class _State(NamedTuple):
    recorder: Recorder
    prefix: tuple[str, ...]  # scope names, outermost first
    suffix: str  # per-call suffix ("@lang"), "" outside per-call scopes


_state: contextvars.ContextVar[_State | None] = contextvars.ContextVar("refimpl_trace", default=None)
_null = contextlib.nullcontext()


def active() -> Recorder | None:
    """The recorder in use, or ``None`` when tracing is off."""
    st = _state.get()
    return None if st is None else st.recorder


def _full(st: _State, name: str) -> str:
    return ".".join([*st.prefix, name] if name else st.prefix) + st.suffix


@contextlib.contextmanager
def tracing(copy: bool = True, recorder: Recorder | None = None) -> Iterator[Recorder]:
    """Turn tracing on for the ``with`` block and yield the `Recorder`.

    Args:
        copy: store copies of the recorded arrays (ignored when ``recorder`` is given).
        recorder: a recorder to use (a streaming subclass, say); default a new one.
    """
    rec = Recorder(copy=copy) if recorder is None else recorder
    token = _state.set(_State(rec, (), ""))
    try:
        yield rec
    finally:
        _state.reset(token)


@contextlib.contextmanager
def _scope(st: _State, name: str, call: str | None) -> Iterator[None]:
    prefix = (*st.prefix, name) if name else st.prefix
    token = _state.set(_State(st.recorder, prefix, f"@{call}" if call else st.suffix))
    try:
        yield
    finally:
        _state.reset(token)


def scope(name: str, call: str | None = None):
    """Prefix every name recorded inside the ``with`` block by ``name`` (joined with '.').

    Args:
        name: module path relative to the enclosing scope, e.g. ``"encoder.layer.0"``.
        call: for a module the oracle calls several times with the same weights: every name
            recorded inside ends in ``@<call>`` (``...visual_attention.att.query@lang``).
    """
    st = _state.get()
    if st is None or (not name and not call):
        return _null
    return _scope(st, name, call)


def record(name: str, value: Any, also: tuple[str, ...] | str = ()) -> None:
    """Record ``value`` under ``<scope>.<name>`` when tracing is on.

    Args:
        name: module-path suffix, e.g. ``"query"`` or ``"attention_probs"``.
        value: an array (any shape) or a scalar (losses).
        also: other names (same scope) under which the oracle computes the same numbers,
            e.g. LiLT's ``layout_attention_probs``, equal to ``attention_probs``.
    """
    st = _state.get()
    if st is not None:
        aliases = (also,) if isinstance(also, str) else tuple(also)
        st.recorder.add(_full(st, name), value, tuple(_full(st, a) for a in aliases))


def output(value: Any, also: tuple[str, ...] | str = ()) -> None:
    """Record ``value`` as the current module's own output: under the scope's full name.

    Args:
        value: the module's output array (any shape).
        also: submodules (relative names) whose output is the same array, e.g. LXMERT's
            ``intermediate_act_fn``, the last step of its ``intermediate`` block.
    """
    st = _state.get()
    if st is not None:
        inner = (also,) if isinstance(also, str) else tuple(also)
        # forward order: the submodules' outputs come first, then the module's own
        names = [_full(st, a) for a in inner] + [_full(st, "")]
        st.recorder.add(names[0], value, tuple(names[1:]))


def wants_any(names: Iterable[str]) -> bool:
    """Whether the active recorder wants any of ``names`` (relative to the current scope);
    ``False`` when tracing is off.

    Args:
        names: module-path suffixes, e.g. ``("dense", "LayerNorm")``.
    """
    st = _state.get()
    if st is None:
        return False
    return any(st.recorder.wants(_full(st, n)) for n in names)


def current_name(name: str = "") -> str:
    """The full name ``name`` would get now (``name`` itself when tracing is off)."""
    st = _state.get()
    return _full(st, name) if st is not None else name
