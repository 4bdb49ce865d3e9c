"""safetensors files: the one parser (validating, memory-mapped) and a writer.

The loader, ``inspect``, ``convert`` and golden files all read through `read_safetensors`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from ..files import (
    MAX_HEADER_BYTES,
    CheckpointError,
    atomic_write,
    check_shape,
    open_regular,
    read_json,
    short_repr,
)
from .raw import _CODES, _NUMPY_TO_CODE, RawTensor, _is_int, _map_file

__all__ = ["read_safetensors", "save_safetensors", "write_safetensors"]

_MAX_HEADER = MAX_HEADER_BYTES  # safetensors' own limit on the JSON header


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, RawTensor]]:
    """Parse and validate a safetensors file; every array is a read-only view of its memory map.

    The one safetensors parser of refimpl: the loader, ``inspect``, ``convert`` and golden
    files all read through it.

    Returns:
        ``(metadata, tensors)``: the header's ``__metadata__`` (``{}`` when absent) and
        name -> `RawTensor`, in the header's order.

    Layout: ``u64 little-endian N | N bytes of JSON header | data``. The header maps each
    name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
    data), plus an optional ``"__metadata__"`` of strings. As the safetensors library does,
    the tensors must tile the data exactly: no overlap, no gap, nothing after the last.
    """
    path = os.fspath(path)
    with open_regular(path, "safetensors file") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise CheckpointError(
                f"{path}: truncated safetensors file ({size} bytes, the header length needs 8)"
            )
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise CheckpointError(
                f"{path}: corrupt safetensors file: header length {n} runs past the end of the file ({size} bytes)"
            )
        if n > _MAX_HEADER:
            raise CheckpointError(
                f"{path}: corrupt safetensors file: header length {n} exceeds {_MAX_HEADER}"
            )
        head = f.read(n)
        if len(head) != n:
            raise CheckpointError(f"{path}: truncated safetensors file (the file shrank while read)")
        buf = _map_file(f, path)
    header = read_json(head, f"{path}: corrupt safetensors header", max_bytes=_MAX_HEADER, max_depth=4)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: expected a JSON object")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        raise CheckpointError(f"{path}: corrupt safetensors header: __metadata__ must map strings to strings")
    start = 8 + n
    data_len = size - start
    spans: list[tuple[int, int, str]] = []
    out: dict[str, RawTensor] = {}
    for name, info in header.items():
        bad = f"{path}: corrupt safetensors header for tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(
                f"{bad}: expected exactly the keys dtype, shape, data_offsets, got {short_repr(info)}"
            )
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in _CODES:
            raise CheckpointError(
                f"{bad}: dtype {short_repr(code)} is not supported; supported: {sorted(_CODES)}"
            )
        if not isinstance(shape, list):
            raise CheckpointError(
                f"{bad}: shape must be a list of non-negative integers, got {short_repr(shape)}"
            )
        shape = list(check_shape(shape, bad))
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise CheckpointError(f"{bad}: data_offsets must be two integers, got {short_repr(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise CheckpointError(
                f"{bad}: data_offsets {offsets} fall outside the {data_len} data bytes of the file (truncated?)"
            )
        dt = np.dtype(_CODES[code])
        count = math.prod(shape)
        if count * dt.itemsize != end - begin:
            raise CheckpointError(
                f"{bad}: shape {shape} x {dt.itemsize} bytes = {count * dt.itemsize} bytes, "
                f"but data_offsets span {end - begin}"
            )
        spans.append((begin, end, name))
        if count == 0:
            arr = np.zeros(shape, dt)
            arr.flags.writeable = False
        else:
            arr = np.frombuffer(buf, dtype=dt, count=count, offset=start + begin).reshape(shape)
            if not arr.flags.aligned:  # writers pad the header to 8 bytes; copy if one did not
                arr = arr.copy()
        out[name] = RawTensor(code, arr)
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            what = (
                "overlaps the tensor before it"
                if begin < pos
                else f"leaves a gap of {begin - pos} bytes before it"
            )
            raise CheckpointError(f"{path}: corrupt safetensors file: tensor {name!r} {what}")
        pos = end
    if pos != data_len:
        raise CheckpointError(
            f"{path}: corrupt safetensors file: {data_len - pos} bytes after the last tensor's data"
        )
    return dict(meta or {}), out


def write_safetensors(
    f: Any,
    tensors: dict[str, np.ndarray | RawTensor],
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file's bytes to an open binary file ``f`` (anything with ``write``).

    Args:
        f: where the bytes go (`save_safetensors` passes an atomic temp file).
        tensors: name -> array, or name -> `RawTensor` (needed for ``"BF16"``, which
            NumPy cannot express: the array holds the uint16 bit patterns).
        metadata: string -> string; defaults to ``{"format": "pt"}`` (what transformers expects).
    """
    entries = []
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise ValueError(f"tensors: keys must be strings, got {name!r}")
        if isinstance(t, RawTensor):
            code, arr = t.dtype, np.asarray(t.array)
            if code not in _CODES:
                raise ValueError(f"tensors[{name!r}]: dtype {code!r} is not one of {sorted(_CODES)}")
            want = np.dtype(_CODES[code])
            if arr.dtype.newbyteorder("=") != want.newbyteorder("="):
                raise ValueError(
                    f"tensors[{name!r}]: a {code} tensor must hold {want} values, got {arr.dtype}"
                )
        else:
            arr = np.asarray(t)
            code = _NUMPY_TO_CODE.get(arr.dtype.newbyteorder("="))
            if code is None:
                raise ValueError(f"tensors[{name!r}]: dtype {arr.dtype} cannot be stored in safetensors")
        entries.append((name, code, arr))
    # As safetensors does: larger items first, then by name, so every tensor stays aligned.
    entries.sort(key=lambda e: (-np.dtype(_CODES[e[1]]).itemsize, e[0]))
    header: dict[str, Any] = {"__metadata__": dict(metadata) if metadata is not None else {"format": "pt"}}
    pos = 0
    for name, code, arr in entries:
        n = arr.size * np.dtype(_CODES[code]).itemsize
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [pos, pos + n]}
        pos += n
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    f.write(len(head).to_bytes(8, "little"))
    f.write(head)
    for _, code, arr in entries:
        if arr.size:  # little-endian, C order, one tensor at a time (no second copy of the set)
            a = arr.astype(np.dtype(_CODES[code]), order="C", copy=False)
            f.write(a.reshape(-1).view(np.uint8).data)


def save_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, np.ndarray | RawTensor],
    metadata: dict[str, str] | None = None,
) -> str:
    """Write a safetensors file that the safetensors library (and this module) read back.

    Written atomically (`refimpl.files.atomic_write`): a temp file beside ``path``, fsynced
    and renamed over it, so ``path`` holds either its old bytes or the whole new file. The
    destination is not checked: callers that take a user's path call
    `refimpl.files.check_destination` first.

    Args:
        path: output file.
        tensors: name -> array, or name -> `RawTensor` (see `write_safetensors`).
        metadata: string -> string; defaults to ``{"format": "pt"}`` (what transformers expects).

    Returns:
        the path written.
    """
    p = os.fspath(path)
    with atomic_write(p) as f:
        write_safetensors(f, tensors, metadata)
    return p
