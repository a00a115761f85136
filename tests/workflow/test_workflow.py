"""End to end runs of the workflow on a tiny study.

The maps equal a direct run whatever the batching, and reruns redo only what a
change touches (read from `snakemake -n`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from helpers import REPO, planned_jobs, read_maps, snakemake
from tiny_study import make_tiny_study

from blmm_scripts.pipeline import run_pipeline

pytestmark = pytest.mark.slow

INT_MAPS = ("mask", "n", "edf", "status", "nit")
# 10 subjects x 3 visits: every voxel's optimum well determined, so sums taken in
# another order (1e-16 apart) move no estimate by more than 1e-11.
STUDY = {"n_subjects": 10, "visits": 3}


@pytest.fixture(scope="module")
def one_batch(tmp_path_factory) -> Path:
    """Run the tiny study in one image batch and one voxel batch."""
    root = tmp_path_factory.mktemp("one_batch")
    make_tiny_study(root, **STUDY)
    result = snakemake(root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def many_batches(tmp_path_factory) -> Path:
    """Run the same study in 10 image batches and several voxel batches."""
    root = tmp_path_factory.mktemp("many_batches")
    # 6x5x4 grid, p = 4: 3 images per batch need 8 * (8 * 120) * 4 * 3 bytes.
    make_tiny_study(root, MAXMEM="3 * 8 * 960 * 4", maxnvb=5, **STUDY)
    result = snakemake(root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def assert_same_maps(actual: dict, expected: dict, rtol: float = 1e-6) -> None:
    """Integer maps equal; float32 maps equal to `rtol`."""
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        assert actual[name].shape == value.shape, name
        assert actual[name].dtype == value.dtype, name
        if name in INT_MAPS:
            np.testing.assert_array_equal(actual[name], value, err_msg=name)
        else:
            np.testing.assert_allclose(
                actual[name], value, rtol=rtol, atol=rtol, err_msg=name
            )


def test_maps_equal_direct_run(one_batch):
    """The workflow's maps are those of blmm_scripts.pipeline on the same data."""
    config = yaml.safe_load((one_batch / "config.yaml").read_text())
    expected, _, _ = run_pipeline(config, one_batch)
    actual = read_maps(one_batch / "out")
    # Same sums in the same order: float32 maps agree to the last bit or so.
    assert_same_maps(actual, expected, rtol=1e-6)
    assert actual["mask"].sum() > 10
    n_images = STUDY["n_subjects"] * STUDY["visits"]
    assert (actual["n"][actual["mask"] > 0] < n_images).any(), "needs ring voxels"


