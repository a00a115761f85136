"""File formats: CSV heuristics, path lists, maps written atomically with the header."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from blmm_scripts import io


def test_numeric_table_plain(tmp_path):
    """A headerless CSV reads as it is."""
    path = tmp_path / "x.csv"
    path.write_text("1,2\n3,4.5\n")
    np.testing.assert_array_equal(io.read_numeric_table(path), [[1, 2], [3, 4.5]])


def test_numeric_table_header_and_row_labels(tmp_path):
    """A header row and a row-label column are dropped, as BLMM's loadFile did."""
    path = tmp_path / "x.csv"
    path.write_text("id,a,b\ns1,1,2\ns2,3,4\n")
    np.testing.assert_array_equal(io.read_numeric_table(path), [[1, 2], [3, 4]])


def test_numeric_table_rejects_text_cells(tmp_path):
    """A text cell in the body is an error naming its row and column."""
    path = tmp_path / "x.csv"
    path.write_text("1,2\n3,x\n5,6\n")
    with pytest.raises(ValueError, match=r"row 2, column 2 is 'x'"):
        io.read_numeric_table(path)


def test_path_list_skips_blank_lines_and_resolves(tmp_path, monkeypatch):
    """Blank lines are skipped and relative entries resolve against the cwd."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "list.txt"
    path.write_text("a.nii\n\n  b.nii  \r\n")
    assert io.read_path_list(path) == [str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_save_map_keeps_grid_and_dtype(tmp_path, rng, suffix):
    """Maps get the reference affine, their own dtype, no scaling, no leftovers."""
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [-10, 5, 7]
    ref = tmp_path / "ref.nii"
    nib.save(
        nib.Nifti1Image(rng.integers(0, 9, (4, 3, 2)).astype(np.int16), affine), ref
    )
    data = rng.standard_normal((4, 3, 2, 5)).astype(np.float32)
    out = tmp_path / f"blmm_vox_beta{suffix}"
    io.save_map(out, data, ref)
    img = nib.load(out)
    np.testing.assert_array_equal(img.affine, affine)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    counts = np.arange(24, dtype=np.int32).reshape(4, 3, 2)
    io.save_map(tmp_path / "blmm_vox_n.nii", counts, ref)
    assert nib.load(tmp_path / "blmm_vox_n.nii").get_data_dtype() == np.int32
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ref.nii", out.name, "blmm_vox_n.nii"]
    )


def test_save_map_failure_leaves_nothing(tmp_path):
    """A failed write leaves neither the map nor a partial file behind."""
    ref = tmp_path / "ref.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), ref)
    with pytest.raises(Exception):  # noqa: B017 - any nibabel error will do
        io.save_map(tmp_path / "bad.nii", np.zeros((2, 2, 2), dtype=object), ref)
    assert [p.name for p in tmp_path.iterdir()] == ["ref.nii"]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(
    ("dtype", "slope", "inter"),
    [
        ("<f4", None, None),
        (">f4", None, None),
        ("<f8", None, None),
        ("<i2", 0.37, 5.1),
        ("<u1", None, None),
        ("<i4", 2.0, -1.0),
    ],
)
@pytest.mark.parametrize("shape", [(5, 6, 7), (5, 6, 7, 1)])
def test_load_voxels_equals_load_volume(tmp_path, suffix, dtype, slope, inter, shape):
    """The fast read of NIfTI data blocks gives nibabel's values, bit for bit."""
    rng = np.random.default_rng(0)
    data = (rng.normal(size=shape) * 50 + 60).astype(dtype)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    path = tmp_path / f"img{suffix}"
    nib.save(img, path)
    voxels = rng.choice(210, 40, replace=False)
    want = io.load_volume(path).reshape(-1)
    np.testing.assert_array_equal(io.load_voxels([path, path], voxels)[1], want[voxels])
    np.testing.assert_array_equal(io.load_voxels([path], None)[0], want)


def test_image_grid_reads_other_formats(tmp_path):
    """NIfTI-2 and NIfTI-1 pairs go through nibabel: same grid."""
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    nib.save(
        nib.Nifti2Image(np.zeros((4, 5, 6), np.float32), affine), tmp_path / "a.nii"
    )
    nib.save(
        nib.Nifti1Pair(np.zeros((4, 5, 6), np.float32), affine), tmp_path / "b.img"
    )
    for name in ("a.nii", "b.hdr"):
        shape, got = io.image_grid(tmp_path / name)
        assert shape == (4, 5, 6)
        np.testing.assert_array_equal(got, affine)
        np.testing.assert_array_equal(io.load_voxels([tmp_path / name], None), 0.0)
