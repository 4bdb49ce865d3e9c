"""The tape: the forward's own recorded activations, read back by the backward.

The backward (``refimpl.gradients``) runs the forward ONCE under a [Tape][refimpl.tape.Tape],
a trace recorder that keeps a reference (no copy) to every tensor the forward records under
its golden name. The trace's contract makes that safe: an array passed to ``trace.record`` is
never written again (``tests/test_tape.py``).

The backward then walks the layers in reverse inside the same trace scopes as the forward,
so a backward function reads what its forward recorded with the same relative name:

    # forward (refimpl.bert.intermediate)          # backward (refimpl.bert.intermediate_backward)
    h = linear(hidden_states, **dense)              h = saved("dense")
    trace.record("dense", h)                        ...

[saved][refimpl.tape.saved] resolves the name in the current scope (``trace.current_name``),
so the backward must run under a recorder (``gradients.backward`` runs it under the recorder
that collects the tensors' gradients, named like the forward tensors).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from . import trace

__all__ = ["Tape", "TAPE_SKIPS", "reading", "saved", "has", "release"]

#: Recorded names the backward never reads (the last component of the name): the scaled
#: scores before the mask and BiACM's two summands. A tape skips them so it holds no more
#: ``[batch, heads, seq, seq]`` arrays than autograd does (the probabilities only), and the
#: fast kernels that never form them keep running. With a head mask the backward needs the
#: scores (to recompute the probabilities before the mask), so the tape keeps them then.
TAPE_SKIPS = (
    "attention_scores",
    "layout_attention_scores",
    "tmp_attention_scores",
    "tmp_layout_attention_scores",
)


class Tape(trace.Recorder):
    """A recorder that keeps references to the forward's tensors, by full trace name.

    Args:
        skip: last name components not kept (default `TAPE_SKIPS`); ``()`` keeps everything.
    """

    def __init__(self, skip: tuple[str, ...] = TAPE_SKIPS):
        super().__init__(copy=False)
        self.skip = tuple(skip)

    def wants(self, name: str) -> bool:
        """Whether the tape keeps ``name``: every name but those whose last component is skipped."""
        return name.rsplit(".", 1)[-1].split("@", 1)[0] not in self.skip

    def store(self, name: str, value: Any, aliases: tuple[str, ...] = ()) -> None:
        """Keep a reference to ``value`` (an array of any shape ``[...]``, or a scalar) under ``name``
        and its aliases, unless skipped."""
        for n in (name, *aliases):
            if self.wants(n):
                self.tensors[n] = value


_tape: contextvars.ContextVar[Tape | None] = contextvars.ContextVar("refimpl_tape", default=None)


@contextlib.contextmanager
def reading(tape: Tape) -> Iterator[Tape]:
    """Make ``tape`` the one [saved][refimpl.tape.saved] reads, for the ``with`` block."""
    token = _tape.set(tape)
    try:
        yield tape
    finally:
        _tape.reset(token)


def _full(name: str) -> str:
    if trace.active() is None:
        raise RuntimeError("the backward reads the tape by scope: run it under trace.tracing(...)")
    return trace.current_name(name)


def saved(name: str = ""):
    """The forward tensor recorded under ``name`` in the current scope (``""``: the scope's own
    output, as ``trace.output`` recorded it).

    Raises:
        KeyError: naming the full name, when the forward did not record it (or the tape skipped it).
    """
    tape = _tape.get()
    if tape is None:
        raise RuntimeError("no tape: saved() is only valid inside tape.reading(tape)")
    full = _full(name)
    try:
        return tape.tensors[full]
    except KeyError:
        raise KeyError(f"the tape holds no forward tensor {full!r} (not recorded, or skipped)") from None


def has(name: str = "") -> bool:
    """Whether the tape holds ``name`` in the current scope."""
    tape = _tape.get()
    return tape is not None and _full(name) in tape.tensors


def release(name: str) -> int:
    """Drop the tape's references to ``name`` in the current scope and to every tensor recorded
    beneath it (``name.*``, ``name@*``), so that memory no later backward reads is freed as the
    backward goes, as autograd frees a node's saved tensors once it has run.

    The encoders call it for each layer once that layer's backward has returned: a layer's
    backward is the last reader of what its forward recorded (its inputs, the previous
    layer's outputs, are that layer's and are read before it). It changes no number; a
    later [saved][refimpl.tape.saved] of a released name raises its ``KeyError``.

    Args:
        name: a name relative to the current scope (``"layer.3"`` inside ``encoder``).

    Returns:
        how many names were dropped (0 outside [reading][refimpl.tape.reading]).
    """
    tape = _tape.get()
    if tape is None:
        return 0
    full = _full(name)
    gone = [k for k in tape.tensors if k == full or k.startswith((full + ".", full + "@"))]
    for k in gone:
        del tape.tensors[k]
    return len(gone)
