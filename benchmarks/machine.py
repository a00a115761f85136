"""Machine description and single-core limits for the benchmark reports."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _cmd(*args: str) -> str:
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict:
    """CPU, cores, memory, OS, tool versions and the git commit benchmarked."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    import nibabel
    import scipy

    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
    }
    try:
        import snakemake

        versions["snakemake"] = snakemake.__version__
    except ImportError:
        pass
    blas = ""
    try:
        cfg = np.show_config(mode="dicts")
        blas = f"{cfg['Build Dependencies']['blas']['name']} {cfg['Build Dependencies']['blas']['version']}"
    except Exception:
        pass
    versions["blas"] = blas
    r = _cmd(
        "Rscript",
        "-e",
        "cat(R.version.string, 'lme4', format(packageVersion('lme4')), "
        "'lmerTest', format(packageVersion('lmerTest')))",
    )
    if r:
        versions["R"] = r
    dirty = _cmd(
        "git",
        "-C",
        str(REPO),
        "status",
        "--porcelain",
        "--",
        "blmm_scripts",
        "rules",
        "Snakefile",
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "os": platform.platform(),
        "versions": versions,
        "git_commit": _cmd("git", "-C", str(REPO), "rev-parse", "--short", "HEAD"),
        "git_dirty_engine_or_workflow": bool(dirty),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "shared_machine_note": "2 cores shared with other engineers' work; wall times can include contention",
    }


def measure_peak(n: int = 2000, repeats: int = 3) -> dict:
    """Single-thread dgemm rate (GFLOP/s) and streaming bandwidth (GB/s), best of `repeats`.

    Call only with BLAS pinned to one thread (OMP_NUM_THREADS=1 etc. set before numpy
    is imported).
    """
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    x = rng.standard_normal(2**24)
    y, z = np.empty_like(x), rng.standard_normal(2**24)
    bw = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.add(x, z, out=y)
        bw = min(bw, time.perf_counter() - t)
    return {
        "dgemm_n": n,
        "dgemm_gflops": 2 * n**3 / best / 1e9,
        "stream_gbs": 3 * x.nbytes / bw / 1e9,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
    }
