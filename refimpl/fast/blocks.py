"""The one block size and the one host-thread scheduler every fast kernel uses.

NumPy runs each elementwise loop on one thread (only its BLAS is threaded) and releases the
GIL inside it. A kernel splits its rows into blocks of about `BLOCK_BYTES`,
and [for_blocks][refimpl.fast.blocks.for_blocks] hands each host thread
(`refimpl.backend.num_threads`) one contiguous range of blocks, walked in order, so a
thread's blocks stay on one core and its scratch memory is recycled by the allocator.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..backend import num_threads

__all__ = ["BLOCK_BYTES", "for_blocks", "host_map"]

#: Bytes of one block of rows: big enough that the ~30 ufunc calls of a float32 GELU block
#: outweigh the GIL hand-over between two host threads, small enough that the block and the
#: formula's temporaries on it (up to six arrays of a block each, per thread) stay in L2 and
#: are recycled by the allocator instead of being page-faulted in afresh (a 2-4x difference on
#: ``[512, 3072]`` arrays). 512 KiB blocks cost LiLT base 2 MiB more peak memory in float64
#: for no measurable speed (GELU blocks of 64 KiB to 1 MiB time within noise).
BLOCK_BYTES = 1 << 18

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_in_worker = threading.local()  # set in the pool's threads: a nested host_map runs inline


def host_map(fn: Callable[[Any], Any], items: Iterable[Any]) -> list:
    """``[fn(item) for item in items]``, shared out over `refimpl.backend.num_threads` host threads.

    ``fn`` must write only memory that no other item writes (one block of an output array,
    say). Each call runs in a copy of the caller's context, so ``numpy.errstate`` (and the
    fast/reference switch) apply. The calling thread runs the first item, a pool of
    ``num_threads() - 1`` threads the others. With one thread or one item, or when called from
    inside another ``host_map`` item, everything runs in the calling thread, in order.

    Args:
        fn: called once per item.
        items: finite iterable.

    Returns:
        the results, in the order of ``items``.
    """
    global _pool
    items = list(items)
    n = num_threads()
    if n <= 1 or len(items) <= 1 or getattr(_in_worker, "active", False):
        return [fn(item) for item in items]
    with _pool_lock:
        if _pool is None or _pool._max_workers != n - 1:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="refimpl")
        pool = _pool
    context = contextvars.copy_context()  # NumPy's errstate (a context variable) travels along

    def run(item):
        _in_worker.active = True
        try:
            return context.copy().run(fn, item)
        finally:
            _in_worker.active = False

    # the calling thread takes the first item itself (one thread hand-off fewer, and its
    # temporaries come from the caller's own allocator arena), the pool's n - 1 threads the rest
    rest = [pool.submit(run, item) for item in items[1:]]
    try:
        first = run(items[0])
    finally:
        results = [f.result() for f in rest]
    return [first, *results]


def for_blocks(fn: Callable[[int, int], None], n_rows: int, row_bytes: int) -> None:
    """Call ``fn(start, stop)`` on blocks of about ``BLOCK_BYTES`` covering ``range(n_rows)``.

    The rows are split into one contiguous range of whole blocks per host thread (fewer
    ranges when there are fewer blocks than threads); each thread walks its range block by
    block. ``fn`` must write only its own rows.

    Args:
        fn: the per-block work, on rows ``[start, stop)``.
        n_rows: rows to cover (elements, for a flat array).
        row_bytes: bytes of one row (its largest array's), which sets the rows per block.
    """
    per_block = max(1, BLOCK_BYTES // max(1, row_bytes))
    n_blocks = -(-n_rows // per_block)
    parts = max(1, min(num_threads(), n_blocks))
    # contiguous ranges of whole blocks, as even as possible
    bounds = [min(n_rows, (n_blocks * p // parts) * per_block) for p in range(parts + 1)]

    def run(p):
        for start in range(bounds[p], bounds[p + 1], per_block):
            fn(start, min(start + per_block, bounds[p + 1]))

    host_map(run, range(parts))
