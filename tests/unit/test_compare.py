"""Likelihood-ratio comparison of nested models (blmm_scripts.compare).

The reference values in ``tests/reference/compare/lrt.csv`` come from lme4's
``anova()`` of two lmer fits per voxel and the boundary mixture p-value computed by
hand in R (``tests/reference/compare/lrt_reference.R``; versions beside them).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from blmm_scripts.compare import (
    Model,
    NotNestedError,
    Reference,
    check_nested,
    chi2_logsf,
    compare_voxels,
    lr_statistic,
    mixture_logsf,
    neg_log10_p,
)
from blmm_scripts.estimation import fit
from blmm_scripts.products import design_products
from blmm_scripts.structure import Factor, Products, RandomEffects, build_Z

ROOT = Path(__file__).resolve().parents[1] / "reference"
DATA = ROOT / "data"
LRT = ROOT / "compare" / "lrt.csv"

# (data set, small model, large model): fixed columns and {factor: z columns}
COMPARISONS = {
    "slope_ri_vs_ris": (
        "slope",
        (["x0", "x1", "x2"], {"subject": ["z_subject_0"]}),
        (["x0", "x1", "x2"], {"subject": ["z_subject_0", "z_subject_1"]}),
    ),
    "crossed_add_site": (
        "crossed",
        (["x0", "x1", "x2"], {"subject": ["z_subject_0"]}),
        (["x0", "x1", "x2"], {"subject": ["z_subject_0"], "site": ["z_site_0"]}),
    ),
    "slope_fixed_x2": (
        "slope",
        (["x0", "x1"], {"subject": ["z_subject_0", "z_subject_1"]}),
        (["x0", "x1", "x2"], {"subject": ["z_subject_0", "z_subject_1"]}),
    ),
}
EXPECTED_DFS = {
    "slope_ri_vs_ris": (1, 2),
    "crossed_add_site": (0, 1),
    "slope_fixed_x2": (1,),
}


def _factor(labels, design, name=""):
    return Factor.from_labels(np.asarray(labels), np.asarray(design, float), name)


def _model(X, factors, reml=True, images=None, **data):
    n = X.shape[0]
    images = tuple(images or (f"img{i}.nii" for i in range(n)))
    return Model(images, dict(data), np.asarray(X, float), tuple(factors), reml)


@pytest.fixture
def design(rng):
    """20 images: 5 subjects x 4 visits, 2 sites crossed with subjects."""
    n = 20
    subject = np.repeat(np.arange(5), 4)
    site = np.tile([0, 1], 10)
    time = np.tile(np.arange(4.0), 5)
    X = np.column_stack([np.ones(n), time, rng.normal(size=n)])
    return {"n": n, "subject": subject, "site": site, "time": time, "X": X}


# ---------------------------------------------------------------------------------
# Nesting and the reference distribution


def test_random_slope_added_is_chi2_1_2_mixture(design):
    """Random slope (correlated) added to an intercept: 0.5 chi2_1 + 0.5 chi2_2."""
    ones = np.ones((design["n"], 1))
    small = _model(design["X"], [_factor(design["subject"], ones)])
    large = _model(
        design["X"],
        [_factor(design["subject"], np.column_stack([ones, design["time"]]))],
    )
    ref = check_nested(small, large)
    assert (ref.dfs, ref.weights, ref.standard) == ((1, 2), (0.5, 0.5), True)


def test_new_factor_with_intercept_is_chi2_0_1_mixture(design):
    """A new factor with one random effect: 0.5 chi2_0 + 0.5 chi2_1 (any labels)."""
    ones = np.ones((design["n"], 1))
    small = _model(design["X"], [_factor(design["subject"], ones)])
    # The same grouping under other labels still matches.
    relabelled = _factor(100 - design["subject"], ones)
    large = _model(design["X"], [_factor(design["site"], ones), relabelled])
    ref = check_nested(small, large)
    assert (ref.dfs, ref.weights, ref.standard) == ((0, 1), (0.5, 0.5), True)


def test_ml_fixed_effects_only_is_plain_chi2(design):
    """ML, one fixed effect added, same random effects: chi2_1, no boundary."""
    f = [_factor(design["subject"], np.ones((design["n"], 1)))]
    small = _model(design["X"][:, :2], f, reml=False)
    large = _model(design["X"], f, reml=False)
    ref = check_nested(small, large)
    assert (ref.dfs, ref.weights, ref.standard) == ((1,), (1.0,), True)


def test_ml_fixed_and_slope_shifts_mixture(design):
    """ML, a fixed effect and a random slope added: 0.5 chi2_2 + 0.5 chi2_3."""
    ones = np.ones((design["n"], 1))
    small = _model(design["X"][:, :2], [_factor(design["subject"], ones)], reml=False)
    large = _model(
        design["X"],
        [_factor(design["subject"], np.column_stack([ones, design["time"]]))],
        reml=False,
    )
    assert check_nested(small, large).dfs == (2, 3)


def test_several_groups_added_is_plain_chi2_and_flagged(design):
    """Two effects added at once: no standard mixture, plain chi2 of all 5 params."""
    n = design["n"]
    small = _model(design["X"], [_factor(design["subject"], np.ones((n, 1)))])
    z = np.column_stack([np.ones(n), design["time"], design["time"] ** 2])
    large = _model(design["X"], [_factor(design["subject"], z)])
    ref = check_nested(small, large)
    assert ref.dfs == (5,) and not ref.standard
    assert "conservative" in ref.description


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("images", "different images: image 3"),
        ("data", "different data_mask_thresh"),
        ("estimation", "different estimation"),
        ("reml_X", "REML fits with different fixed effects"),
        ("grouping", "no factor with the same grouping"),
        ("covariates", "are not contained"),
        ("same", "same model"),
        ("fixed_not_nested", "not contained in those"),
    ],
)
def test_not_nested_says_why(design, change, message):
    """Each way of not being nested is refused with a message naming it."""
    n, X = design["n"], design["X"]
    ones = np.ones((n, 1))
    slope = np.column_stack([ones, design["time"]])
    small_kw = {"X": X, "factors": [_factor(design["subject"], ones)]}
    large_kw = {"X": X, "factors": [_factor(design["subject"], slope)]}
    if change == "images":
        large_kw["images"] = [
            f"img{i}.nii" if i != 2 else "other.nii" for i in range(n)
        ]
    elif change == "data":
        large_kw["data_mask_thresh"] = 0.1
    elif change == "estimation":
        large_kw["reml"] = False
    elif change == "reml_X":
        large_kw["X"] = X[:, :2]
    elif change == "grouping":
        large_kw["factors"] = [_factor(design["site"], slope)]
    elif change == "covariates":
        small_kw["factors"] = [_factor(design["subject"], X[:, 2:])]
    elif change == "same":
        large_kw["factors"] = small_kw["factors"]
    elif change == "fixed_not_nested":
        small_kw.update(X=X[:, [0, 2]], reml=False)
        large_kw.update(X=X[:, :2], reml=False)
    with pytest.raises(NotNestedError, match=message):
        check_nested(_model(**small_kw), _model(**large_kw))


def test_swapped_models_are_refused(design):
    """The larger model given as the smaller one is not nested."""
    ones = np.ones((design["n"], 1))
    small = _model(design["X"], [_factor(design["subject"], ones)])
    large = _model(
        design["X"],
        [_factor(design["subject"], np.column_stack([ones, design["time"]]))],
    )
    with pytest.raises(NotNestedError, match="not contained"):
        check_nested(large, small)


# ---------------------------------------------------------------------------------
# p-values in log space


@pytest.mark.parametrize("df", [1, 2, 3, 7])
def test_chi2_logsf_matches_scipy_in_range(df):
    """Where scipy's chi2.logsf is representable, the two agree to rounding."""
    x = np.array([0.0, 1e-8, 0.5, 3.0, 40.0, 700.0, 1100.0])
    np.testing.assert_allclose(chi2_logsf(x, df), stats.chi2.logsf(x, df), rtol=1e-12)


