"""Snakemake adapter for rule parcels: every parcel map in one table.

The work: blmm_scripts.table_io.combine.
"""

from typing import TYPE_CHECKING

from blmm_scripts import io, table_io
from blmm_scripts._logging import log_to_file

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    maps = {io.map_name(path): path for path in snakemake.input}
    with io.atomic_path(snakemake.output.table) as tmp:
        table_io.combine(maps, tmp)
