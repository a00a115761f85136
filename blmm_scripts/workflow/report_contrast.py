"""Snakemake adapter for rule report_contrast.

The work: blmm_scripts.report.plot_contrast.
"""

import logging
from typing import TYPE_CHECKING

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.report import plot_contrast, volume

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    con = snakemake.params.contrasts[snakemake.wildcards.con]
    stat = con["stat"]
    _, affine = io.image_grid(snakemake.input.mask)
    n_above = plot_contrast(
        volume(io.load_volume(snakemake.input[f"con{stat}"]), con["volume"]),
        volume(io.load_volume(snakemake.input[f"con{stat}lp"]), con["volume"]),
        io.load_volume(snakemake.input.mask),
        affine,
        snakemake.params.threshold,
        stat,
        con["title"],
        snakemake.output.figure,
    )
    logging.getLogger("report").info("%d voxels above the threshold", n_above)