def test_chi2_logsf_tail_exact_and_finite():
    """Far beyond scipy's underflow the series matches closed forms (df 1 and 2)."""
    x = np.array([1500.0, 5000.0, 1e5, 1e8])
    # chi2_2: sf = exp(-x/2) exactly.
    np.testing.assert_allclose(chi2_logsf(x, 2), -x / 2, rtol=1e-13)
    # chi2_1: sf = 2 Phi(-sqrt(x)); scipy's log_ndtr is accurate in the tail.
    expected = np.log(2) + special.log_ndtr(-np.sqrt(x))
    np.testing.assert_allclose(chi2_logsf(x, 1), expected, rtol=1e-12)
    assert np.all(np.isfinite(chi2_logsf(x, 5)))


def test_mixture_at_zero_and_point_mass():
    """At Chi2 = 0, p = 1; above 0 the chi2_0 component adds nothing."""
    ref = Reference((0, 1), (0.5, 0.5), True, "")
    x = np.array([0.0, 2.0, 3000.0])
    lp = neg_log10_p(x, ref)
    assert lp[0] == 0.0
    np.testing.assert_allclose(
        lp[1:],
        -(np.log(0.5) + np.log(2) + special.log_ndtr(-np.sqrt(x[1:]))) / np.log(10),
        rtol=1e-12,
    )
    assert np.isfinite(lp).all() and np.all(np.diff(lp) > 0)


