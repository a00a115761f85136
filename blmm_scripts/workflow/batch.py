"""Snakemake adapter for rule batch.

The work: blmm_scripts.batching.read_batch_data and .batch_products.
"""

from typing import TYPE_CHECKING

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.batching import BATCH_ARRAYS, batch_products, read_batch_data
from blmm_scripts.design import Design

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    design = Design.from_arrays(io.load_arrays(snakemake.input.design))
    masks = list(snakemake.input.masks) or None
    Y, is_missing = read_batch_data(
        list(snakemake.input.images), masks, design.voxels, snakemake.params.thresh
    )
    part = batch_products(
        design.X, design.factors, tuple(snakemake.params.rows), Y, is_missing
    )
    arrays = part.to_arrays()
    for name in BATCH_ARRAYS:
        io.save_array(snakemake.output[name], arrays.pop(name))
    io.save_arrays(snakemake.output.missing, **arrays)
