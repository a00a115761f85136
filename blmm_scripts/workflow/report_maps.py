"""Snakemake adapter for rule report_maps.

The work: blmm_scripts.report.plot_mosaic (volumes) or
blmm_scripts.report_surface.plot_index_map (surfaces, parcels).
"""

from typing import TYPE_CHECKING

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.report import plot_mosaic
from blmm_scripts.report_surface import plot_index_map
from blmm_scripts.structure import Status

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    inp = snakemake.input
    inside = (
        io.load_volume(inp.analysis_mask) != 0
        if "analysis_mask" in inp.keys()  # noqa: SIM118 (`in` would test values)
        else None
    )
    volumes = io.kind_of(inp.mask) == "nifti"
    for name, title in snakemake.params.titles.items():
        labels = {int(s): s.name for s in Status} if name == "status" else None
        data, out = io.load_volume(inp[name]), snakemake.output[name]
        if volumes:
            plot_mosaic(data, title, out, inside=inside, labels=labels)
        else:  # vertices, grayordinates or parcels: against their index
            plot_index_map(data, title, out, labels=labels)
