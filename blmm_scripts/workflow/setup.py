"""Snakemake adapter for rule setup: design.npz.

The work: blmm_scripts.design.read_design (a BLMM design's CSV files) or
read_formula_design (a participants table and a model formula).
"""

from typing import TYPE_CHECKING

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.design import read_design, read_formula_design

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    inp, par = snakemake.input, snakemake.params
    if par.formula:
        design = read_formula_design(
            inp.data,
            par.formula["model"],
            par.formula["images"],
            par.formula["masks"],
            inp.get("analysis_mask"),
            inp.get("first_image") or tuple(par.grid),
        )
    else:
        design = read_design(
            inp.X,
            [
                (inp[f"f{k}_factor"], inp[f"f{k}_design"])
                for k in range(1, len(par.names) + 1)
            ],
            par.names,
            inp.get("analysis_mask"),
            inp.get("first_image") or tuple(par.grid),
        )
    io.save_arrays(snakemake.output.design, **design.to_arrays())
