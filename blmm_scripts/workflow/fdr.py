"""Snakemake adapter for rule fdr.

The work: blmm_scripts.fdr.fdr_map.
"""

from typing import TYPE_CHECKING

import numpy as np

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.fdr import fdr_map

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    lp = io.load_volume(snakemake.input.lp)
    # con*lp maps are always 4-D (one volume per contrast); load_volume drops a
    # trailing single volume, put it back so the q map has the p map's shape.
    lp = lp[..., None] if lp.ndim == 3 else lp
    lq = fdr_map(lp, io.load_volume(snakemake.input.mask))
    io.save_map(snakemake.output.lq, lq.astype(np.float32), snakemake.input.lp)
