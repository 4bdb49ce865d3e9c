"""Checkpoint tensors as stored: `RawTensor`, the safetensors dtype codes, the exact casts.

Float tensors are cast to the requested dtype (float16 exactly; bfloat16 through its bit
pattern, as NumPy has no bfloat16). Integer and bool tensors keep their dtype.
"""

from __future__ import annotations

import mmap
import os
from typing import Any, NamedTuple

import numpy as np

from ..files import CheckpointError

__all__ = ["RawTensor", "bf16_to_f32"]


class RawTensor(NamedTuple):
    """A tensor as stored: ``dtype`` is the safetensors code (``"F32"``, ``"BF16"``, ...) and
    ``array`` its values; for ``"BF16"`` the array holds the raw ``uint16`` bit patterns."""

    dtype: str
    array: np.ndarray


# safetensors dtype code -> little-endian NumPy dtype of the stored bits.
_CODES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",  # bit patterns; see bf16_to_f32
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
_FLOAT_CODES = ("F64", "F32", "F16", "BF16")
_NUMPY_TO_CODE = {np.dtype(v).newbyteorder("="): k for k, v in _CODES.items() if k != "BF16"}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns -> float32, exactly: ``[...] uint16 -> [...] float32``.

    A bfloat16 is the upper half of a float32, so shifting its 16 bits left by 16 gives
    the float32 with the same value (NaN payloads and infinities included)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _check_float_dtype(dtype) -> np.dtype | None:
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(
            f"dtype must be a NumPy float dtype (float32/float64) or None, got {dtype!r}"
        ) from None
    if dt.kind != "f":
        raise ValueError(f"dtype must be a NumPy float dtype (float32/float64) or None, got {dtype!r}")
    return dt


def _cast(raw: RawTensor, dtype: np.dtype | None) -> np.ndarray:
    """A stored tensor as an array: floats cast to ``dtype`` (a copy only when it differs),
    bfloat16 upcast through float32, integers and bools unchanged. ``dtype=None`` keeps the
    stored float type (bfloat16 becomes float32)."""
    code, arr = raw
    if code == "BF16":
        f32 = bf16_to_f32(arr)
        return f32 if dtype is None or dtype == f32.dtype else f32.astype(dtype)
    if code in _FLOAT_CODES and dtype is not None and arr.dtype != dtype:
        return arr.astype(dtype)
    return arr


def _map_file(f, path: str) -> mmap.mmap | bytes:
    """A read-only memory map of an open file (``b""`` for an empty file, which cannot be mapped)."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        return b""
    try:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:  # e.g. a pipe or a special file
        raise CheckpointError(f"{path}: cannot memory-map the file: {e}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
