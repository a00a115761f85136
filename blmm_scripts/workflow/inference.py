"""Snakemake adapter for rule inference.

The work: blmm_scripts.voxelwise.infer_voxels (the engine:
blmm_scripts.inference.infer).
"""

from typing import TYPE_CHECKING

import numpy as np

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.batching import VoxelStats
from blmm_scripts.config import Contrast
from blmm_scripts.design import Design
from blmm_scripts.partition import chunk_for_job
from blmm_scripts.voxelwise import fit_from, infer_voxels

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    par = snakemake.params
    design = Design.from_arrays(io.load_arrays(snakemake.input.design))
    fitted, _ = fit_from(io.load_arrays(snakemake.input.fit))
    contrasts = [Contrast(c["name"], np.asarray(c["L"], float)) for c in par.contrasts]
    stats = infer_voxels(
        VoxelStats.from_arrays(io.load_arrays(snakemake.input.products)),
        design.X,
        design.factors,
        fitted,
        contrasts,
        two_sided=par.two_sided,
        minlog=par.minlog,
        chunk=chunk_for_job(
            snakemake.resources.mem_mb, design.X.shape[1], design.random_effects
        ),
    )
    io.save_arrays(snakemake.output.stats, **stats)
