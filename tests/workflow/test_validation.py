"""Bad configs stop `snakemake -n` at parse time.

All problems come in one message, before any job exists, and outdir is untouched.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from helpers import planned_jobs, snakemake
from tiny_study import make_tiny_study

pytestmark = pytest.mark.slow


def test_all_problems_reported_and_outdir_untouched(tmp_path):
    """X rows, a short contrast and a missing image are reported together."""
    config_path = make_tiny_study(tmp_path)
    X = np.loadtxt(tmp_path / "data" / "X.csv", delimiter=",")
    np.savetxt(tmp_path / "data" / "X.csv", X[:-1], delimiter=",")
    (tmp_path / "data" / "images" / "sub-02_ses-2.nii").unlink()
    config = yaml.safe_load(config_path.read_text())
    config["contrasts"].append({"c4": {"name": "short", "vector": "[1 0]"}})
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = snakemake(tmp_path, "-n")
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "3 problem(s)" in text
    assert "X: " in text and "11 rows" in text
    assert "sub-02_ses-2.nii does not exist" in text
    assert "c4 (short)" in text and "2 columns" in text
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_unknown_key_rejected_by_schema(tmp_path):
    """A misspelt key fails the schema (additionalProperties: false)."""
    make_tiny_study(tmp_path)
    result = snakemake(tmp_path, "-n", "--config", "maxnbv=3")
    assert result.returncode != 0
    assert "Additional properties are not allowed" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_eval_is_never_used(tmp_path):
    """MAXMEM code is refused, not run."""
    make_tiny_study(tmp_path, MAXMEM="__import__('pathlib').Path('pwned').touch()")
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "MAXMEM" in result.stdout + result.stderr
    assert not (tmp_path / "pwned").exists()


def test_blmm_config_works_unchanged(tmp_path):
    """BLMM's own spellings (string MAXMEM and contrasts, cluster keys) are accepted."""
    make_tiny_study(
        tmp_path,
        MAXMEM="2**32",
        tol="1e-6",
        clusterType="slurm",
        numNodes=100,
        voxelBatching=1,
        Missingness={"minpercent": "10%", "minn": "5"},
    )
    result = snakemake(tmp_path, "-n")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "clusterType" in result.stdout + result.stderr
    plan = planned_jobs(result.stdout)
    assert plan["batch"] == 1 and plan["maps"] == 1
