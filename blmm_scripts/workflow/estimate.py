"""Snakemake adapter for rule estimate.

The work: blmm_scripts.voxelwise.estimate_voxels (the engine:
blmm_scripts.estimation.fit).
"""

from typing import TYPE_CHECKING

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.design import Design
from blmm_scripts.partition import chunk_for_job
from blmm_scripts.threads import pin_threads
from blmm_scripts.voxelwise import (
    MissingnessRules,
    engine_effects,
    estimate_voxels,
    fit_arrays,
    load_stats,
)

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    pin_threads(snakemake.threads)
    par = snakemake.params
    design = Design.from_arrays(io.load_arrays(snakemake.input.design))
    stats = load_stats(io.load_arrays(snakemake.input.products))
    p = design.X.shape[1]
    fitted = estimate_voxels(
        stats,
        design.X,
        design.factors,
        MissingnessRules(par.min_percent, par.min_n, par.safe_mode),
        method=par.method,
        reml=par.reml,
        tol=par.tol,
        maxnit=par.maxnit,
        chunk=chunk_for_job(
            snakemake.resources.mem_mb, p, engine_effects(stats, design.factors, p)
        ),
    )
    io.save_arrays(snakemake.output.fit, **fit_arrays(fitted, stats.n))
