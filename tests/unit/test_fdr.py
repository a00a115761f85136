"""Benjamini–Hochberg -log10 q maps agree with scipy's and statsmodels' BH."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from blmm_scripts.fdr import bh_neg_log10_q, fdr_map


def _mixed_pvalues(rng, m):
    """Null uniform p-values plus a block of signals, with ties."""
    p = rng.uniform(size=m)
    p[: m // 5] = rng.uniform(0, 1e-4, size=m // 5)
    p[m // 5 : m // 5 + 10] = p[m // 5]  # ties
    return p


@pytest.mark.parametrize("m", [1, 2, 37, 1000])
def test_matches_scipy(rng, m):
    """-log10 q equals -log10 of scipy.stats.false_discovery_control(p, 'bh')."""
    p = _mixed_pvalues(rng, m) if m > 20 else rng.uniform(size=m)
    expected = -np.log10(stats.false_discovery_control(p, method="bh"))
    # Only rounding of log10 separates the two: rtol 1e-12.
    np.testing.assert_allclose(
        bh_neg_log10_q(-np.log10(p)), expected, rtol=1e-12, atol=1e-14
    )


def test_matches_statsmodels(rng):
    """-log10 q equals statsmodels' multipletests(method='fdr_bh') q-values."""
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    p = _mixed_pvalues(rng, 500)
    q = multipletests(p, method="fdr_bh")[1]
    np.testing.assert_allclose(bh_neg_log10_q(-np.log10(p)), -np.log10(q), rtol=1e-12)


def test_finite_where_p_underflows():
    """p-values far below the smallest double give finite, exact -log10 q."""
    lp = np.array([1000.0, 400.0, 2.0, 0.1])  # p = 1e-1000 cannot be a double
    m = lp.size
    # Sorted ascending p: q_(i) = min_{j>=i} m p_(j) / j, all monotone here.
    expected = np.maximum(lp - np.log10(m) + np.log10([1, 2, 3, 4]), 0)
    np.testing.assert_allclose(bh_neg_log10_q(lp), expected, rtol=1e-14)


def test_map_over_mask_only(rng):
    """Each volume is corrected over the mask voxels alone; 0 outside the mask."""
    grid = (4, 5, 3)
    mask = rng.uniform(size=grid) > 0.4
    lp = -np.log10(rng.uniform(size=(*grid, 2)))
    lp[~mask] = 50.0  # outside values must not count as tests
    q = fdr_map(lp, mask.astype(np.int32))
    assert np.all(q[~mask] == 0)
    for k in range(2):
        expected = -np.log10(stats.false_discovery_control(10 ** -lp[..., k][mask]))
        np.testing.assert_allclose(q[..., k][mask], expected, rtol=1e-10)


def test_map_3d_and_shape_check(rng):
    """A 3-D map is one volume; a map that does not fit the mask is refused."""
    mask = np.ones((3, 3, 3), bool)
    lp = -np.log10(rng.uniform(size=(3, 3, 3)))
    np.testing.assert_allclose(fdr_map(lp, mask).ravel(), bh_neg_log10_q(lp.ravel()))
    with pytest.raises(ValueError, match="does not match"):
        fdr_map(lp, np.ones((3, 3, 2)))


def test_nan_voxels_left_out(rng):
    """NaN -log10 p voxels are not tests: m counts the others; NaN q, a warning."""
    mask = np.ones((4, 4, 2), bool)
    lp = -np.log10(rng.uniform(size=mask.shape))
    lp[0, 0, 0] = np.nan
    with pytest.warns(RuntimeWarning, match="1 of 32 mask voxels"):
        q = fdr_map(lp, mask)
    assert np.isnan(q[0, 0, 0])
    ok = ~np.isnan(lp)
    expected = -np.log10(stats.false_discovery_control(10 ** -lp[ok]))
    np.testing.assert_allclose(q[ok], expected, rtol=1e-10)
