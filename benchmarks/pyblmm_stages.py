"""Run pyblmm 0.1.1's stages in one process, timing each; print a JSON line.

Run with the interpreter of benchmarks/.venv-pyblmm (see setup_pyblmm.sh):

    benchmarks/.venv-pyblmm/bin/python benchmarks/pyblmm_stages.py CONFIG.yml [K]

This calls the same functions, in the same order, as pyblmm's console script
``blmm`` (``blmm.blmm_cluster._main``) with ``voxelBatching: 1``, only without the
dask cluster: setup, batch 1..nb, concat, results 1..nvb, cleanup.  It isolates
pyblmm's estimation + inference time ("results") from its I/O and from dask's
start-up, for the per-structure throughput comparison of engine_speed.py.  Set
OMP_NUM_THREADS=1 (and friends) in the environment to pin BLAS to one thread.
With K, only setup and the first K image batches run (a lower bound on a run too
long to finish: its batch stage, extrapolated to every batch).
"""

import json
import resource
import sys
import time
from pathlib import Path

import yaml
from blmm.lib.blmm_batch import batch
from blmm.lib.blmm_cleanup import cleanup
from blmm.lib.blmm_concat import concat
from blmm.lib.blmm_results import results
from blmm.lib.blmm_setup import setup


def main(config: str, max_batches: int | None = None) -> None:
    config = str(Path(config).resolve())
    times = {}

    def timed(stage, fn, *args):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        times.setdefault(stage, {"wall_s": 0.0, "cpu_s": 0.0, "jobs": 0})
        times[stage]["wall_s"] += time.perf_counter() - w
        times[stage]["cpu_s"] += time.process_time() - c
        times[stage]["jobs"] += 1
        return out

    start = time.perf_counter()
    nb = timed("setup", setup, config)
    with Path(config).open() as f:
        outdir = yaml.safe_load(f)["outdir"]
    for b in range(1, (nb if max_batches is None else min(nb, max_batches)) + 1):
        timed("batch", batch, b, config)
    if max_batches is not None and max_batches < nb:
        print(
            json.dumps({"stages": times, "n_batches": nb, "batches_run": max_batches})
        )
        return
    timed("concat", concat, config)
    with (Path(outdir) / "nvb.txt").open() as f:
        nvb = int(f.readline())
    for j in range(1, nvb + 1):
        timed("results", results, config, j)
    timed("cleanup", cleanup, config)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "stages": times,
                "total_wall_s": time.perf_counter() - start,
                "max_rss_mb": peak,
                "n_batches": nb,
                "n_voxel_batches": nvb,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
