"""The compiled kernels against the numpy reference path.

Both compute the same formulas in a different order, so they must agree to
rounding: 1e-10 of each array's scale (measured: below 1e-11 on these studies for
one factor, at most 2e-12 for the bordered sums) for every level sum at a fixed D
and every estimate and statistic.  One factor (blmm_scripts.kernels): a random
intercept (the scalar kernel), intercept and slope (the 2 x 2 kernel), two slopes
(the general kernel), grouped pseudo-levels (level weights).  Several factors, the
bordered layout (blmm_scripts.kernels_bordered): two crossed factors (intercepts),
a random slope on the blocked factor, a random slope on a border factor (blocks in
the border's Λ), three factors.  Inner and ring voxels, interior and boundary
fits, REML and ML and the four methods.  On data with a large mean the kernels are
the more accurate of the two (benchmarks/README.md, "Compiled kernels").
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from blmm_scripts import kernels, likelihood
from blmm_scripts._linalg import block_diag_factors, psd_sqrt
from blmm_scripts.estimation import METHODS, fit
from blmm_scripts.inference import infer
from blmm_scripts.kernels_bordered import BLAS_FROM, LANES, border_sqrt
from blmm_scripts.likelihood import (
    FusedProfile,
    Weight,
    curvature,
    numpy_engine,
    observed_information,
    profile,
    score_D,
)
from blmm_scripts.products import design_products, ring_design_products
from blmm_scripts.structure import Factor, Products, RandomEffects, Status, build_Z

TOL = 1e-10
CONTRASTS = [np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 1.0]), np.eye(3)[1:]]
STATISTICS = (
    "covB",
    "con",
    "conSE",
    "conT",
    "conT_swedf",
    "conTlp",
    "conF",
    "conF_swedf",
    "conFlp",
    "conR2",
)
RANEFFS = {"intercept": 1, "slope": 2, "two_slopes": 3}


def study(raneffs, seed=7, n_sub=30, visits=5, n_voxels=16, missing=0.0):
    """Return the products and structure of a one-factor study.

    Voxels 0-3 have no random effect (fits on the boundary); with `missing` > 0
    images are missing at random at every voxel (ring voxels, per-voxel design).
    """
    rng = np.random.default_rng(seed)
    n = n_sub * visits
    subject = rng.permutation(np.repeat(np.arange(n_sub), visits))
    time = rng.uniform(0.0, 3.0, n)
    X = np.column_stack([np.ones(n), time, rng.normal(size=n)])
    covariates = np.column_stack([np.ones(n), time, rng.normal(size=n)])
    factor = Factor.from_labels(subject, covariates[:, :raneffs], "subject")
    Z = build_Z([factor])
    b = rng.normal(size=(Z.shape[1], n_voxels)) * rng.uniform(0.3, 1.5, n_voxels)
    b[:, :4] = 0.0
    Y = X @ rng.normal(size=(3, n_voxels)) + Z @ b + rng.normal(size=(n, n_voxels))
    present = rng.random(Y.shape) >= missing
    Y0 = np.where(present, Y, 0.0)
    if present.all():
        XtX, ZtX, ZtZ = design_products(X, [factor])
    else:
        XtX, ZtX, ZtZ = ring_design_products(X, [factor], sp.csr_matrix(~present.T))
    products = Products(
        XtX, ZtX, ZtZ, Y0.T @ X, Y0.T @ Z, (Y0**2).sum(0), present.sum(0) * 1.0
    )
    return products, RandomEffects.of([factor])


def with_weights(products, seed=3):
    """Return the products with level weights other than 1 (as pseudo-levels have)."""
    rng = np.random.default_rng(seed)
    weight = rng.uniform(0.5, 3.0, (1, products.ZtZ.shape[1]))
    return replace(products, level_weight=weight)


#: Random effects per factor: the first (subjects) is the blocked one, the others
#: (sites, scanners) form the border.
BORDERED = {
    "crossed": (1, 1),
    "slope_blocked": (2, 1),
    "slope_border": (1, 2),
    "three": (1, 1, 1),
}


def crossed_study(
    raneffs, seed=11, n_sub=16, visits=5, n_voxels=13, missing=0.0, n_sites=4
):
    """Return the products and structure of a subject x site (x scanner) study.

    Every image belongs to one subject, one of `n_sites` sites and (three factors)
    one of 3 scanners, so subjects see a few sites each.  Voxels 0-1 have no
    subject effect and voxels 2-3 no site effect (fits on the boundary); with
    `missing` > 0 images are missing at random at every voxel (ring voxels,
    per-voxel design).
    13 voxels: a chunk of the kernels' lanes is left partly empty.
    """
    rng = np.random.default_rng(seed)
    n = n_sub * visits
    subject = np.repeat(np.arange(n_sub), visits)
    time = np.tile(np.arange(visits), n_sub) + rng.uniform(-0.3, 0.3, n)
    X = np.column_stack([np.ones(n), time, rng.normal(size=n)])
    covariates = np.column_stack([np.ones(n), time])
    groups = [subject, rng.integers(0, n_sites, n), rng.integers(0, 3, n)]
    names = ["subject", "site", "scanner"]
    factors = [
        Factor.from_labels(g, covariates[:, :qk], name)
        for g, qk, name in zip(groups, raneffs, names, strict=False)
    ]
    Y = X @ rng.normal(size=(3, n_voxels)) + rng.normal(size=(n, n_voxels))
    without = {"subject": slice(0, 2), "site": slice(2, 4), "scanner": slice(0, 0)}
    for f in factors:
        Zk = build_Z([f])
        b = rng.normal(size=(Zk.shape[1], n_voxels)) * rng.uniform(0.4, 1.5, n_voxels)
        b[:, without[f.name]] = 0.0
        Y += Zk @ b
    present = rng.random(Y.shape) >= missing
    Y0 = np.where(present, Y, 0.0)
    if present.all():
        XtX, ZtX, ZtZ = design_products(X, factors)
    else:
        XtX, ZtX, ZtZ = ring_design_products(X, factors, sp.csr_matrix(~present.T))
    Z = build_Z(factors)
    products = Products(
        XtX, ZtX, ZtZ, Y0.T @ X, Y0.T @ Z, (Y0**2).sum(0), present.sum(0) * 1.0
    )
    re = RandomEffects.of(factors)
    assert re.bordered
    return products, re


def random_sqrt(re, v, seed=5):
    """Return Λ_k of a random positive definite D_k per voxel and factor."""
    rng = np.random.default_rng(seed)
    out = []
    for qk in re.n_raneffs:
        B = rng.normal(size=(v, qk, qk))
        out.append(psd_sqrt(B @ B.swapaxes(-1, -2))[1])
    return out


def sums_at(products, re, sqrt, reml):
    """Return every quantity the engine takes from a profile and its curvature."""
    prof = profile(products, re, sqrt, reml)
    curv = curvature(prof)
    out = {"llh": prof.llh(), "beta": prof.beta, "H": prof.H, "S": prof.S}
    out["logdet"] = prof.wood.logdet
    out["J"] = observed_information(prof, prof.sigma2, curv)
    for weight in Weight:
        for k in range(re.r):
            out[f"score {weight} {k}"] = score_D(curv, prof.sigma2, weight)[k]
            out[f"diag {weight} {k}"] = curv.diag_sum(k, weight)
            for k2 in range(re.r):
                out[f"T {weight} {k} {k2}"] = curv.trace_term(k, k2, weight)
    for k in range(re.r):
        out[f"ss {k}"] = curv.ss(k)
        out[f"quadratic {k}"] = curv.quadratic(k, prof.beta)
        for k2 in range(re.r):
            out[f"U {k} {k2}"] = curv.data_term(k, k2)
    return prof, out


def make_study(shape, **kw):
    """Return the products and structure of a study of either layout."""
    if shape in RANEFFS:
        return study(RANEFFS[shape], **kw)
    return crossed_study(BORDERED[shape], **kw)


def scaled_difference(a, b, where=None):
    """Return max |a - b| (over `where`, default all) over max |b| (NaN = NaN)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.array_equal(np.isnan(a), np.isnan(b))
    keep = ~np.isnan(b)
    if not keep.any():
        return 0.0
    scale = max(np.abs(b[keep]).max(), 1e-300)
    if where is not None:
        keep &= np.broadcast_to(where.reshape(-1, *[1] * (b.ndim - 1)), b.shape)
    return np.abs(a[keep] - b[keep]).max(initial=0.0) / scale


