"""Grouped statistics (one factor, random intercept) against the per-level ones.

The grouped path sums levels of the same size before estimation; the engine then
fits pseudo-levels.  In exact arithmetic both give the same fit, so they must agree
to rounding: 1e-10 relative (measured: 2e-12 at most) for every estimate and
statistic, inner and ring voxels, interior and boundary (d = 0) fits, REML and ML,
the four methods.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from blmm_scripts.batching import batch_products, concat_batches
from blmm_scripts.estimation import METHODS, fit
from blmm_scripts.grouped import (
    applies,
    batch_groups,
    concat_groups,
    image_order,
    max_level_size,
    pseudo_products,
    voxel_slice,
)
from blmm_scripts.inference import infer
from blmm_scripts.masks import observed_raneffs
from blmm_scripts.products import design_products, ring_design_products
from blmm_scripts.structure import Factor, Products, RandomEffects, Status

P = 4
CONTRASTS = [np.array([0.0, 1.0, 0.0, 0.0]), np.eye(P)[1:3]]
STATISTICS = ("covB", "con", "conSE", "conT", "conT_swedf", "conTlp")
F_STATISTICS = ("conF", "conF_swedf", "conFlp", "conR2")


def cohort(seed=1, n_levels=60, n_voxels=12):
    """Return X, the factor, Y (0 where missing) and missingness.

    Levels of 1, 2 and 3 images, images in random order; voxels 0-3 have every
    image, the others miss about 10%; the last two have no level effect, so their
    fits lie on the boundary (d = 0).
    """
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 2, 3], size=n_levels, p=[0.5, 0.35, 0.15])
    codes = rng.permutation(np.repeat(np.arange(n_levels), sizes))
    n = codes.size
    X = np.column_stack([np.ones(n), rng.normal(size=(n, P - 1))])
    factor = Factor.from_labels(codes, np.ones((n, 1)), "subject")
    effect = rng.normal(size=(n_levels, n_voxels))
    effect[:, -2:] = 0.0
    Y = X @ rng.normal(size=(P, n_voxels)) + effect[factor.codes]
    Y += rng.normal(size=(n, n_voxels)) + 10.0
    missing = rng.random((n, n_voxels)) < 0.1
    missing[:, :4] = False
    Y[missing] = 0.0
    return X, factor, Y, missing


def whole_level_batches(factor, size):
    """Return image batches of about `size` images, in level order, whole levels."""
    order = image_order(factor)
    levels = factor.codes[order]
    cuts = [0]
    for i in range(1, order.size):
        if i - cuts[-1] >= size and levels[i] != levels[i - 1]:
            cuts.append(i)
    cuts.append(order.size)
    return [order[a:b] for a, b in pairwise(cuts)]


def grouped_stats(X, factor, Y, missing, size=25):
    """Return the grouped statistics summed over batches of whole levels."""
    G = max_level_size(factor)
    parts = [
        batch_groups(X, factor, idx, Y[idx], missing[idx], G)
        for idx in whole_level_batches(factor, size)
    ]
    return concat_groups(parts, X.shape[0], X.shape[1])


def per_level(X, factor, Y, missing, idx, ring):
    """Return the per-level products of voxels idx."""
    n = X.shape[0]
    re = RandomEffects.of([factor])
    stats = concat_batches(
        [((0, n), batch_products(X, [factor], (0, n), Y, missing))], n, re.q, P
    )
    if ring:
        XtX, ZtX, ZtZ = ring_design_products(X, [factor], stats.missing[idx])
    else:
        XtX, ZtX, ZtZ = design_products(X, [factor])
    products = Products(
        XtX, ZtX, ZtZ, stats.XtY[idx], stats.ZtY[idx], stats.YtY[idx],
        stats.n[idx].astype(np.float64),
    )  # fmt: skip
    return products, re


@pytest.fixture(scope="module")
def study():
    """Return the cohort and its grouped statistics."""
    X, factor, Y, missing = cohort()
    return X, factor, Y, missing, grouped_stats(X, factor, Y, missing)


@pytest.mark.parametrize("ring", [False, True], ids=["inner", "ring"])
@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("method", METHODS)
def test_grouped_fit_equals_per_level(study, method, reml, ring):
    X, factor, Y, missing, stats = study
    idx = np.flatnonzero(stats.n < X.shape[0] if ring else stats.n == X.shape[0])
    assert idx.size >= 4
    levels, re = per_level(X, factor, Y, missing, idx, ring)
    pseudo, re_g = pseudo_products(stats, idx, ring)
    assert re_g.q < re.q  # fewer pseudo-levels than levels
    want = fit(levels, re, method=method, reml=reml)
    got = fit(pseudo, re_g, method=method, reml=reml)
    assert np.all(want.status == Status.OK) and np.all(got.status == Status.OK)
    if ring:  # the boundary voxels (no level effect) are ring voxels here
        assert np.any(want.D[0][:, 0, 0] == 0) and np.any(want.D[0][:, 0, 0] > 0)
    for name in ("beta", "sigma2", "llh"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(want, name), rtol=1e-10, err_msg=name
        )
    # D may be exactly 0 (boundary): relative to its scale, sigma2 * D ~ 1.
    np.testing.assert_allclose(got.D[0], want.D[0], rtol=1e-10, atol=1e-12)
    inf_want = infer(levels, re, want, CONTRASTS)
    inf_got = infer(pseudo, re_g, got, CONTRASTS)
    for name in STATISTICS + F_STATISTICS:
        np.testing.assert_allclose(
            getattr(inf_got, name),
            getattr(inf_want, name),
            rtol=1e-10,
            atol=1e-12,
            err_msg=name,
        )


def test_batches_of_whole_levels_sum_to_one_batch(study):
    """Summing over several batches of whole levels equals one batch of all."""
    X, factor, Y, missing, stats = study
    one = grouped_stats(X, factor, Y, missing, size=X.shape[0])
    for name in ("n", "m", "m_full", "ring"):
        np.testing.assert_array_equal(getattr(stats, name), getattr(one, name))
    for name in ("XtY", "YtY", "b", "c", "A", "XtX", "A_ring", "XtX_ring"):
        np.testing.assert_allclose(
            getattr(stats, name), getattr(one, name), rtol=1e-12, err_msg=name
        )


def test_voxel_slices_sum_to_the_whole(study):
    """Concat of a voxel range equals that range of the whole concat."""
    X, factor, Y, missing, stats = study
    G = max_level_size(factor)
    parts = [
        batch_groups(X, factor, idx, Y[idx], missing[idx], G)
        for idx in whole_level_batches(factor, 25)
    ]
    piece = concat_groups([voxel_slice(q, 5, 11) for q in parts], *X.shape)
    np.testing.assert_allclose(piece.b, stats.b[5:11], rtol=1e-12)
    keep = (stats.ring >= 5) & (stats.ring < 11)
    np.testing.assert_array_equal(piece.ring, stats.ring[keep] - 5)
    np.testing.assert_allclose(piece.A_ring, stats.A_ring[keep], rtol=1e-12)


def test_observed_levels_equal_the_per_level_count(study):
    X, factor, Y, missing, stats = study
    n = X.shape[0]
    re = RandomEffects.of([factor])
    per = concat_batches(
        [((0, n), batch_products(X, [factor], (0, n), Y, missing))], n, re.q, P
    )
    fitted = stats.n > P
    np.testing.assert_array_equal(
        stats.observed_levels()[fitted], observed_raneffs(per.missing, [factor])[fitted]
    )


def test_a_batch_must_hold_whole_levels(study):
    X, factor, Y, missing, _ = study
    order = image_order(factor)
    levels = factor.codes[order]
    cut = int(np.flatnonzero(levels[1:] == levels[:-1])[0]) + 1  # inside a level
    idx = order[:cut]
    with pytest.raises(ValueError, match="part of a level"):
        batch_groups(X, factor, idx, Y[idx], missing[idx], max_level_size(factor))


def test_applies_to_one_random_intercept_only():
    codes = np.repeat(np.arange(5), 2)
    ones, t = np.ones((10, 1)), np.arange(10.0)[:, None]
    assert applies([Factor.from_labels(codes, ones)])
    assert not applies([Factor.from_labels(codes, np.hstack([ones, t]))])
    assert not applies([Factor.from_labels(codes, t)])
    assert not applies([Factor.from_labels(codes, ones)] * 2)


def test_an_intercept_of_another_value_groups_too():
    """A random-effect covariate of one constant value c != 1 (Z_j'Z_j = c² n_j)."""
    X, factor, Y, missing = cohort(seed=4)
    factor = Factor(factor.codes, 2.0 * factor.design, factor.n_levels, "subject")
    assert applies([factor])
    stats = grouped_stats(X, factor, Y, missing)
    idx = np.flatnonzero(stats.n < X.shape[0])
    levels, re = per_level(X, factor, Y, missing, idx, True)
    pseudo, re_g = pseudo_products(stats, idx, True, z=2.0)
    want, got = fit(levels, re), fit(pseudo, re_g)
    np.testing.assert_allclose(got.llh, want.llh, rtol=1e-10)
    np.testing.assert_allclose(got.D[0], want.D[0], rtol=1e-10, atol=1e-12)
