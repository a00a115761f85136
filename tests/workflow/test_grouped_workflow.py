"""Grouped statistics end to end: the same maps as the per-level run.

A small unbalanced study (subjects with 1, 2 or 3 images, listed in random order so
that the per-level run's image batches split subjects; partial data masks, so ring
voxels), run once with ``statistics: grouped`` and once with ``statistics: levels``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import planned_jobs, read_maps, snakemake
from tiny_study import make_tiny_study

from blmm_scripts import io
from blmm_scripts.pipeline import run_pipeline

pytestmark = pytest.mark.slow

N_SUBJECTS, VISITS = 12, 3


def unbalanced_study(root: Path, statistics: str) -> Path:
    """Write the study with subjects of 1-3 images in random order; return root."""
    make_tiny_study(
        root,
        n_subjects=N_SUBJECTS,
        visits=VISITS,
        statistics=statistics,
        # 6x5x4 grid, p = 4: 4 images per batch (8 * 8 * 120 * 4 bytes each)
        MAXMEM="4 * 8 * 960 * 4",
        maxnvb=3,
        Missingness={"MinN": 5},
        contrasts=[
            {"c1": {"name": "time", "vector": [0, 1, 0, 0]}},
            {"c2": {"name": "time_or_group", "vector": [[0, 1, 0, 0], [0, 0, 0, 1]]}},
        ],
    )
    rng = np.random.default_rng(3)
    sizes = rng.choice([1, 2, 3], size=N_SUBJECTS, p=[0.3, 0.4, 0.3])
    sizes[:3] = [1, 2, 3]
    keep = np.concatenate(
        [np.arange(s * VISITS, s * VISITS + k) for s, k in enumerate(sizes)]
    )
    keep = rng.permutation(keep)
    config = yaml.safe_load((root / "config.yaml").read_text())
    files = [config["Y_files"], config["data_mask_files"], config["X"]]
    files += [config["Z"][0]["f1"]["factor"], config["Z"][0]["f1"]["design"]]
    for name in files:
        lines = (root / name).read_text().splitlines()
        (root / name).write_text("".join(lines[i] + "\n" for i in keep))
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run the study both ways; return their working directories."""
    out = {}
    for statistics in ("grouped", "levels"):
        root = unbalanced_study(tmp_path_factory.mktemp(statistics), statistics)
        result = snakemake(root)
        assert result.returncode == 0, result.stderr[-3000:]
        out[statistics] = root
    return out


def voxel_results(root: Path, name: str) -> dict[str, np.ndarray]:
    """Return every voxel batch's fit.npz or stats.npz arrays, concatenated."""
    parts = [io.load_arrays(p) for p in sorted(root.glob(f"out/work/vox/*/{name}"))]
    return {
        k: np.concatenate([part[k] for part in parts])
        for k in parts[0]
        if parts[0][k].ndim  # not the REML flag
    }


def test_grouped_run_used_grouped_statistics(runs):
    logs = (runs["grouped"] / "out/work/logs/batch").glob("*.log")
    assert all("grouped" in log.read_text() for log in logs)
    logs = (runs["levels"] / "out/work/logs/batch").glob("*.log")
    assert not any("grouped" in log.read_text() for log in logs)


#: Iterations to convergence may differ by one where the two paths' rounding puts
#: a voxel's change in log-likelihood on either side of tol; the Newton polish
#: makes the estimates agree regardless.
NOT_COMPARED = ("nit",)


def test_grouped_estimates_equal_per_level_estimates(runs):
    """float64 fits and statistics agree at 1e-10 (rounding of two summation orders)."""
    for name in ("fit.npz", "stats.npz"):
        got = voxel_results(runs["grouped"], name)
        want = voxel_results(runs["levels"], name)
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            if key in NOT_COMPARED:
                continue
            # atol: 1e-10 of the array's scale, for values near 0 (a slope of 5e-4
            # next to an intercept of 100 moved 2e-12 with the order of the sums)
            scale = float(np.abs(value).max()) if value.size else 0.0
            np.testing.assert_allclose(
                got[key],
                value,
                rtol=1e-10,
                atol=1e-10 * scale,
                err_msg=f"{name} {key}",
            )
    fit = voxel_results(runs["levels"], "fit.npz")
    assert (fit["status"] == 1).sum() > 20
    assert ((fit["n"] < fit["n"].max()) & (fit["status"] == 1)).any(), "ring voxels"


def test_grouped_maps_equal_per_level_and_direct_run(runs):
    got, want = read_maps(runs["grouped"] / "out"), read_maps(runs["levels"] / "out")
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        if name not in NOT_COMPARED:
            np.testing.assert_allclose(
                got[name], value, rtol=1e-6, atol=1e-6, err_msg=name
            )
    config = yaml.safe_load((runs["grouped"] / "config.yaml").read_text())
    direct, _, _ = run_pipeline(config, runs["grouped"])
    for name, value in direct.items():
        if name not in NOT_COMPARED:
            np.testing.assert_allclose(
                got[name], value, rtol=1e-6, atol=1e-6, err_msg=name
            )


def test_grouped_reruns_as_documented(runs):
    """Nothing to do when nothing changed; a new contrast reruns inference only."""
    root = runs["grouped"]
    assert planned_jobs(snakemake(root, "-n").stdout) == {}
    config = yaml.safe_load((root / "config.yaml").read_text())
    config["contrasts"][0]["c1"]["vector"] = [0, 0, 1, 0]
    (root / "changed.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(root, "-n", configfile="changed.yaml")
    planned = planned_jobs(dry.stdout)
    assert set(planned) == {"inference", "maps", "all"}, dry.stdout[-2000:]