def both_paths(products, re, **kw):
    """Fit and infer by the kernels and by numpy; return both pairs."""
    fitted = fit(products, re, **kw)
    stats = infer(products, re, fitted, CONTRASTS)
    with numpy_engine():
        ref = fit(products, re, **kw)
        ref_stats = infer(products, re, ref, CONTRASTS)
    return (fitted, stats), (ref, ref_stats)


def rank_deficient(D):
    """Return where a fitted D (v, k, k) is singular but not zero (k > 1 only)."""
    w = np.linalg.eigvalsh(D)
    return (w[:, 0] < 1e-8 * np.maximum(w[:, -1], 1e-300)) & (w[:, -1] > 0)


def assert_same(ours, ref, tol=1e-6):
    """Every estimate and statistic within TOL of the reference.

    Where a fitted D_k is singular but not zero (two or more random effects of a
    factor on a face of the PSD cone), the fit stops when the log-likelihood
    changes by less than `tol` and Newton polishing does not apply
    (estimation._polish), so both paths stop short of the optimum by different
    routes.  Steps along a face converge linearly, so a fit can stop more than tol
    below the optimum (seen: 1.4e-5 with tol = 1e-6): there the log-likelihoods
    must agree to 100 tol and the estimates to 1e-3 of the array's scale.
    """
    (fitted, stats), (rfit, rstats) = ours, ref
    np.testing.assert_array_equal(fitted.status, rfit.status)
    face = np.zeros(len(fitted.status), dtype=bool)
    for Dk, Rk in zip(fitted.D, rfit.D, strict=True):
        face |= rank_deficient(Rk) | rank_deficient(Dk)
    if face.any():
        assert np.abs(fitted.llh[face] - rfit.llh[face]).max() < 100 * tol
        assert scaled_difference(fitted.beta, rfit.beta, face) < 1e-3
        for Dk, Rk in zip(fitted.D, rfit.D, strict=True):
            assert scaled_difference(Dk, Rk, face) < 1e-3
    keep = ~face
    for name in ("beta", "sigma2", "llh"):
        a, b = getattr(fitted, name), getattr(rfit, name)
        assert scaled_difference(a, b, keep) < TOL, name
    for Dk, Rk in zip(fitted.D, rfit.D, strict=True):
        assert scaled_difference(Dk, Rk, keep) < TOL, "D"
    for name in STATISTICS:
        a, b = getattr(stats, name), getattr(rstats, name)
        assert scaled_difference(a, b, keep) < TOL, name


