"""``pytorch_model.bin`` without torch: a restricted unpickler, nothing from the file runs.

Zip format (torch >= 1.6) and legacy format (``torch.save(...,
_use_new_zipfile_serialization=False)``): the pickle is read by a restricted unpickler that
only knows the handful of globals torch uses to rebuild tensors, each replaced by a stand-in
defined here; every other global is refused before anything runs. Storages of a zip archive
are memory mapped; a tensor is rebuilt from its storage with its offset and strides.

The unpickler's allowed globals are stand-ins whose state a pickle cannot set (``BUILD`` on
them is refused), so no file can change the loader for the next one. The limits checked
before any allocation (rank, element counts against the bytes present, zip members inflated
in capped streams, stride-0 views) are those of `refimpl.files`.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import mmap
import os
import pickle
import zipfile
from typing import Any

import numpy as np

from ..files import (
    MAX_ELEMENTS,
    MAX_PICKLE_BYTES,
    MAX_RANK,
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

__all__ = ["UnsafeCheckpointError", "read_torch"]


class UnsafeCheckpointError(CheckpointError):
    """A ``.bin`` pickle asks for a global outside the tensor-rebuilding allow-list."""


# torch storage classes (pickled as globals ``torch.FloatStorage``...) -> element code.
_TORCH_STORAGES = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "UntypedStorage": "U8",  # bytes; _rebuild_tensor_v3 names the tensor's dtype
}
# torch dtypes (pickled as globals ``torch.float32``...) -> code.
_TORCH_DTYPES = {
    "float64": "F64",
    "double": "F64",
    "float32": "F32",
    "float": "F32",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "long": "I64",
    "int32": "I32",
    "int": "I32",
    "int16": "I16",
    "short": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
}
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
_TORCH_PROTOCOL = 1001  # torch/serialization.py PROTOCOL_VERSION


# ---------------------------------------------------------------------------------------------
# pytorch_model.bin: restricted unpickling
# ---------------------------------------------------------------------------------------------
class _Stand:
    """A non-callable stand-in for an allowed torch global (a storage class, a dtype, the
    Tensor / Parameter classes). Pickle cannot call it nor set its state."""

    __slots__ = ("kind", "name", "code")

    def __init__(self, kind: str, name: str, code: str | None = None):
        self.kind, self.name, self.code = kind, name, code

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"cannot set the state of torch.{self.name}")

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    """A storage named by a persistent id; its bytes are located after unpickling."""

    __slots__ = ("key", "code", "numel", "buf", "offset", "nbytes", "big_endian", "root", "root_offset")

    def __init__(self, key: str, code: str, numel: int):
        self.key, self.code, self.numel = key, code, numel
        self.buf: Any = None  # an mmap or bytes holding the storage at ``offset``
        self.offset = 0
        self.nbytes = numel * np.dtype(_CODES[code]).itemsize
        self.big_endian = False
        self.root: _Storage | None = None  # legacy storage views: bytes of a root storage
        self.root_offset = 0

    def __setstate__(self, state):
        raise pickle.UnpicklingError("cannot set the state of a storage")


class _Tensor:
    """A tensor rebuilt by ``_rebuild_tensor_v2`` / ``_v3``: storage + offset, size, stride
    (in elements). ``code`` is the tensor's dtype when it differs from the storage's (v3)."""

    __slots__ = ("storage", "offset", "size", "stride", "code")

    def __init__(self, storage, offset, size, stride, code=None):
        if not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(
                f"a tensor must be rebuilt from a storage, got {type(storage).__name__}"
            )
        # the geometry is checked where the tensor's key is known (`_geometry_error`)
        self.storage, self.offset, self.size, self.stride, self.code = storage, offset, size, stride, code

    def geometry_error(self) -> str | None:
        """Why the offset / size / stride cannot be a tensor's, or None when they can."""
        offset, size, stride = self.offset, self.size, self.stride
        ints = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
        if ints is None or not all(_is_int(i) and 0 <= i < 2**62 for i in ints) or len(size) != len(stride):
            return (
                f"bad tensor geometry: offset {short_repr(offset)}, size {short_repr(size)}, "
                f"stride {short_repr(stride)} (expected non-negative integers and as many strides as sizes)"
            )
        if len(size) > MAX_RANK:
            return f"tensor rank {len(size)} exceeds the limit of {MAX_RANK}"
        return None

    def bytes_needed(self) -> int:
        """Bytes of its storage this tensor reaches (0 when empty or malformed, which
        `_tensor_array` refuses later with the tensor's key)."""
        if self.geometry_error() is not None or 0 in self.size:
            return 0
        itemsize = np.dtype(_CODES[self.code or self.storage.code]).itemsize
        last = self.offset + sum((s - 1) * k for s, k in zip(self.size, self.stride, strict=True))
        return (last + 1) * itemsize

    def __setstate__(self, state):
        raise pickle.UnpicklingError("cannot set the state of a tensor")


