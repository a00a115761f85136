"""The engine agrees with lme4 + lmerTest (issue 3, item 5).

For every case x estimation (REML, ML) x voxel of the committed reference data
(``data/``, made by ``make_data.py``), the engine is fitted from the product matrices
of the images present at that voxel and compared with the committed lme4/lmerTest
values (``results/``, made by ``lme4_reference.R``).  See README.md for how the values
were produced and why each tolerance is what it is.

lme4 calls a fit singular when a diagonal entry of its relative Cholesky factor theta
is below 1e-4 (a variance on the boundary, or a correlation of +-1).  Estimates are
compared only on non-singular fits; on singular ones the engine must reach lme4's
log-likelihood, sit on the same boundary and give lmerTest's Satterthwaite df.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from blmm_scripts.estimation import fit
from blmm_scripts.inference import infer
from blmm_scripts.products import design_products
from blmm_scripts.structure import Factor, Products, RandomEffects, Status, build_Z

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RESULTS = HERE / "results"
CASES = ("intercept", "slope", "crossed", "crossed_slope")
ESTIMATIONS = ("REML", "ML")
PARAMS = [(c, e) for c in CASES for e in ESTIMATIONS]

# The engine is run with a far tighter convergence tolerance than its default (1e-6
# on the change in log-likelihood per iteration).  Near the optimum the
# log-likelihood is quadratic, so stopping when it changes by tol leaves parameters
# about sqrt(2 tol) standard errors away from the optimum: 1.4e-3 SE for tol=1e-6,
# far coarser than the 1e-5 relative agreement tested here, ~1e-5 SE for 1e-10 (and
# less, as the scoring iterations converge faster than linearly).  This is a test
# setting, not a recommendation for analyses.
TOL = 1e-10

LLH_ATOL = 1e-6  # issue 3: log-likelihood at least lme4's minus 1e-6
# beta, sigma2, D: 1e-5 relative (issue 3).  An entry much smaller than its standard
# error (a fixed effect or covariance near 0, a variance near the boundary) has no
# meaningful relative error: the likelihood is flat there on the scale of the entry,
# and double precision fixes it only to a small fraction of its SE, not of its value.
# (Seen: slope/ML voxel 4, D_2 = 3.4e-4 with SE 0.038; the log-likelihood changes by
# ~1e-12, its rounding level, over 1e-4 relative of D_2, so even two tight lme4 fits
# differ by 1e-5 relative there.)  Such entries also get an absolute tolerance of 1e-5
# standard errors: lme4's SE for beta and contrast estimates; for D the SE from the
# Hessian of lme4's deviance in vech(D) (column Dse_j, see lme4_reference.R); for an
# off-diagonal of cov(beta), 1e-5 sqrt(V_ii V_jj).  T is in SE units: atol 1e-5.
RTOL = 1e-5
DF_RTOL = 5e-3  # Satterthwaite df within 0.5% of lmerTest's (issue 3)
BOUNDARY = 1e-4  # lme4's isSingular tolerance on theta, see check_boundary


@dataclass(frozen=True)
class Case:
    """Raw data of one reference case."""

    design: pd.DataFrame
    Y: np.ndarray  # (n_images, n_voxels), NaN where missing
    xcols: list[str]
    factors: list[str]
    zcols: dict[str, list[str]]
    tcons: dict[str, np.ndarray]  # name -> (p,)
    fcons: dict[str, np.ndarray]  # name -> (m, p)

    @property
    def n_vech(self) -> list[int]:
        """Number of vech(D_k) entries per factor."""
        return [
            len(self.zcols[f]) * (len(self.zcols[f]) + 1) // 2 for f in self.factors
        ]


@cache
def load_case(case: str) -> Case:
    """Read a case's design, Y and contrasts from DATA."""
    design = pd.read_csv(DATA / f"{case}_design.csv")
    Y = pd.read_csv(DATA / f"{case}_Y.csv").to_numpy(float)
    xcols = [c for c in design if c[0] == "x" and c[1:].isdigit()]
    factors = [c[2:] for c in design if c.startswith("f_")]
    zcols = {f: [c for c in design if c.startswith(f"z_{f}_")] for f in factors}
    con = pd.read_csv(DATA / "contrasts.csv", dtype={"type": str})
    con = con[con["case"] == case]
    ccols = [f"c{j}" for j in range(len(xcols))]
    tcons, fcons = {}, {}
    for name, d in con.groupby("name", sort=False):
        L = d.sort_values("row")[ccols].to_numpy(float)
        if d["type"].iloc[0] == "T":
            tcons[name] = L[0]
        else:
            fcons[name] = L
    return Case(design, Y, xcols, factors, zcols, tcons, fcons)


