"""Array-namespace dispatch: NumPy by default, CuPy for device arrays.

Layer code never imports ``numpy`` or ``cupy`` for math. It asks this module for the
namespace of the arrays it was given:

    xp = get_namespace(x)          # numpy, or cupy when x lives on a GPU
    y = xp.matmul(x, w.T)

CuPy is imported only when a caller asks for ``device="cuda"`` or hands us a CuPy array
(detected by its type's module name, without importing cupy).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import os
import sys
from typing import Any

import numpy as np

__all__ = [
    "get_namespace",
    "to_device",
    "to_numpy",
    "is_device_array",
    "cupy",
    "cuda_available",
    "tune_allocator",
    "quiet_blas_threads",
    "num_threads",
    "set_num_threads",
    "DTYPES",
    "DEVICES",
]

#: The compute dtypes and devices a model runs in.
DTYPES = ("float32", "float64")
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
    """True when ``x`` is a CuPy array of any shape (checked by type, without importing cupy)."""
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
    on_host = on_device = False
    for a in arrays:  # called for every op: the common all-NumPy case costs one type check per array
        if type(a) is np.ndarray:
            on_host = True
        elif a is not None and hasattr(a, "shape"):
            if is_device_array(a):
                on_device = True
            else:
                on_host = True
    if on_device:
        if on_host:
            raise TypeError(
                "arrays on different devices: move them all to one device first (refimpl.backend.to_device)"
            )
        return cupy()
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
    """Return ``x`` (any shape) as a NumPy array of the same shape (copies device arrays to the host); passes ``None`` through."""
    if x is None:
        return None
    if is_device_array(x):
        return x.get()
    return np.asarray(x)


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device (never raises)."""
    try:
        cp = importlib.import_module("cupy")
        return int(cp.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # ImportError, CUDARuntimeError (no driver), ...
        return False


# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: The largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2).
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def tune_allocator(mmap_threshold: int = _MAX_MMAP_THRESHOLD, trim_threshold: int = 1 << 30) -> bool:
    """Opt in to keeping freed memory in the process, so repeated forwards do not page-fault anew.

    By default glibc serves every allocation above a dynamic threshold (128 KiB to 32 MiB)
    with a fresh ``mmap`` and returns it with ``munmap`` when NumPy frees the array. A
    forward pass creates and frees the same large temporaries (``[batch, heads, seq, seq]``
    scores, ``[batch, seq, intermediate]`` activations) layer after layer, so each one costs
    a page fault per 4 KiB page, every time. Raising ``M_MMAP_THRESHOLD`` puts those arrays
    on the heap, and raising ``M_TRIM_THRESHOLD`` keeps the freed heap for the next one.
    Peak memory stays the same (the same arrays are alive at the same time); memory is
    simply not handed back to the OS between forwards.

    This changes process-wide malloc settings, so the library never calls it on import:
    the CLI and the benchmarks call it, and an application may call it once at start-up.

    Its companion for NumPy's BLAS threads is `quiet_blas_threads`.

    Args:
        mmap_threshold: allocations at least this large (bytes) still use ``mmap``; at most
            32 MiB on 64-bit glibc.
        trim_threshold: free memory at the top of the heap above this (bytes) is returned.

    Returns:
        True when both settings were applied; False on a platform without glibc's
        ``mallopt`` (macOS, Windows, musl), where it does nothing.

    Raises:
        ValueError: ``mmap_threshold`` outside ``[0, 33554432]`` or a negative ``trim_threshold``.
    """
    if not 0 <= mmap_threshold <= _MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be in [0, {_MAX_MMAP_THRESHOLD}], got {mmap_threshold}")
    if trim_threshold < 0:
        raise ValueError(f"trim_threshold must be >= 0, got {trim_threshold}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok_trim = mallopt(_M_TRIM_THRESHOLD, int(min(trim_threshold, 2**31 - 1))) == 1
    return ok_mmap and ok_trim


def _loaded_openblas():
    """The OpenBLAS library NumPy loaded (a ``ctypes.CDLL``), found in ``/proc/self/maps``; or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:  # not Linux
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)  # already loaded: the same handle, nothing runs
        except OSError:
            continue
        if all(
            hasattr(lib, name)
            for name in ("openblas_read_env", "blas_thread_shutdown_", "openblas_thread_timeout")
        ):
            return lib
    return None


def quiet_blas_threads(timeout: int = 4) -> bool:
    """Opt in to letting NumPy's idle OpenBLAS threads sleep right after each BLAS call.

    After every matrix product OpenBLAS keeps its worker threads spinning for about 2^28
    cycles (its default ``OPENBLAS_THREAD_TIMEOUT``), waiting for the next product. Between
    two GEMMs a forward pass does elementwise work (GELU, LayerNorm, softmax) on the host
    threads, and a spinning BLAS thread takes a core from it. With ``timeout=4`` (OpenBLAS's
    minimum, 2^4 cycles) the workers sleep at once and wake on the next call, which costs a
    few microseconds per GEMM. Measured on 2 cores: 5-9% off a LiLT or LXMERT base forward
    (``benchmarks/run.py``, tuned rows).

    OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` only when it starts its threads, so this sets
    the variable, has OpenBLAS re-read its environment (``openblas_read_env``) and stops its
    worker threads (``blas_thread_shutdown_``); they start again, with the new timeout, on the
    next BLAS call. It changes process-wide state, so the library never calls it on import:
    call it once at start-up, when no BLAS call is running on another thread (the CLI and
    the benchmarks own their process and may). Setting ``OPENBLAS_THREAD_TIMEOUT=4`` in the
    environment before Python starts has the same effect.

    Args:
        timeout: ``log2`` of the spin cycles, in ``[4, 30]`` (OpenBLAS clamps to this range).

    Returns:
        True when NumPy's OpenBLAS now uses ``timeout``; False when NumPy's BLAS is not a
        (threaded) OpenBLAS that exports these functions, where it does nothing.

    Raises:
        ValueError: ``timeout`` outside ``[4, 30]``.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 4 <= timeout <= 30:
        raise ValueError(f"timeout must be an integer in [4, 30], got {timeout!r}")
    lib = _loaded_openblas()
    if lib is None:
        return False
    lib.openblas_thread_timeout.restype = ctypes.c_int
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(timeout)
    lib.openblas_read_env()
    lib.blas_thread_shutdown_()  # threads restart on the next call, reading the new timeout
    return int(lib.openblas_thread_timeout()) == timeout


# --------------------------------------------------------------------------------------------
# host threads for elementwise work (the fast kernels share their blocks over them)
# --------------------------------------------------------------------------------------------

_threads: int | None = None


def num_threads() -> int:
    """Host threads for large elementwise steps (GELU, erf, LayerNorm, softmax) on NumPy arrays.

    NumPy runs each elementwise loop on one thread (only its BLAS is threaded); the fast
    kernels (`refimpl.fast`) split large steps into cache-sized blocks and share them out
    over this many threads (NumPy releases the GIL inside its loops).

    Returns:
        ``set_num_threads(n)``'s ``n`` if set; else the first positive integer among the
        environment variables ``REFIMPL_NUM_THREADS``, ``OMP_NUM_THREADS``,
        ``OPENBLAS_NUM_THREADS``; else the number of CPUs this process may run on.
    """
    if _threads is not None:
        return _threads
    for var in ("REFIMPL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def set_num_threads(n: int | None) -> None:
    """Set the host threads of `num_threads`; ``None`` goes back to the default.

    Raises:
        ValueError: ``n`` is neither ``None`` nor a positive integer.
    """
    global _threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    _threads = n
