"""Snakemake adapter for rule concat.

The work: blmm_scripts.batching.voxel_slice and .concat_batches (per level), or
blmm_scripts.grouped.voxel_slice and .concat_groups (grouped statistics).
"""

from typing import TYPE_CHECKING

from blmm_scripts import grouped, io
from blmm_scripts._logging import log_to_file
from blmm_scripts.batching import BATCH_ARRAYS, concat_batches, voxel_slice
from blmm_scripts.design import Design

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    inp, par = snakemake.input, snakemake.params
    design = Design.from_arrays(io.load_arrays(inp.design))
    start, stop = par.voxels
    n_images, p = design.X.shape
    if par.grouped:
        parts = [
            grouped.voxel_slice(
                grouped.GroupedBatch.from_arrays(io.load_arrays(path)), start, stop
            )
            for path in inp.groups
        ]
        stats = grouped.concat_groups(parts, n_images, p)
    else:
        parts = []
        for b, rows in enumerate(par.image_batches):
            arrays = {name: io.open_npy(inp[name][b]) for name in BATCH_ARRAYS}
            missing = io.load_arrays(inp.missing[b])
            parts.append((tuple(rows), voxel_slice(arrays, missing, start, stop)))
        stats = concat_batches(parts, n_images, design.random_effects.q, p)
    io.save_arrays(snakemake.output.products, **stats.to_arrays())