def _check_metadata(metadata) -> None:
    if metadata:  # conj / neg bits: the stored values would need a transform
        raise pickle.UnpicklingError(
            f"tensor metadata {short_repr(metadata)} (conj/neg views) is not supported"
        )


def _rebuild_tensor(storage, storage_offset, size, stride):
    """Stand-in for ``torch._utils._rebuild_tensor``."""
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (every dtype a typed storage can hold)."""
    _check_metadata(metadata)
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    """Stand-in for ``torch._utils._rebuild_tensor_v3`` (uint16/32/64...: untyped storage + a dtype)."""
    _check_metadata(metadata)
    if not (isinstance(dtype, _Stand) and dtype.kind == "dtype"):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v3 needs a torch dtype, got {short_repr(dtype)}")
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride), dtype.code)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """Stand-in for ``torch._utils._rebuild_parameter``: a Parameter is its tensor here."""
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError(f"a Parameter must wrap a tensor, got {type(data).__name__}")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    """Stand-in for ``torch._utils._rebuild_parameter_with_state`` (the Python state is dropped)."""
    return _rebuild_parameter(data, requires_grad, backward_hooks)


class _Global:
    """A callable stand-in handed to the pickle for an allowed global function or class.

    The pickle gets this wrapper, never the function itself: ``BUILD`` (state setting) on it
    is refused by ``__setstate__`` and it has no ``__dict__``, so a file cannot set
    ``__defaults__`` or any other attribute of a real function and change the loader for
    the files read after it."""

    __slots__ = ("fn", "name")

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"refusing to set the state of {self.name} (BUILD on an allowed global)")

    def __repr__(self) -> str:
        return self.name


def _g(fn, module: str) -> _Global:
    return _Global(fn, f"{module}.{fn.__name__}")


_REBUILDERS = tuple(
    _g(fn, "torch._utils")
    for fn in (
        _rebuild_tensor,
        _rebuild_tensor_v2,
        _rebuild_tensor_v3,
        _rebuild_parameter,
        _rebuild_parameter_with_state,
    )
)


def _rebuild_from_type_v2(func, new_type, args, state):
    """Stand-in for ``torch._tensor._rebuild_from_type_v2`` (tensors carrying Python state)."""
    if not any(func is r for r in _REBUILDERS) or not (
        isinstance(new_type, _Stand) and new_type.kind == "type"
    ):
        raise pickle.UnpicklingError(
            f"_rebuild_from_type_v2 with {short_repr(func)}, {short_repr(new_type)} is not supported"
        )
    if not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2: args must be a tuple")
    return func(*args)


def _codecs_encode(obj, encoding="utf-8"):
    """Stand-in for ``_codecs.encode``, which protocol-2 pickles use to spell ``bytes``."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"_codecs.encode is only allowed on a str with latin1, got {short_repr(encoding)}"
        )
    return obj.encode("latin1")


