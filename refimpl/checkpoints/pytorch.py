"""``pytorch_model.bin`` without torch: a restricted unpickler, nothing from the file runs.

Zip format (torch >= 1.6) and legacy format (``torch.save(...,
_use_new_zipfile_serialization=False)``): the pickle is read by the restricted unpickler of
`refimpl.checkpoints.unpickle`, which only knows the handful of globals torch uses to rebuild
tensors, each replaced by a stand-in; every other global is refused before anything runs.
Storages of a zip archive are memory mapped; this module rebuilds each tensor from its
storage with its offset and strides.

The limits checked before any allocation (rank, element counts against the bytes present,
zip members inflated in capped streams, stride-0 views) are those of `refimpl.files`.
"""

from __future__ import annotations

import io
import math
import mmap
import os
import zipfile

import numpy as np

from ..files import (
    MAX_ELEMENTS,
    MAX_PICKLE_BYTES,
    MAX_VIEW_EXPANSION,
    CheckpointError,
    check_shape,
    open_regular,
    read_zip_member,
    read_zip_prefix,
    short_repr,
    zip_member_count,
    zip_member_info,
)
from .raw import _CODES, RawTensor, _is_int, _map_file
from .unpickle import (
    _TORCH_MAGIC,
    _TORCH_PROTOCOL,
    UnsafeCheckpointError,
    _Bounded,
    _message,
    _Storage,
    _Tensor,
    _unpickle,
)

__all__ = ["UnsafeCheckpointError", "read_torch"]


def _tensor_array(t: _Tensor, source: str, name: str) -> RawTensor:
    """Rebuild one tensor from its storage bytes as torch's ``Tensor.set_`` does:
    ``storage[offset + sum(i_k * stride_k)]``; a strided view is copied to C order."""
    bad = t.geometry_error()
    if bad is not None:
        raise CheckpointError(f"{source}: tensor {name!r}: {bad}")
    st = t.storage
    if st.root is not None:  # a legacy view into a root storage
        st_buf, st_off, big = st.root.buf, st.root.offset + st.root_offset, st.root.big_endian
    else:
        st_buf, st_off, big = st.buf, st.offset, st.big_endian
    if st_buf is None:
        raise CheckpointError(f"{source}: tensor {name!r}: the data of storage {st.key!r} is missing")
    code = t.code or st.code
    dt = np.dtype(_CODES[code])
    if big:
        dt = dt.newbyteorder(">")
    n_el, rem = divmod(st.nbytes, dt.itemsize)
    if rem:
        raise CheckpointError(f"{source}: tensor {name!r}: storage of {st.nbytes} bytes is not whole {code}s")
    check_shape(t.size, f"{source}: tensor {name!r}")
    if 0 in t.size:
        arr = np.zeros(t.size, dt.newbyteorder("="))
        return RawTensor(code, arr)
    last = t.offset + sum((s - 1) * k for s, k in zip(t.size, t.stride, strict=True))
    if last >= n_el:
        raise CheckpointError(
            f"{source}: tensor {name!r}: offset {t.offset}, size {t.size}, stride {t.stride} reach element "
            f"{last} of a storage holding {n_el}"
        )
    # A stride-0 (expanded) or overlapping view holds more elements than its storage; the copy
    # to C order below materialises them, so how much it may add is bounded.
    extra = (math.prod(t.size) - n_el) * dt.itemsize
    if extra > MAX_VIEW_EXPANSION:
        raise CheckpointError(
            f"{source}: tensor {name!r}: a view of size {t.size}, stride {t.stride} would expand its storage of "
            f"{n_el} elements by {extra} bytes, over the limit of {MAX_VIEW_EXPANSION}"
        )
    # a deflated storage is inflated only as far as its tensors reach (`_bytes_needed`)
    avail = min(n_el, (len(st_buf) - st_off) // dt.itemsize)
    base = np.frombuffer(st_buf, dtype=dt, count=avail - t.offset, offset=st_off + t.offset * dt.itemsize)
    arr = np.lib.stride_tricks.as_strided(
        base, shape=t.size, strides=tuple(k * dt.itemsize for k in t.stride), writeable=False
    )
    if big:
        arr = arr.astype(dt.newbyteorder("="))  # copy in native order
    elif not (arr.flags.c_contiguous and arr.flags.aligned):
        # a strided / transposed view, or legacy-format bytes at an odd offset: copy to C order
        arr = arr.copy(order="C")
    return RawTensor(code, arr)


def _collect(obj, source: str, storages: dict[str, _Storage]) -> dict[str, RawTensor]:
    """The unpickled state dict -> name -> RawTensor (every value must be a tensor)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out: dict[str, RawTensor] = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, _Tensor):
            raise CheckpointError(
                f"{source}: entry {short_repr(k)} is a {type(v).__name__}, not a tensor; expected a flat state dict"
            )
        out[k] = _tensor_array(v, source, k)
    return out


def _bytes_needed(obj) -> dict[int, int]:
    """``id(storage) -> bytes its tensors reach`` over a flat state dict (what `_collect`
    accepts; anything else is refused there)."""
    out: dict[int, int] = {}
    if isinstance(obj, dict):
        for v in obj.values():
            if isinstance(v, _Tensor) and v.storage.root is None:
                k = id(v.storage)
                out[k] = min(max(out.get(k, 0), v.bytes_needed()), v.storage.nbytes)
    return out


def _zip_member_span(zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, source: str) -> tuple[int, int]:
    """(offset, length) of an uncompressed zip member's bytes inside the archive file."""
    fp = zf.fp
    fp.seek(info.header_offset)
    local = fp.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{source}: corrupt zip archive: bad local header for {info.filename!r}")
    start = (
        info.header_offset
        + 30
        + int.from_bytes(local[26:28], "little")
        + int.from_bytes(local[28:30], "little")
    )
    if start + info.file_size > size:
        raise CheckpointError(
            f"{source}: truncated zip archive: {info.filename!r} runs past the end of the file"
        )
    return start, info.file_size


def _read_torch_zip(path: str) -> dict[str, RawTensor]:
    """torch >= 1.6 format: ``<archive>/data.pkl`` + ``<archive>/data/<key>`` + ``<archive>/byteorder``.

    Every member is checked before it is read (`refimpl.files.zip_member_info`: stored or
    deflated, not encrypted, a declared size that the pickle expects and that its compressed
    size can hold); a deflated member is inflated in a stream capped at that size."""
    try:
        f = open_regular(path, "checkpoint")
        with f:
            buf = _map_file(f, path)
            size = len(buf)
            zip_member_count(f, path)
            with zipfile.ZipFile(f) as zf:
                names = zf.namelist()
                pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
                if len(pkls) != 1:
                    raise CheckpointError(
                        f"{path}: not a torch zip checkpoint (no single <archive>/data.pkl)"
                    )
                prefix = pkls[0][: -len("data.pkl")]
                big = False
                if prefix + "byteorder" in names:
                    order = read_zip_member(zf, prefix + "byteorder", path, 16)
                    if order not in (b"little", b"big"):
                        raise CheckpointError(f"{path}: unknown byteorder record {short_repr(order)}")
                    big = order == b"big"
                storages: dict[str, _Storage] = {}
                pkl = read_zip_member(zf, pkls[0], path, MAX_PICKLE_BYTES)
                obj = _unpickle(io.BytesIO(pkl), path, storages)
                del pkl
                needed = _bytes_needed(obj)
                for key, st in storages.items():
                    member = f"{prefix}data/{key}"
                    info = zip_member_info(zf, member, path, 8 * MAX_ELEMENTS)
                    if info.file_size != st.nbytes:
                        raise CheckpointError(
                            f"{path}: storage record {member!r} holds {info.file_size} bytes, expected {st.nbytes}"
                        )
                    if info.compress_type == zipfile.ZIP_STORED and isinstance(buf, mmap.mmap):
                        st.buf, (st.offset, _) = buf, _zip_member_span(zf, info, size, path)
                    else:
                        # a re-compressed archive: inflate only the bytes the tensors reach (a
                        # storage that declares 2 GiB for a 16-byte tensor costs 16 bytes); the
                        # whole member, and its CRC, when they reach its end
                        st.buf, st.offset = read_zip_prefix(zf, info, needed.get(id(st), 0), path), 0
                    st.big_endian = big
    except CheckpointError:
        raise
    except (FileNotFoundError, PermissionError):
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, RuntimeError,
            NotImplementedError, OverflowError, KeyError) as e:  # fmt: skip
        raise CheckpointError(
            f"{path}: corrupt or truncated zip checkpoint: {type(e).__name__}: {_message(e)}"
        ) from None
    return _collect(obj, path, storages)


