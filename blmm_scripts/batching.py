"""Image batches: their products at every voxel, and their sum per voxel batch.

The batch rule reads a chunk of images and writes that chunk's share of the
sufficient statistics (:func:`batch_products`: X'Y, Z'Y for the columns of Z the
chunk touches, Y'Y, the images present and, as a sparse matrix, the missing ones).
The concat rule sums those shares over every image batch for the voxels of one voxel
batch (:func:`concat_batches`), giving :class:`VoxelStats`, the input of estimate
and inference.  Missing images are zeroed, so the data products need no masking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from blmm_scripts import io, table_io
from blmm_scripts.masks import masked_out, missing
from blmm_scripts.structure import Factor, build_Z

if TYPE_CHECKING:
    import scipy.sparse as sp

logger = logging.getLogger(__name__)

#: The arrays of an image batch, one ``.npy`` file each (so that a concat job
#: memory-maps only its voxels' rows); the missing images go to ``missing.npz``.
BATCH_ARRAYS = ("XtY", "ZtY", "ZtY_columns", "YtY", "n")


@dataclass(frozen=True)
class BatchProducts:
    """Products of one batch of images at every analysis-mask voxel.

    Parameters
    ----------
    XtY : ndarray of shape (n_voxels, p)
    ZtY : ndarray of shape (n_voxels, k)
        Only the k columns of Z that the batch's images touch.
    ZtY_columns : ndarray of shape (k,)
        Their column indices in Z.
    YtY : ndarray of shape (n_voxels,)
    n : ndarray of shape (n_voxels,), int32
        Images of the batch present at each voxel.
    missing : csr_matrix of shape (n_voxels, n_batch_images), bool
        Missing images, listed only for voxels with 0 < n < n_batch_images (a voxel
        with n = 0 misses every image of the batch, one with n = n_batch_images none),
        so that voxels outside the brain cost nothing.
    """

    XtY: NDArray[np.float64]
    ZtY: NDArray[np.float64]
    ZtY_columns: NDArray[np.intp]
    YtY: NDArray[np.float64]
    n: NDArray[np.int32]
    missing: sp.csr_matrix

    def to_arrays(self) -> dict[str, NDArray]:
        """Return the fields as named arrays; ``missing`` as CSR parts."""
        out = {k: getattr(self, k) for k in BATCH_ARRAYS}
        out.update(io.csr_arrays(self.missing))
        return out


def read_batch_data(
    images: Sequence[Path],
    data_masks: Sequence[Path] | None,
    voxels: NDArray[np.intp],
    thresh: float | None,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Return the data (0 where missing) and missingness of images at some voxels.

    Returns
    -------
    Y : ndarray of shape (n_images, n_voxels)
    is_missing : ndarray of shape (n_images, n_voxels), bool
    """
    Y = io.load_voxels(images, voxels)
    is_missing = missing(Y, None, thresh)
    if data_masks is not None:  # read as "the mask says missing", one byte each
        is_missing |= io.load_voxels(data_masks, voxels, row=masked_out)
    Y[is_missing] = 0.0
    logger.info(
        "read %d images (%s data masks) at %d voxels: %d of %d values missing",
        len(images),
        "with" if data_masks is not None else "no",
        Y.shape[1],
        int(is_missing.sum()),
        is_missing.size,
    )
    return Y, is_missing


