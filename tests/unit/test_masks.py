"""Missing data and the rules that keep a voxel (BLMM's, defect 12 fixed)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from blmm_scripts.masks import analysis_voxels, keep_voxels, missing, observed_raneffs
from blmm_scripts.structure import Factor


def test_missing_rules():
    """Missing: data mask 0, below threshold, NaN, or exactly 0."""
    Y = np.array([[1.0, 0.0, np.nan, 0.5, 2.0]])
    M = np.array([[1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(
        missing(Y, M, thresh=0.6), [[False, True, True, True, True]]
    )
    np.testing.assert_array_equal(missing(Y), [[False, True, True, False, False]])


def test_analysis_voxels_nonzero_in_c_order():
    """Non-zero, finite mask voxels in flat C order (BLMM mixed != 0 and == 1)."""
    mask = np.zeros((2, 3))
    mask[0, 2], mask[1, 0], mask[1, 1] = 1, 0.5, np.nan
    np.testing.assert_array_equal(analysis_voxels(mask), [2, 3])
    np.testing.assert_array_equal(analysis_voxels(None, (2, 2)), [0, 1, 2, 3])


def test_observed_raneffs_matches_brute_force(rng):
    """q_v counts q_k for every level with at least one image present."""
    n, levels = 30, 6
    f1 = Factor.from_labels(rng.integers(0, levels, n), np.ones((n, 2)))
    f2 = Factor.from_labels(rng.integers(0, 3, n), np.ones((n, 1)))
    M = rng.random((40, n)) < 0.6
    got = observed_raneffs(sp.csr_matrix(M), [f1, f2])
    for v in range(40):
        present = ~M[v]
        expected = 2 * np.unique(f1.codes[present]).size
        expected += np.unique(f2.codes[present]).size
        assert got[v] == expected


def test_keep_voxels_rules():
    """MinPercent, MinN, n > p and safeMode (n > q_v) each drop voxels."""
    n = np.array([10, 10, 4, 6, 8])
    q_obs = np.array([4, 10, 2, 2, 2])
    keep = keep_voxels(n, 10, 3, q_obs, min_percent=0.5, min_n=7, safe_mode=True)
    np.testing.assert_array_equal(keep, [True, False, False, False, True])
    keep = keep_voxels(n, 10, 3, q_obs, safe_mode=False)
    np.testing.assert_array_equal(keep, [True, True, True, True, True])