# ---------------------------------------------------------------------------------
# Against R: anova() of two lmer fits and the mixture p-value by hand


@cache
def _lrt() -> pd.DataFrame:
    return pd.read_csv(LRT)


def test_mixture_pvalue_matches_r():
    """Given R's Chisq, -log10 p equals the mixture computed by hand in R."""
    ref = _lrt()
    for name, rows in ref.groupby("comparison"):
        dfs = tuple(int(d) for d in str(rows["dfs"].iloc[0]).split(";"))
        assert dfs == EXPECTED_DFS[name]
        lp = neg_log10_p(
            rows["Chisq"].to_numpy(),
            Reference(dfs, (1 / len(dfs),) * len(dfs), True, ""),
        )
        # Same formula, same double-precision log survival functions: rtol 1e-10.
        np.testing.assert_allclose(
            lp, rows["lp_mixture"].to_numpy(), rtol=1e-10, atol=1e-14
        )
        if len(dfs) == 1:  # plain chi2: anova's own p-value
            np.testing.assert_allclose(10**-lp, rows["p_anova"].to_numpy(), rtol=1e-10)


def _voxel_products(data: str, v: int, xcols, zcols):
    design = pd.read_csv(DATA / f"{data}_design.csv")
    y = pd.read_csv(DATA / f"{data}_Y.csv").to_numpy(float)[:, v]
    keep = ~np.isnan(y)
    y, d = y[keep], design[keep]
    X = d[xcols].to_numpy(float)
    factors = [
        Factor.from_labels(d[f"f_{f}"].to_numpy(), d[cols].to_numpy(float), name=f)
        for f, cols in zcols.items()
    ]
    XtX, ZtX, ZtZ = design_products(X, factors)
    Z = build_Z(factors)
    products = Products(
        XtX,
        ZtX,
        ZtZ,
        (X.T @ y)[None],
        (Z.T @ y)[None],
        np.array([y @ y]),
        np.array([float(y.size)]),
    )
    return products, RandomEffects.of(factors), X, factors