def _read_torch_legacy(path: str) -> dict[str, RawTensor]:
    """Legacy format: pickles of MAGIC_NUMBER, PROTOCOL_VERSION, sys_info, the object, the sorted
    storage keys; then per key an int64 little-endian element count and the raw bytes."""
    storages: dict[str, _Storage] = {}
    with open_regular(path, "checkpoint") as raw:
        f = _Bounded(raw, os.fstat(raw.fileno()).st_size)
        magic = _unpickle(f, path, storages)
        if not _is_int(magic) or magic != _TORCH_MAGIC:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number {short_repr(magic)})")
        proto = _unpickle(f, path, storages)
        if not _is_int(proto) or proto != _TORCH_PROTOCOL:
            raise CheckpointError(f"{path}: unsupported legacy protocol version {short_repr(proto)}")
        info = _unpickle(f, path, storages)
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise CheckpointError(
                f"{path}: only little-endian legacy checkpoints are supported (sys_info {short_repr(info)})"
            )
        obj = _unpickle(f, path, storages, legacy=True)
        keys = _unpickle(f, path, storages)
        pos = raw.tell()
        buf = _map_file(raw, path)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError(f"{path}: corrupt legacy checkpoint: storage key list is {type(keys).__name__}")
    size = len(buf)
    for key in keys:
        st = storages.get(key)
        if st is None or st.root is not None:
            raise CheckpointError(
                f"{path}: corrupt legacy checkpoint: storage {short_repr(key)} is not used by the pickle"
            )
        if pos + 8 > size:
            raise CheckpointError(f"{path}: truncated legacy checkpoint: storage {key!r} is missing")
        numel = int.from_bytes(buf[pos : pos + 8], "little", signed=True)
        if numel != st.numel:
            raise CheckpointError(
                f"{path}: corrupt legacy checkpoint: storage {key!r} has {numel} elements, expected {st.numel}"
            )
        if pos + 8 + st.nbytes > size:
            raise CheckpointError(f"{path}: truncated legacy checkpoint: storage {key!r} runs past the end")
        st.buf, st.offset = buf, pos + 8
        pos += 8 + st.nbytes
    return _collect(obj, path, storages)


def read_torch(path: str) -> dict[str, RawTensor]:
    """A ``torch.save`` file of a state dict, in either format, without torch."""
    with open_regular(path, "checkpoint") as f:
        head = f.read(512)
    if head[:4] == b"PK\x03\x04":
        return _read_torch_zip(path)
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise CheckpointError(f"{path}: the pre-0.4 tar checkpoint format is not supported")
    if head[:1] == b"\x80":
        return _read_torch_legacy(path)
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