def load_reference(case: str, estimation: str, results: Path = RESULTS) -> pd.DataFrame:
    """Read the lme4/lmerTest values of one case and estimation, one row per voxel."""
    return pd.read_csv(results / f"{case}_{estimation}.csv")


def voxel_products(cs: Case, v: int) -> tuple[Products, RandomEffects]:
    """Return the products of the images present at voxel v, and its structure."""
    y = cs.Y[:, v]
    keep = ~np.isnan(y)
    y = y[keep]
    d = cs.design[keep]
    X = d[cs.xcols].to_numpy(float)
    factors = [
        Factor.from_labels(
            d[f"f_{f}"].to_numpy(), d[cs.zcols[f]].to_numpy(float), name=f
        )
        for f in cs.factors
    ]
    re = RandomEffects.of(factors)
    XtX, ZtX, ZtZ = design_products(X, factors)
    Z = build_Z(factors)
    products = Products(
        XtX,
        ZtX,
        ZtZ,
        (X.T @ y)[None],
        (Z.T @ y)[None],
        np.array([y @ y]),
        np.array([y.size], float),
    )
    return products, re


@dataclass(frozen=True)
class EngineRun:
    """Engine output of every voxel of one case and estimation, voxel axis first."""

    beta: np.ndarray
    sigma2: np.ndarray
    D: list[np.ndarray]  # per voxel, list over factors of (q_k, q_k)
    D_vech: np.ndarray
    llh: np.ndarray
    nit: np.ndarray
    status: np.ndarray
    covB: np.ndarray
    con: np.ndarray
    conSE: np.ndarray
    conT: np.ndarray
    conT_swedf: np.ndarray
    conTlp: np.ndarray
    conTlp2: np.ndarray  # two-sided
    conF: np.ndarray
    conF_swedf: np.ndarray
    conFlp: np.ndarray
    conR2: np.ndarray


@cache
def engine_run(case: str, estimation: str, method: str = "pSFS") -> EngineRun:
    """Fit every voxel of a case on its own (missingness differs between voxels)."""
    cs = load_case(case)
    contrasts = list(cs.tcons.values()) + list(cs.fcons.values())
    rows = []
    for v in range(cs.Y.shape[1]):
        products, re = voxel_products(cs, v)
        fr = fit(products, re, method=method, reml=estimation == "REML", tol=TOL)
        inf = infer(products, re, fr, contrasts)
        inf2 = infer(products, re, fr, contrasts, two_sided=True)
        rows.append((fr, inf, inf2))

    def stack(get):
        return np.concatenate([get(*r) for r in rows])

    return EngineRun(
        beta=stack(lambda f, i, i2: f.beta),
        sigma2=stack(lambda f, i, i2: f.sigma2),
        D=[[Dk[0] for Dk in f.D] for f, _, _ in rows],
        D_vech=stack(lambda f, i, i2: f.D_vech),
        llh=stack(lambda f, i, i2: f.llh),
        nit=stack(lambda f, i, i2: f.nit),
        status=stack(lambda f, i, i2: f.status),
        covB=stack(lambda f, i, i2: i.covB),
        con=stack(lambda f, i, i2: i.con),
        conSE=stack(lambda f, i, i2: i.conSE),
        conT=stack(lambda f, i, i2: i.conT),
        conT_swedf=stack(lambda f, i, i2: i.conT_swedf),
        conTlp=stack(lambda f, i, i2: i.conTlp),
        conTlp2=stack(lambda f, i, i2: i2.conTlp),
        conF=stack(lambda f, i, i2: i.conF),
        conF_swedf=stack(lambda f, i, i2: i.conF_swedf),
        conFlp=stack(lambda f, i, i2: i.conFlp),
        conR2=stack(lambda f, i, i2: i.conR2),
    )


