"""Snakemake adapter for rule report_summary.

The work: blmm_scripts.report.run_summary and .summary_html.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from blmm_scripts import io
from blmm_scripts._logging import log_to_file
from blmm_scripts.report import RunMaps, benchmark_table, run_summary, summary_html

if TYPE_CHECKING:  # stub for linters and IDEs only
    from snakemake.iocontainers import snakemake

with log_to_file(snakemake.log[0]):
    inp = snakemake.input
    mask = io.load_volume(inp.mask)
    analysis_mask = (
        io.load_volume(inp.analysis_mask) != 0
        if "analysis_mask" in inp.keys()  # noqa: SIM118 (`in` would test values)
        else np.ones(mask.shape, bool)
    )
    maps = RunMaps(
        mask.astype(np.int64),
        io.load_volume(inp.n).astype(np.int64),
        io.load_volume(inp.status).astype(np.int64),
        io.load_volume(inp.nit).astype(np.int64),
        analysis_mask,
    )
    root = Path(snakemake.params.benchmarks)
    timings = (
        benchmark_table(sorted(root.rglob("*.tsv")), root, snakemake.params.skip)
        if root.is_dir()
        else None
    )
    table = run_summary(
        maps,
        snakemake.params.n_images,
        yaml.safe_load(Path(inp.inputs).read_text()),
        timings,
    )
    io.write_text(snakemake.output.tsv, table.to_csv(sep="\t", index=False))
    io.write_text(snakemake.output.html, summary_html(table, "BLMM run summary"))
