"""Snakemake adapter for rule batch.

The work: blmm_scripts.batching.read_batch_data (or .read_table_batch for a table
study), then .batch_products (per level); with one image batch, also concat's work
per voxel batch (.concat_batches, grouped.concat_groups)
or blmm_scripts.grouped.batch_groups (grouped statistics).
"""

from typing import TYPE_CHECKING

import numpy as np

from blmm_scripts import grouped, io
from blmm_scripts._logging import log_to_file
from blmm_scripts.batching import (
    BATCH_ARRAYS,
    batch_products,
    concat_batches,
    read_batch_data,
    read_table_batch,
    voxel_slice,
)
from blmm_scripts.design import Design

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    par = snakemake.params
    design = Design.from_arrays(io.load_arrays(snakemake.input.design))
    masks = list(snakemake.input.masks) or None
    if par.table_rows is not None:  # a table study: its values' rows
        Y, is_missing = read_table_batch(
            snakemake.input.images[0], par.table_rows, design.voxels, par.thresh
        )
    else:
        Y, is_missing = read_batch_data(
            list(snakemake.input.images), masks, design.voxels, par.thresh
        )
    start, stop = par.rows
    if par.grouped:
        factor = design.factors[0]
        images = grouped.image_order(factor)[start:stop]
        G = grouped.max_level_size(factor)
        part = grouped.batch_groups(design.X, factor, images, Y, is_missing, G)
    else:
        part = batch_products(design.X, design.factors, (start, stop), Y, is_missing)
    if par.voxel_batches is not None:  # the only image batch: concat's work here
        n_images, p = design.X.shape
        # C order, as the batch files concat reads (save_array), so that every
        # later sum runs in the same order as with several image batches
        arrays = (
            None
            if par.grouped
            else {k: np.ascontiguousarray(v) for k, v in part.to_arrays().items()}
        )
        for (lo, hi), path in zip(
            par.voxel_batches, snakemake.output.products, strict=True
        ):
            if par.grouped:
                stats = grouped.concat_groups(
                    [grouped.voxel_slice(part, lo, hi)], n_images, p
                )
            else:
                stats = concat_batches(
                    [((start, stop), voxel_slice(arrays, arrays, lo, hi))],
                    n_images,
                    design.random_effects.q,
                    p,
                )
            io.save_arrays(path, **stats.to_arrays())
    elif par.grouped:
        io.save_arrays(snakemake.output.groups, **part.to_arrays())
    else:
        arrays = part.to_arrays()
        for name in BATCH_ARRAYS:
            io.save_array(snakemake.output[name], arrays.pop(name))
        io.save_arrays(snakemake.output.missing, **arrays)