# ---------------------------------------------------------------------------------
# Reference quantities and tolerances


def ref_cols(ref: pd.DataFrame, prefix: str) -> np.ndarray:
    """Columns prefix0, prefix1, ... of the reference as a (v, k) array."""
    cols = [c for c in ref if c.startswith(prefix) and c[len(prefix) :].isdigit()]
    return ref[sorted(cols, key=lambda c: int(c[len(prefix) :]))].to_numpy(float)


def ref_vcov(ref: pd.DataFrame, p: int) -> np.ndarray:
    """lme4's vcov(beta), (v, p, p), from its row-major columns."""
    return np.stack(
        [ref[[f"vcov_{i}_{j}" for j in range(p)]].to_numpy(float) for i in range(p)],
        axis=1,
    )


def nonsingular(ref: pd.DataFrame) -> np.ndarray:
    """Voxels where lme4's fit is not singular."""
    return ~ref["isSingular"].to_numpy(bool)


def t_lp(t: np.ndarray, df: np.ndarray, two_sided: bool = False) -> np.ndarray:
    """-log10 p of a T statistic: upper tail (the engine's default) or two-sided."""
    if two_sided:
        return -(np.log(2.0) + stats.t.logsf(np.abs(t), df)) / np.log(10.0)
    return -stats.t.logsf(t, df) / np.log(10.0)


def f_lp(F: np.ndarray, ndf: np.ndarray, ddf: np.ndarray) -> np.ndarray:
    """-log10 p of an F statistic."""
    return -stats.f.logsf(F, ndf, ddf) / np.log(10.0)


