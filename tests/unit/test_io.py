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
