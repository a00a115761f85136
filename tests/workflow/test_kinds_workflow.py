"""Real Snakemake runs of the tiny study as GIFTI, CIFTI-2 and a parcel table.

Each run's map files equal the NIfTI study's maps at the same voxels (both are
float32 of the same float64 numbers: compared at 1e-10 relative, which for
float32 means equal), FDR included; a table study also writes
``blmm_parcels.tsv``.  A changed contrast reruns inference only, as for volumes.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import planned_jobs, read_maps, snakemake
from kind_study import KINDS, SUFFIX, brain_models, make_kind_study

from blmm_scripts import io


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Run the NIfTI study and its copy in every kind through Snakemake, FDR on."""
    root = tmp_path_factory.mktemp("kinds")
    configs = {kind: make_kind_study(root, kind) for kind in KINDS}
    for name in ("config.yaml", *(c.name for c in configs.values())):
        result = snakemake(root, "--config", "fdr=1", configfile=name)
        assert result.returncode == 0, result.stderr[-3000:]
    return root, configs


def _kind_maps(outdir: Path, kind: str) -> dict[str, np.ndarray]:
    suffix = SUFFIX.get(kind, ".tsv")
    maps = {}
    for path in sorted(outdir.glob(f"blmm_vox_*{suffix}")):
        values = io.load_volume(path)
        maps[io.map_name(path)] = values.reshape(values.shape[0], -1)
    return maps


@pytest.mark.parametrize("kind", KINDS)
def test_maps_equal_the_nifti_study(runs, kind):
    root, _ = runs
    mask = np.asarray(nib.load(str(root / "data" / "analysis_mask.nii")).dataobj)
    voxels = np.flatnonzero(mask.reshape(-1) != 0)
    want = read_maps(root / "out")
    got = _kind_maps(root / f"out_{kind}", kind)
    assert set(got) == set(want) and "conTlq" in got
    for name, volume in want.items():
        flat = volume.reshape(volume.shape[0] * volume.shape[1] * volume.shape[2], -1)
        expected = flat[voxels].astype(np.float64)
        actual = got[name] if kind == "table" else got[name][voxels]
        actual = actual.astype(np.float32).astype(np.float64)  # TSV: 9 digits
        np.testing.assert_allclose(
            actual, expected, rtol=1e-10, atol=1e-30, err_msg=f"{kind} {name}"
        )


def test_cifti_maps_carry_the_input_brain_models_and_names(runs):
    root, _ = runs
    img = nib.load(str(root / "out_cifti" / "blmm_vox_conT.dscalar.nii"))
    assert img.header.get_axis(1) == brain_models()
    assert list(img.header.get_axis(0).name) == ["time", "group"]
    beta = nib.load(str(root / "out_cifti" / "blmm_vox_beta.dscalar.nii"))
    assert list(beta.header.get_axis(0).name) == [f"beta_{k}" for k in range(1, 5)]


def test_parcel_table_has_every_map_volume(runs):
    root, configs = runs
    table = pd.read_csv(root / "out_table" / "blmm_parcels.tsv", sep="\t")
    values = pd.read_csv(
        root / yaml.safe_load(configs["table"].read_text())["Y_table"], sep="\t"
    )
    assert list(table["parcel"]) == list(values.columns[1:])
    for column in (
        "mask",
        "beta_1",
        "beta_4",
        "D",
        "conT_1",
        "conT_2",
        "conF",
        "conTlq_2",
    ):
        assert column in table.columns
    beta = io.load_volume(root / "out_table" / "blmm_vox_beta.tsv")
    columns = table[[f"beta_{k}" for k in range(1, 5)]].to_numpy(np.float32)
    np.testing.assert_array_equal(columns, beta.astype(np.float32))


def test_changed_contrast_reruns_inference_only(runs):
    root, configs = runs
    config = yaml.safe_load(configs["table"].read_text())
    config["contrasts"][0]["c1"]["vector"] = [0, 1, 1, 0]
    changed = root / "config_table_changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    result = snakemake(root, "-n", "--config", "fdr=1", configfile=changed.name)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout + result.stderr)
    assert "inference" in jobs and "parcels" in jobs
    assert not {"table", "setup", "batch", "estimate"} & set(jobs)
