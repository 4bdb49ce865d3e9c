"""The restricted unpickler of ``pytorch_model.bin``: nothing from the file runs.

The pickle is read by an unpickler that only knows the handful of globals torch uses to
rebuild tensors, each replaced by a stand-in defined here (`_Storage`, `_Tensor`, the
``_rebuild_*`` functions) that records a storage key, a dtype, an offset, a size and strides;
every other global is refused (`UnsafeCheckpointError`) before anything runs. The stand-ins'
state cannot be set by a pickle (``BUILD`` on them is refused), so no file can change the
loader for the next one. `refimpl.checkpoints.pytorch` reads the archives and rebuilds the
tensors from what the stand-ins recorded.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
from typing import Any

import numpy as np

from ..files import MAX_ELEMENTS, MAX_RANK, CheckpointError, short_repr
from .raw import _CODES, _is_int

__all__ = ["UnsafeCheckpointError"]


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
