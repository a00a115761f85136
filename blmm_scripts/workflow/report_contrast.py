"""Snakemake adapter for rule report_contrast.

The work: blmm_scripts.report.plot_contrast (volumes),
blmm_scripts.report_surface.plot_surface_contrast (GIFTI, CIFTI) or .plot_parcels
(a table study: a figure and the parcels ranked by -log10 p).
"""

import logging
from typing import TYPE_CHECKING

from blmm_scripts import io, report_surface, table_io
from blmm_scripts._logging import log_to_file
from blmm_scripts.report import plot_contrast, volume

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    inp, par = snakemake.input, snakemake.params
    con = par.contrasts[snakemake.wildcards.con]
    stat = con["stat"]
    kind = io.kind_of(inp.mask)
    maps = (io.load_volume(inp[f"con{stat}"]), io.load_volume(inp[f"con{stat}lp"]))
    mask = io.load_volume(inp.mask)
    if kind == "nifti":
        stat_map, lp = (volume(m, con["volume"]) for m in maps)
        n_above = plot_contrast(
            stat_map,
            lp,
            mask,
            io.image_grid(inp.mask)[1],
            par.threshold,
            stat,
            con["title"],
            snakemake.output.figure,
        )
    elif kind == "table":
        stat_map, lp = (report_surface.one_volume(m, con["volume"]) for m in maps)
        n_above = report_surface.plot_parcels(
            table_io.parcel_names(inp.mask),
            stat_map,
            lp,
            mask,
            par.threshold,
            stat,
            con["title"],
            snakemake.output.figure,
            snakemake.output.ranking,
        )
    else:
        stat_map, lp = (report_surface.one_volume(m, con["volume"]) for m in maps)
        n_above = report_surface.plot_surface_contrast(
            stat_map,
            lp,
            mask,
            inp.mask,  # its brain models (CIFTI) are the images'
            list(inp.meshes),
            par.threshold,
            stat,
            con["title"],
            snakemake.output.figure,
        )
    logging.getLogger("report").info("%d voxels above the threshold", n_above)
