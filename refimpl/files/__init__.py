"""Reading files refimpl did not write, and writing files without losing what a user has.

Reading: one error type, regular files only, strict JSON, hard limits. Writing: one atomic
writer (`atomic_write`, `StagedFiles`) and one destination check (`check_destination`).

Every file refimpl reads (checkpoint weights, ``config.json``, shard indexes, ``--inputs``
files, golden manifests) may come from anywhere. The helpers here are the one place those
files are opened and their JSON parsed, so that a hostile or broken file ends in one
documented error, `CheckpointError` (a ``ValueError``), naming the file and, where
there is one, the tensor or field; or in an ``OSError`` for a genuine I/O failure (a
missing file, a permission refused). Nothing else escapes, and every limit below is
checked before memory is allocated for what a file merely claims.

Limits (module constants, documented in ``docs/loading.md``, "Limits and errors"):

* ``MAX_JSON_BYTES`` (64 MiB): a JSON file (config, shard index, inputs file, manifest);
* ``MAX_HEADER_BYTES`` (100,000,000): a safetensors header, the safetensors library's own limit;
* ``MAX_JSON_DEPTH`` (32): nesting of JSON arrays and objects;
* ``MAX_INT_DIGITS`` (20): digits of a JSON integer (a 64-bit unsigned integer has 20);
* ``MAX_NUMBER_CHARS`` (64): characters of a JSON float;
* ``MAX_RANK`` (32): dimensions of a tensor (NumPy 1's own limit);
* ``MAX_ELEMENTS`` (2**48): elements of one tensor, and bytes of any size computed from a file;
* ``MAX_ZIP_RATIO`` (1100): a compressed zip member may declare at most this many times its
  compressed size (deflate cannot exceed about 1032), and it is inflated in a stream that
  stops at the declared size;
* ``MAX_PICKLE_BYTES`` (256 MiB): the pickle of a ``.bin`` checkpoint (``data.pkl``);
* ``MAX_VIEW_EXPANSION`` (16 MiB): how many bytes a stride-0 or overlapping view in a
  ``.bin`` may add over its storage when it is materialised;
* ``MAX_ZIP_MEMBERS`` (100,000): members of one zip archive (``.bin``, ``.npz``), read from
  its end record before the central directory is parsed.

An ``.npz`` is bounded as a whole: the declared sizes of all its members together may not
exceed the caller's limit, checked before any member is inflated.

Only regular files are read: a FIFO, a device, a socket or a directory is refused from its
``stat`` before it is opened, and the file is then opened without blocking and checked again
on the open descriptor. A symlink to a regular file is followed.

Every file refimpl writes goes through `atomic_write` (one file) or `StagedFiles` (several
that belong together, such as a fused checkpoint): the bytes go to a temp file in the
destination's directory, named ``.<name>.refimpl-<host>-<pid>-<thread>-<random>.tmp``, which
is fsynced, renamed over the destination, and the directory fsynced. The temp is removed on
every failure path (an exception, ``KeyboardInterrupt``, the CLI's SIGTERM); one left by a
killed process is removed by the next process that writes there (`clean_stale_temps`) once
its process is gone, or after ``STALE_TEMP_SECONDS``. A full disk raises an ``OSError``
naming the destination, which keeps its old bytes. `check_destination` refuses, before any
work, a destination that is an input (same inode: symlinks and hardlinks caught), that is not
a regular file (FIFO, device, socket, directory), or that exists and is not this project's
own output, unless ``force``.
"""

from __future__ import annotations

# the modules, bottom-up: limits (and the errors), reading, arrays, writing, destinations
from . import arrays, destinations, limits, reading, writing  # noqa: F401 (refimpl.files.<module>)
from .arrays import (
    check_shape,
    parse_npy,
    read_npy,
    read_npz,
    read_zip_member,
    read_zip_prefix,
    zip_member_count,
    zip_member_info,
)
from .destinations import check_destination, input_identities
from .limits import (
    MAX_ELEMENTS,
    MAX_HEADER_BYTES,
    MAX_INT_DIGITS,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_NUMBER_CHARS,
    MAX_PICKLE_BYTES,
    MAX_RANK,
    MAX_VIEW_EXPANSION,
    MAX_ZIP_MEMBERS,
    MAX_ZIP_RATIO,
    STALE_TEMP_SECONDS,
    CheckpointError,
    DestinationError,
    short_repr,
)
from .reading import open_regular, read_bytes, read_json, regular_file, sha256_file
from .writing import StagedFiles, atomic_write, clean_stale_temps, full_disk_error, is_refimpl_temp

__all__ = [
    "CheckpointError",
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
    "DestinationError",
    "regular_file",
    "open_regular",
    "read_bytes",
    "read_json",
    "check_shape",
    "zip_member_info",
    "read_zip_member",
    "short_repr",
    "parse_npy",
    "read_npy",
    "read_npz",
    "sha256_file",
    "zip_member_count",
    "read_zip_prefix",
    "atomic_write",
    "StagedFiles",
    "clean_stale_temps",
    "is_refimpl_temp",
    "input_identities",
    "check_destination",
    "full_disk_error",
]
