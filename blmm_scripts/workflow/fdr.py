"""Snakemake adapter for rule fdr; the work is in blmm_scripts.fdr."""

from typing import TYPE_CHECKING

import numpy as np

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.fdr import fdr_map

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    lq = fdr_map(
        io.load_volume(snakemake.input.lp), io.load_volume(snakemake.input.mask)
    )
    io.save_map(snakemake.output.lq, lq.astype(np.float32), snakemake.input.lp)
