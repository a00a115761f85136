"""The tiny study's numbers as GIFTI, CIFTI-2 dense scalars and a parcel table.

:func:`make_kind_study` writes the tiny NIfTI study (tests/tiny_study.py), then the
same values in another kind, with a config of its own:

* ``gifti``: one ``.func.gii`` per image (and per data mask, and the analysis
  mask) of the 120 voxels in C order as vertices, and a 12 x 10 grid mesh
  (``surface_mesh``);
* ``cifti``: one ``.dscalar.nii`` per image and mask, whose 120 grayordinates are
  50 left-cortex vertices, 50 right-cortex vertices and 20 voxels of a thalamus,
  and a 10 x 5 grid mesh per cortex;
* ``table``: ``Y_table`` with a row per image and a column per analysis-mask
  voxel; a cell is empty where the image is missing there (data mask 0, value 0
  or NaN), as the NIfTI study's missingness rule says.

Voxel v of the NIfTI study is vertex or grayordinate v, and the k-th parcel
column is the k-th analysis-mask voxel.  A module of its own (not conftest.py) so
that test files import it by a name no other test folder uses.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import yaml
from tiny_study import make_formula_study, make_tiny_study

KINDS = ("gifti", "cifti", "table")
SUFFIX = {"gifti": ".func.gii", "cifti": ".dscalar.nii"}


#: Grayordinates of the CIFTI copies' volume structure (a thalamus).
THALAMUS = 20


def brain_models(n: int = 120) -> nib.cifti2.BrainModelAxis:
    """Return CIFTI brain models of n grayordinates (n even).

    (n - 20) / 2 left-cortex vertices, as many right-cortex ones, then 20 voxels
    of a thalamus.
    """
    half = (n - THALAMUS) // 2
    left = nib.cifti2.BrainModelAxis.from_mask(np.ones(half, bool), name="CortexLeft")
    right = nib.cifti2.BrainModelAxis.from_mask(np.ones(half, bool), name="CortexRight")
    volume = np.zeros((4, 5, 3), bool)
    volume[1:3, :, 1:3] = True  # THALAMUS voxels
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    thalamus = nib.cifti2.BrainModelAxis.from_mask(
        volume, affine=affine, name="ThalamusLeft"
    )
    return left + right + thalamus


def write_surface(path: Path, values: np.ndarray, kind: str) -> None:
    """Write one map of n values as GIFTI (one data array) or CIFTI (one map)."""
    values = np.asarray(values)
    if kind == "gifti":
        array = nib.gifti.GiftiDataArray(
            values, intent="NIFTI_INTENT_SHAPE", datatype=values.dtype
        )
        meta = nib.gifti.GiftiMetaData({"AnatomicalStructurePrimary": "CortexLeft"})
        nib.save(nib.gifti.GiftiImage(darrays=[array], meta=meta), str(path))
    else:
        axes = (nib.cifti2.ScalarAxis([Path(path).name]), brain_models(values.size))
        img = nib.Cifti2Image(values[None], header=axes)
        img.nifti_header.set_intent("NIFTI_INTENT_CONNECTIVITY_DENSE_SCALARS")
        nib.save(img, str(path))


def write_mesh(path: Path, nx: int, ny: int) -> None:
    """Write a GIFTI surface mesh: an nx x ny grid of vertices, bent, triangulated.

    Vertex k is at grid position (k // ny, k % ny), so that a study's vertices in
    C order lie on it as the voxels of one slice.
    """
    i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    i, j = i.ravel().astype(np.float32), j.ravel().astype(np.float32)
    coords = np.column_stack([i * 4, j * 4, 6 * np.sin(i / 3)]).astype(np.float32)
    faces = []
    for a in range(nx - 1):
        for b in range(ny - 1):
            k = a * ny + b
            faces += [[k, k + ny, k + 1], [k + 1, k + ny, k + ny + 1]]
    arrays = [
        nib.gifti.GiftiDataArray(coords, "NIFTI_INTENT_POINTSET", "float32"),
        nib.gifti.GiftiDataArray(
            np.asarray(faces, np.int32), "NIFTI_INTENT_TRIANGLE", "int32"
        ),
    ]
    nib.save(nib.gifti.GiftiImage(darrays=arrays), str(path))


def _flat(path: Path) -> np.ndarray:
    """Return a NIfTI image's values in C order, in its own data type."""
    return np.asarray(nib.load(str(path)).dataobj).reshape(-1)


def make_kind_study(root: Path, kind: str, formula: bool = False) -> Path:
    """Write the tiny study and its copy in `kind`; return the copy's config.

    The NIfTI study's config is ``root/config.yaml`` (formula: ``
    config_formula.yaml``); the copy's is ``root/config_<kind>.yaml``, with
    outdir ``out_<kind>``.
    """
    root = Path(root).absolute()
    nifti_config = make_formula_study(root) if formula else make_tiny_study(root)
    return convert_study(
        root, nifti_config, root / "config.yaml", kind, f"out_{kind}", formula
    )


def convert_study(
    root: Path,
    config_path: Path,
    blmm_path: Path,
    kind: str,
    outdir: str,
    formula: bool = False,
    data: str = "data",
) -> Path:
    """Write a NIfTI study's images and masks in `kind`, and a config for the copy.

    Parameters
    ----------
    root : Path
        The working directory the configs' paths are relative to.
    config_path : Path
        The config to copy (a BLMM or a formula config).
    blmm_path : Path
        The study's BLMM config (its Y_files, data_mask_files and analysis_mask
        list the NIfTI files).
    kind, outdir : str
    formula : bool
        Whether config_path is a formula config (its table is copied).
    data : str
        The folder (below root) the copies go to, in data/<kind>.

    Returns
    -------
    Path
        root/config_<kind>.yaml
    """
    config = yaml.safe_load(config_path.read_text())
    blmm = yaml.safe_load(blmm_path.read_text())
    images = (root / blmm["Y_files"]).read_text().split()
    masks = (root / blmm["data_mask_files"]).read_text().split()
    analysis = _flat(root / blmm["analysis_mask"])
    folder = root / data / kind
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "table":
        voxels = np.flatnonzero(analysis != 0)
        Y = np.stack([_flat(p).astype(np.float64) for p in images])
        M = np.stack([_flat(p) for p in masks])
        gone = (M == 0) | ~np.isfinite(Y) | (Y == 0)
        Y = np.where(gone, np.nan, Y)[:, voxels]
        ids = _image_ids(root, config, formula, len(images))
        columns = [f"vox{v:03d}" for v in voxels]
        lines = ["\t".join(["image_id", *columns])]
        lines += [
            "\t".join([i, *("" if np.isnan(v) else repr(float(v)) for v in row)])
            for i, row in zip(ids, Y, strict=True)
        ]
        table = folder / "values.tsv"
        table.write_text("\n".join(lines) + "\n")
        for key in ("Y_files", "data_mask_files", "analysis_mask", "images", "masks"):
            config.pop(key, None)
        config["Y_table"] = str(table.relative_to(root))
    else:
        suffix = SUFFIX[kind]
        converted = {}
        for label, paths in (("image", images), ("mask", masks)):
            converted[label] = []
            for i, p in enumerate(paths, start=1):
                out = folder / f"{label}{i:03d}{suffix}"
                write_surface(out, _flat(p), kind)
                converted[label].append(out)
        mask_out = folder / f"analysis_mask{suffix}"
        write_surface(mask_out, analysis, kind)
        config["analysis_mask"] = str(mask_out.relative_to(root))
        config["surface_mesh"] = []
        for name, nx, ny in _meshes(kind, analysis.size):
            write_mesh(folder / f"{name}.surf.gii", nx, ny)
            config["surface_mesh"].append(f"{data}/{kind}/{name}.surf.gii")
        if formula:
            config["data"] = _rewrite_table_paths(root / data, kind, converted, root)
        else:
            for key, label in (("Y_files", "image"), ("data_mask_files", "mask")):
                listing = folder / f"{label}s.txt"
                listing.write_text("\n".join(map(str, converted[label])) + "\n")
                config[key] = str(listing.relative_to(root))
    config["outdir"] = outdir
    path = root / f"config_{kind}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _meshes(kind: str, n: int) -> list[tuple[str, int, int]]:
    """Return (name, nx, ny) of the grid meshes of n vertices or grayordinates."""
    if kind == "gifti":
        nx = next(d for d in (12, 10, 8, 6, 5, 4, 3, 2, 1) if n % d == 0)
        return [("mesh", nx, n // nx)]
    half = (n - THALAMUS) // 2
    nx = next(d for d in (10, 8, 6, 5, 4, 3, 2, 1) if half % d == 0)
    return [("left", nx, half // nx), ("right", nx, half // nx)]


def _image_ids(root: Path, config: dict, formula: bool, n: int) -> list[str]:
    """Return the table's ids: data's first column (formula), else img001..."""
    if not formula:
        return [f"img{i:03d}" for i in range(1, n + 1)]
    import pandas as pd

    table = pd.read_csv(root / config["data"], sep="\t", dtype=str)
    ids = [f"scan{i:02d}" for i in range(1, len(table) + 1)]
    table.insert(0, "scan_id", ids)
    copy = root / "data" / "participants_table.tsv"
    table.to_csv(copy, sep="\t", index=False)
    config["data"] = str(copy.relative_to(root))
    return ids


def _rewrite_table_paths(
    data: Path, kind: str, converted: dict[str, list[Path]], root: Path
) -> str:
    """Write a participants table whose image and mask columns name the copies."""
    import pandas as pd

    table = pd.read_csv(data / "participants.tsv", sep="\t", dtype=str)
    for column, label in (("image", "image"), ("mask", "mask")):
        table[column] = [str(p.relative_to(data)) for p in converted[label]]
    copy = data / f"participants_{kind}.tsv"
    table.to_csv(copy, sep="\t", index=False)
    return str(copy.relative_to(root))
