"""Snakemake adapter for rule concat; the work is in blmm_scripts.pipeline."""

from typing import TYPE_CHECKING

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.pipeline import Design, batch_rows, concat_batches

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    inp = snakemake.input
    design = Design.from_arrays(io.load_arrays(inp.design))
    start, stop = snakemake.params.voxels
    names = ("XtY", "ZtY", "ZtY_columns", "YtY", "n")
    parts = []
    for b, rows in enumerate(snakemake.params.image_batches):
        arrays = {name: io.open_npy(inp[name][b]) for name in names}
        missing = io.load_arrays(inp.missing[b])
        parts.append((tuple(rows), batch_rows(arrays, missing, start, stop)))
    stats = concat_batches(
        parts, design.X.shape[0], design.random_effects.q, design.X.shape[1]
    )
    io.save_arrays(snakemake.output.products, **stats.to_arrays())
