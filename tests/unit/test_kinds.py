"""GIFTI, CIFTI-2 and parcel tables: the same numbers give the same maps as NIfTI.

The tiny study's values are written in each kind (tests/kind_study.py) and run
through the whole analysis in memory (:func:`blmm_scripts.pipeline.run_pipeline`).
Tolerance 1e-10 relative: every kind hands the engine the same float64 values at
the same voxels, so the maps should agree to rounding (they are float32 in the
files; in memory they are compared before that).  Then the headers of the maps
written (CIFTI brain models and map names, GIFTI metadata, the parcel column), and
every bad input, each named in the message before anything is run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from kind_study import KINDS, brain_models, make_kind_study, write_mesh, write_surface

from blmm_scripts import io, table_io
from blmm_scripts.batching import read_table_batch
from blmm_scripts.config import ConfigError, load
from blmm_scripts.pipeline import run_pipeline

RTOL = 1e-10


def _config(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _analysis_voxels(root: Path) -> np.ndarray:
    mask = np.asarray(nib.load(str(root / "data" / "analysis_mask.nii")).dataobj)
    return np.flatnonzero(mask.reshape(-1) != 0)


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict:
    """Return the tiny study in every kind, BLMM and formula, and its NIfTI maps."""
    out = {}
    for formula in (False, True):
        root = tmp_path_factory.mktemp("formula" if formula else "blmm")
        configs = {kind: make_kind_study(root, kind, formula) for kind in KINDS}
        nifti = root / ("config_formula.yaml" if formula else "config.yaml")
        maps, _, _ = run_pipeline(_config(nifti), root)
        out[formula] = (root, configs, maps)
    return out


@pytest.mark.parametrize("formula", [False, True], ids=["blmm", "formula"])
@pytest.mark.parametrize("kind", KINDS)
def test_same_numbers_same_maps(studies, kind, formula):
    root, configs, reference = studies[formula]
    maps, _, inputs = run_pipeline(_config(configs[kind]), root)
    assert inputs.kind == kind
    voxels = _analysis_voxels(root)
    want = {
        n: (m.reshape(-1, 1) if m.ndim == 3 else m.reshape(-1, m.shape[-1]))[voxels]
        for n, m in reference.items()
    }
    got = {
        n: (m.reshape(-1, 1) if m.ndim == 1 else m)[
            slice(None) if kind == "table" else voxels
        ]
        for n, m in maps.items()
    }
    assert set(got) == set(want)
    assert want["mask"].sum() > 10  # voxels were fitted
    for name in want:
        np.testing.assert_allclose(
            got[name].astype(np.float64),
            want[name].astype(np.float64),
            rtol=RTOL,
            atol=RTOL * (np.abs(want[name]).max() + 1.0),
            err_msg=f"{kind}: blmm_vox_{name}",
        )


def test_parquet_table_same_maps(studies):
    pytest.importorskip("pyarrow", reason="Parquet needs the extra [parquet]")
    root, configs, _ = studies[False]
    config = _config(configs["table"])
    tsv = root / config["Y_table"]
    parquet = tsv.with_suffix(".parquet")
    frame = pd.read_csv(tsv, sep="\t", dtype={"image_id": str})
    frame.to_parquet(parquet, row_group_size=5)
    maps_tsv, _, _ = run_pipeline(config, root)
    maps_parquet, _, _ = run_pipeline(config | {"Y_table": str(parquet)}, root)
    for name in maps_tsv:
        np.testing.assert_array_equal(maps_parquet[name], maps_tsv[name], name)


# --------------------------------------------------------------------------------
# Maps written: headers round-trip
# --------------------------------------------------------------------------------


def test_cifti_map_keeps_brain_models_and_names(tmp_path):
    ref = tmp_path / "in.dscalar.nii"
    write_surface(ref, np.arange(120, dtype=np.float32), "cifti")
    values = np.arange(240, dtype=np.float32).reshape(120, 2)
    out = tmp_path / "blmm_vox_conT.dscalar.nii"
    io.save_map(out, values, ref, ["time", "group"])
    img = nib.load(str(out))
    assert img.header.get_axis(1) == brain_models()
    assert list(img.header.get_axis(0).name) == ["time", "group"]
    assert img.nifti_header.get_intent()[0] == "ConnDenseScalar"
    assert io.brain_models(out) == io.brain_models(ref)
    np.testing.assert_array_equal(io.load_volume(out), values)
    # default names: <map>_<k>
    io.save_map(out, values, ref)
    assert list(nib.load(str(out)).header.get_axis(0).name) == ["conT_1", "conT_2"]


def test_gifti_map_keeps_metadata_one_array_per_volume(tmp_path):
    ref = tmp_path / "in.func.gii"
    write_surface(ref, np.arange(120, dtype=np.float32), "gifti")
    values = np.arange(360, dtype=np.float32).reshape(120, 3)
    out = tmp_path / "blmm_vox_beta.func.gii"
    io.save_map(out, values, ref)
    img = nib.load(str(out))
    assert dict(img.meta) == {"AnatomicalStructurePrimary": "CortexLeft"}
    assert [a.meta["Name"] for a in img.darrays] == ["beta_1", "beta_2", "beta_3"]
    assert all(a.data.dtype == np.float32 for a in img.darrays)
    np.testing.assert_array_equal(io.load_volume(out), values)
    mask = tmp_path / "blmm_vox_mask.func.gii"
    io.save_map(mask, np.ones(120, np.int32), ref)
    assert nib.load(str(mask)).darrays[0].data.dtype == np.int32
    assert io.load_volume(mask).shape == (120,)


def test_parcel_map_columns_and_exact_values(tmp_path):
    ref = tmp_path / "parcels.tsv"
    table_io.write_parcel_names(ref, ["L_V1", "R_V1", "hippo"])
    values = np.array([[0.1, 1e-7], [3.3333333, -2.0], [1e30, 7.0]], np.float32)
    out = tmp_path / "blmm_vox_beta.tsv"
    io.save_map(out, values, ref)
    frame = pd.read_csv(out, sep="\t")
    assert list(frame.columns) == ["parcel", "beta_1", "beta_2"]
    assert list(frame["parcel"]) == ["L_V1", "R_V1", "hippo"]
    # float32 values read back exactly
    np.testing.assert_array_equal(io.load_volume(out).astype(np.float32), values)
    one = tmp_path / "blmm_vox_llh.tsv"
    io.save_map(one, values[:, 0], ref)
    assert list(pd.read_csv(one, sep="\t").columns) == ["parcel", "llh"]
    assert io.image_grid(one)[0] == (3,)


# --------------------------------------------------------------------------------
# Tables: chunks, missing cells, zero
# --------------------------------------------------------------------------------


def _write_table(path: Path, rows: int, parcels: int, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).normal(size=(rows, parcels))
    values[1, 2] = np.nan
    frame = pd.DataFrame(values, columns=[f"p{j}" for j in range(parcels)])
    frame.insert(0, "id", [f"s{i}" for i in range(rows)])
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.17g")
    return values


def test_table_is_read_in_chunks_below_maxmem(tmp_path):
    path = tmp_path / "values.tsv"
    values = _write_table(path, 500, 40)
    max_bytes = 32 * 41 * 25  # 25 rows at a time
    rows = table_io.chunk_rows(40, max_bytes)
    assert rows == 25
    parts = list(table_io.chunks(path, max_bytes))
    assert len(parts) == 20
    assert all(len(ids) <= rows for ids, _ in parts)
    out = tmp_path / "values.npy"
    assert table_io.write_values(path, out, max_bytes) == (500, 40)
    np.testing.assert_array_equal(np.load(out), values)  # n/a is NaN
    assert table_io.scan(path, max_bytes) == [f"s{i}" for i in range(500)]


def test_bad_cell_in_a_later_chunk_is_named(tmp_path):
    path = tmp_path / "values.tsv"
    _write_table(path, 300, 5)
    lines = path.read_text().splitlines()
    cells = lines[251].split("\t")
    cells[3] = "12,5"
    lines[251] = "\t".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"row 251 \(s250\), column 'p2' is '12,5'"):
        table_io.scan(path, 32 * 6 * 20)


def test_zero_in_a_table_is_a_value_empty_is_missing(tmp_path):
    values = np.array([[0.0, np.nan, 2.0], [1.0, 0.0, -3.0]])
    path = tmp_path / "values.npy"
    np.save(path, values)
    Y, gone = read_table_batch(path, [1, 0], np.array([0, 1, 2]), None)
    np.testing.assert_array_equal(gone, [[False, False, False], [False, True, False]])
    np.testing.assert_array_equal(Y, [[1.0, 0.0, -3.0], [0.0, 0.0, 2.0]])
    _, gone = read_table_batch(path, [0, 1], np.array([0, 2]), thresh=0.5)
    np.testing.assert_array_equal(gone, [[True, False], [False, True]])


# --------------------------------------------------------------------------------
# Bad inputs: every problem named before any job
# --------------------------------------------------------------------------------


def _problems(config: dict, root: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load(config, root)
    return str(err.value)


@pytest.fixture
def study(tmp_path) -> tuple[Path, dict]:
    """Return a fresh BLMM-config study in every kind (tests may break it)."""
    root = tmp_path / "study"
    configs = {kind: _config(make_kind_study(root, kind)) for kind in KINDS}
    return root, configs


def _listed(root: Path, config: dict) -> list[Path]:
    return [Path(p) for p in (root / config["Y_files"]).read_text().split()]


@pytest.mark.parametrize("kind", ["gifti", "cifti"])
def test_surface_of_other_length_is_named(study, kind):
    root, configs = study
    images = _listed(root, configs[kind])
    if kind == "gifti":
        write_surface(images[4], np.ones(100, np.float32), kind)
    else:
        short = nib.cifti2.BrainModelAxis.from_mask(np.ones(100, bool), "CortexLeft")
        axes = (nib.cifti2.ScalarAxis(["x"]), short)
        nib.save(nib.Cifti2Image(np.ones((1, 100), np.float32), header=axes), images[4])
    what = "vertices" if kind == "gifti" else "grayordinates"
    text = _problems(configs[kind], root)
    assert f"Y_files image 5: {images[4]} has 100 {what}, the first" in text


def test_surface_mask_of_other_length_is_named(study):
    root, configs = study
    config = configs["gifti"]
    write_surface(root / config["analysis_mask"], np.ones(7, np.float32), "gifti")
    masks = [Path(p) for p in (root / config["data_mask_files"]).read_text().split()]
    write_surface(masks[2], np.ones(7, np.float32), "gifti")
    text = _problems(config, root)
    assert "analysis_mask:" in text and "has 7 vertices" in text
    assert f"data_mask_files mask 3: {masks[2]} has 7 vertices" in text


def test_mixed_kinds_are_named(study):
    root, configs = study
    config = configs["gifti"]
    images = _listed(root, config)
    nifti = _listed(root, yaml.safe_load((root / "config.yaml").read_text()))
    images[3] = nifti[3]
    (root / "list.txt").write_text("\n".join(map(str, images)))
    text = _problems(config | {"Y_files": "list.txt"}, root)
    want = f"Y_files image 4: {images[3]} is a NIfTI file, the first image is GIFTI"
    assert want in text


def test_gifti_with_two_arrays_or_a_mesh_is_named(study):
    root, configs = study
    config = configs["gifti"]
    images = _listed(root, config)
    arrays = [
        nib.gifti.GiftiDataArray(
            np.ones(120, np.float32), datatype="NIFTI_TYPE_FLOAT32"
        )
        for _ in range(2)
    ]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), str(images[1]))
    mesh = nib.gifti.GiftiImage(
        darrays=[
            nib.gifti.GiftiDataArray(
                np.zeros((120, 3), np.float32),
                intent="NIFTI_INTENT_POINTSET",
                datatype="NIFTI_TYPE_FLOAT32",
            )
        ]
    )
    nib.save(mesh, str(images[2]))
    text = _problems(config, root)
    assert f"Y_files image 2: {images[1]} cannot be read" in text
    assert "has 2 data arrays; BLMM reads one map per file" in text
    assert f"Y_files image 3: {images[2]} cannot be read" in text
    assert "is a surface mesh" in text


def test_cifti_with_other_models_two_maps_or_other_type_is_named(study):
    root, configs = study
    config = configs["cifti"]
    images = _listed(root, config)
    other = nib.cifti2.BrainModelAxis.from_mask(np.ones(120, bool), name="CortexLeft")
    axes = (nib.cifti2.ScalarAxis(["x"]), other)
    nib.save(nib.Cifti2Image(np.ones((1, 120), np.float32), header=axes), images[1])
    axes = (nib.cifti2.ScalarAxis(["a", "b"]), brain_models())
    nib.save(nib.Cifti2Image(np.ones((2, 120), np.float32), header=axes), images[2])
    series = images[3].with_name("x.dtseries.nii")
    shutil.copy(images[3], series)
    listed = [*images[:3], series, *images[4:]]
    (root / "list.txt").write_text("\n".join(map(str, listed)))
    text = _problems(config | {"Y_files": "list.txt"}, root)
    assert f"Y_files image 2: {images[1]} has other CIFTI brain models" in text
    assert f"Y_files image 3: {images[2]} cannot be read" in text
    assert "has 2 maps; BLMM reads one map per file" in text
    assert f"Y_files image 4: {series} cannot be read" in text
    assert "dense scalars (.dscalar.nii)" in text


def test_bad_tables_are_named(study):
    root, configs = study
    config = configs["table"]
    path = root / config["Y_table"]
    good = path.read_text()
    lines = good.splitlines()

    def problems(text: str) -> str:
        path.write_text(text)
        return _problems(config, root)

    cells = lines[3].split("\t")
    cells[5] = "high"
    bad = problems("\n".join([*lines[:3], "\t".join(cells), *lines[4:]]))
    assert f"Y_table: {path} not numbers only: row 3 (img003), column " in bad
    assert "is 'high'" in bad
    repeated = "\n".join([*lines[:3], lines[2], *lines[4:]])
    assert "ids repeated in the first column: img002" in problems(repeated)
    header = lines[0].split("\t")
    twice = "\t".join([*header[:-1], header[1]])
    assert f"header names repeated: {header[1]}" in problems(
        "\n".join([twice, *lines[1:]])
    )
    only_ids = "\n".join(line.split("\t")[0] for line in lines)
    assert "needs a first column of image ids and at least one parcel" in problems(
        only_ids
    )
    fewer = problems("\n".join(lines[:-2]))
    assert f"X: {root / config['X']} has 12 rows but Y_table has 10 rows" in fewer
    path.write_text(good)
    text = _problems(
        config
        | {
            "data_mask_files": "data/M.txt",
            "analysis_mask": "data/analysis_mask.nii",
            "masks": "mask",
        },
        root,
    )
    for key in ("data_mask_files", "analysis_mask", "masks"):
        assert f"Y_table and {key}: give one or the other" in text
    assert f"Y_table: file {root / 'nope.tsv'} does not exist" in _problems(
        config | {"Y_table": "nope.tsv"}, root
    )
    assert "is not a table (.tsv, .csv, .txt or .parquet)" in _problems(
        config | {"Y_table": "data/analysis_mask.nii"}, root
    )


def test_formula_table_rows_are_joined_on_ids(studies, tmp_path):
    root, configs, _ = studies[True]
    config = _config(configs["table"])
    path = root / config["Y_table"]
    lines = path.read_text().splitlines()
    shuffled = tmp_path / "shuffled.tsv"  # rows in another order, plus an extra row
    extra = "\t".join(["scan99", *lines[1].split("\t")[1:]])
    shuffled.write_text("\n".join([lines[0], extra, *lines[:0:-1]]) + "\n")
    maps, _, inputs = run_pipeline(config | {"Y_table": str(shuffled)}, root)
    assert inputs.table.rows == tuple(range(12, 0, -1))
    want, _, _ = run_pipeline(config, root)
    for name in want:
        np.testing.assert_array_equal(maps[name], want[name], name)
    missing = tmp_path / "missing.tsv"
    missing.write_text("\n".join(lines[:-1]) + "\n")
    text = _problems(config | {"Y_table": str(missing)}, root)
    assert f"Y_table: {missing} has no row for 1 of the 12 images of data" in text
    assert "scan12" in text


def test_surface_mesh_needs_surface_data(study):
    root, configs = study
    text = _problems(configs["table"] | {"surface_mesh": "data/none.surf.gii"}, root)
    assert "but the images are TSV, not surface data" in text
    text = _problems(configs["gifti"] | {"surface_mesh": ["data/none.surf.gii"]}, root)
    assert f"surface_mesh: file {root / 'data' / 'none.surf.gii'} does not exist" in (
        text
    )


def test_surface_mesh_must_fit_the_surfaces(study):
    root, configs = study
    wrong = root / "data" / "wrong.surf.gii"
    write_mesh(wrong, 5, 5)
    text = _problems(configs["gifti"] | {"surface_mesh": str(wrong)}, root)
    assert f"surface_mesh: {wrong} has 25 vertices, the images' surface has 120" in text
    data = root / configs["gifti"]["Y_files"]
    image = data.read_text().split()[0]
    text = _problems(configs["cifti"] | {"surface_mesh": [image]}, root)
    assert f"surface_mesh: {image} is not a GIFTI surface mesh" in text
    meshes = [*configs["cifti"]["surface_mesh"], str(wrong)]
    text = _problems(configs["cifti"] | {"surface_mesh": meshes}, root)
    assert "3 meshes for 2 surface(s) of the images (cortex_left, cortex_right)" in text
    load(configs["cifti"], root)  # the study's own meshes fit


def test_cifti_fast_read_equals_nibabel(tmp_path):
    """Files of one header (map names aside) are read as their data block.

    float32 and int16 data; nibabel reads each file whole for the reference.
    """
    rng = np.random.default_rng(4)
    paths = []
    for i, dtype in enumerate((np.float32, np.float32, np.int16, np.int16)):
        path = tmp_path / f"sub-{i}_map-{'x' * i}.dscalar.nii"
        write_surface(path, (rng.normal(size=120) * 100).astype(dtype), "cifti")
        paths.append(path)
    want = np.stack([nib.load(str(p)).get_fdata().reshape(-1) for p in paths])
    for _ in range(2):  # the second time every header is known
        np.testing.assert_array_equal(io.load_voxels(paths, None), want)
    assert [io.brain_models(p) for p in paths] == [io.brain_models(paths[0])] * 4
    cut = tmp_path / "cut.dscalar.nii"
    cut.write_bytes(paths[0].read_bytes()[:-40])
    with pytest.raises(io.ImageReadError, match="cut short"):
        io.load_voxels([cut], None)
