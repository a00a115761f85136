"""GIFTI surface data and CIFTI-2 dense scalars: one map per input, maps out alike.

A surface study lists one ``.func.gii`` / ``.shape.gii`` file (one data array of
n vertices) or one ``.dscalar.nii`` file (one map of n grayordinates) per image.
The grid of such a study is one axis of n vertices or grayordinates; an output map
has one data array (GIFTI) or one named map (CIFTI) per volume, in BLMM's volume
order, with the first input's metadata (GIFTI) or brain models (CIFTI).

Only :mod:`blmm_scripts.io` calls this module; it picks the format by file name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

#: Data array intents that hold a mesh, not values.
_MESH_INTENTS = ("NIFTI_INTENT_POINTSET", "NIFTI_INTENT_TRIANGLE")
#: CIFTI-2 file types other than dense scalars, which BLMM does not read.
OTHER_CIFTI = (".dtseries.nii", ".dlabel.nii", ".pscalar.nii", ".ptseries.nii")


def _load(path: Path):
    """Return nibabel's image of a GIFTI or CIFTI file."""
    import nibabel as nib

    return nib.load(str(path))


def _real(dtype: np.dtype) -> None:
    """Raise if a data type is not real numbers."""
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise ValueError(f"data type {dtype} is not supported (only real numbers)")


def gifti_array(path: Path) -> NDArray:
    """Return the one data array of a GIFTI data file, as stored (shape (n,)).

    Raises
    ------
    ValueError
        If the file holds a mesh, several data arrays, or not one value per vertex.
    """
    img = _load(path)
    arrays = getattr(img, "darrays", None)
    if arrays is None:
        raise ValueError("is not a GIFTI file")
    if len(arrays) != 1:
        raise ValueError(
            f"has {len(arrays)} data arrays; BLMM reads one map per file (split it "
            "into one file per image)"
        )
    array = arrays[0]
    intent = nib_intent(array)
    if intent in _MESH_INTENTS:
        raise ValueError(
            f"is a surface mesh ({intent}), not data (give a mesh as surface_mesh)"
        )
    data = np.asarray(array.data)
    if data.ndim == 2 and 1 in data.shape:
        data = data.reshape(-1)
    if data.ndim != 1:
        raise ValueError(f"its data array has shape {data.shape}, not one value each")
    _real(data.dtype)
    return data


def nib_intent(array) -> str:
    """Return a GIFTI data array's intent as nibabel names it."""
    import nibabel as nib

    return nib.nifti1.intent_codes.niistring[array.intent]


def _check_dense_scalar_name(path: Path) -> None:
    """Raise if a CIFTI file's name says it is not dense scalars."""
    if Path(path).name.lower().endswith(OTHER_CIFTI):
        raise ValueError(
            "is a CIFTI-2 file of another type; BLMM reads dense scalars "
            "(.dscalar.nii), one map per file"
        )


def cifti_image(path: Path, one_map: bool = True):
    """Return a CIFTI-2 dense scalar image (of one map) (header read, data lazy).

    Raises
    ------
    ValueError
        If the file is another CIFTI type or holds several maps.
    """
    import nibabel as nib

    _check_dense_scalar_name(path)
    img = _load(path)
    if not isinstance(img, nib.Cifti2Image):
        raise ValueError("is not a CIFTI-2 file")
    rows, columns = img.header.get_axis(0), img.header.get_axis(1)
    if not isinstance(rows, nib.cifti2.ScalarAxis) or not isinstance(
        columns, nib.cifti2.BrainModelAxis
    ):
        raise ValueError("is not a dense scalar file (scalars x brain models)")
    if one_map and len(rows) != 1:
        raise ValueError(
            f"has {len(rows)} maps; BLMM reads one map per file (split it into one "
            "file per image)"
        )
    _real(img.get_data_dtype())
    return img


@dataclass(frozen=True)
class _CiftiLayout:
    """What files of one CIFTI header (map names aside) share: read once."""

    n_maps: int
    n: int
    models: tuple
    dtype: np.dtype
    slope: float
    inter: float


