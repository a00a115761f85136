"""Estimate and inference of a voxel batch: the order of the factors does not matter.

The engine takes the largest factor first (its bordered layout, never a dense q x q);
a config listing a small factor first runs the same arithmetic, so it must give the
same fit to the last bit or so (1e-12), with D in the config's order.
"""

from __future__ import annotations

import numpy as np

from blmm_scripts.batching import batch_products, concat_batches
from blmm_scripts.config import Contrast
from blmm_scripts.structure import Factor, RandomEffects, largest_first
from blmm_scripts.voxelwise import (
    MissingnessRules,
    engine_effects,
    estimate_voxels,
    infer_voxels,
)


def crossed(seed=2, n_sub=30, n_site=4, visits=3, n_voxels=8):
    """Return X, subject and site factors, Y (0 where missing), missingness."""
    rng = np.random.default_rng(seed)
    n = n_sub * visits
    subject = np.repeat(np.arange(n_sub), visits)
    site = rng.integers(0, n_site, n)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    Y = X @ rng.normal(size=(3, n_voxels)) + 10.0
    Y += rng.normal(size=(n_sub, n_voxels))[subject]
    Y += 0.7 * rng.normal(size=(n_site, n_voxels))[site]
    Y += rng.normal(size=(n, n_voxels))
    missing = rng.random((n, n_voxels)) < 0.08
    missing[:, :3] = False
    Y[missing] = 0.0
    ones = np.ones((n, 1))
    return (
        X,
        Factor.from_labels(subject, ones, "subject"),
        Factor.from_labels(site, ones, "site"),
        Y,
        missing,
    )


def fit_all(X, factors, Y, missing):
    """Return the fit and statistics of every voxel, factors in the given order."""
    n = X.shape[0]
    q = RandomEffects.of(factors).q
    part = batch_products(X, factors, (0, n), Y, missing)
    stats = concat_batches([((0, n), part)], n, q, X.shape[1])
    rules = MissingnessRules(safe_mode=False)
    fitted = estimate_voxels(stats, X, factors, rules, tol=1e-8)
    contrasts = [
        Contrast("x1", np.array([0.0, 1.0, 0.0])),
        Contrast("F", np.eye(3)[1:]),
    ]
    return fitted, infer_voxels(stats, X, factors, fitted, contrasts), stats


def test_engine_takes_the_largest_factor_first():
    _, subject, site, _, _ = crossed()
    assert largest_first([site, subject]) == (1, 0)
    assert largest_first([subject, site]) == (0, 1)


def test_factor_order_does_not_change_the_fit():
    X, subject, site, Y, missing = crossed()
    want_fit, want_stats, stats = fit_all(X, [subject, site], Y, missing)
    got_fit, got_stats, _ = fit_all(X, [site, subject], Y, missing)
    assert engine_effects(stats, [site, subject], 3).bordered
    assert np.all(want_fit.status == 1)
    for name in ("beta", "sigma2", "llh"):
        np.testing.assert_allclose(
            getattr(got_fit, name), getattr(want_fit, name), rtol=1e-12, err_msg=name
        )
    # D in the config's order: site first here
    np.testing.assert_allclose(got_fit.D[0], want_fit.D[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_fit.D[1], want_fit.D[0], rtol=1e-12, atol=1e-14)
    for name, value in want_stats.items():
        np.testing.assert_allclose(
            got_stats[name], value, rtol=1e-12, atol=1e-14, err_msg=name
        )
