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
    for name, title in snakemake.params.titles.items():
        plot_mosaic(
            io.load_volume(snakemake.input[name]),
            title,
            snakemake.output[name],
            labels={int(s): s.name for s in Status} if name == "status" else None,
        )
