"""The threads of a job: every thread pool sized to the cores the job was given.

Snakemake sets the BLAS variables (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, ...) to a
rule's ``threads`` for its jobs, but not numba's, whose pool defaults to every core
of the node: two one-thread jobs on a two-core node would each start two kernel
threads.  :func:`pin_threads` sets them all before the pools start (numba is
imported lazily, by the engine's first kernel call) and resizes numba's pool when
it has started already.  :func:`in_parallel` runs a compiled kernel's chunks of
voxels on that many threads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

THREAD_VARIABLES = (
    "NUMBA_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def pin_threads(n: int) -> None:
    """Run this process's kernels and BLAS on at most n threads."""
    n = max(1, int(n))
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def in_parallel(kernel: Callable[..., None], n_chunks: int, args: tuple) -> None:
    """Run ``kernel(c0, c1, *args)`` on chunks 0 to n_chunks - 1, on the job's threads.

    kernel: a compiled function that releases the GIL (``nogil``) and writes its
    results in place.  Each thread takes one range of chunks; this one takes the
    first.  numba's own parallel loops (``prange``) would do the same, but
    compiling one around a large loop body costs more than the body (twice the
    time for the kernels with several random factors).
    """
    n = _kernel_threads()
    if n == 1 or n_chunks < 2:
        kernel(0, n_chunks, *args)
        return
    bounds = [k * n_chunks // n for k in range(n + 1)]
    pool = _pool(n - 1)
    tasks = [pool.submit(kernel, a, b, *args) for a, b in pairwise(bounds[1:])]
    kernel(bounds[0], bounds[1], *args)
    for task in tasks:
        task.result()


_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(n: int) -> ThreadPoolExecutor:
    """Return a pool of n threads (made once per size, kept for the process)."""
    if n not in _pools:
        _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="blmm-kernel")
    return _pools[n]


def _kernel_threads() -> int:
    """Return the threads the kernels may use: numba's, as :func:`pin_threads` set."""
    import numba

    return numba.get_num_threads()