#: (module, name) -> what the restricted unpickler returns for it. Nothing else is allowed.
#: Functions and classes are wrapped in `_Global`, whose state a pickle cannot set.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _Global(collections.OrderedDict, "collections.OrderedDict"),
    **{("torch._utils", r.fn.__name__): r for r in _REBUILDERS},
    ("torch._tensor", "_rebuild_from_type_v2"): _g(_rebuild_from_type_v2, "torch._tensor"),
    ("torch._tensor", "Tensor"): _Stand("type", "Tensor"),
    ("torch", "Tensor"): _Stand("type", "Tensor"),
    ("torch.nn.parameter", "Parameter"): _Stand("type", "nn.Parameter"),
    ("_codecs", "encode"): _Global(_codecs_encode, "_codecs.encode"),
}
_ALLOWED_GLOBALS.update({("torch", k): _Stand("storage", k, c) for k, c in _TORCH_STORAGES.items()})
_ALLOWED_GLOBALS[("torch.storage", "UntypedStorage")] = _Stand("storage", "UntypedStorage", "U8")
_ALLOWED_GLOBALS.update({("torch", k): _Stand("dtype", k, c) for k, c in _TORCH_DTYPES.items()})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint without running anything from it.

    ``find_class`` answers only the globals in ``_ALLOWED_GLOBALS``, with stand-ins defined
    in this module; any other global raises `UnsafeCheckpointError` when the pickle
    names it, i.e. before it could be called. ``persistent_load`` turns torch's storage ids
    into `_Storage` records (one per key) whose bytes are found afterwards.
    """

    def __init__(self, file, source: str, storages: dict[str, _Storage], legacy: bool = False):
        super().__init__(file)
        self.source = source
        self.storages = storages
        self.legacy = legacy

    def find_class(self, module: str, name: str):
        # Protocol-2 pickles (torch's default) spell some modules the Python 2 way
        # (``__builtin__``, ``commands``); name them as Python 3 would resolve them.
        py3 = _compat_pickle.NAME_MAPPING.get((module, name))
        if py3 is None:
            py3 = (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        obj = _ALLOWED_GLOBALS.get(py3)
        if obj is None:
            written = "" if py3 == (module, name) else f" (written {module}.{name})"
            raise UnsafeCheckpointError(
                f"{self.source}: refusing to load the global {py3[0]}.{py3[1]}{written}: the pickle may only use the "
                "globals torch needs to rebuild tensors (torch._utils._rebuild_tensor_v2, torch.FloatStorage, "
                "collections.OrderedDict, ...). Nothing from the file was run."
            )
        return obj

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unknown persistent id {short_repr(pid)}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(
                f"persistent id of type {short_repr(kind)} is not supported (only 'storage')"
            )
        if self.legacy:
            if len(pid) != 6:
                raise pickle.UnpicklingError(f"legacy storage id must have 6 fields, got {short_repr(pid)}")
            _, stype, key, _location, numel, view = pid
        else:
            if len(pid) != 5:
                raise pickle.UnpicklingError(f"storage id must have 5 fields, got {short_repr(pid)}")
            _, stype, key, _location, numel = pid
            view = None
        if not (isinstance(stype, _Stand) and stype.kind == "storage"):
            raise pickle.UnpicklingError(f"storage id names {short_repr(stype)}, not a torch storage class")
        if not isinstance(key, str) or not _is_int(numel) or not 0 <= numel <= MAX_ELEMENTS:
            raise pickle.UnpicklingError(f"bad storage id {short_repr(pid)}")
        st = self.storages.get(key)
        if st is None:
            st = self.storages[key] = _Storage(key, stype.code, numel)
        elif st.code != stype.code or st.numel != numel:
            raise pickle.UnpicklingError(
                f"storage {short_repr(key)} is named as {st.numel} x {st.code} and as {numel} x {stype.code}"
            )
        if view is None:
            return st
        # Legacy storage views (torch < 0.4 era): (view_key, offset, size) in elements of the root.
        if not (isinstance(view, tuple) and len(view) == 3):
            raise pickle.UnpicklingError(f"bad storage view {short_repr(view)}")
        vkey, voff, vsize = view
        if not (isinstance(vkey, str) and _is_int(voff) and _is_int(vsize) and voff >= 0 and vsize >= 0):
            raise pickle.UnpicklingError(f"bad storage view {short_repr(view)}")
        if voff + vsize > numel:
            raise pickle.UnpicklingError(
                f"storage view {short_repr(view)} runs past its root of {numel} elements"
            )
        vs = self.storages.get(vkey)
        if vs is None:
            vs = self.storages[vkey] = _Storage(vkey, stype.code, vsize)
            vs.root, vs.root_offset = st, voff * np.dtype(_CODES[stype.code]).itemsize
        return vs


class _Bounded:
    """A read-only view of an open file that never hands out more than the bytes left in it,
    so a pickle opcode that claims gigabytes cannot make the unpickler allocate them."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def _left(self) -> int:
        return max(self.size - self.f.tell(), 0)

    def read(self, n: int = -1) -> bytes:
        left = self._left()
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, n: int = -1) -> bytes:
        left = self._left()
        return self.f.readline(left if n is None or n < 0 else min(n, left))

    def readinto(self, b) -> int:
        view = memoryview(b)
        return self.f.readinto(view[: min(len(view), self._left())])


def _unpickle(file, source: str, storages: dict[str, _Storage], legacy: bool = False):
    """One restricted ``load``; any failure becomes a `CheckpointError` naming ``source``."""
    try:
        return _RestrictedUnpickler(file, source, storages, legacy).load()
    except CheckpointError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, TypeError from a stand-in's arguments...
        raise CheckpointError(
            f"{source}: corrupt or unsupported PyTorch pickle: {type(e).__name__}: {_message(e)}"
        ) from None


def _message(e: BaseException) -> str:
    try:
        text = str(e)
    except Exception:
        return "<unprintable>"
    return text if len(text) <= 500 else text[:497] + "..."


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
