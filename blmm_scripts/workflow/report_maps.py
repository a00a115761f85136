"""Snakemake adapter for rule report_maps.

The work: blmm_scripts.report.plot_mosaic.
"""

from typing import TYPE_CHECKING

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.report import plot_mosaic
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
    for name, title in snakemake.params.titles.items():
        plot_mosaic(
            io.load_volume(inp[name]),
            title,
            snakemake.output[name],
            inside=inside,
            labels={int(s): s.name for s in Status} if name == "status" else None,
        )