def _full_model(data: str, xcols, zcols, reml: bool) -> Model:
    design = pd.read_csv(DATA / f"{data}_design.csv")
    factors = [
        Factor.from_labels(design[f"f_{f}"].to_numpy(), design[c].to_numpy(float), f)
        for f, c in zcols.items()
    ]
    X = design[xcols].to_numpy(float)
    return Model(tuple(map(str, range(len(X)))), {}, X, tuple(factors), reml)


@pytest.mark.parametrize("name", list(COMPARISONS))
def test_engine_lrt_matches_r_anova(name):
    """Engine fits of both models reproduce anova()'s Chisq and the mixture -log10 p."""
    data, (x0, z0), (x1, z1) = COMPARISONS[name]
    ref = _lrt()
    ref = ref[ref["comparison"] == name]
    for est, rows in ref.groupby("estimation"):
        reml = est == "REML"
        reference = check_nested(
            _full_model(data, x0, z0, reml), _full_model(data, x1, z1, reml)
        )
        assert reference.dfs == EXPECTED_DFS[name]
        llh = []
        for v in rows["voxel"]:
            fits = []
            for xcols, zcols in ((x0, z0), (x1, z1)):
                products, re, _, _ = _voxel_products(data, v, xcols, zcols)
                # Tight tol (as tests/reference/test_lme4.py) so llh is good to ~1e-9.
                fits.append(fit(products, re, reml=reml, tol=1e-10).llh[0])
            llh.append(fits)
        llh = np.array(llh)
        # Each log-likelihood at least lme4's - 1e-6 (the engine's reference test).
        assert np.all(llh[:, 0] >= rows["logLik_small"] - 1e-6)
        assert np.all(llh[:, 1] >= rows["logLik_large"] - 1e-6)
        chi2 = lr_statistic(llh[:, 0], llh[:, 1])
        # Two log-likelihoods each within ~1e-6 of lme4's: Chisq within 1e-5.
        np.testing.assert_allclose(chi2, rows["Chisq"], atol=1e-5)
        lp = neg_log10_p(chi2, reference)
        interior = rows["Chisq"].to_numpy() > 1e-4
        # Away from Chi2 = 0, d(-log10 p)/dChi2 < 1: lp within 1e-5 as well.  At the
        # boundary (added variance estimated 0) the point mass makes p jump from 1 to
        # 0.5 for Chi2 > 0, so only Chi2 ~ 0 is checked there.
        np.testing.assert_allclose(
            lp[interior], rows["lp_mixture"][interior], atol=1e-5
        )
        assert np.all(chi2[~interior] < 1e-4)


# ---------------------------------------------------------------------------------
# Maps


def test_compare_voxels_masks_and_clips(rng):
    """Intersection mask; Chi2 clipped at 0 and counted; zeros outside the mask."""
    grid = (4, 3, 2)
    m0 = (rng.uniform(size=grid) > 0.2).astype(np.int32)
    m1 = (rng.uniform(size=grid) > 0.2).astype(np.int32)
    llh0 = rng.normal(-100, 5, size=grid)
    llh1 = llh0 + rng.exponential(2.0, size=grid)
    both = (m0 == 1) & (m1 == 1)
    first = tuple(np.argwhere(both)[0])
    llh1[first] = llh0[first] - 0.5  # not converged: negative difference
    ref = Reference((1, 2), (0.5, 0.5), True, "")
    out = compare_voxels(m0, llh0, m1, llh1, ref)
    np.testing.assert_array_equal(out.mask, both.astype(np.int32))
    assert out.n_negative == 1 and out.Chi2[first] == 0 and out.Chi2lp[first] == 0
    assert np.all(out.Chi2[~both] == 0) and np.all(out.Chi2lp[~both] == 0)
    np.testing.assert_allclose(
        out.Chi2[both & (llh1 > llh0)],
        2 * (llh1 - llh0)[both & (llh1 > llh0)],
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        out.Chi2lp[both],
        -mixture_logsf(out.Chi2[both], (1, 2), (0.5, 0.5)) / np.log(10),
    )
