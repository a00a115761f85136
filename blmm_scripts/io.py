"""File formats: path lists, numeric CSV tables, images, arrays and YAML.

Images are NIfTI volumes, GIFTI surface data or CIFTI-2 dense scalars
(:mod:`blmm_scripts.surface_io`), chosen by file name (:func:`kind_of`); a study of
parcel values reads a table (:mod:`blmm_scripts.table_io`) and writes parcel maps.
A map is written in the kind of its reference: the study's first input.

Nothing else in the package touches disk (but those two modules).  Every file is
written atomically (:func:`atomic_path`: a temporary file in the same folder,
flushed to disk, then renamed), so a killed job or a full disk never leaves a
half-written file under an output's name.  Images that cannot be read raise
:class:`ImageReadError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from numpy.typing import NDArray

# nibabel and pandas are imported where they are used: jobs that read no image
# and no table (concat, estimate, inference) do not load them (about 0.3 s a job).
if TYPE_CHECKING:
    import pandas as pd
    import scipy.sparse as sp

logger = logging.getLogger(__name__)

#: Marks the temporary files of :func:`atomic_path`: ``.<name>.<pid>.partial<ext>``.
PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.partial(\.[^/]*)?$")


class ImageReadError(ValueError):
    """An image (or data mask) whose data cannot be read; the message names it."""


def _extension(path: Path) -> str:
    """Return the extension a file format is recognised by (``.nii.gz`` as one)."""
    return ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it becomes ``path`` if the block ends.

    The temporary file keeps the extension (writers that pick a format by name
    still work), is flushed to disk and renamed over ``path``; if the block raises
    it is removed.  A full disk (or quota) raises ``OSError`` saying which file and
    that nothing half-written was left.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial{_extension(path)}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(
                err.errno,
                f"No space left on the device (disk full or quota) while writing "
                f"{path}; it was not written and no half-written file was left. Free "
                "space and run the same command again: it redoes the failed job",
            ) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def remove_partial_files(folder: Path) -> list[Path]:
    """Remove the temporary files that dead processes left below a folder.

    A temporary file of :func:`atomic_path` whose writer (the pid in its name) no
    longer exists was left by a killed job; it is never read, and removing it only
    tidies.  Returns the files removed.
    """
    removed = []
    for tmp in Path(folder).rglob(".*.partial*"):
        m = PARTIAL.match(tmp.name)
        if m is None or not tmp.is_file():
            continue
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
        except PermissionError:  # alive, another user's
            pass
    return removed


def read_path_list(path: Path) -> list[str]:
    """Return the non-blank lines of a text file listing one file per line.

    Relative entries are resolved against the current working directory, as BLMM
    users expect (see README, "Paths").
    """
    lines = Path(path).read_text().splitlines()
    return [
        str(Path(line.strip()).expanduser().absolute())
        for line in lines
        if line.strip()
    ]


def read_numeric_table(path: Path) -> NDArray[np.float64]:
    """Return a CSV/TSV table of numbers as an array of shape (n_rows, n_columns).

    As BLMM's ``loadFile``: a first row that is not numeric is taken as a column
    header, a first column that is not numeric as row labels; both are dropped.
    Empty cells become NaN (the caller reports them).

    Raises
    ------
    ValueError
        If a cell other than the header or row labels is not a number.
    """
    import pandas as pd

    sep = "\t" if Path(path).suffix == ".tsv" else ","
    try:
        df = pd.read_csv(path, header=None, sep=sep, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"cannot be read as a table ({err})") from err
    if df.empty:
        raise ValueError("the file is empty")
    num = df.apply(pd.to_numeric, errors="coerce")
    bad = num.isna() & df.notna()
    if bad.iloc[0].any() and not bad.iloc[1:, 1:].to_numpy().any():
        num, bad = num.iloc[1:], bad.iloc[1:]  # header row
    if (
        len(num.columns) > 1
        and bad.iloc[:, 0].any()
        and not bad.iloc[:, 1:].to_numpy().any()
    ):
        num, bad = num.iloc[:, 1:], bad.iloc[:, 1:]  # row labels
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        row, col = bad.index[r], bad.columns[c]
        raise ValueError(
            f"not numbers only (row {row + 1}, column {col + 1} is "
            f"{df.loc[row, col]!r}; {int(bad.to_numpy().sum())} bad cells)"
        )
    return num.to_numpy(dtype=np.float64)


#: Cells that mean "missing" in a participants table (BIDS writes n/a).
MISSING_CELLS = ("", "n/a")


def read_table(path: Path) -> pd.DataFrame:
    """Return a participants table: one row per image, a header row of column names.

    Tab-separated for ``.tsv`` (and ``.txt``), comma-separated otherwise.  Empty
    cells and ``n/a`` are missing (NaN); nothing else is (``NA`` stays text).  A
    column whose present cells are all numbers becomes float64; any other stays
    text (the formula decides whether text is a category or a mistake).

    Raises
    ------
    ValueError
        If the file cannot be read as a table with a header and at least one row.
    """
    import pandas as pd

    sep = "\t" if Path(path).suffix in (".tsv", ".txt") else ","
    try:
        df = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            na_values=list(MISSING_CELLS),
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"cannot be read as a table ({err})") from err
    if df.empty:
        raise ValueError("has a header but no rows")
    df.columns = [str(c).strip() for c in df.columns]
    for col in df.columns:
        text = df[col].str.strip()
        num = pd.to_numeric(text, errors="coerce")
        df[col] = num.astype(np.float64) if num.notna().equals(text.notna()) else text
    return df


#: The kinds of images, each with its output maps' suffix.
KINDS = ("nifti", "gifti", "cifti", "table")


def kind_of(path: Path) -> str:
    """Return the kind of an image or map by its name.

    ``.gii``: GIFTI; ``.dscalar.nii`` (and the other CIFTI-2 suffixes, refused
    when read): CIFTI; ``.tsv``: a parcel map; anything else: a NIfTI volume (or
    another volume format nibabel reads).
    """
    from blmm_scripts.surface_io import OTHER_CIFTI

    name = Path(path).name.lower()
    if name.endswith(".gii"):
        return "gifti"
    if name.endswith((".dscalar.nii", *OTHER_CIFTI)):
        return "cifti"
    if name.endswith(".tsv"):
        return "table"
    return "nifti"


def map_suffix(kind: str, compressed: bool = False) -> str:
    """Return the suffix of the output maps of a study of images of a kind."""
    return {
        "gifti": ".func.gii",
        "cifti": ".dscalar.nii",
        "table": ".tsv",
        "nifti": ".nii.gz" if compressed else ".nii",
    }[kind]


def map_name(path: Path) -> str:
    """Return a map's name from its file name (``blmm_vox_beta.nii`` is beta)."""
    name = Path(path).name
    for suffix in (".func.gii", ".dscalar.nii", ".nii.gz", ".nii", ".tsv", ".gii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for prefix in ("blmm_vox_", "blmm_"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def image_grid(path: Path) -> tuple[tuple[int, ...], NDArray[np.float64]]:
    """Return (spatial shape, affine) of an image from its header only.

    GIFTI, CIFTI and parcel maps have a grid of one axis (vertices, grayordinates
    or parcels) and the identity as affine.  A single-file NIfTI-1 image (``.nii``,
    ``.nii.gz``) is read as its 348 header bytes, parsed once per distinct header
    (a study's images usually share one), so that checking tens of thousands of
    images takes seconds, not minutes.  Other formats go through ``nibabel.load``.
    """
    import nibabel as nib

    kind = kind_of(path)
    if kind in ("gifti", "cifti"):
        from blmm_scripts import surface_io

        return surface_io.grid(path, kind), np.eye(4)
    if kind == "table":
        from blmm_scripts import table_io

        return (len(table_io.parcel_names(path)),), np.eye(4)
    block = _nifti1_header(Path(path))
    if block is not None:
        shape, affine, layout = _parse_nifti1(block)
        if layout is None:  # a data type that a plain read does not cover
            _check_dtype(nib.load(str(path)).get_data_dtype())
        return shape, affine.copy()
    img = nib.load(str(path))
    _check_dtype(img.get_data_dtype())
    return _spatial(img.shape), np.asarray(img.affine, dtype=np.float64)


def _check_dtype(dtype: np.dtype) -> None:
    """Raise if an image's data type is not real numbers (complex, RGB, ...)."""
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise ImageReadError(
            f"data type {dtype} is not supported (only real numbers: integers, "
            "floats, booleans)"
        )


def _spatial(shape: Sequence[int]) -> tuple[int, ...]:
    """Return a data shape less its trailing singleton axes beyond the third."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


_NIFTI1_SIZE = 348


def _nifti1_header(path: Path) -> bytes | None:
    """Return the header bytes of a single-file NIfTI-1 image, else None."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            block = fh.read(_NIFTI1_SIZE)
    except (OSError, EOFError):
        return None
    if len(block) < _NIFTI1_SIZE or block[344:348] != b"n+1\x00":
        return None
    if _NIFTI1_SIZE not in (
        int.from_bytes(block[:4], "little"),
        int.from_bytes(block[:4], "big"),
    ):
        return None
    return block


def _fortran_index(flat: NDArray[np.intp], shape: tuple[int, ...]) -> NDArray[np.intp]:
    """Return the positions in Fortran (on-disk) order of C-order flat indices."""
    return np.ravel_multi_index(np.unravel_index(flat, shape), shape, order="F")


@functools.lru_cache(maxsize=256)
def _parse_nifti1(block: bytes) -> tuple[tuple[int, ...], NDArray[np.float64], tuple]:
    """Return the spatial shape, affine and data layout of a NIfTI-1 header.

    Shape and affine as ``nibabel.load`` gives them; the layout is (dtype, shape,
    offset, slope, intercept) of the data block, or None where nibabel would read
    it in a way a plain read cannot repeat.
    """
    import nibabel as nib

    endian = "<" if int.from_bytes(block[:4], "little") == _NIFTI1_SIZE else ">"
    header = nib.Nifti1Header(block, endianness=endian, check=True)
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    shape = tuple(int(s) for s in header.get_data_shape())
    layout = None
    dtype = header.get_data_dtype()
    if dtype.fields is None and dtype.kind in "biuf":
        slope, inter = header.get_slope_inter()
        slope = 1.0 if slope is None or not np.isfinite(slope) else float(slope)
        inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
        layout = (dtype, shape, int(header["vox_offset"]), slope, inter)
    return _spatial(shape), affine, layout


def brain_models(path: Path) -> tuple | None:
    """Return a CIFTI file's brain models (comparable with ``==``); None otherwise."""
    if kind_of(path) != "cifti":
        return None
    from blmm_scripts import surface_io

    return surface_io.brain_models(path)


def load_volume(path: Path) -> NDArray[np.float64]:
    """Return the data of one image or map as float64, trailing singleton axes dropped.

    A GIFTI, CIFTI or parcel map is (n,) for one volume and (n, volumes) else.
    """
    import nibabel as nib

    kind = kind_of(path)
    if kind in ("gifti", "cifti"):
        from blmm_scripts import surface_io

        return surface_io.load_map(path, kind)
    if kind == "table":
        from blmm_scripts import table_io

        return table_io.load_map(path)

    data = np.asarray(nib.load(str(path)).get_fdata(dtype=np.float64))
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def load_voxels(
    paths: Sequence[Path],
    voxels: NDArray[np.intp] | None,
    row: Callable[[NDArray[np.float64]], NDArray] | None = None,
) -> NDArray:
    """Return the values of images at some voxels.

    Parameters
    ----------
    paths : sequence of Path, length n_images
    voxels : ndarray of shape (n_voxels,) or None
        Flat C-order voxel indices; None for all voxels.
    row : callable, optional
        Applied to each image's float64 values before they are stored (for
        instance a test giving booleans, stored as one byte per voxel).

    Returns
    -------
    ndarray of shape (n_images, n_voxels)
        float64, or the type `row` returns.
    """
    out = None
    disk_order: dict[tuple[int, ...], NDArray[np.intp]] = {}  # per grid
    for i, path in enumerate(paths):
        try:
            values = _voxel_values(path, voxels, disk_order)
        except MemoryError:
            raise
        except Exception as err:  # any reader's error, re-raised naming the file
            where = Path(path).absolute()
            raise ImageReadError(f"image {where} cannot be read: {err}") from err
        _log_non_finite(path, values)
        values = values if row is None else row(values)
        if out is None:
            out = np.empty((len(paths), values.size), dtype=values.dtype)
        out[i] = values
    return out if out is not None else np.zeros((0, 0))


def _log_non_finite(path: Path, values: NDArray[np.float64]) -> None:
    """Log the NaN and Inf values of an image (they count as missing)."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    n_nan = int(np.isnan(values).sum())
    path = Path(path).absolute()
    logger.info(
        "%s: %d NaN and %d Inf values of %d, taken as missing",
        path,
        n_nan,
        int(bad.sum()) - n_nan,
        values.size,
    )
    if bad.all():
        logger.warning("%s is NaN or Inf at every voxel read: missing everywhere", path)


def _voxel_values(
    path: Path,
    voxels: NDArray[np.intp] | None,
    disk_order: dict[tuple[int, ...], NDArray[np.intp]],
) -> NDArray[np.float64]:
    """Return one image's values at some voxels as float64, as ``load_volume`` would.

    Only the selected voxels are converted (and scaled by the header's slope and
    intercept in float64), not the whole volume.  An uncompressed single-file
    NIfTI-1 image is read as its data block at the offset and in the data type its
    header gives (header parsed by nibabel once per distinct header): three to five
    times faster than ``nibabel.load`` per file, which a batch of thousands of
    images feels.  Everything else goes through nibabel.  ``disk_order`` caches
    the on-disk positions of the voxels per grid.
    """
    import nibabel as nib

    path = Path(path)
    kind = kind_of(path)
    if kind in ("gifti", "cifti"):
        from blmm_scripts import surface_io

        values = surface_io.values(path, kind)
        return values if voxels is None else values[voxels]
    block = _nifti1_header(path) if not path.name.endswith(".gz") else None
    if block is not None:
        try:
            layout = _parse_nifti1(block)[2]
        except Exception:  # nibabel below says what is wrong with the header
            layout = None
        if layout is not None:
            dtype, shape, offset, slope, inter = layout
            count = int(np.prod(shape))
            raw = np.fromfile(path, dtype=dtype, count=count, offset=offset)
            if raw.size < count:
                raise ImageReadError(
                    f"the data block is cut short: {raw.size} of {count} values "
                    "(the file is truncated or was still being written)"
                )
            # on disk the first axis varies fastest; voxels are C-order indices
            if shape not in disk_order:
                flat = np.arange(count) if voxels is None else voxels
                disk_order[shape] = _fortran_index(flat, shape)
            values = raw[disk_order[shape]].astype(np.float64)
            if slope != 1.0 or inter != 0.0:
                values = values * slope + inter
            return values
    img = nib.load(str(path))
    _check_dtype(img.get_data_dtype())
    proxy = img.dataobj
    if not nib.is_proxy(proxy):
        flat = load_volume(path).reshape(-1)
        return flat if voxels is None else flat[voxels]
    raw = np.asarray(proxy.get_unscaled()).reshape(-1)
    raw = raw if voxels is None else raw[voxels]
    values = raw.astype(np.float64)
    slope, inter = float(proxy.slope), float(proxy.inter)
    if slope != 1.0 or inter != 0.0:
        values = values * slope + inter
    return values


def save_map(
    path: Path,
    volumes: NDArray,
    reference: Path,
    names: Sequence[str] | None = None,
) -> None:
    """Write a map in the kind of its reference: NIfTI, GIFTI, CIFTI or a parcel map.

    Parameters
    ----------
    path : Path
        Ends in the kind's suffix (:func:`map_suffix`).
    volumes : ndarray of shape (*grid) or (*grid, n_volumes)
        Its dtype is kept: float32 for statistics, int32 for counts and masks.
    reference : Path
        The first input image (or, for a table study, a parcel map: the parcel
        column).  NIfTI: its affine, qform/sform codes, zooms and units are copied;
        data type, scaling and intent are not.  GIFTI: its file metadata.  CIFTI:
        its brain models.
    names : sequence of str, optional
        The volumes' names (GIFTI ``Name``, CIFTI map names, parcel-map columns);
        by default ``<map>`` for one volume, ``<map>_1``, ``<map>_2``... else.
    """
    import nibabel as nib

    path = Path(path)
    kind = kind_of(reference)
    if kind != "nifti":
        from blmm_scripts import surface_io, table_io

        n_volumes = 1 if np.ndim(volumes) == 1 else int(np.shape(volumes)[1])
        names = list(names or table_io.volume_columns(map_name(path), n_volumes))
        if len(names) != n_volumes:
            raise ValueError(f"{len(names)} names for {n_volumes} volumes of {path}")
        with atomic_path(path) as tmp:
            if kind == "table":
                table_io.save_map(tmp, volumes, reference, names)
            else:
                surface_io.save_map(tmp, volumes, reference, kind, names)
        return
    ref = nib.load(str(reference))
    data = np.ascontiguousarray(volumes)
    dtype = data.dtype
    header = nib.Nifti1Header()
    if isinstance(ref.header, nib.Nifti1Header):
        header.set_qform(ref.header.get_qform(), int(ref.header["qform_code"]))
        header.set_sform(ref.header.get_sform(), int(ref.header["sform_code"]))
        header.set_xyzt_units(*ref.header.get_xyzt_units())
    img = nib.Nifti1Image(data, ref.affine, header=header)
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def save_arrays(path: Path, **arrays: NDArray) -> None:
    """Write arrays to one uncompressed ``.npz`` file (atomically)."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)


def load_arrays(path: Path) -> dict[str, NDArray]:
    """Read every array of an ``.npz`` file into memory."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def save_array(path: Path, array: NDArray) -> None:
    """Write one array as ``.npy`` (readable later with ``mmap_mode``; atomically)."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def open_npy(path: Path) -> NDArray:
    """Return a ``.npy`` array memory-mapped read-only (rows are read on access)."""
    return np.load(path, mmap_mode="r")


def csr_arrays(M: sp.csr_matrix) -> dict[str, NDArray]:
    """Return a boolean sparse matrix (the missing images) as named arrays."""
    import scipy.sparse as sp

    M = sp.csr_matrix(M)
    return {
        "missing_indices": M.indices.astype(np.int64),
        "missing_indptr": M.indptr.astype(np.int64),
        "missing_shape": np.asarray(M.shape),
    }


def csr_from(arrays: dict[str, NDArray]) -> sp.csr_matrix:
    """Inverse of :func:`csr_arrays`."""
    import scipy.sparse as sp

    indices = arrays["missing_indices"]
    return sp.csr_matrix(
        (np.ones(indices.size, dtype=bool), indices, arrays["missing_indptr"]),
        shape=tuple(int(s) for s in arrays["missing_shape"]),
    )


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    """Write a YAML document atomically."""
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_text(path: Path, text: str) -> None:
    """Write a text file (HTML, TSV, a path list) atomically, as UTF-8."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
