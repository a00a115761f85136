r"""Benjamini–Hochberg false discovery rate over the analysis mask, in log space.

For m p-values sorted ascending, p_(1) <= ... <= p_(m), the BH adjusted p-value
(q-value) is q_(i) = min_{j >= i} min(1, m p_(j) / j) (Benjamini & Hochberg 1995;
the same numbers as ``scipy.stats.false_discovery_control(p, method="bh")``).  A
voxel is declared active at FDR level alpha when q <= alpha.

The maps hold -log10 p, which stays finite where p underflows; so does this
module: with lp = -log10 p,

    -log10 q_(i) = max(0, max_{j >= i} (lp_(j) - log10 m + log10 j)).
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray


def bh_neg_log10_q(lp: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return -log10 q (Benjamini–Hochberg) of a set of -log10 p values.

    Parameters
    ----------
    lp : ndarray of shape (m,)
        -log10 p of the m tests (finite, >= 0).

    Returns
    -------
    ndarray of shape (m,)
        -log10 q, in the input order.
    """
    lp = np.asarray(lp, dtype=np.float64)
    if lp.ndim != 1:
        raise ValueError(f"expected a 1-D array of -log10 p, got shape {lp.shape}")
    if not np.isfinite(lp).all():
        raise ValueError("-log10 p values must be finite")
    m = lp.size
    if m == 0:
        return lp.copy()
    order = np.argsort(-lp, kind="stable")  # smallest p first
    rank = np.arange(1, m + 1)
    adjusted = lp[order] - np.log10(m) + np.log10(rank)
    # min over j >= i of q is max over j >= i of -log10 q: a reversed running max.
    adjusted = np.maximum.accumulate(adjusted[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.maximum(adjusted, 0.0)
    return out


def fdr_map(lp_map: NDArray[np.float64], mask: NDArray) -> NDArray[np.float64]:
    """Return -log10 q maps, BH over the voxels of the mask, one volume at a time.

    Parameters
    ----------
    lp_map : ndarray of shape (*grid) or (*grid, n_volumes)
        -log10 p map(s), e.g. blmm_vox_conTlp (one volume per contrast).
    mask : ndarray of shape (*grid)
        Non-zero where voxels were analysed (blmm_vox_mask); the number of tests m
        is the number of mask voxels.

    Returns
    -------
    ndarray of lp_map's shape
        -log10 q inside the mask, 0 outside.  A mask voxel whose -log10 p is NaN
        (no valid test there) is not counted among the m tests and gets NaN; a
        warning says how many.
    """
    lp_map = np.asarray(lp_map, dtype=np.float64)
    inside = np.asarray(mask) != 0
    if lp_map.shape[: inside.ndim] != inside.shape:
        raise ValueError(
            f"map of shape {lp_map.shape} does not match the mask's {inside.shape}"
        )
    volumes = lp_map[..., None] if lp_map.ndim == inside.ndim else lp_map
    out = np.zeros_like(volumes)
    for k in range(volumes.shape[-1]):
        lp = volumes[..., k][inside]
        valid = ~np.isnan(lp)
        if not valid.all():
            warnings.warn(
                f"volume {k}: {int((~valid).sum())} of {lp.size} mask voxels have "
                "NaN -log10 p; left out of the FDR correction (NaN in the q map)",
                RuntimeWarning,
                stacklevel=2,
            )
        q = np.full(lp.shape, np.nan)
        q[valid] = bh_neg_log10_q(lp[valid])
        out[..., k][inside] = q
    return out[..., 0] if lp_map.ndim == inside.ndim else out
