"""Reading a file refimpl did not write: regular files only (a FIFO, device, socket or
directory is refused from its ``stat``, before it can block), bounded sizes, strict JSON (size,
depth, duplicate keys, number lengths, encoding: the file named in every error), and SHA-256
of a file."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from typing import Any, BinaryIO

import numpy as np

from .limits import (
    MAX_INT_DIGITS,
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_NUMBER_CHARS,
    CheckpointError,
    short_repr,
)

__all__ = ["regular_file", "open_regular", "read_bytes", "read_json", "sha256_file"]


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


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk_size`` pieces (for golden-file manifests)."""
    h = hashlib.sha256()
    with open_regular(path, "file") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()
