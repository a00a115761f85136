"""Missing data and the analysis mask, as BLMM defines them (with its defects fixed).

An image is *missing* at a voxel when its data mask is zero (or not finite) there,
its value is below ``data_mask_thresh``, NaN, or exactly 0.  Unlike BLMM, data masks
select voxels and never rescale the data (BLMM multiplied them in).

A voxel of the analysis mask (non-zero and finite there; BLMM mixed ``!= 0`` and
``== 1``) is *kept* for estimation when, with n_v images present:

* n_v >= MinPercent * n and n_v >= MinN (when given);
* n_v > p (so the naive degrees of freedom n_v - p are positive);
* with safeMode, n_v > q_v, where q_v counts the random effects of the factor levels
  observed at the voxel.  BLMM compared n_v with the total q over all levels, which
  drops every voxel of a longitudinal study with a random slope (defect 12).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from blmm_scripts.structure import Factor

if TYPE_CHECKING:
    import scipy.sparse as sp


def analysis_voxels(
    mask: NDArray[np.float64] | None, shape: tuple[int, ...] = ()
) -> NDArray[np.intp]:
    """Return the flat C-order indices of the analysis-mask voxels.

    Parameters
    ----------
    mask : ndarray of the image grid, or None
        Non-zero and finite inside the mask; None means every voxel of ``shape``.
    shape : tuple of int
        The grid, used when ``mask`` is None.
    """
    if mask is None:
        return np.arange(int(np.prod(shape)), dtype=np.intp)
    flat = np.asarray(mask).reshape(-1)
    return np.flatnonzero(np.isfinite(flat) & (flat != 0)).astype(np.intp)


def missing(
    Y: NDArray[np.float64],
    data_mask: NDArray[np.float64] | None = None,
    thresh: float | None = None,
    zero_is_missing: bool = True,
) -> NDArray[np.bool_]:
    """Return where images are missing.

    In a table of parcel values (key ``Y_table``) 0 is a value: only empty cells
    (NaN) and values below ``thresh`` are missing (``zero_is_missing=False``).

    Parameters
    ----------
    Y : ndarray of shape (n_images, n_voxels)
    data_mask : ndarray of shape (n_images, n_voxels) or None
    thresh : float or None
        Values strictly below it are missing.

    Returns
    -------
    ndarray of shape (n_images, n_voxels), dtype bool
        True where image i has no data at voxel v.
    """
    out = ~np.isfinite(Y)
    if zero_is_missing:
        out |= Y == 0
    if data_mask is not None:
        out |= masked_out(data_mask)
    if thresh is not None:
        with np.errstate(invalid="ignore"):
            out |= thresh > Y
    return out


def masked_out(data_mask: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Return where a data mask says missing: zero or not finite."""
    return ~np.isfinite(data_mask) | (data_mask == 0)


def observed_raneffs(
    missing_images: sp.csr_matrix, factors: list[Factor] | tuple[Factor, ...]
) -> NDArray[np.int64]:
    """Return the number of random effects of the levels observed at each voxel.

    Parameters
    ----------
    missing_images : csr_matrix of shape (n_voxels, n_images), bool
        True where an image is missing at a voxel.
    factors : list of Factor

    Returns
    -------
    ndarray of shape (n_voxels,)
        q_v = sum_k q_k * (number of levels of factor k with an image present).
    """
    import scipy.sparse as sp

    n_voxels = missing_images.shape[0]
    q_obs = np.zeros(n_voxels, dtype=np.int64)
    M = sp.csr_matrix(missing_images, dtype=np.int64)
    for f in factors:
        onehot = sp.csr_matrix(
            (np.ones(f.codes.size, dtype=np.int64), (np.arange(f.codes.size), f.codes)),
            shape=(f.codes.size, f.n_levels),
        )
        per_level = np.bincount(f.codes, minlength=f.n_levels)
        counts = sp.coo_matrix(M @ onehot)  # missing images per (voxel, level)
        gone = counts.data == per_level[counts.col]  # level with no image left
        n_gone = np.bincount(counts.row[gone], minlength=n_voxels)
        q_obs += f.n_raneffs * (f.n_levels - n_gone)
    return q_obs


def keep_voxels(
    n: NDArray[np.int64],
    n_images: int,
    p: int,
    q_obs: NDArray[np.int64],
    *,
    min_percent: float | None = None,
    min_n: float | None = None,
    safe_mode: bool = True,
) -> NDArray[np.bool_]:
    """Return which voxels pass the missingness rules (see module docstring).

    Parameters
    ----------
    n : ndarray of shape (n_voxels,)
        Images present at each voxel.
    n_images : int
    p : int
    q_obs : ndarray of shape (n_voxels,)
        Random effects of the observed levels (:func:`observed_raneffs`).
    """
    keep = n > p
    if min_percent is not None:
        keep &= n >= min_percent * n_images
    if min_n is not None:
        keep &= n >= min_n
    if safe_mode:
        keep &= n > q_obs
    return keep
