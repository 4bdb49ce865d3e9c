"""The limits every file refimpl reads is held to (documented in ``docs/loading.md``, "Limits
and errors"), the two errors of reading and writing, and a bounded ``repr`` for messages.

* ``MAX_JSON_BYTES`` (64 MiB): a JSON file (config, shard index, inputs file, manifest);
* ``MAX_HEADER_BYTES`` (100,000,000): a safetensors header, the safetensors library's own limit;
* ``MAX_JSON_DEPTH`` (32): nesting of JSON arrays and objects;
* ``MAX_INT_DIGITS`` (20): digits of a JSON integer (a 64-bit unsigned integer has 20);
* ``MAX_NUMBER_CHARS`` (64): characters of a JSON float;
* ``MAX_RANK`` (32): dimensions of a tensor (NumPy 1's own limit);
* ``MAX_ELEMENTS`` (2**48): elements of one tensor, and bytes of any size computed from a file;
* ``MAX_ZIP_RATIO`` (1100): a compressed zip member may declare at most this many times its
  compressed size;
* ``MAX_PICKLE_BYTES`` (256 MiB): the pickle of a ``.bin`` checkpoint (``data.pkl``);
* ``MAX_VIEW_EXPANSION`` (16 MiB): bytes a stride-0 or overlapping view in a ``.bin`` may add;
* ``MAX_ZIP_MEMBERS`` (100,000): members of one zip archive (``.bin``, ``.npz``);
* ``STALE_TEMP_SECONDS`` (one day): when a temp file of a writer that cannot be checked is stale.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_NUMBER_CHARS",
    "MAX_RANK",
    "MAX_ELEMENTS",
    "MAX_ZIP_RATIO",
    "MAX_PICKLE_BYTES",
    "MAX_VIEW_EXPANSION",
    "MAX_ZIP_MEMBERS",
    "STALE_TEMP_SECONDS",
    "CheckpointError",
    "DestinationError",
    "short_repr",
]

MAX_JSON_BYTES = 64 << 20
MAX_HEADER_BYTES = 100_000_000
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 20
MAX_NUMBER_CHARS = 64
MAX_RANK = 32
MAX_ELEMENTS = 1 << 48
MAX_ZIP_RATIO = 1100
MAX_PICKLE_BYTES = 256 << 20
MAX_VIEW_EXPANSION = 16 << 20
MAX_ZIP_MEMBERS = 100_000
STALE_TEMP_SECONDS = 24 * 3600


class CheckpointError(ValueError):
    """A file cannot be read (corrupt, truncated, hostile, over a limit) or a checkpoint does
    not fit the model (lists every missing, unexpected and misshaped key). The message names
    the file and, where there is one, the tensor or config field."""


class DestinationError(ValueError):
    """A file refimpl was asked to write must not be written: it is one of the inputs, it is
    not a regular file, or it exists and is not this project's output (and ``force`` was not
    given). Raised before any work; the message names the path and the reason."""


_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlong = 40
for _attr in ("maxtuple", "maxlist", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_repr, _attr, 6)


def short_repr(obj: Any) -> str:
    """A bounded ``repr`` for error messages: never recurses deeply, never runs long."""
    try:
        return _repr.repr(obj)
    except Exception:  # a hostile object's own __repr__ is not ours to trust
        return f"<{type(obj).__name__}>"
