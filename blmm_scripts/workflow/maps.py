"""Snakemake adapter for rule maps.

The work: blmm_scripts.maps.assemble_maps; files written by blmm_scripts.io.save_map.
"""

from typing import TYPE_CHECKING

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.design import Design
from blmm_scripts.maps import assemble_maps

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    design = Design.from_arrays(io.load_arrays(snakemake.input.design))
    maps = assemble_maps(
        [io.load_arrays(path) for path in snakemake.input.fit],
        [io.load_arrays(path) for path in snakemake.input.stats],
        design,
        snakemake.params.maps,
    )
    names = snakemake.params.volumes
    for name, volumes in maps.items():
        io.save_map(
            getattr(snakemake.output, name),
            volumes,
            snakemake.input.reference,
            names.get(name),
        )
    io.write_yaml(snakemake.output.inputs, snakemake.params.resolved)
