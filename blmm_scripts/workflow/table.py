"""Snakemake adapter for rule table: Y_table's values as an array, its parcels.

The work: blmm_scripts.table_io.write_values.
"""

import logging
from typing import TYPE_CHECKING

from blmm_scripts import io, table_io
from blmm_scripts._logging import log_to_file

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    out = snakemake.output
    with io.atomic_path(out.values) as tmp:
        rows, parcels = table_io.write_values(
            snakemake.input.table, tmp, snakemake.params.max_bytes
        )
    header = table_io.read_header(snakemake.input.table)
    with io.atomic_path(out.parcels) as tmp:
        table_io.write_parcel_names(tmp, header.parcels)
    logging.getLogger("table").info(
        "%s: %d rows x %d parcels written to %s",
        snakemake.input.table,
        rows,
        parcels,
        out.values,
    )
