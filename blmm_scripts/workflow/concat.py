"""Snakemake adapter for rule concat.

The work: blmm_scripts.batching.voxel_slice and .concat_batches.
"""

from typing import TYPE_CHECKING

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.batching import BATCH_ARRAYS, concat_batches, voxel_slice
from blmm_scripts.design import Design

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    inp = snakemake.input
    design = Design.from_arrays(io.load_arrays(inp.design))
    start, stop = snakemake.params.voxels
    parts = []
    for b, rows in enumerate(snakemake.params.image_batches):
        arrays = {name: io.open_npy(inp[name][b]) for name in BATCH_ARRAYS}
        missing = io.load_arrays(inp.missing[b])
        parts.append((tuple(rows), voxel_slice(arrays, missing, start, stop)))
    stats = concat_batches(
        parts, design.X.shape[0], design.random_effects.q, design.X.shape[1]
    )
    io.save_arrays(snakemake.output.products, **stats.to_arrays())
