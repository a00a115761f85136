"""Snakemake adapter for rule setup: design.npz.

The work: blmm_scripts.design.read_design.
"""

from typing import TYPE_CHECKING

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.design import read_design

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    inp = snakemake.input
    n_factors = len(snakemake.params.names)
    design = read_design(
        inp.X,
        [(inp[f"f{k}_factor"], inp[f"f{k}_design"]) for k in range(1, n_factors + 1)],
        snakemake.params.names,
        inp.get("analysis_mask"),
        inp.first_image,
    )
    io.save_arrays(snakemake.output.design, **design.to_arrays())
