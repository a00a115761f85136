"""Snakemake adapter for rule inference.

The work: blmm_scripts.voxelwise.infer_voxels (the engine:
blmm_scripts.inference.infer).
"""

from typing import TYPE_CHECKING

import numpy as np

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.config import Contrast
from blmm_scripts.design import Design
from blmm_scripts.partition import chunk_for_job
from blmm_scripts.threads import pin_threads
from blmm_scripts.voxelwise import engine_effects, fit_from, infer_voxels, load_stats

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    pin_threads(snakemake.threads)
    par = snakemake.params
    design = Design.from_arrays(io.load_arrays(snakemake.input.design))
    fitted, _ = fit_from(io.load_arrays(snakemake.input.fit))
    stats = load_stats(io.load_arrays(snakemake.input.products))
    p = design.X.shape[1]
    contrasts = [Contrast(c["name"], np.asarray(c["L"], float)) for c in par.contrasts]
    results = infer_voxels(
        stats,
        design.X,
        design.factors,
        fitted,
        contrasts,
        two_sided=par.two_sided,
        minlog=par.minlog,
        chunk=chunk_for_job(
            snakemake.resources.mem_mb, p, engine_effects(stats, design.factors, p)
        ),
    )
    io.save_arrays(snakemake.output.stats, **results)
