"""Snakemake adapter for rule simulate; the work is in blmm_scripts.simulate."""

from typing import TYPE_CHECKING

from blmm_scripts._logging import log_to_file
from blmm_scripts.simulate import simulate_study

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    s = snakemake.params.settings
    simulate_study(
        s["folder"], s["n_subjects"], s["visits"], tuple(s["shape"]), s["seed"]
    )
