"""Helpers for the scheduler tests: scaled studies for dry runs, and workflow runs.

Scaled studies: the DAG's shape at any number of images, on no data.

At parse time the workflow reads the image list, every image's header (shape and
affine), X and the factor CSVs (``blmm_scripts.config.check_inputs``); the plan then
depends only on the number of images, the grid, p, the factors and MAXMEM. So a study of
n images can list one brain-sized image n times, with X and the factor CSVs written for
n rows, and the dry run plans exactly the jobs a real study of that size would get.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

#: A 2 mm MNI152 grid, the usual voxel grid of a UK Biobank-style analysis.
MNI_2MM_SHAPE = (91, 109, 91)
MNI_2MM_AFFINE = np.array(
    [[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]]
)


def write_scaled_study(
    root: Path, n_images: int, visits: int = 2, maxmem: str = "2**32"
) -> Path:
    """Write a config for n_images (n_images / visits subjects) on one shared image.

    X has p = 4 columns (intercept, time, a covariate, group); one random factor
    `subject` with an intercept and a time slope. Returns the config's path.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    image = root / "brain.nii"
    if not image.exists():
        data = np.zeros(MNI_2MM_SHAPE, dtype=np.uint8)
        nib.save(nib.Nifti1Image(data, MNI_2MM_AFFINE), image)
    rng = np.random.default_rng(n_images)
    subject = np.arange(n_images) // visits + 1
    time = (np.arange(n_images) % visits).astype(float)
    covariate = rng.normal(size=n_images)
    group = (subject % 2).astype(float)
    X = np.column_stack([np.ones(n_images), time, covariate, group])
    np.savetxt(root / "X.csv", X, delimiter=",", fmt="%.6g")
    np.savetxt(root / "subject.csv", subject, fmt="%d")
    np.savetxt(
        root / "subject_design.csv",
        np.column_stack([np.ones(n_images), time]),
        delimiter=",",
        fmt="%.6g",
    )
    (root / "Y.txt").write_text(f"{image}\n" * n_images)
    config = {
        "Y_files": str(root / "Y.txt"),
        "X": str(root / "X.csv"),
        "Z": [
            {
                "f1": {
                    "name": "subject",
                    "factor": str(root / "subject.csv"),
                    "design": str(root / "subject_design.csv"),
                }
            }
        ],
        "outdir": str(root / "results"),
        "contrasts": [{"c1": {"name": "time", "vector": [0, 1, 0, 0]}}],
        "MAXMEM": maxmem,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---- Running the workflow ----

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

#: Test overrides of the committed cluster profiles: this one-node cluster has 2 CPUs,
#: and the tests cannot wait out status-check delays meant for busy production
#: schedulers.
SLURM_TEST_ARGS = (
    "--cores",
    "2",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--latency-wait",
    "5",
)
SGE_TEST_ARGS = (
    "--cores",
    "2",
    "--seconds-between-status-checks",
    "1",
    "--latency-wait",
    "5",
)


#: The example study without its report figures (matplotlib, slow to start), in every
#: run, local or not: the maps are what the scheduler tests compare.
EXAMPLE_ARGS = ("--config", "report=0")


def snakemake_cmd(workdir: Path, *args: str, profile: str | None = None) -> list[str]:
    """Return the command running the repository's workflow on workdir/config.yaml."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(Path(workdir) / "config.yaml"),
    ]
    if profile is not None:
        # An absolute path: the profile's status script is resolved against it, and
        # Snakemake runs from --directory.
        cmd += ["--profile", str(REPO / "profiles" / profile)]
    return [*cmd, *args]


def run_snakemake(
    workdir: Path, *args: str, profile: str | None = None, timeout: int = 240
) -> subprocess.CompletedProcess:
    """Run Snakemake under `timeout -k 10` (a stuck executor cannot hang the tests)."""
    cmd = [
        "timeout",
        "-k",
        "10",
        str(timeout),
        *snakemake_cmd(workdir, *args, profile=profile),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def copy_study(source: Path, workdir: Path) -> None:
    """Copy the example's config and simulated study (not its results) into workdir."""
    shutil.copy(Path(source) / "config.yaml", Path(workdir) / "config.yaml")
    # copytree keeps modification times, so Snakemake sees the study as up to date.
    shutil.copytree(Path(source) / "example", Path(workdir) / "example")


def read_maps(outdir: Path) -> dict[str, np.ndarray]:
    """Return every blmm_vox_* map of an output folder, keyed by file name."""
    return {
        p.name: np.asarray(nib.load(p).dataobj)
        for p in sorted(Path(outdir).glob("blmm_vox_*"))
    }


def assert_maps_equal(actual: dict, expected: dict) -> None:
    """Assert the same maps, bit for bit: the same code ran on the same batches."""
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


def slurm_jobs(workdir: Path) -> list[dict[str, str]]:
    """Return id, state, time limit and comment of the SLURM jobs working in workdir.

    Finished jobs too, while SLURM lists them (MinJobAge, see slurm.sh).
    """
    out = subprocess.run(
        ["squeue", "-h", "--states=all", "-o", "%i|%T|%l|%k|%Z"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    keys = ("id", "state", "limit", "comment", "cwd")
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 4]
    return [dict(zip(keys, r, strict=True)) for r in rows if r[4] == str(workdir)]


def tail(result: subprocess.CompletedProcess, n: int = 4000) -> str:
    """Return the end of a run's output for an assertion message."""
    return (result.stdout + result.stderr)[-n:]
