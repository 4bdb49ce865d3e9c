"""Arrays from files refimpl did not write: stored shapes checked before anything is
allocated, zip members (``.bin``, ``.npz``) bounded before they are inflated, ``.npy`` images
parsed without pickles, and an ``.npz`` bounded as a whole (its members' declared sizes
together), checked before any member is inflated."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from .limits import MAX_ELEMENTS, MAX_RANK, MAX_ZIP_MEMBERS, MAX_ZIP_RATIO, CheckpointError, short_repr
from .reading import open_regular, read_bytes

__all__ = [
    "check_shape",
    "zip_member_info",
    "read_zip_member",
    "read_zip_prefix",
    "zip_member_count",
    "parse_npy",
    "read_npz",
    "read_npy",
]


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