def band(g, x: np.ndarray, dx: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Largest change of g(x, df) over x +- dx and df (1 +- DF_RTOL).

    The tolerance of a derived quantity (-log10 p, partial R2) "accordingly": what the
    allowed error of its statistic (dx) and of its Satterthwaite df (0.5%) can move it
    by; g is monotone in each argument, so the corners bound it.
    """
    g0 = g(x, df)
    return np.max(
        [
            np.abs(g(x + sx * dx, df * (1 + sd * DF_RTOL)) - g0)
            for sx in (-1, 1)
            for sd in (-1, 1)
        ],
        axis=0,
    )


# ---------------------------------------------------------------------------------
# Assertions, shared by the committed-value tests and the live R rerun


def check_loglik_at_least(eng: EngineRun, ref: pd.DataFrame) -> None:
    """Assert the engine's log-likelihood >= lme4's - 1e-6 at every voxel."""
    short = ref["logLik"].to_numpy() - LLH_ATOL - eng.llh
    assert np.all(short <= 0), (
        f"voxels {np.flatnonzero(short > 0)} short by {short[short > 0]}"
    )


def check_loglik_not_above(eng: EngineRun, ref: pd.DataFrame) -> None:
    """Assert the engine's log-likelihood <= lme4's + 1e-6.

    lme4's values are maxima (multiple starts, Newton-polished, see the R script), so a
    higher value would mean the engine computes a different likelihood (a constant
    off, say), not a better fit.
    """
    over = eng.llh - ref["logLik"].to_numpy() - LLH_ATOL
    assert np.all(over <= 0), (
        f"voxels {np.flatnonzero(over > 0)} above by {over[over > 0]}"
    )


def check_estimates(eng: EngineRun, ref: pd.DataFrame, cs: Case) -> None:
    """Assert beta, sigma2, vech(D) to 1e-5 relative where lme4's fit is regular."""
    ok = nonsingular(ref)
    p = len(cs.xcols)
    se = np.sqrt(np.diagonal(ref_vcov(ref, p), axis1=1, axis2=2))
    beta = ref_cols(ref, "beta_")
    assert_close(eng.beta[ok], beta[ok], RTOL * se[ok], "beta")
    assert_close(eng.sigma2[ok], ref["sigma2"].to_numpy()[ok], 0.0, "sigma2")
    D, Dse = ref_cols(ref, "D_"), ref_cols(ref, "Dse_")
    assert_close(eng.D_vech[ok], D[ok], RTOL * Dse[ok], "vech(D)")


def assert_close(
    actual: np.ndarray, expected: np.ndarray, atol, what: str, rtol=RTOL
) -> None:
    """Assert |actual - expected| <= atol + rtol |expected| (atol may be an array)."""
    err = np.abs(actual - expected)
    lim = atol + rtol * np.abs(expected)
    bad = ~(err <= lim)
    if np.any(bad):
        idx = np.argwhere(bad)
        rel = err / np.maximum(np.abs(expected), 1e-300)
        raise AssertionError(
            f"{what}: {bad.sum()} of {bad.size} entries off; worst relative error "
            f"{np.nanmax(np.where(bad, rel, 0)):.3g}, worst err/limit "
            f"{np.nanmax(np.where(bad, err / np.maximum(lim, 1e-300), 0)):.3g}; "
            f"first at {idx[:5].tolist()}: actual {actual[bad][:5]}, "
            f"expected {expected[bad][:5]}"
        )


def check_covB(eng: EngineRun, ref: pd.DataFrame, cs: Case) -> None:
    """Assert cov(beta) to 1e-5 relative (off-diagonals: 1e-5 sqrt(V_ii V_jj))."""
    ok = nonsingular(ref)
    V = ref_vcov(ref, len(cs.xcols))[ok]
    d = np.sqrt(np.diagonal(V, axis1=1, axis2=2))
    assert_close(eng.covB[ok], V, RTOL * d[:, :, None] * d[:, None, :], "cov(beta)")


def check_T(eng: EngineRun, ref: pd.DataFrame, cs: Case) -> None:
    """Assert T contrasts: estimate, SE, T to 1e-5; df to 0.5%; -log10 p accordingly."""
    ok = nonsingular(ref)
    names = list(cs.tcons)
    get = lambda s: ref[[f"{n}_{s}" for n in names]].to_numpy(float)[ok]  # noqa: E731
    est, se, df, t = get("est"), get("se"), get("df"), get("t")
    assert_close(eng.con[ok], est, RTOL * se, "T contrast estimate")
    assert_close(eng.conSE[ok], se, 0.0, "T contrast SE")
    assert_close(eng.conT[ok], t, RTOL, "T statistic")
    assert_close(eng.conT_swedf[ok], df, 0.0, "T Satterthwaite df", rtol=DF_RTOL)
    dt = RTOL * (1 + np.abs(t))
    lp1 = t_lp(t, df)
    assert_close(
        eng.conTlp[ok], lp1, band(t_lp, t, dt, df) + 1e-12, "T -log10 p (upper)", rtol=0
    )
    lp2 = t_lp(t, df, two_sided=True)
    g2 = lambda x, d: t_lp(x, d, two_sided=True)  # noqa: E731
    assert_close(
        eng.conTlp2[ok],
        lp2,
        band(g2, t, dt, df) + 1e-12,
        "T -log10 p (two-sided)",
        rtol=0,
    )


def check_F(eng: EngineRun, ref: pd.DataFrame, cs: Case) -> None:
    """Assert F to 1e-5, ndf = rank L, ddf to 0.5%, -log10 p and R2 accordingly."""
    ok = nonsingular(ref)
    names = list(cs.fcons)
    get = lambda s: ref[[f"{n}_{s}" for n in names]].to_numpy(float)[ok]  # noqa: E731
    F, ndf, ddf = get("F"), get("ndf"), get("ddf")
    ranks = np.array([np.linalg.matrix_rank(cs.fcons[n]) for n in names])
    np.testing.assert_array_equal(ndf, np.broadcast_to(ranks, ndf.shape))
    assert_close(eng.conF[ok], F, 0.0, "F statistic")
    assert_close(eng.conF_swedf[ok], ddf, 0.0, "F Satterthwaite ddf", rtol=DF_RTOL)
    dF = RTOL * F
    lp = f_lp(F, ndf, ddf)
    g = lambda x, d: f_lp(x, ndf, d)  # noqa: E731
    assert_close(eng.conFlp[ok], lp, band(g, F, dF, ddf) + 1e-12, "F -log10 p", rtol=0)
    r2 = lambda x, d: ndf * x / (ndf * x + d)  # noqa: E731
    assert_close(
        eng.conR2[ok], r2(F, ddf), band(r2, F, dF, ddf) + 1e-12, "partial R2", rtol=0
    )


def singular_factors(ref: pd.DataFrame, cs: Case) -> np.ndarray:
    """(v, r) True where lme4's theta block of a factor has a diagonal entry < 1e-4."""
    return np.column_stack(
        [ref[f"thetamin_{f}"].to_numpy() < BOUNDARY for f in cs.factors]
    )


def check_boundary(eng: EngineRun, ref: pd.DataFrame, cs: Case) -> None:
    """On lme4's singular fits the engine's D_k is singular too, in the same factor.

    lme4 calls a fit singular when a diagonal entry of a factor's relative Cholesky
    factor Lambda_k is below 1e-4 (a variance of 0, or a correlation of +-1).  With
    D_k = Lambda_k Lambda_k', det D_k is the product of those squared diagonal
    entries, so the smallest eigenvalue of D_k is then below ~1e-8 times the larger
    ones.  The engine works with D_k directly, so the same criterion reads
    lambda_min(D_k) <= 1e-8 (1 + lambda_max(D_k)).
    """
    sing = singular_factors(ref, cs)
    for v, k in np.argwhere(sing):
        ev = np.linalg.eigvalsh(eng.D[v][k])
        assert ev[0] <= BOUNDARY_EIG * (1 + ev[-1]), (
            f"voxel {v}, factor {cs.factors[k]}: lme4 singular, "
            f"engine D_k eigenvalues {ev}"
        )


BOUNDARY_EIG = 1e-8  # see check_boundary


# ---------------------------------------------------------------------------------
# Tests against the committed values


@pytest.fixture(params=PARAMS, ids=[f"{c}-{e}" for c, e in PARAMS])
def case_est(request):
    """Return a (case, estimation) pair's data, lme4 reference and engine run."""
    case, est = request.param
    return load_case(case), load_reference(case, est), engine_run(case, est)


def test_reference_has_singular_and_regular_fits():
    """The reference has boundary (slope case) and regular fits, and missing data."""
    for est in ESTIMATIONS:
        ref = load_reference("slope", est)
        assert ref["isSingular"].sum() >= 2
        assert (~ref["isSingular"]).sum() >= 4
    for case in CASES:
        cs = load_case(case)
        frac = np.isnan(cs.Y).mean(axis=0)
        assert np.any(frac == 0) and np.any((frac >= 0.05) & (frac <= 0.2))


def test_engine_converged(case_est):
    """Every voxel converges (status OK) at tol=1e-10."""
    _, _, eng = case_est
    np.testing.assert_array_equal(eng.status, Status.OK, err_msg=f"nit {eng.nit}")


def test_loglik_at_least_lme4(case_est):
    """Log-likelihood at the engine's estimates >= lme4's logLik - 1e-6 (all voxels)."""
    _, ref, eng = case_est
    check_loglik_at_least(eng, ref)


def test_loglik_not_above_lme4(case_est):
    """Log-likelihood <= lme4's + 1e-6: the same likelihood, with all its constants."""
    _, ref, eng = case_est
    check_loglik_not_above(eng, ref)


def test_estimates(case_est):
    """beta, sigma2, vech(D) match lme4 to 1e-5 relative on non-singular fits."""
    cs, ref, eng = case_est
    check_estimates(eng, ref, cs)


def test_boundary_fit(case_est):
    """Where lme4's fit is singular, the engine's D is singular in the same factor."""
    cs, ref, eng = case_est
    check_boundary(eng, ref, cs)


def test_covB(case_est):
    """cov(beta) matches lme4's vcov on non-singular fits."""
    cs, ref, eng = case_est
    check_covB(eng, ref, cs)


def test_T_contrasts(case_est):
    """T contrasts match lmerTest's contest1D (Satterthwaite) on non-singular fits."""
    cs, ref, eng = case_est
    check_T(eng, ref, cs)


def test_F_contrasts(case_est):
    """F contrasts match lmerTest's contestMD (Satterthwaite) on non-singular fits."""
    cs, ref, eng = case_est
    check_F(eng, ref, cs)


def test_satterthwaite_on_singular_fits(case_est):
    """On singular (boundary) fits the T and F df still match lmerTest's within 0.5%.

    The engine writes the Hessian in lme4's Cholesky coordinates there, with the
    curvature term of the non-zero score and the zero columns held (see
    blmm_scripts.inference.cholesky_coordinates); the estimates themselves sit on
    the boundary, so df are the only quantities compared beyond the likelihood.
    """
    cs, ref, eng = case_est
    sing = ~nonsingular(ref)
    if not sing.any():
        pytest.skip("no singular fit in this case")
    for names, ours, col in (
        (list(cs.tcons), eng.conT_swedf, "df"),
        (list(cs.fcons), eng.conF_swedf, "ddf"),
    ):
        want = ref[[f"{n}_{col}" for n in names]].to_numpy(float)[sing]
        assert_close(ours[sing], want, 0.0, f"{col} on singular fits", rtol=DF_RTOL)


# The other three Fisher-scoring methods must reach the same optimum (issue 3, item 2),
# boundary fits included (FS and pFS once stalled on slope voxel 2 and crossed/ML
# voxel 0, where projected steps stop short on the boundary of the PSD cone).
METHOD_PARAMS = [
    pytest.param(m, c, e, id=f"{m}-{c}-{e}")
    for m in ("SFS", "pFS", "FS")
    for c, e in PARAMS
]


@pytest.mark.parametrize(("method", "case", "estimation"), METHOD_PARAMS)
def test_other_methods_reach_lme4(method, case, estimation):
    """SFS, pFS and FS reach lme4's maximum and estimates, like the default pSFS."""
    cs, ref = load_case(case), load_reference(case, estimation)
    eng = engine_run(case, estimation, method)
    np.testing.assert_array_equal(eng.status, Status.OK)
    check_loglik_at_least(eng, ref)
    check_loglik_not_above(eng, ref)
    check_estimates(eng, ref, cs)


# ---------------------------------------------------------------------------------
# Live rerun of the R script


def _have_lmertest() -> bool:
    if shutil.which("Rscript") is None:
        return False
    res = subprocess.run(
        ["Rscript", "-e", "library(lmerTest)"], capture_output=True, check=False
    )
    return res.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _have_lmertest(), reason="Rscript with lmerTest not installed")
