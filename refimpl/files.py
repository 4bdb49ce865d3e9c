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

import errno
import hashlib
import io
import json
import math
import os
import re
import reprlib
import secrets
import socket
import stat
import struct
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

import numpy as np

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


# ---------------------------------------------------------------------------------------------
# regular files
# ---------------------------------------------------------------------------------------------
def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check_stat(st: os.stat_result, path: str, what: str, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{what} {path}: is {_kind(st.st_mode)}; only regular files are read")
    if max_bytes is not None and st.st_size > max_bytes:
        raise CheckpointError(f"{what} {path}: {st.st_size} bytes exceeds the limit of {max_bytes} bytes")


def regular_file(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> str:
    """Check, without opening it, that ``path`` is (or links to) a regular file of at most ``max_bytes``.

    Args:
        path: the file.
        what: what it is, for the message ("config", "inputs file", ...).
        max_bytes: size limit, or None.

    Returns:
        ``path`` as a string.

    Raises:
        FileNotFoundError: no such file (names it).
        CheckpointError: a FIFO, device, socket or directory, or a file over ``max_bytes``.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {p}") from None
    _check_stat(st, p, what, max_bytes)
    return p


def open_regular(path: str | os.PathLike, what: str = "file", max_bytes: int | None = None) -> BinaryIO:
    """Open a regular file for binary reading, refusing anything else before it can block.

    The path is checked with ``stat`` first, then opened with ``O_NONBLOCK`` (so a FIFO
    swapped in meanwhile cannot hang the open) and checked again on the descriptor.

    Returns:
        an unbuffered-safe binary file object (the caller closes it).

    Raises:
        FileNotFoundError, PermissionError: as ``open`` does, naming the file.
        CheckpointError: not a regular file, or over ``max_bytes``.
    """
    p = regular_file(path, what, max_bytes)
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_stat(os.fstat(fd), p, what, max_bytes)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, what: str = "file", max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """The whole content of a regular file of at most ``max_bytes`` (see `open_regular`)."""
    with open_regular(path, what, max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after the check
        raise CheckpointError(f"{what} {os.fspath(path)}: exceeds the limit of {max_bytes} bytes")
    return data


# ---------------------------------------------------------------------------------------------
# strict JSON
# ---------------------------------------------------------------------------------------------
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')


def _depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` outside strings, without recursion (``[n chars] -> int``)."""
    # escapes first, then strings: two linear passes without a backtracking stack (one regex
    # with an alternation inside a repeated group needs memory per character: a 12 MB string
    # took over a gigabyte)
    bare = _STRING.sub("", _ESCAPE.sub("", text)).encode("utf-8", "surrogatepass")
    if not bare:
        return 0
    b = np.frombuffer(bare, np.uint8)
    step = ((b == ord("[")) | (b == ord("{"))).astype(np.int32)
    step -= (b == ord("]")) | (b == ord("}"))
    return int(np.cumsum(step).max(initial=0))


def read_json(
    source: str | os.PathLike | bytes,
    what: str,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    allow_nonfinite: bool = False,
) -> Any:
    """Parse JSON strictly: UTF-8, no duplicate keys, bounded size, depth and numbers.

    Args:
        source: a path (opened with `open_regular`) or the bytes themselves.
        what: names the source in messages (a path, or "path: header").
        max_bytes: size limit of the text.
        max_depth: nesting limit of arrays and objects.
        allow_nonfinite: accept ``NaN`` / ``Infinity`` / ``-Infinity`` (Python's extension);
            a float that overflows to infinity (``1e999``) counts as one.

    Returns:
        the parsed value (dicts keep the file's key order).

    Raises:
        CheckpointError: naming ``what`` and the position or key: not UTF-8, not JSON, a
            duplicate key, too deep, too large, an integer of more than ``MAX_INT_DIGITS``
            digits, a float of more than ``MAX_NUMBER_CHARS`` characters, a non-finite number.
        OSError: the file cannot be read.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise CheckpointError(f"{what}: {len(data)} bytes of JSON exceeds the limit of {max_bytes}")
    else:
        data = read_bytes(source, what="file", max_bytes=max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"{what}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})"
        ) from None
    depth = _depth(text)
    if depth > max_depth:
        raise CheckpointError(f"{what}: JSON nested {depth} deep exceeds the limit of {max_depth}")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise CheckpointError(f"{what}: duplicate JSON key {short_repr(k)}")
            out[k] = v
        return out

    def parse_int(s: str) -> int:
        if len(s.lstrip("-")) > MAX_INT_DIGITS:
            raise CheckpointError(
                f"{what}: integer of {len(s.lstrip('-'))} digits exceeds the limit of {MAX_INT_DIGITS} digits"
            )
        return int(s)

    def parse_float(s: str) -> float:
        if len(s) > MAX_NUMBER_CHARS:
            raise CheckpointError(f"{what}: number of {len(s)} characters exceeds {MAX_NUMBER_CHARS}")
        v = float(s)
        if not allow_nonfinite and not math.isfinite(v):
            raise CheckpointError(f"{what}: number {s} overflows to {v}; only finite numbers are allowed")
        return v

    def parse_constant(s: str) -> float:
        if not allow_nonfinite:
            raise CheckpointError(f"{what}: non-finite number {s} is not allowed")
        return float(s)

    try:
        return json.loads(
            text,
            object_pairs_hook=pairs,
            parse_int=parse_int,
            parse_float=parse_float,
            parse_constant=parse_constant,
        )
    except json.JSONDecodeError as e:
        raise CheckpointError(
            f"{what}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None
    except RecursionError:  # cannot happen below max_depth; kept as a last line of defence
        raise CheckpointError(f"{what}: JSON nested too deeply") from None


# ---------------------------------------------------------------------------------------------
# shapes and zip members
# ---------------------------------------------------------------------------------------------
def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    """Validate a stored shape before anything is allocated for it.

    Args:
        shape: a list/tuple of dimensions.
        what: names the file and tensor in the message.

    Returns:
        the shape as a tuple of ints.

    Raises:
        CheckpointError: not a sequence of non-negative integers, rank over ``MAX_RANK``, or
            (zero-size dimensions ignored) more than ``MAX_ELEMENTS`` elements.
    """
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise CheckpointError(
            f"{what}: shape must be a list of non-negative integers, got {short_repr(shape)}"
        )
    if len(shape) > MAX_RANK:
        raise CheckpointError(f"{what}: rank {len(shape)} exceeds the limit of {MAX_RANK} dimensions")
    n = 1
    for s in shape:
        n *= max(s, 1)
        if n > MAX_ELEMENTS:
            raise CheckpointError(
                f"{what}: shape {short_repr(list(shape))} exceeds the limit of {MAX_ELEMENTS} elements "
                "(zero-size dimensions aside)"
            )
    return tuple(shape)


def zip_member_info(zf: zipfile.ZipFile, name: str, what: str, max_bytes: int) -> zipfile.ZipInfo:
    """The entry of a zip member, checked before it is read: stored or deflated, not encrypted,
    its declared size at most ``max_bytes`` and at most ``MAX_ZIP_RATIO`` times its compressed size.

    Raises:
        CheckpointError: naming the archive (``what``) and the member.
    """
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{what}: zip member {name!r} is missing") from None
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{what}: zip member {name!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(
            f"{what}: zip member {name!r} uses compression method {info.compress_type}; "
            "only stored (0) and deflated (8) are read"
        )
    if info.file_size > max_bytes:
        raise CheckpointError(
            f"{what}: zip member {name!r} declares {info.file_size} bytes, over the limit of {max_bytes}"
        )
    if (
        info.compress_type == zipfile.ZIP_DEFLATED
        and info.file_size > MAX_ZIP_RATIO * info.compress_size + 1024
    ):
        raise CheckpointError(
            f"{what}: zip member {name!r} declares {info.file_size} bytes from {info.compress_size} compressed: "
            f"a ratio over {MAX_ZIP_RATIO} (a zip bomb?)"
        )
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise CheckpointError(
            f"{what}: stored zip member {name!r} declares {info.file_size} bytes but holds {info.compress_size}"
        )
    return info


def _inflate_into(zf: zipfile.ZipFile, info: zipfile.ZipInfo, n: int, what: str, whole: bool) -> bytearray:
    """The first ``n`` bytes of a member, inflated straight into one buffer of ``n`` bytes
    (no chunk list, no join: the peak is the member's size once). With ``whole``, the member
    must end exactly there (``zipfile`` then checks its CRC)."""
    name = info.filename
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    try:
        with zf.open(info) as m:
            while got < n:
                k = m.readinto(view[got : min(n, got + (16 << 20))])
                if not k:
                    break
                got += k
            extra = m.read(1) if whole and got == n else b""
    except (zipfile.BadZipFile, EOFError, ValueError, RuntimeError, NotImplementedError, OSError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise CheckpointError(f"{what}: corrupt zip member {name!r}: {type(e).__name__}: {e}") from None
    except Exception as e:  # zlib.error and friends
        raise CheckpointError(f"{what}: corrupt zip member {name!r}: {type(e).__name__}: {e}") from None
    finally:
        view.release()
    if got != n or extra:
        held = f"more than {n}" if extra else str(got)
        raise CheckpointError(f"{what}: zip member {name!r} holds {held} bytes, declared {info.file_size}")
    return buf


def read_zip_member(zf: zipfile.ZipFile, name: str, what: str, max_bytes: int) -> bytearray:
    """Read one zip member into one buffer of its declared size (checked by `zip_member_info`).

    Returns:
        exactly the member's declared bytes (its CRC checked by ``zipfile``).

    Raises:
        CheckpointError: refused by `zip_member_info`, or corrupt / short / long data.
    """
    info = zip_member_info(zf, name, what, max_bytes)
    return _inflate_into(zf, info, info.file_size, what, whole=True)


def read_zip_prefix(zf: zipfile.ZipFile, info: zipfile.ZipInfo, n: int, what: str) -> bytearray:
    """The first ``n`` bytes of a member already checked by `zip_member_info`, inflating no
    more than that (a ``.bin`` storage whose tensors use only its start; no CRC check, as
    the rest is never read).

    Raises:
        CheckpointError: ``n`` over the declared size, or the data ends before ``n`` bytes.
    """
    if not 0 <= n <= info.file_size:
        raise CheckpointError(
            f"{what}: zip member {info.filename!r} declares {info.file_size} bytes, {n} are needed"
        )
    return _inflate_into(zf, info, n, what, whole=n == info.file_size)


def zip_member_count(f: BinaryIO, what: str) -> int:
    """How many members a zip archive declares, read from its end-of-central-directory record
    (zip64 included) before ``zipfile`` parses the directory (which costs ~0.5 KB per entry).

    Raises:
        CheckpointError: more than ``MAX_ZIP_MEMBERS`` members.
    """
    f.seek(0, os.SEEK_END)
    size = f.tell()
    tail_start = max(0, size - (22 + 65535 + 20))
    f.seek(tail_start)
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    count = 0
    if at >= 0 and at + 22 <= len(tail):
        count = struct.unpack_from("<H", tail, at + 10)[0]
        loc = at - 20
        if count == 0xFFFF and loc >= 0 and tail[loc : loc + 4] == b"PK\x06\x07":
            z64 = struct.unpack_from("<Q", tail, loc + 8)[0]
            if 0 <= z64 <= size - 56:
                f.seek(z64)
                rec = f.read(56)
                if len(rec) == 56 and rec[:4] == b"PK\x06\x06":
                    count = struct.unpack_from("<Q", rec, 32)[0]
    f.seek(0)
    if count > MAX_ZIP_MEMBERS:
        raise CheckpointError(
            f"{what}: zip archive declares {count} members, over the limit of {MAX_ZIP_MEMBERS}"
        )
    return count


def parse_npy(data: bytes | bytearray, what: str) -> np.ndarray:
    """One ``.npy`` image -> array, checked before allocation: numeric dtype, bounded rank and
    shape, and exactly the data bytes the header's shape needs. No pickles.

    A ``bytearray`` (what `read_zip_member` returns) becomes the array's own buffer, without a
    copy; ``bytes`` are copied once."""
    fp = io.BytesIO(bytes(memoryview(data)[:65536]))
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=10_000)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=10_000)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, TypeError, SyntaxError, OverflowError, MemoryError, RecursionError) as e:
        raise CheckpointError(f"{what}: not a readable .npy file: {short_repr(str(e))}") from None
    if dtype.hasobject or dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise CheckpointError(f"{what}: dtype {dtype} is not allowed (only bool, integer, float, complex)")
    shape = check_shape(shape, what)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    start = fp.tell()
    if count * dtype.itemsize != len(data) - start:
        raise CheckpointError(
            f"{what}: shape {shape} x {dtype.itemsize} bytes needs {count * dtype.itemsize} bytes of data, "
            f"the file holds {len(data) - start}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    if isinstance(data, bytearray) and arr.flags.aligned:
        return arr
    return arr.copy()


def read_npz(
    path: str | os.PathLike, what: str = "file", max_bytes: int = 1 << 30, max_total: int | None = None
) -> dict[str, np.ndarray]:
    """An ``.npz`` of arrays (any shapes), read member by member through the zip checks of
    `read_zip_member` (a zip bomb is refused) and `parse_npy` (no pickles).

    The archive is bounded as a whole before anything is inflated: at most
    ``MAX_ZIP_MEMBERS`` members, and their declared sizes together at most ``max_total``.

    Args:
        path: the ``.npz`` file (a regular file).
        what: names the file's role in messages ("inputs file", "candidate").
        max_bytes: the most bytes the file, and each member inflated, may hold.
        max_total: the most bytes all members inflated may hold together (default ``max_bytes``).

    Returns:
        member name without ``.npy`` -> array.
    """
    path = os.fspath(path)
    total_limit = max_bytes if max_total is None else max_total
    out: dict[str, np.ndarray] = {}
    with open_regular(path, what, max_bytes) as f:
        try:
            zip_member_count(f, path)
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                total = 0
                for info in infos:
                    total += zip_member_info(zf, info.filename, path, max_bytes).file_size
                    if total > total_limit:
                        raise CheckpointError(
                            f"{path}: {what} .npz members declare {total}+ bytes together, over the limit of "
                            f"{total_limit} bytes for the whole file (checked before inflating)"
                        )
                for info in infos:
                    name = info.filename
                    if not name.endswith(".npy") or name[:-4] in out:
                        raise CheckpointError(
                            f"{path}: .npz member {name!r} is not a uniquely named .npy array"
                        )
                    data = read_zip_member(zf, name, path, max_bytes)
                    out[name[:-4]] = parse_npy(data, f"{path}: {name}")
                    del data
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, RuntimeError,
                NotImplementedError, OverflowError) as e:  # fmt: skip
            raise CheckpointError(f"{path} is not a readable .npz file: {short_repr(str(e))}") from None
    return out


def read_npy(path: str | os.PathLike, what: str = "file", max_bytes: int = 1 << 30) -> np.ndarray:
    """One ``.npy`` file as an array (any shape), checked by `parse_npy` (no pickles).

    Args:
        path: the ``.npy`` file (a regular file).
        what: names the file's role in messages.
        max_bytes: the most bytes the file may hold.
    """
    path = os.fspath(path)
    return parse_npy(read_bytes(path, what, max_bytes), f"{what} {path}")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_size`` pieces (for golden-file manifests)."""
    h = hashlib.sha256()
    with open_regular(path, "file") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# writing: one atomic way, never over an input
# ---------------------------------------------------------------------------------------------
_TEMP_RE = re.compile(
    r"^\.(?P<base>.*)\.refimpl-(?P<host>[A-Za-z0-9_-]{1,64})-(?P<pid>[0-9]{1,10})-(?P<tid>[0-9]{1,24})"
    r"-(?P<rand>[0-9a-f]{8})\.tmp$",
    re.DOTALL,
)
_live_temps: set[str] = set()  # temps being written by this process (any thread)
_live_lock = threading.Lock()
_cleaned_dirs: set[str] = set()  # directories whose stale temps this process removed


def _host() -> str:
    h = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname() or "host")[:64]
    return h or "host"


def _write(fd: int, data: memoryview) -> int:
    """``os.write`` (a module attribute so that a test can inject ``ENOSPC``)."""
    return os.write(fd, data)


def is_refimpl_temp(name: str) -> bool:
    """Whether a file name is one of this project's temp files (``.<name>.refimpl-<host>-<pid>-<thread>-<hex>.tmp``)."""
    return _TEMP_RE.match(name) is not None


def _temp_path(dest: str) -> str:
    d, base = os.path.split(dest)
    base = base[:120]  # the name is informational; keep the temp's within NAME_MAX
    return os.path.join(
        d, f".{base}.refimpl-{_host()}-{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}.tmp"
    )


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists (another user's) or not a pid at all
    return True


def clean_stale_temps(directory: str | os.PathLike, now: float | None = None) -> list[str]:
    """Remove this project's stale temp files from ``directory``; return their paths.

    A temp is stale when it was made on this host by a process that no longer runs, or when
    it has not been modified for ``STALE_TEMP_SECONDS`` (a temp from another host, or a pid
    reused since). A live writer's temp (this process's threads, or another running process)
    is left alone, and so is every file whose name is not this project's temp pattern, and
    anything that is not a regular file.
    """
    d = os.fspath(directory) or "."
    try:
        names = os.listdir(d)
    except OSError:
        return []
    now = time.time() if now is None else now
    host = _host()
    removed = []
    for name in names:
        m = _TEMP_RE.match(name)
        if m is None:
            continue
        p = os.path.join(d, name)
        with _live_lock:
            if p in _live_temps:
                continue
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        dead = m["host"] == host and not _pid_alive(int(m["pid"]))
        if dead or now - st.st_mtime > STALE_TEMP_SECONDS:
            try:
                os.unlink(p)
                removed.append(p)
            except OSError:
                pass
    return removed


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename has happened
        pass
    finally:
        os.close(fd)


def full_disk_error(e: OSError, dest: str) -> OSError:
    """A full-disk ``OSError`` (``ENOSPC``, ``EDQUOT``, ``EFBIG``) re-phrased to name the
    destination and say it is unchanged; any other error as it is."""
    what = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large"}.get(e.errno)
    if what is None and e.errno == getattr(errno, "EDQUOT", -1):
        what = "disk quota exceeded"
    if what is None:
        return e
    err = OSError(e.errno, f"{what} while writing {dest}; {dest} was left as it was (nothing replaced)")
    err.filename = dest
    return err


class _TempFile:
    """An unbuffered binary file on a temp path: ``write`` (whole buffers, any size), ``tell``."""

    def __init__(self, fd: int, path: str, dest: str):
        self.fd, self.path, self.dest, self.pos = fd, path, dest, 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                done += _write(self.fd, view[done:])
            except OSError as e:
                raise full_disk_error(e, self.dest) from None
        self.pos += done
        return done

    def tell(self) -> int:
        return self.pos

    def fileno(self) -> int:
        return self.fd


class StagedFiles:
    """Several files written as one: each to a temp in its destination's directory, and only
    when every one is complete, all fsynced and renamed over their destinations in the order
    they were opened (put the file that marks the set as complete last, e.g. ``config.json``).

    Use as a context manager: a clean exit commits, an exception (``KeyboardInterrupt``,
    the CLI's SIGTERM included) removes every temp and replaces nothing::

        with StagedFiles() as staged:
            staged.open("out/model.safetensors").write(data)
            staged.open("out/config.json").write(text)
    """

    def __init__(self) -> None:
        self._files: list[_TempFile] = []
        self._done = False

    def open(self, path: str | os.PathLike) -> _TempFile:
        """A new temp file for ``path`` (its directory must exist); the first time this process
        writes into that directory, stale temps there are removed (`clean_stale_temps`)."""
        dest = os.fspath(path)
        d = os.path.dirname(os.path.abspath(dest))
        with _live_lock:
            first = d not in _cleaned_dirs
            _cleaned_dirs.add(d)
        if first:  # once per directory and process: a batch of 10,000 files lists it once
            clean_stale_temps(d)
        tmp = _temp_path(os.path.join(d, os.path.basename(dest)))
        with _live_lock:
            _live_temps.add(tmp)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except BaseException:
            with _live_lock:
                _live_temps.discard(tmp)
            raise
        try:  # a replaced file keeps its permissions; a new one gets the umask's
            os.fchmod(fd, stat.S_IMODE(os.stat(dest).st_mode))
        except OSError:
            pass
        f = _TempFile(fd, tmp, dest)
        self._files.append(f)
        return f

    def commit(self) -> list[str]:
        """fsync and close every temp, rename each over its destination, fsync the directories.

        Returns:
            the destinations, in order.

        Raises:
            OSError: naming the destination (a full disk: nothing was replaced).
        """
        try:
            for f in self._files:
                try:
                    os.fsync(f.fd)
                except OSError as e:
                    raise full_disk_error(e, f.dest) from None
            for f in self._files:
                os.close(f.fd)
                f.fd = -1
            dirs = []
            for f in self._files:
                os.replace(f.path, f.dest)
                with _live_lock:
                    _live_temps.discard(f.path)
                d = os.path.dirname(os.path.abspath(f.dest))
                if d not in dirs:
                    dirs.append(d)
            for d in dirs:
                _fsync_dir(d)
            self._done = True
            return [f.dest for f in self._files]
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and remove every temp not yet renamed (destinations untouched)."""
        for f in self._files:
            if f.fd >= 0:
                try:
                    os.close(f.fd)
                except OSError:
                    pass
                f.fd = -1
            try:
                os.unlink(f.path)
            except FileNotFoundError:
                pass
            except OSError:
                pass
            with _live_lock:
                _live_temps.discard(f.path)
        self._done = True

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[_TempFile]:
    """Write one file atomically: ``with atomic_write(p) as f: f.write(b)``.

    The bytes go to a unique temp file in ``p``'s directory (per process and thread), which
    is fsynced and renamed over ``p`` when the block ends cleanly; the directory is then
    fsynced. On any exception the temp is removed and ``p`` keeps its old bytes; a full disk
    raises an ``OSError`` that names ``p``. The destination is not checked here: call
    `check_destination` first.
    """
    with StagedFiles() as staged:
        yield staged.open(path)


# ---------------------------------------------------------------------------------------------
# destinations: never an input, never something that is not ours
# ---------------------------------------------------------------------------------------------
def input_identities(paths: Iterable[str | os.PathLike | None]) -> dict[tuple[int, int], str]:
    """``(st_dev, st_ino) -> path`` of every input: each file (symlinks followed) and, for a
    directory, the directory itself and every entry directly inside it. Missing paths are
    skipped. Two paths are the same file exactly when their identities are equal (hardlinks
    and symlinks included)."""
    out: dict[tuple[int, int], str] = {}

    def add(p: str) -> None:
        try:
            st = os.stat(p)
        except OSError:
            return
        out.setdefault((st.st_dev, st.st_ino), p)

    for path in paths:
        if path is None:
            continue
        p = os.fspath(path)
        add(p)
        if os.path.isdir(p):
            try:
                names = os.listdir(p)
            except OSError:
                continue
            for n in names:
                add(os.path.join(p, n))
    return out


def _describe(mode: int) -> str:
    return "a directory" if stat.S_ISDIR(mode) else _kind(mode)


def check_destination(
    path: str | os.PathLike,
    protected: dict[tuple[int, int], str] | Iterable[str | os.PathLike | None] = (),
    force: bool = False,
    ours: Callable[[str], bool] | None = None,
    what: str = "output",
    kind: str = "a file refimpl wrote",
    force_flag: str = "--force",
) -> str:
    """Check, before any work, that ``path`` may be written; return the path to write.

    Args:
        path: the destination file. A symlink is followed (its target is written, the link
            kept); a dangling one is refused.
        protected: the inputs: files (and directories, see `input_identities`) the command
            reads, or their identities; never written over.
        force: allow replacing an existing regular file that is not ``ours``.
        ours: whether an existing file is this project's own output (a golden file), which
            may be replaced without ``force``; ``None``: no file is.
        what: names the destination in messages ("--out", "output").
        kind: what ``ours`` recognises, for the message.
        force_flag: how the caller spells ``force`` (the CLI's ``--force``).

    Raises:
        DestinationError: the destination is one of the inputs (even with ``force``), is not a
            regular file (FIFO, device, socket, directory; even with ``force``), its parent is
            not a directory, or it exists, is not ``ours`` and ``force`` is not given.
    """
    p = os.fspath(path)
    if os.path.islink(p):
        target = os.path.realpath(p)
        if not os.path.lexists(target):
            raise DestinationError(
                f"{what} {p}: is a dangling symlink (to {target}); refusing to write through it"
            )
        p = target
    ids = protected if isinstance(protected, dict) else input_identities(protected)
    parent = os.path.dirname(os.path.abspath(p))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise DestinationError(f"{what} {p}: its parent {parent} is not a directory")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return p
    except NotADirectoryError:
        raise DestinationError(f"{what} {p}: a parent of it is not a directory") from None
    same = ids.get((st.st_dev, st.st_ino))
    if same is not None:
        also = "" if os.path.abspath(same) == os.path.abspath(p) else f" (via a link: {same})"
        raise DestinationError(
            f"{what} {p}: is an input of this command{also}; refusing to overwrite an input ({force_flag} does not change this)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise DestinationError(
            f"{what} {p}: is {_describe(st.st_mode)}; refusing to replace it: only regular files are written "
            f"({force_flag} does not change this)"
        )
    if not force and not (ours is not None and ours(p)):
        raise DestinationError(
            f"{what} {p}: exists and is not {kind}; refusing to replace it (pass {force_flag} to replace it)"
        )
    return p
