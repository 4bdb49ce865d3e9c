"""Reading files refimpl did not write: one error type, regular files only, strict JSON, hard limits.

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
  ``.bin`` may add over its storage when it is materialised.

Only regular files are read: a FIFO, a device, a socket or a directory is refused from its
``stat`` before it is opened, and the file is then opened without blocking and checked again
on the open descriptor. A symlink to a regular file is followed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import reprlib
import stat
import zipfile
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


class CheckpointError(ValueError):
    """A file cannot be read (corrupt, truncated, hostile, over a limit) or a checkpoint does
    not fit the model (lists every missing, unexpected and misshaped key). The message names
    the file and, where there is one, the tensor or config field."""


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
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` outside strings, without recursion (``[n chars] -> int``)."""
    bare = _STRING.sub("", text).encode("utf-8", "surrogatepass")
    if not bare:
        return 0
    b = np.frombuffer(bare, np.uint8)
    step = (b == ord("[")).astype(np.int64) + (b == ord("{")) - (b == ord("]")) - (b == ord("}"))
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


def read_zip_member(zf: zipfile.ZipFile, name: str, what: str, max_bytes: int) -> bytes:
    """Read one zip member in a stream capped at its declared size (checked by `zip_member_info`).

    Returns:
        exactly the member's declared bytes (its CRC checked by ``zipfile``).

    Raises:
        CheckpointError: refused by `zip_member_info`, or corrupt / short data.
    """
    info = zip_member_info(zf, name, what, max_bytes)
    chunks = []
    got = 0
    try:
        with zf.open(info) as m:
            while got <= info.file_size:
                block = m.read(min(1 << 20, info.file_size - got + 1))
                if not block:
                    break
                got += len(block)
                chunks.append(block)
    except (zipfile.BadZipFile, EOFError, ValueError, RuntimeError, NotImplementedError, OSError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise CheckpointError(f"{what}: corrupt zip member {name!r}: {type(e).__name__}: {e}") from None
    except Exception as e:  # zlib.error and friends
        raise CheckpointError(f"{what}: corrupt zip member {name!r}: {type(e).__name__}: {e}") from None
    if got != info.file_size:
        raise CheckpointError(f"{what}: zip member {name!r} holds {got} bytes, declared {info.file_size}")
    return b"".join(chunks)


def parse_npy(data: bytes, what: str) -> np.ndarray:
    """One ``.npy`` image -> array, checked before allocation: numeric dtype, bounded rank and
    shape, and exactly the data bytes the header's shape needs. No pickles."""
    fp = io.BytesIO(data)
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
    return arr.reshape(shape, order="F" if fortran else "C").copy()


def read_npz(path: str | os.PathLike, what: str = "file", max_bytes: int = 1 << 30) -> dict[str, np.ndarray]:
    """An ``.npz`` of arrays (any shapes), read member by member through the zip checks of
    `read_zip_member` (a zip bomb is refused) and `parse_npy` (no pickles).

    Args:
        path: the ``.npz`` file (a regular file).
        what: names the file's role in messages ("inputs file", "candidate").
        max_bytes: the most bytes the file, and each member inflated, may hold.

    Returns:
        member name without ``.npy`` -> array.
    """
    path = os.fspath(path)
    out: dict[str, np.ndarray] = {}
    with open_regular(path, what, max_bytes) as f:
        try:
            with zipfile.ZipFile(f) as zf:
                for name in zf.namelist():
                    if not name.endswith(".npy") or name[:-4] in out:
                        raise CheckpointError(
                            f"{path}: .npz member {name!r} is not a uniquely named .npy array"
                        )
                    data = read_zip_member(zf, name, path, max_bytes)
                    out[name[:-4]] = parse_npy(data, f"{path}: {name}")
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
