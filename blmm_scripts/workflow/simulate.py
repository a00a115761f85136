"""Snakemake adapter for rule simulate.

The work: blmm_scripts.simulate.simulate_study.
"""

from typing import TYPE_CHECKING

from blmm_scripts._logging import log_to_file
from blmm_scripts.simulate import simulate_study

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    sim = snakemake.params.simulation
    simulate_study(
        sim["folder"],
        sim["n_subjects"],
        sim["visits"],
        tuple(sim["shape"]),
        sim["seed"],
    )
