"""The threads of a job: every thread pool sized to the cores the job was given.

Snakemake sets the BLAS variables (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, ...) to a
rule's ``threads`` for its jobs, but not numba's, whose pool defaults to every core
of the node: two one-thread jobs on a two-core node would each start two kernel
threads.  :func:`pin_threads` sets them all before the pools start (numba is
imported lazily, by the engine's first kernel call) and resizes numba's pool when
it has started already.
"""

from __future__ import annotations

import os
import sys

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