def read_table_batch(
    values: Path,
    rows: Sequence[int],
    parcels: NDArray[np.intp],
    thresh: float | None,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Return the data (0 where missing) and missingness of a table's rows.

    Parameters
    ----------
    values : Path
        The table's values (``.npy``, rows x parcels, NaN missing).
    rows : sequence of int
        The batch's images' rows in the table.
    parcels : ndarray of shape (n_parcels,)
    thresh : float or None
    """
    Y = table_io.read_rows(values, rows, parcels)
    is_missing = missing(Y, None, thresh, zero_is_missing=False)
    Y[is_missing] = 0.0
    logger.info(
        "read %d table rows at %d parcels: %d of %d values missing",
        len(rows),
        Y.shape[1],
        int(is_missing.sum()),
        is_missing.size,
    )
    return Y, is_missing


def batch_products(
    X: NDArray[np.float64],
    factors: Sequence[Factor],
    rows: tuple[int, int],
    Y: NDArray[np.float64],
    is_missing: NDArray[np.bool_],
) -> BatchProducts:
    """Return the products of one batch of images.

    Parameters
    ----------
    X : ndarray of shape (n_images, p)
        The whole design.
    factors : sequence of Factor
    rows : (start, stop)
        The batch's images, rows start:stop of X.
    Y : ndarray of shape (n_batch_images, n_voxels)
        0 where missing.
    is_missing : ndarray of shape (n_batch_images, n_voxels), bool
    """
    import scipy.sparse as sp

    index = np.arange(*rows)
    if Y.shape[0] != index.size:
        raise ValueError(f"Y has {Y.shape[0]} rows for a batch of {index.size} images")
    Xb = X[index]
    Zb = build_Z(
        [Factor(f.codes[index], f.design[index], f.n_levels, f.name) for f in factors]
    )
    columns = np.flatnonzero(np.any(Zb != 0, axis=0))
    n = (~is_missing).sum(axis=0).astype(np.int32)
    partial = (n > 0) & (n < index.size)
    M = sp.csr_matrix(is_missing.T & partial[:, None])
    return BatchProducts(
        Y.T @ Xb,
        Y.T @ Zb[:, columns],
        columns.astype(np.intp),
        np.einsum("iv,iv->v", Y, Y),
        n,
        M,
    )


# --------------------------------------------------------------------------------
# concat: sufficient statistics of one voxel batch
# --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoxelStats:
    """Sufficient statistics of a batch of voxels (sums over all images).

    Parameters
    ----------
    XtY : ndarray of shape (n_voxels, p)
    ZtY : ndarray of shape (n_voxels, q)
    YtY : ndarray of shape (n_voxels,)
    n : ndarray of shape (n_voxels,), int32
    missing : csr_matrix of shape (n_voxels, n_images), bool
        Missing images of each voxel (all images for a voxel with n = 0).
    """

    XtY: NDArray[np.float64]
    ZtY: NDArray[np.float64]
    YtY: NDArray[np.float64]
    n: NDArray[np.int32]
    missing: sp.csr_matrix

    def to_arrays(self) -> dict[str, NDArray]:
        """Return the fields as named arrays; ``missing`` as CSR parts."""
        out = {k: getattr(self, k) for k in ("XtY", "ZtY", "YtY", "n")}
        out.update(io.csr_arrays(self.missing))
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray]) -> VoxelStats:
        """Inverse of :meth:`to_arrays`."""
        return cls(
            arrays["XtY"],
            arrays["ZtY"],
            arrays["YtY"],
            arrays["n"],
            io.csr_from(arrays),
        )


def voxel_slice(
    arrays: dict[str, NDArray], missing: dict[str, NDArray], start: int, stop: int
) -> BatchProducts:
    """Return the products of one image batch at voxels start:stop only.

    Parameters
    ----------
    arrays : dict of str to ndarray
        The batch's :data:`BATCH_ARRAYS`, possibly memory-mapped.
    missing : dict of str to ndarray
        The CSR parts of the batch's missing images.
    """
    rows = slice(start, stop)
    return BatchProducts(
        np.asarray(arrays["XtY"][rows]),
        np.asarray(arrays["ZtY"][rows]),
        np.asarray(arrays["ZtY_columns"]),
        np.asarray(arrays["YtY"][rows]),
        np.asarray(arrays["n"][rows]),
        io.csr_from(missing)[rows],
    )


def concat_batches(
    parts: Sequence[tuple[tuple[int, int], BatchProducts]],
    n_images: int,
    q: int,
    p: int,
) -> VoxelStats:
    """Sum the batch products of the same voxels into sufficient statistics.

    Parameters
    ----------
    parts : sequence of ((start, stop), BatchProducts)
        Every image batch, its rows into the image list and its products restricted
        to the voxels of this voxel batch (the same voxels in every part).
    n_images : int
    q : int
        Columns of Z.
    p : int
        Columns of X.  Voxels with n <= p images can never be fitted; their
        missing images are not listed (outside the brain that would be every
        image at every voxel), and their rows of ``missing`` are empty.
    """
    import scipy.sparse as sp

    first = parts[0][1]
    n_vox = first.YtY.shape[0]
    n = np.sum([part.n for _, part in parts], axis=0, dtype=np.int32)
    need = n > p
    XtY = np.zeros_like(first.XtY)
    ZtY = np.zeros((n_vox, q))
    YtY = np.zeros(n_vox)
    vox_ids, img_ids = [], []
    for (start, stop), part in parts:
        XtY += part.XtY
        ZtY[:, part.ZtY_columns] += part.ZtY
        YtY += part.YtY
        coo = part.missing.tocoo()
        keep = need[coo.row]
        vox_ids.append(coo.row[keep])
        img_ids.append(coo.col[keep] + start)
        empty = np.flatnonzero((part.n == 0) & need)
        vox_ids.append(np.repeat(empty, stop - start))
        img_ids.append(np.tile(np.arange(start, stop), empty.size))
    rows = np.concatenate(vox_ids).astype(np.intp)
    cols = np.concatenate(img_ids).astype(np.intp)
    M = sp.csr_matrix(
        (np.ones(rows.size, dtype=bool), (rows, cols)), shape=(n_vox, n_images)
    )
    M.sort_indices()
    logger.info(
        "summed %d image batches at %d voxels: %d with every image, %d with some, "
        "%d with none",
        len(parts),
        n_vox,
        int((n == n_images).sum()),
        int(((n > 0) & (n < n_images)).sum()),
        int((n == 0).sum()),
    )
    return VoxelStats(XtY, ZtY, YtY, n, M)
