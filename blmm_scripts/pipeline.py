"""A whole analysis in memory: the workflow's stages in one process.

The Snakemake rules call the same functions on one image batch or one voxel batch
each (through the adapters in ``blmm_scripts/workflow/``); :func:`run_pipeline`
calls them on everything at once.  The workflow tests check that both give the
same maps.

Stages (``rules/*.smk``), and the module that does each one's work::

    setup        X, factors, mask   -> the design           design.read_design
    (table)      Y_table            -> its values as .npy   table_io.write_values
    batch b      images of batch b  -> X'Y, Z'Y, Y'Y, n     batching.batch_products
                                                            (grouped.batch_groups)
    concat j     batch parts        -> voxel batch j stats  batching.concat_batches
                                                            (grouped.concat_groups)
    estimate j   statistics         -> fit                  voxelwise.estimate_voxels
    inference j  statistics + fit   -> T/F, p-values, df    voxelwise.infer_voxels
    maps         all j              -> maps                 maps.assemble_maps
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from numpy.typing import NDArray

from blmm_scripts import grouped, table_io
from blmm_scripts.batching import (
    batch_products,
    concat_batches,
    read_batch_data,
    read_table_batch,
)
from blmm_scripts.config import Inputs, Settings, load
from blmm_scripts.design import read_design, read_formula_design
from blmm_scripts.maps import assemble_maps, map_names
from blmm_scripts.voxelwise import (
    MissingnessRules,
    estimate_voxels,
    fit_arrays,
    infer_voxels,
)


def run_pipeline(
    config: dict[str, Any], workdir: Path
) -> tuple[dict[str, NDArray], Settings, Inputs]:
    """Run a whole analysis in memory, in one image batch and one voxel batch.

    Parameters
    ----------
    config : dict
        A BLMM config (as loaded from YAML).
    workdir : Path
        Directory relative paths resolve against.

    Returns
    -------
    maps : dict of str to ndarray
        Every output map on the image grid (int32 or float32), keyed by the name
        without ``blmm_vox_``.
    settings, inputs
        The parsed config and checked inputs.
    """
    settings, inputs = load(config, workdir)
    grid = inputs.images[0] if inputs.table is None else inputs.shape
    if settings.data is not None:
        design = read_formula_design(
            settings.data,
            settings.model.text,
            settings.images,
            settings.masks,
            settings.analysis_mask,
            grid,
        )
    else:
        design = read_design(
            settings.X,
            [(f.factor, f.design) for f in settings.factors],
            [f.name for f in settings.factors],
            settings.analysis_mask,
            grid,
        )
    if inputs.table is None:
        Y, is_missing = read_batch_data(
            inputs.images, inputs.data_masks, design.voxels, settings.data_mask_thresh
        )
    else:
        with tempfile.TemporaryDirectory() as tmp:
            values = Path(tmp) / "values.npy"
            table_io.write_values(inputs.table.path, values, settings.MAXMEM)
            Y, is_missing = read_table_batch(
                values, inputs.table.rows, design.voxels, settings.data_mask_thresh
            )
    n_images, p = design.X.shape
    if grouped.chosen(settings.statistics, design.factors, p):
        factor = design.factors[0]
        order = grouped.image_order(factor)
        G = grouped.max_level_size(factor)
        batch = grouped.batch_groups(
            design.X, factor, order, Y[order], is_missing[order], G
        )
        stats = grouped.concat_groups([batch], n_images, p)
    else:
        part = batch_products(design.X, design.factors, (0, n_images), Y, is_missing)
        stats = concat_batches(
            [((0, n_images), part)], n_images, design.random_effects.q, p
        )
    fitted = estimate_voxels(
        stats,
        design.X,
        design.factors,
        MissingnessRules(settings.min_percent, settings.min_n, settings.safe_mode),
        method=settings.method,
        reml=settings.reml,
        tol=settings.tol,
        maxnit=settings.maxnit,
    )
    inf = infer_voxels(
        stats,
        design.X,
        design.factors,
        fitted,
        settings.contrasts,
        two_sided=settings.two_sided,
        minlog=settings.minlog,
    )
    n_t = sum(not c.is_f for c in settings.contrasts)
    names = map_names(
        n_t, len(settings.contrasts) - n_t, settings.output_cov_b, settings.resms
    )
    maps = assemble_maps([fit_arrays(fitted, stats.n)], [inf], design, names)
    return maps, settings, inputs