#: Layouts by header (the NIfTI-2 header's shape, type and scaling, and the CIFTI
#: XML without its map names): a study's files share one, so the brain models'
#: XML, 20 ms a file of 10,000 grayordinates in nibabel, is parsed once.
_LAYOUTS: dict[bytes, _CiftiLayout] = {}
_NIFTI2_SIZE = 540
_MAP_NAMES = re.compile(rb"<NamedMap>.*?</NamedMap>", re.DOTALL)


def _cifti_header(path: Path) -> tuple[bytes, int] | None:
    """Return (layout key, data offset) of an uncompressed little-endian CIFTI file.

    None for anything else (nibabel reads it then).
    """
    import nibabel as nib

    with Path(path).open("rb") as fh:
        head = fh.read(_NIFTI2_SIZE)
        if (
            len(head) < _NIFTI2_SIZE
            or int.from_bytes(head[:4], "little") != _NIFTI2_SIZE
            or head[4:8] != b"n+2\x00"
        ):
            return None
        header = nib.Nifti2Header(head, check=False)
        offset = int(header["vox_offset"])
        extension = fh.read(max(offset - _NIFTI2_SIZE, 0))
    if b"<CIFTI" not in extension:
        return None
    fields = (
        header.get_data_shape(),
        header.get_data_dtype().str,
        header.get_slope_inter(),
    )
    return repr(fields).encode() + _MAP_NAMES.sub(b"", extension), offset


def _cifti_layout(path: Path) -> tuple[_CiftiLayout, int | None]:
    """Return the layout of a CIFTI dense scalar file and its data offset.

    The offset is None where the data must be read by nibabel (compressed or
    big-endian files).
    """
    _check_dense_scalar_name(path)
    found = _cifti_header(path)
    if found is not None and found[0] in _LAYOUTS:
        return _LAYOUTS[found[0]], found[1]
    img = cifti_image(path, one_map=False)
    bm = img.header.get_axis(1)
    slope, inter = img.nifti_header.get_slope_inter()
    layout = _CiftiLayout(
        n_maps=int(img.shape[0]),
        n=int(img.shape[1]),
        models=(  # compares with ==: structures, vertices, voxels, space
            tuple(bm.name),
            bm.vertex.tobytes(),
            bm.voxel.tobytes(),
            tuple(sorted(bm.nvertices.items())),
            None if bm.affine is None else np.asarray(bm.affine).tobytes(),
            bm.volume_shape,
        ),
        dtype=img.get_data_dtype(),
        slope=1.0 if slope is None or not np.isfinite(slope) else float(slope),
        inter=0.0 if inter is None or not np.isfinite(inter) else float(inter),
    )
    if found is None:
        return layout, None
    _LAYOUTS[found[0]] = layout
    return layout, found[1]


def grid(path: Path, kind: str) -> tuple[int, ...]:
    """Return the grid of a GIFTI or CIFTI file: (vertices,) or (grayordinates,).

    Raises
    ------
    ValueError
        If the file is not one map of the kind (see :func:`gifti_array`,
        :func:`cifti_image`).
    """
    if kind == "gifti":
        return (int(gifti_array(path).size),)
    layout, _ = _cifti_layout(path)
    if layout.n_maps != 1:
        cifti_image(path)  # raises, saying why
    return (layout.n,)


def brain_models(path: Path) -> tuple:
    """Return a CIFTI file's brain models in a form that compares with ``==``."""
    return _cifti_layout(path)[0].models


def mesh_vertices(path: Path) -> int:
    """Return the number of vertices of a GIFTI surface mesh.

    Raises
    ------
    ValueError
        If the file has no point set and triangles.
    """
    img = _load(path)
    intents = [nib_intent(a) for a in getattr(img, "darrays", [])]
    if set(_MESH_INTENTS) - set(intents):
        raise ValueError("is not a GIFTI surface mesh (a point set and triangles)")
    return len(img.darrays[intents.index("NIFTI_INTENT_POINTSET")].data)


