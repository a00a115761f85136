"""Snakemake adapter for rule compare.

The work: blmm_scripts.compare.check_nested and .compare_voxels.
"""

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.compare import (
    check_nested,
    compare_voxels,
    model_of,
    voxel_rule_differences,
)
from blmm_scripts.config import check_inputs, parse_settings

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

logger = logging.getLogger("compare")

with log_to_file(snakemake.log[0]):
    inp = snakemake.input
    resolved = {
        which: yaml.safe_load(Path(inp[f"{which}_inputs"]).read_text())
        for which in ("small", "large")
    }
    inputs = {
        w: check_inputs(parse_settings(resolved[w], Path.cwd())) for w in resolved
    }
    label = {w: str(Path(inp[f"{w}_inputs"]).parent) for w in resolved}
    small = model_of(resolved["small"], inputs["small"], label["small"])
    large = model_of(resolved["large"], inputs["large"], label["large"])
    reference = check_nested(small, large)
    log = logger.info if reference.standard else logger.warning
    log("%s is nested in %s: %s", small.label, large.label, reference.description)
    for diff in voxel_rule_differences(resolved["small"], resolved["large"]):
        logger.info("voxel selection differs (masks are intersected): %s", diff)
    result = compare_voxels(
        io.load_volume(inp.small_mask),
        io.load_volume(inp.small_llh),
        io.load_volume(inp.large_mask),
        io.load_volume(inp.large_llh),
        reference,
    )
    first = inp.small_mask  # the maps' kind, grid and header
    out = snakemake.output
    io.save_map(out.mask, result.mask.astype(np.int32), first)
    io.save_map(out.Chi2, result.Chi2.astype(np.float32), first)
    io.save_map(out.Chi2lp, result.Chi2lp.astype(np.float32), first)
