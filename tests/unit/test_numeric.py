"""Numerical robustness of the engine (estimation.fit, inference.infer).

Rescaled images give scaled β and unchanged D and T; voxels the model cannot be
fitted at get a status code, never an exception.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from blmm_scripts.estimation import fit
from blmm_scripts.inference import infer
from blmm_scripts.products import design_products, ring_design_products
from blmm_scripts.structure import (
    Factor,
    Products,
    RandomEffects,
    Status,
    build_Z,
    is_fitted,
)

T_CONTRAST = np.array([0.0, 1.0, 0.0])
F_CONTRAST = np.eye(3)[1:]


def study(rng, n_sub=20, visits=3, n_voxels=8):
    """Return X (n, 3), one subject factor (random intercept) and Y (n, v)."""
    n = n_sub * visits
    subject = np.repeat(np.arange(n_sub), visits)
    age = np.tile(np.arange(visits), n_sub).astype(float)
    X = np.column_stack([np.ones(n), age, rng.normal(size=n)])
    factor = Factor.from_labels(subject, np.ones((n, 1)), "subject")
    b = rng.normal(size=(n_sub, n_voxels)) * rng.uniform(0.5, 2.0, n_voxels)
    Y = X @ rng.normal(size=(3, n_voxels)) + build_Z([factor]) @ b
    return X, factor, Y + rng.normal(size=Y.shape)


def products_of(X, factor, Y):
    """Return the engine's products of Y (NaN where an image is missing)."""
    present = np.isfinite(Y)
    Y0 = np.where(present, Y, 0.0)
    if present.all():
        XtX, ZtX, ZtZ = design_products(X, [factor])
    else:
        XtX, ZtX, ZtZ = ring_design_products(X, [factor], sp.csr_matrix(~present.T))
    Z = build_Z([factor])
    prods = Products(
        XtX, ZtX, ZtZ, Y0.T @ X, Y0.T @ Z, (Y0**2).sum(0), present.sum(0) * 1.0
    )
    return prods, RandomEffects.of([factor])


def degenerate_study(rng):
    """Return a study whose first five voxels cannot be fitted, the sixth can."""
    X, factor, Y = study(rng, n_voxels=6)
    Y[:, 0] = 3.5  # constant
    Y[3:, 1] = np.nan  # 3 images left, p = 3: no residual degrees of freedom
    Y[2:, 2] = np.nan  # 2 images left, fewer than p: X'X singular
    Y[X[:, 1] != 0, 3] = np.nan  # only age 0 left: the age column is all zero
    Y[:, 4] = np.nan  # no image at all
    return X, factor, Y


def fit_and_infer(X, factor, Y):
    """Fit and infer at every voxel of Y."""
    prods, re = products_of(X, factor, Y)
    res = fit(prods, re, tol=1e-12)
    return res, infer(prods, re, res, [T_CONTRAST, F_CONTRAST])


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1e3, 1e6])
def test_rescaled_images_scale_beta_only(scale, rng):
    """Y -> cY: β and con scale by c, σ² by c², D and T and F unchanged.

    1e-6 relative: the fits converge to a log-likelihood change of 1e-12, and the
    estimates of the two fits agree far better than that bound (rounding in sums
    of c-scaled numbers is relative, so c changes nothing but the exponent).
    """
    X, factor, Y = study(rng)
    Y[::7, 2] = np.nan  # a ring voxel too
    ref, ref_inf = fit_and_infer(X, factor, Y)
    res, inf = fit_and_infer(X, factor, scale * Y)
    assert (res.status == Status.OK).all() and (ref.status == Status.OK).all()
    rel = {"rtol": 1e-6, "atol": 0.0}
    np.testing.assert_allclose(res.beta / scale, ref.beta, **rel)
    np.testing.assert_allclose(res.sigma2 / scale**2, ref.sigma2, **rel)
    np.testing.assert_allclose(res.D[0], ref.D[0], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(inf.conT, ref_inf.conT, **rel)
    np.testing.assert_allclose(inf.conF, ref_inf.conF, **rel)
    np.testing.assert_allclose(inf.conT_swedf, ref_inf.conT_swedf, rtol=1e-5)


def test_voxels_that_cannot_be_fitted_get_status_codes(rng):
    """Voxels the model cannot be fitted at get status codes, not an exception.

    Constant data, as many or fewer images than parameters, a design collinear at
    a ring voxel, no image at all; NaN statistics there, the other voxel fitted.
    """
    X, factor, Y = degenerate_study(rng)
    res, inf = fit_and_infer(X, factor, Y)
    assert res.status[0] == Status.NO_VARIANCE
    assert res.status[1] == Status.NO_VARIANCE
    assert res.status[2] == Status.RANK_DEFICIENT
    assert res.status[3] == Status.RANK_DEFICIENT
    assert res.status[4] == Status.RANK_DEFICIENT
    assert res.status[5] == Status.OK
    dropped = ~is_fitted(res.status)
    assert np.isnan(res.beta[dropped]).all()
    assert np.isnan(inf.conT[dropped]).all() and np.isnan(inf.conF[dropped]).all()
    assert np.isfinite(inf.conT[5]).all() and np.isfinite(inf.conF[5]).all()


def test_degenerate_voxels_raise_no_warnings(rng):
    """Flagging a voxel the model cannot fit raises no numpy warning."""
    X, factor, Y = degenerate_study(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_and_infer(X, factor, Y)