@pytest.mark.parametrize("shape", list(RANEFFS))
@pytest.mark.parametrize("missing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [False, True])
def test_sums_equal_reference_at_fixed_D(shape, missing, weights):
    """Log-likelihood, score and both informations at a given D, every layout."""
    products, re = study(RANEFFS[shape], missing=missing)
    if weights:
        products = with_weights(products)
    rng = np.random.default_rng(5)
    k = RANEFFS[shape]
    B = rng.normal(size=(products.n_voxels, k, k))
    sqrt = [psd_sqrt(B @ B.swapaxes(-1, -2))[1]]
    results = []
    for engine in ("kernels", "numpy"):
        with numpy_engine() if engine == "numpy" else nullcontext():
            prof = profile(products, re, sqrt, True)
            assert isinstance(prof, FusedProfile) == (engine == "kernels")
            curv = curvature(prof)
            out = {"llh": prof.llh(), "beta": prof.beta, "H": prof.H}
            for weight in Weight:
                out[f"score {weight}"] = score_D(curv, prof.sigma2, weight)[0]
                out[f"T {weight}"] = curv.trace_term(0, 0, weight)
            out["U"] = curv.data_term(0, 0)
            out["quadratic"] = curv.quadratic(0, prof.beta)
            out["J"] = observed_information(prof, prof.sigma2)
            out["F"], out["s"] = prof.F, prof.s
            results.append(out)
    for name in results[0]:
        assert scaled_difference(results[0][name], results[1][name]) < TOL, name


def kernel_arguments(products, re, seed=5):
    """Return both kernels' arguments at a random D: (profile's, curvature's)."""
    rng = np.random.default_rng(seed)
    k = re.n_raneffs[0]
    B = rng.normal(size=(products.n_voxels, k, k))
    sqrt = psd_sqrt(B @ B.swapaxes(-1, -2))[1]
    prof = profile(products, re, [sqrt], True)
    base = likelihood._kernel_inputs(products, re, sqrt)
    XtX = np.ascontiguousarray(products.XtX)
    return (*base, XtX, products.XtY, products.YtY), (*base, prof.H, prof.beta)


@pytest.mark.parametrize("missing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [False, True])
def test_lanes_do_not_change_the_sums(missing, weights, monkeypatch):
    """The k = 2 kernels give the same numbers, to the bit, whatever their lane count.

    Each lane does one voxel's operations in the scalar order; 5 lanes leave a
    partial last block (16 voxels) and a count that is no multiple of the SIMD
    width.
    """
    products, re = study(2, missing=missing)
    if weights:
        products = with_weights(products)
    args_p, args_c = kernel_arguments(products, re)
    results = []
    for lanes in (kernels.LANES, 5, 1):
        monkeypatch.setattr(kernels, "LANES", lanes)
        results.append(kernels.profile_sums(*args_p) + kernels.curvature_sums(*args_c))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("missing", [0.0, 0.1])
def test_partial_sums_are_those_of_all_sums(missing):
    """The k = 2 curvature kernel's shorter passes: the same sums, NaN for the rest.

    SUMS_ML: Σ s s', Σ w Bv, Σ w Bv ⊗ Bv; SUMS_REML adds Σ C, Σ (Bv ⊗ C + C ⊗ Bv),
    Σ F ⊗ F; SUMS_ALL adds Σ (s s') ⊗ Bv and Σ s ⊗ F.
    """
    products, re = study(2, missing=missing)
    _, args_c = kernel_arguments(products, re)
    full = kernels.curvature_sums(*args_c, sums=kernels.SUMS_ALL)
    assert all(np.isfinite(a).all() for a in full)
    made = {kernels.SUMS_ML: (0, 1, 3), kernels.SUMS_REML: (0, 1, 2, 3, 4, 5)}
    for sums, names in made.items():
        part = kernels.curvature_sums(*args_c, sums=sums)
        for i, (a, b) in enumerate(zip(part, full, strict=True)):
            if i in names:
                np.testing.assert_array_equal(a, b)
            else:
                assert np.isnan(a).all()


@pytest.mark.parametrize("reml", [True, False])
def test_expected_only_curvature_refuses_observed_terms(reml):
    """curvature(prof, observed=False) gives the step's terms and refuses the rest."""
    products, re = study(2)
    rng = np.random.default_rng(5)
    B = rng.normal(size=(products.n_voxels, 2, 2))
    prof = profile(products, re, [psd_sqrt(B @ B.swapaxes(-1, -2))[1]], reml)
    full, part = curvature(prof), curvature(prof, observed=False)
    weight = Weight.of(reml)
    np.testing.assert_array_equal(part.ss(0), full.ss(0))
    np.testing.assert_array_equal(part.diag_sum(0, weight), full.diag_sum(0, weight))
    np.testing.assert_array_equal(
        part.trace_term(0, 0, weight), full.trace_term(0, 0, weight)
    )
    with pytest.raises(ValueError, match="observed=True"):
        part.data_term(0, 0)
    if not reml:
        with pytest.raises(ValueError, match="observed=True"):
            part.trace_term(0, 0, Weight.P)


@pytest.mark.parametrize("shape", list(RANEFFS))
@pytest.mark.parametrize("missing", [0.0, 0.1])
def test_profile_at_zero_equals_reference(shape, missing):
    """At D = 0 (the OLS start) the profile skips the kernels: the same numbers."""
    products, re = study(RANEFFS[shape], missing=missing)
    k = RANEFFS[shape]
    zero = [np.zeros((products.n_voxels, k, k))]
    prof = profile(products, re, zero, False)
    with numpy_engine():
        ref = profile(products, re, zero, False)
    base = likelihood._kernel_inputs(products, re, zero[0])
    sums = kernels.profile_sums(
        *base, np.ascontiguousarray(products.XtX), products.XtY, products.YtY
    )
    for name, i in (("XtViX", 1), ("H", 4), ("logdetX", 5)):
        np.testing.assert_array_equal(getattr(prof, name), sums[i])
        assert scaled_difference(getattr(prof, name), getattr(ref, name)) < TOL
    np.testing.assert_array_equal(prof.wood.logdet, sums[0])
    for name in ("beta", "S"):
        assert scaled_difference(getattr(prof, name), getattr(ref, name)) < TOL
    assert scaled_difference(prof.llh(), ref.llh()) < TOL


@pytest.mark.parametrize("shape", [*RANEFFS, *BORDERED])
@pytest.mark.parametrize("missing", [0.0, 0.1])
@pytest.mark.parametrize("reml", [True, False])
def test_fit_and_inference_equal_reference(shape, missing, reml):
    """Estimates and statistics, interior and boundary voxels, REML and ML."""
    products, re = make_study(shape, missing=missing)
    assert_same(*both_paths(products, re, reml=reml))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", ["slope", "crossed", "slope_blocked"])
def test_methods_equal_reference(method, shape):
    """The four scoring methods take the same steps on both paths."""
    products, re = make_study(shape, missing=0.1)
    assert_same(*both_paths(products, re, method=method))


def test_fits_stopped_at_maxnit_equal_reference():
    """Fits that reach maxnit (not polished) get their β and σ² on both paths alike."""
    products, re = study(2, missing=0.1)
    ours, ref = both_paths(products, re, maxnit=2, tol=0.0)
    assert (ref[0].status == Status.MAXNIT).any()
    assert_same(ours, ref)


def test_weighted_levels_equal_reference():
    """Level weights (grouped pseudo-levels) enter log|V|, Σ R_jj, Σ R_jj ⊗ R_jj."""
    products, re = study(1, missing=0.1)
    assert_same(*both_paths(with_weights(products), re))


@pytest.mark.parametrize("shape", list(BORDERED))
@pytest.mark.parametrize("missing", [0.0, 0.1])
@pytest.mark.parametrize("reml", [True, False])
def test_bordered_sums_equal_reference_at_fixed_D(shape, missing, reml):
    """Log-likelihood, scores, both informations and their terms, every factor pair."""
    products, re = crossed_study(BORDERED[shape], missing=missing)
    sqrt = random_sqrt(re, products.n_voxels)
    results = []
    for engine in ("kernels", "numpy"):
        with numpy_engine() if engine == "numpy" else nullcontext():
            prof, out = sums_at(products, re, sqrt, reml)
            assert isinstance(prof, FusedProfile) == (engine == "kernels")
            results.append(out)
    for name in results[0]:
        assert scaled_difference(results[0][name], results[1][name]) < TOL, name


def test_bordered_sums_equal_reference_on_the_boundary():
    """The sums where some D_k are zero or singular (Λ_k not invertible)."""
    products, re = crossed_study(BORDERED["slope_border"], missing=0.1)
    sqrt = random_sqrt(re, products.n_voxels)
    sqrt[0][:4] = 0.0  # no subject effect
    sqrt[1][4:8, 1] = 0.0  # site slopes: Λ of rank 1
    sqrt[1][4:8, :, 1] = 0.0
    ours = sums_at(products, re, sqrt, True)[1]
    with numpy_engine():
        ref = sums_at(products, re, sqrt, True)[1]
    for name in ours:
        assert scaled_difference(ours[name], ref[name]) < TOL, name


@pytest.mark.parametrize("n_voxels", [1, LANES, LANES + 1])
def test_bordered_any_number_of_voxels(n_voxels):
    """One voxel, a full chunk of lanes and one more: the same sums as numpy."""
    products, re = crossed_study(BORDERED["crossed"], n_voxels=n_voxels, missing=0.1)
    sqrt = random_sqrt(re, n_voxels)
    ours = sums_at(products, re, sqrt, True)[1]
    with numpy_engine():
        ref = sums_at(products, re, sqrt, True)[1]
    for name in ours:
        assert scaled_difference(ours[name], ref[name]) < TOL, name


@pytest.mark.parametrize("reml", [True, False])
def test_bordered_wide_border_equals_reference(reml):
    """A border of BLAS_FROM columns or more (its s x s products by BLAS, LAPACK)."""
    kw = {"n_sub": 40, "visits": 3, "missing": 0.1, "n_sites": BLAS_FROM + 2}
    products, re = crossed_study(BORDERED["crossed"], **kw)
    assert re.border >= BLAS_FROM
    sqrt = random_sqrt(re, products.n_voxels)
    ours = sums_at(products, re, sqrt, reml)[1]
    with numpy_engine():
        ref = sums_at(products, re, sqrt, reml)[1]
    for name in ours:
        assert scaled_difference(ours[name], ref[name]) < TOL, name
    assert_same(*both_paths(products, re, reml=reml))


def test_bordered_level_weights_take_the_numpy_path():
    """The kernels have no level weights (grouped pseudo-levels are one factor)."""
    products, re = crossed_study(BORDERED["crossed"])
    weighted = replace(products, level_weight=np.ones((1, re.n_levels[0])))
    sqrt = random_sqrt(re, products.n_voxels)
    assert isinstance(profile(products, re, sqrt, True), FusedProfile)
    assert not isinstance(profile(weighted, re, sqrt, True), FusedProfile)


def test_border_sqrt_is_the_block_diagonal_lambda():
    """The compact rows of Λ_s expand to blockdiag(Λ_k per level)."""
    re = RandomEffects((8, 3, 2), (1, 2, 3))
    sqrt = random_sqrt(re, 4)[1:]
    Ls, start = border_sqrt(sqrt, re.n_levels[1:], re.n_raneffs[1:])
    dense = np.zeros((4, re.border, re.border))
    for c in range(re.border):
        b, k = start[:, c]
        dense[:, c, b : b + k] = Ls[:, c, :k]
    np.testing.assert_array_equal(dense, block_diag_factors(sqrt, re.border_effects))


def test_numpy_engine_is_restored():
    """numpy_engine switches the kernels off only inside its block."""
    assert likelihood.USE_KERNELS
    with numpy_engine():
        assert not likelihood.USE_KERNELS
    assert likelihood.USE_KERNELS


@pytest.mark.parametrize("before", [True, False])
def test_pin_threads_sizes_the_kernels_pool(before):
    """A job's kernels use the threads it was given, whether numba started or not."""
    pin = "from blmm_scripts.threads import pin_threads; pin_threads(1)"
    order = f"{pin}; import numba" if before else f"import numba; {pin}"
    show = "import os; print(numba.get_num_threads(), os.environ['OMP_NUM_THREADS'])"
    code = f"{order}; {show}"
    env = {k: v for k, v in os.environ.items() if not k.endswith("NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["1", "1"]


@pytest.mark.parametrize("threads", [1, 2])
def test_in_parallel_runs_every_chunk_once_on_the_pinned_threads(threads):
    """Each chunk once, on as many threads as pinned (at most the machine's cores)."""
    code = f"""
import threading
import numba
from blmm_scripts.threads import in_parallel, pin_threads
pin_threads({threads})
for n_chunks in (0, 1, 2, 3, 17):
    seen, who = [0] * n_chunks, set()
    def kernel(c0, c1, out):
        for c in range(c0, c1):
            out[c] += 1
            who.add(threading.get_ident())
    in_parallel(kernel, n_chunks, (seen,))
    assert seen == [1] * n_chunks, (n_chunks, seen)
    if n_chunks >= 2:
        assert len(who) == min({threads}, numba.config.NUMBA_NUM_THREADS), who
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if not k.endswith("NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok"]