def test_live_lme4_rerun(tmp_path):
    """A rerun of the R script gives the committed values; the engine matches them."""
    subprocess.run(
        ["Rscript", str(HERE / "lme4_reference.R"), str(DATA), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for case, est in PARAMS:
        cs = load_case(case)
        old = load_reference(case, est)
        new = load_reference(case, est, tmp_path)
        assert list(new.columns) == list(old.columns)
        np.testing.assert_array_equal(new["isSingular"], old["isSingular"])
        # Same script, same data: equal to 1e-6 relative wherever the fit is regular
        # (beta against its SE, off-diagonal D on the correlation scale, as above);
        # on singular fits only the maximised log-likelihood is well defined.
        ok = nonsingular(old)
        np.testing.assert_allclose(new["logLik"], old["logLik"], rtol=0, atol=1e-6)
        num = [
            c
            for c in old.columns
            if pd.api.types.is_numeric_dtype(old[c])
            and c not in ("voxel", "n", "isSingular", "logLik")
            and not c.startswith(("thetamin_", "D_", "Dse_", "beta_"))
            and not c.endswith("_est")
        ]
        np.testing.assert_allclose(new[num][ok], old[num][ok], rtol=1e-6, atol=0)
        p = len(cs.xcols)
        se = np.sqrt(np.diagonal(ref_vcov(old, p), axis1=1, axis2=2))[ok]
        assert_close(
            ref_cols(new, "beta_")[ok],
            ref_cols(old, "beta_")[ok],
            1e-6 * se,
            "beta",
            1e-6,
        )
        D, Dse = ref_cols(old, "D_"), ref_cols(old, "Dse_")
        assert_close(ref_cols(new, "D_")[ok], D[ok], 1e-6 * Dse[ok], "D", 1e-6)
        # and the engine holds against the fresh values
        eng = engine_run(case, est)
        check_loglik_at_least(eng, new)
        check_estimates(eng, new, cs)
        check_T(eng, new, cs)
        check_F(eng, new, cs)
