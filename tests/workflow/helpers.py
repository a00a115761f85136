"""Run Snakemake on a study in a folder and read its dry-run output."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]


def snakemake_command(
    workdir: Path, *args: str, configfile: str = "config.yaml"
) -> list[str]:
    """Return the snakemake command a user types for the study in `workdir`."""
    return [
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(Path(workdir) / configfile),
        "--cores",
        "2",
        *args,
    ]


def snakemake(workdir: Path, *args: str, configfile: str = "config.yaml"):
    """Run snakemake on the repository's Snakefile in `workdir`; return the result."""
    cmd = snakemake_command(workdir, *args, configfile=configfile)
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def run_and_report(workdir: Path, report: Path) -> None:
    """Run the study in `workdir`, then build its `snakemake --report` file."""
    for args in ((), ("--report", str(report))):
        result = snakemake(workdir, *args)
        assert result.returncode == 0, result.stderr[-3000:]


def planned_jobs(output: str) -> dict[str, int]:
    """Return {rule: count} from the 'Job stats' table of a dry run ({} if none)."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def read_maps(outdir: Path) -> dict[str, np.ndarray]:
    """Return every blmm_vox_* map of a folder, keyed by name without prefix."""
    return {
        p.name.removeprefix("blmm_vox_").split(".")[0]: np.asarray(nib.load(p).dataobj)
        for p in sorted(Path(outdir).glob("blmm_vox_*.nii*"))
    }
