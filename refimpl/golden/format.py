"""What a golden file is made of: the format name and version, the manifest key, the dtype
codes it stores, the mask inputs, and the recommended tolerance of a tensor by its depth."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import backend

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_KEY",
    "DIGEST_KEY",
    "MASK_INPUTS",
    "FLOAT64_ATOL",
    "FLOAT64_RTOL",
    "FLOAT32_ATOL",
    "FLOAT32_RTOL",
    "recommended_tolerance",
]

FORMAT = "refimpl-golden"
FORMAT_VERSION = 2
MANIFEST_KEY = "refimpl_manifest"
#: manifest key of the data digests: stored tensor name -> hex SHA-256 of its bytes in the
#: file. An optional key within format version 2 (readers that do not know it ignore it);
#: `refimpl.golden.Golden.verify`, ``refimpl inspect --verify`` and resumed batch runs check it.
DIGEST_KEY = "tensor_sha256"

#: forward keywords that are masks over a token stream: input name -> stream.
MASK_INPUTS = {"attention_mask": "language", "visual_attention_mask": "vision"}

#: base tolerances: float64 is flat; float32 grows with depth (see recommended_tolerance).
FLOAT64_ATOL = 1e-10
FLOAT64_RTOL = 1e-10
FLOAT32_ATOL = 1e-5
FLOAT32_RTOL = 1e-5

_LAYER_RE = re.compile(r"(?:^|\.)((?:layer|layers|r_layers|x_layers)\.\d+)(?=\.|$)")


# safetensors dtype codes of the NumPy dtypes a golden file holds.
_CODE = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
}


def _to_numpy(x: Any) -> np.ndarray:
    """Host NumPy array (C-contiguous) of an array or scalar."""
    a = np.asarray(backend.to_numpy(x))
    return _contiguous(a)


def _contiguous(a: np.ndarray) -> np.ndarray:
    """C-contiguous, keeping 0-d arrays 0-d (``np.ascontiguousarray`` would make them 1-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):  # inside a document (a 1-d list of entity starts)
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    return x


def _depths(names: list[str]) -> dict[str, int]:
    """Per name: how many layer units (``...layer.N`` / ``r_layers.N`` / ``x_layers.N``) the
    forward pass has entered up to that tensor (forward order); outputs get the total."""
    seen: set[str] = set()
    out: dict[str, int] = {}
    for n in names:
        if n.startswith("outputs."):
            continue
        m = _LAYER_RE.search(n)
        if m:
            seen.add(n[: m.end()])
        out[n] = 0 if n.startswith("inputs.") else len(seen)
    for n in names:
        if n.startswith("outputs."):
            out[n] = len(seen)
    return out


def recommended_tolerance(dtype: Any, depth: int) -> tuple[float, float]:
    """Recommended ``(atol, rtol)`` for a tensor of ``dtype`` after ``depth`` layers.

    Integer and bool tensors: exact ``(0, 0)``. float64: ``(1e-10, 1e-10)`` at any depth.
    float32 (and lower): ``(1e-5 * (1 + depth / 4), 1e-5)``, so 4e-5 after 12 layers, within
    the project's 1e-4 base-size target. A comparison passes where
    ``|candidate - reference| <= atol + rtol * |reference|``.
    """
    dt = np.dtype(dtype)
    if dt.kind not in "fc":
        return 0.0, 0.0
    if dt.itemsize >= 8:
        return FLOAT64_ATOL, FLOAT64_RTOL
    return float(FLOAT32_ATOL * (1.0 + depth / 4.0)), FLOAT32_RTOL
