"""Array-namespace dispatch: NumPy by default, CuPy for device arrays.

Layer code never imports ``numpy`` or ``cupy`` for math. It asks this module for the
namespace of the arrays it was given::

    xp = get_namespace(x)          # numpy, or cupy when x lives on a GPU
    y = xp.matmul(x, w.T)

CuPy is imported only when a caller asks for ``device="cuda"`` or hands us a CuPy array
(detected by its type's module name, without importing cupy).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

__all__ = ["get_namespace", "to_device", "to_numpy", "is_device_array", "cupy", "DEVICES"]

DEVICES = ("cpu", "cuda")

# A test may install a stand-in namespace (e.g. one that records every call) through
# `_namespace_override`; it then wins over the array-type dispatch.
_namespace_override: Any = None


def cupy():
    """Import and return CuPy, or raise an ImportError that says how to get it."""
    try:
        return importlib.import_module("cupy")
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            "device='cuda' needs CuPy: pip install 'refimpl[gpu]' (or the cupy-cudaXXx wheel for your CUDA)"
        ) from e


def is_device_array(x: Any) -> bool:
    """True when ``x`` is a CuPy array (checked by type, without importing cupy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def get_namespace(*arrays: Any):
    """Return the array namespace (``numpy`` or ``cupy``) for ``arrays``.

    Args:
        *arrays: arrays of any shape; ``None`` and Python scalars are skipped.

    Returns:
        The module to do math with. Mixing CuPy and NumPy arrays raises ``TypeError``.
    """
    if _namespace_override is not None:
        return _namespace_override
    kinds = {is_device_array(a) for a in arrays if a is not None and hasattr(a, "shape")}
    if kinds == {True}:
        return cupy()
    if kinds == {True, False}:
        raise TypeError("arrays on different devices: move them all to one device first (refimpl.backend.to_device)")
    return np


def to_device(x: Any, device: str):
    """Move an array to ``device`` ("cpu" or "cuda"); no copy when it already lives there.

    Args:
        x: a NumPy or CuPy array of any shape.
        device: "cpu" or "cuda".
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if x is None:
        return None
    if device == "cpu":
        return to_numpy(x)
    cp = cupy()
    return x if is_device_array(x) else cp.asarray(x)


def to_numpy(x: Any):
    """Return ``x`` as a NumPy array (copies device arrays to the host); passes ``None`` through."""
    if x is None:
        return None
    if is_device_array(x):
        return x.get()
    return np.asarray(x)