def mesh_sizes(reference: Path, kind: str) -> list[tuple[str, int]]:
    """Return the (name, vertices) of the meshes surface data of a kind is drawn on.

    GIFTI: its own surface.  CIFTI: CortexLeft then CortexRight, those it has.
    """
    if kind == "gifti":
        return [("the images' surface", grid(reference, kind)[0])]
    models = cifti_image(reference).header.get_axis(1)
    return [
        (name.removeprefix("CIFTI_STRUCTURE_").lower(), models.nvertices[name])
        for name in ("CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT")
        if name in models.nvertices
    ]


def values(path: Path, kind: str) -> NDArray[np.float64]:
    """Return the values of one GIFTI or CIFTI data file as float64, shape (n,).

    A CIFTI file whose header the study has seen is read as its data block.
    """
    if kind == "gifti":
        return gifti_array(path).astype(np.float64)
    layout, offset = _cifti_layout(path)
    if layout.n_maps != 1:
        cifti_image(path)  # raises, saying why
    if offset is None:
        return np.asarray(cifti_image(path).get_fdata(dtype=np.float64)).reshape(-1)
    raw = np.fromfile(path, dtype=layout.dtype, count=layout.n, offset=offset)
    if raw.size < layout.n:
        raise ValueError(
            f"the data block is cut short: {raw.size} of {layout.n} values (the "
            "file is truncated or was still being written)"
        )
    out = raw.astype(np.float64)
    if layout.slope != 1.0 or layout.inter != 0.0:
        out = out * layout.slope + layout.inter
    return out


def load_map(path: Path, kind: str) -> NDArray[np.float64]:
    """Return a map of any number of volumes: (n,) for one, else (n, volumes)."""
    img = _load(path)
    if kind == "gifti":
        data = np.stack([np.asarray(a.data, np.float64) for a in img.darrays], axis=1)
    else:
        data = np.asarray(img.get_fdata(dtype=np.float64)).T
    return data[:, 0] if data.shape[1] == 1 else data


def volume_names(path: Path, kind: str) -> list[str]:
    """Return the names of a map's volumes (GIFTI ``Name``s, CIFTI map names)."""
    img = _load(path)
    if kind == "gifti":
        return [a.meta.get("Name", "") for a in img.darrays]
    return list(img.header.get_axis(0).name)


def save_map(
    path: Path, volumes: NDArray, reference: Path, kind: str, names: Sequence[str]
) -> None:
    """Write a map of the same kind as the reference (a study's first input).

    Parameters
    ----------
    path : Path
        A temporary path (the caller renames it).
    volumes : ndarray of shape (n,) or (n, n_volumes)
        float32 or int32, kept.
    reference : Path
        GIFTI: its file metadata is copied (structure, ...). CIFTI: its brain
        models are the output's columns.
    kind : {"gifti", "cifti"}
    names : sequence of str
        One per volume: GIFTI ``Name`` metadata, CIFTI map names.
    """
    import nibabel as nib

    data = np.asarray(volumes)
    data = data[:, None] if data.ndim == 1 else data
    ref = _load(reference)
    if kind == "gifti":
        datatype = "NIFTI_TYPE_" + ("INT32" if data.dtype == np.int32 else "FLOAT32")
        img = nib.gifti.GiftiImage(meta=nib.gifti.GiftiMetaData(dict(ref.meta)))
        for k, name in enumerate(names):
            img.add_gifti_data_array(
                nib.gifti.GiftiDataArray(
                    np.ascontiguousarray(data[:, k]),
                    intent="NIFTI_INTENT_NONE",
                    datatype=datatype,
                    meta={"Name": name},
                )
            )
    else:
        axes = (nib.cifti2.ScalarAxis(list(names)), ref.header.get_axis(1))
        img = nib.Cifti2Image(np.ascontiguousarray(data.T), header=axes)
        img.nifti_header.set_intent("NIFTI_INTENT_CONNECTIVITY_DENSE_SCALARS")
    nib.save(img, str(path))