def test_temporary_intermediates_and_compression(tmp_path):
    """keep_intermediates: false removes products.npz; maps can be .nii.gz."""
    make_tiny_study(tmp_path, keep_intermediates=False, output_compression=True)
    result = snakemake(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    assert not list(out.glob("work/vox/*/products.npz"))
    assert not list(out.glob("blmm_vox_*.nii"))
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    expected, _, _ = run_pipeline(config, tmp_path)
    assert_same_maps(read_maps(out), expected, rtol=1e-6)


def test_two_factors_equal_direct_run(tmp_path):
    """Crossed factors (subject and site) run end to end; D holds both vechs."""
    make_tiny_study(tmp_path, safeMode=0)
    site = np.arange(12) % 3
    np.savetxt(tmp_path / "data" / "site.csv", site[:, None], fmt="%d")
    np.savetxt(tmp_path / "data" / "site_design.csv", np.ones((12, 1)), fmt="%d")
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["Z"].append(
        {"f2": {"factor": "data/site.csv", "design": "data/site_design.csv"}}
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, _, _ = run_pipeline(config, tmp_path)
    actual = read_maps(tmp_path / "out")
    assert actual["D"].shape[-1] == 2
    assert_same_maps(actual, expected, rtol=1e-6)


def test_maps_header_and_outputs(one_batch):
    """Maps carry the first image's affine; inputs.yml holds the resolved config."""
    out = one_batch / "out"
    first = nib.load(one_batch / "data" / "images" / "sub-01_ses-1.nii")
    beta = nib.load(out / "blmm_vox_beta.nii")
    np.testing.assert_array_equal(beta.affine, first.affine)
    assert beta.shape == (6, 5, 4, 4)
    assert nib.load(out / "blmm_vox_mask.nii").get_data_dtype() == np.int32
    resolved = yaml.safe_load((out / "inputs.yml").read_text())
    assert resolved["tol"] == 1e-10 and resolved["estimation"] == "REML"
    assert not list(out.glob(".*partial*"))


def test_volume_orders(one_batch):
    """Con holds T contrasts in config order, cov is row-major p x p, D is vech."""
    maps = read_maps(one_batch / "out")
    inside = maps["mask"] > 0
    beta = maps["beta"][inside].astype(float)
    config = yaml.safe_load((one_batch / "config.yaml").read_text())
    t_contrasts = [
        np.asarray(body["vector"], float)
        for item in config["contrasts"]
        for body in item.values()
        if np.ndim(body["vector"]) == 1
    ]
    assert maps["con"].shape[-1] == len(t_contrasts) == 2
    assert maps["conF"].shape[-1] == 1
    for i, L in enumerate(t_contrasts):
        # float32 maps: relative 1e-5 of the largest term
        np.testing.assert_allclose(
            maps["con"][inside][:, i], beta @ L, rtol=1e-5, atol=1e-4
        )
    cov = maps["cov"][inside].reshape(-1, 4, 4)
    np.testing.assert_array_equal(cov, cov.transpose(0, 2, 1))
    assert (np.diagonal(cov, axis1=1, axis2=2) > 0).all()
    se = np.sqrt(np.einsum("i,vij,j->v", t_contrasts[0], cov, t_contrasts[0]))
    np.testing.assert_allclose(maps["conSE"][inside][:, 0], se, rtol=1e-4)
    assert maps["D"].shape[-1] == 1  # one factor, random intercept: vech is 1 value


def test_maps_do_not_depend_on_batching(one_batch, many_batches):
    """10 image batches and several voxel batches give the maps of 1 and 1."""
    plan = planned_jobs(snakemake(many_batches, "-n", "--forceall").stdout)
    assert plan["batch"] == 10 and plan["estimate"] > 1
    # The sufficient statistics are sums in another order: equal to 1e-10.
    one = np.load(one_batch / "out" / "work" / "vox" / "0000" / "products.npz")
    parts = [
        np.load(path)
        for path in sorted(
            (many_batches / "out" / "work" / "vox").glob("*/products.npz")
        )
    ]
    for key in ("XtY", "ZtY", "YtY", "n"):
        joined = np.concatenate([part[key] for part in parts])
        np.testing.assert_allclose(joined, one[key], rtol=1e-10, err_msg=key)
    # The estimates are polished by Newton steps to the exact optimum, so they do
    # not depend on the path the iterations took: the float64 estimates and
    # statistics agree to 1e-10 and the float32 maps are equal.  Only the iteration
    # counts may differ.
    for name in ("fit.npz", "stats.npz"):
        one_arrays = np.load(one_batch / "out" / "work" / "vox" / "0000" / name)
        many_arrays = [
            np.load(path)
            for path in sorted(
                (many_batches / "out" / "work" / "vox").glob("*/" + name)
            )
        ]
        for key in one_arrays.files:
            if key == "nit" or one_arrays[key].ndim == 0:
                continue
            joined = np.concatenate([part[key] for part in many_arrays])
            np.testing.assert_allclose(
                joined, one_arrays[key], rtol=1e-10, atol=1e-300, err_msg=key
            )
    many, one = read_maps(many_batches / "out"), read_maps(one_batch / "out")
    del many["nit"], one["nit"]
    assert_same_maps(many, one, rtol=1e-10)


def changed_config(root: Path, name: str, **changes) -> str:
    """Write a copy of the study's config with some keys changed; return its name."""
    config = yaml.safe_load((root / "config.yaml").read_text())
    config.update(changes)
    (root / name).write_text(yaml.safe_dump(config, sort_keys=False))
    return name


def test_second_run_does_nothing(one_batch):
    """An identical second call has nothing to do."""
    assert planned_jobs(snakemake(one_batch, "-n").stdout) == {}


def test_changed_contrast_reruns_inference_and_maps(one_batch):
    """A changed contrast reruns only inference and maps."""
    config = yaml.safe_load((one_batch / "config.yaml").read_text())
    contrasts = config["contrasts"] + [{"c4": {"name": "age", "vector": [0, 0, 1, 0]}}]
    name = changed_config(one_batch, "contrast.yaml", contrasts=contrasts)
    plan = planned_jobs(snakemake(one_batch, "-n", configfile=name).stdout)
    assert plan == {"inference": 1, "maps": 1, "all": 1}


def test_changed_estimation_reruns_from_estimate(one_batch):
    """Changed tol, method, estimation and maxnit rerun estimate onward only."""
    name = changed_config(
        one_batch, "est.yaml", tol=1e-8, estimation="ML", method="FS", maxnit=500
    )
    plan = planned_jobs(snakemake(one_batch, "-n", configfile=name).stdout)
    assert plan == {"estimate": 1, "inference": 1, "maps": 1, "all": 1}


def test_changed_missingness_does_not_rerun_batches(one_batch):
    """Missingness rules act in estimate: no image batch or concat reruns."""
    name = changed_config(one_batch, "miss.yaml", Missingness={"MinN": 11})
    plan = planned_jobs(snakemake(one_batch, "-n", configfile=name).stdout)
    assert plan == {"estimate": 1, "inference": 1, "maps": 1, "all": 1}


def test_failed_voxel_batch_reruns_alone(many_batches):
    """A voxel batch whose fit is missing (its job failed, so no maps) reruns alone.

    Snakemake does not redo a deleted intermediate while the maps downstream are
    present and newer; a failed job leaves no maps, which is the case simulated.
    """
    out = many_batches / "out"
    fit = sorted((out / "work" / "vox").glob("*/fit.npz"))[-1]
    mask = out / "blmm_vox_mask.nii"
    saved = {path: path.read_bytes() for path in (fit, mask)}
    for path in saved:
        path.unlink()
    try:
        result = snakemake(many_batches, "-n")
        assert planned_jobs(result.stdout) == {
            "estimate": 1,
            "inference": 1,
            "maps": 1,
            "all": 1,
        }
        assert f"vox/{fit.parent.name}/fit.npz" in result.stdout
    finally:  # no later test needs the run intact; restore the files anyway
        for path, data in saved.items():
            path.write_bytes(data)


def test_lint_clean():
    """`snakemake --lint` on the example config reports nothing."""
    result = subprocess.run(
        ["snakemake", "--lint"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def run_ci_lint(*cmd: str) -> subprocess.CompletedProcess:
    """Run one of .ci/run's lint commands, as written there, from the repository root.

    The command must be a line of .ci/run, so `pytest` alone lints what CI lints.
    """
    ci_commands = {
        line.strip() for line in (REPO / ".ci" / "run").read_text().split("\n")
    }
    assert " ".join(cmd) in ci_commands, f"`{' '.join(cmd)}` is not run by .ci/run"
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)


def test_snakefmt_clean():
    """The Snakefile and every rule file are snakefmt-formatted (CI's check)."""
    result = run_ci_lint("snakefmt", "--check", "Snakefile", "rules/")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "cmd",
    [("ruff", "check", "."), ("ruff", "format", "--check", ".")],
    ids=["check", "format"],
)
def test_ruff_clean(cmd):
    """The whole tree passes ruff's lint and format checks (CI's checks)."""
    result = run_ci_lint(*cmd)
    assert result.returncode == 0, result.stdout + result.stderr
