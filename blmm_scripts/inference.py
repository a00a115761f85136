"""Inference at every voxel: covariance of β̂, T and F contrasts, Satterthwaite df.

Satterthwaite degrees of freedom follow lmerTest (Kuznetsova et al. 2017): for a
contrast L with v(θ) = L cov(β̂; θ) L',

    ν = 2 v² / (g' J^-1 g),

g the gradient of v and J the observed information (the Hessian of minus the REML
or ML log-likelihood, profiled over β, as fitted), both with respect to
θ = (σ², vech D_1, ..., vech D_r).  At an interior optimum ν does not depend on how
θ is written, so these equal lmerTest's (θ, σ) values.  (The original BLMM used the
expected ML information at REML estimates: 6 to 18 % off.)  F contrasts follow
lmerTest's contestMD: the eigen-directions of L cov(β̂) L' each get a T-type ν_m,
combined as 2E/(E - m) with E = Σ ν_m/(ν_m - 2).

-log10 p is computed from the regularised incomplete beta function in log space,
with an asymptotic series where it underflows, so it stays finite and exact in the
far tail.  (scipy.stats is not imported: it alone would add 0.4 s to every job.)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from blmm_scripts._linalg import psd_sqrt, solve_pd
from blmm_scripts.likelihood import (
    BlockCurvature,
    Weight,
    curvature,
    observed_information,
    profile,
    score_D,
)
from blmm_scripts.structure import (
    F_STATISTICS,
    T_STATISTICS,
    FitResult,
    Inference,
    Products,
    RandomEffects,
    duplication_matrix,
    is_fitted,
    vech,
)

LN10 = np.log(10.0)
MINLOG = -323.3062153431158


def log_betainc_upper(a: NDArray, b: NDArray, x: NDArray) -> NDArray:
    """Log I_x(a, b), the regularised incomplete beta function, without underflow.

    Uses scipy where I_x(a, b) is representable and, where it underflows, the
    series I_x(a, b) = x^a (1-x)^b / (a B(a, b)) 2F1(a+b, 1; a+1; x) in log form.
    """
    from scipy import special  # here: only the jobs that compute p-values load it

    a, b, x = np.broadcast_arrays(
        *(np.atleast_1d(np.asarray(t, float)) for t in (a, b, x))
    )
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        val = np.log(special.betainc(a, b, x))
        tiny = ~(val > -700.0) & (x > 0) & (x < 1)
        if np.any(tiny):
            at, bt, xt = a[tiny], b[tiny], x[tiny]
            val[tiny] = (
                at * np.log(xt)
                + bt * np.log1p(-xt)
                - np.log(at)
                - special.betaln(at, bt)
                + np.log(special.hyp2f1(at + bt, 1.0, at + 1.0, xt))
            )
    return val


def t_logsf(T: NDArray, df: NDArray) -> NDArray:
    """Log P(t_df > T), finite far into the upper tail."""
    T, df = np.broadcast_arrays(np.asarray(T, float), np.asarray(df, float))
    with np.errstate(invalid="ignore", divide="ignore"):
        # P(|t| > |T|) = I_x(df/2, 1/2) with x = df / (df + T²)
        log_two_tail = log_betainc_upper(df / 2, 0.5, df / (df + T**2)).reshape(T.shape)
        out = np.where(
            T > 0, np.log(0.5) + log_two_tail, np.log1p(-0.5 * np.exp(log_two_tail))
        )
    return out if out.ndim else out[()]


def f_logsf(F: NDArray, df1: NDArray, df2: NDArray) -> NDArray:
    """Log P(F_{df1, df2} > F), finite far into the upper tail."""
    F, df1, df2 = np.broadcast_arrays(*(np.asarray(t, float) for t in (F, df1, df2)))
    with np.errstate(invalid="ignore", divide="ignore"):
        # P(F > f) = I_x(df2/2, df1/2) with x = df2 / (df2 + df1 f)
        out = log_betainc_upper(df2 / 2, df1 / 2, df2 / (df2 + df1 * F))
    out = out.reshape(F.shape)
    return out if out.ndim else out[()]


def _variance_gradient(
    curv: BlockCurvature, sigma2: NDArray, L: NDArray
) -> tuple[NDArray, NDArray]:
    """Return v = σ² L H L' and its gradient in θ, for contrast rows L (v, p).

    dv/dD_k = σ² Σ_j K_j K_j' with K_j = F_j H L', F = Z'V^-1 X (level j of factor
    k): ``curv.quadratic``.
    """
    prof = curv.prof
    HL = np.einsum("vpr,vr->vp", prof.H, L)
    LHL = np.einsum("vp,vp->v", L, HL)
    grads = [LHL[:, None]]
    for k, qk in enumerate(prof.re.n_raneffs):
        KK = curv.quadratic(k, HL) * sigma2[:, None, None]
        grads.append(KK.reshape(len(sigma2), -1) @ duplication_matrix(qk))
    return sigma2 * LHL, np.concatenate(grads, axis=1)


def _psd_cholesky(D: NDArray) -> NDArray:
    """Lower-triangular L with L L' = D for PSD stacks (v, k, k), zero pivots allowed.

    A column whose pivot is ~0 is set to zero (lme4's θ on its lower bound).
    """
    k = D.shape[-1]
    L = np.zeros_like(D)
    scale = np.maximum(np.abs(np.einsum("vii->vi", D)).max(-1), 1e-300)
    for j in range(k):
        d = D[:, j, j] - np.sum(L[:, j, :j] ** 2, axis=-1)
        piv = np.sqrt(np.maximum(d, 0.0))
        on = d > 1e-8 * np.maximum(1.0, scale)
        L[:, j, j] = np.where(on, piv, 0.0)
        for i in range(j + 1, k):
            off = D[:, i, j] - np.sum(L[:, i, :j] * L[:, j, :j], axis=-1)
            L[:, i, j] = np.where(on, off / np.where(on, piv, 1.0), 0.0)
    return L


def cholesky_coordinates(
    D: list[NDArray], scores: list[NDArray], re: RandomEffects
) -> tuple[NDArray, NDArray, NDArray]:
    """Return the change to lme4's coordinates θ = (σ², vech L_1, ..., vech L_r).

    D_k = L_k L_k' with L_k lower triangular, as lme4 writes it (Bates et al. 2015).
    Inside the parameter space this changes nothing in the Satterthwaite df (they
    are invariant at a stationary point).  On the boundary (a singular fit) it is
    what makes them equal lmerTest's: the Hessian in θ gains the curvature term
    Σ_ab (dl/dD_ab) d²D_ab/dθ dθ', because the score in D is not zero there, and
    the columns of L that are zero (θ on its bound) drop out of the problem.

    Returns the Jacobian jac (v, 1+q_u, 1+q_u) with d vech D = jac dθ, the curvature
    term C (v, 1+q_u, 1+q_u), and held (v, 1+q_u), True for the parameters of zero
    columns.
    """
    v = D[0].shape[0]
    size = 1 + re.q_u
    jac = np.zeros((v, size, size))
    C = np.zeros((v, size, size))
    jac[:, 0, 0] = 1.0
    held = np.zeros((v, size), dtype=bool)
    o = 1
    for Dk, Gk, qk, w in zip(D, scores, re.n_raneffs, re.n_vech, strict=True):
        L = _psd_cholesky(Dk)
        rows, cols = np.triu_indices(qk)[::-1]  # vech order: column-wise lower
        for m, (r, c) in enumerate(zip(rows, cols, strict=True)):
            # d D / d L[r, c] = e_r L[:, c]' + L[:, c] e_r'
            dD = np.zeros((v, qk, qk))
            dD[:, r, :] += L[:, :, c]
            dD[:, :, r] += L[:, :, c]
            jac[:, o : o + w, o + m] = vech(dD)
            held[:, o + m] = ~np.any(L[:, :, c] != 0, axis=-1)
            for m2, (r2, c2) in enumerate(zip(rows, cols, strict=True)):
                if c2 == c:  # d²D/dL[r,c] dL[r2,c] = e_r e_r2' + e_r2 e_r'
                    C[:, o + m, o + m2] = 2 * Gk[:, r, r2]
        o += w
    return jac, C, held


def satterthwaite(
    curv: BlockCurvature,
    sigma2: NDArray,
    J: NDArray,
    L: NDArray,
    face: tuple | None = None,
) -> NDArray:
    """Satterthwaite df of contrast rows L (v, p), given the observed information J.

    curv : the level sums at the fit (:func:`blmm_scripts.likelihood.curvature`).
    face : (jac, held) from :func:`cholesky_coordinates`; J is then already in those
    coordinates, with the held parameters' rows and columns set to the identity.
    """
    var, g = _variance_gradient(curv, sigma2, L)
    if face is not None:
        jac, held = face
        g = np.where(held, 0.0, np.einsum("vji,vj->vi", jac, g))
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.einsum("vi,vi->v", g, solve_pd(J, g))
        return np.where(denom > 0, 2 * var**2 / denom, np.nan)


def f_ddf(nu: NDArray, tol: float = 1e-8) -> NDArray:
    """Combine per-direction T df (v, m) into the F df as lmerTest's get_Fstat_ddf."""
    m = nu.shape[1]
    if m == 1:
        return nu[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        E = np.sum(nu / (nu - 2), axis=1)
        out = 2 * E / (E - m)
    out = np.where(np.any(nu <= 2, axis=1), 2.0, out)
    same = np.all(np.abs(np.diff(nu, axis=1)) < tol, axis=1)
    return np.where(same, nu.mean(1), out)


def infer(
    products: Products,
    re: RandomEffects,
    fit_result: FitResult,
    contrasts: list[NDArray],
    *,
    two_sided: bool = False,
    minlog: float = MINLOG,
) -> Inference:
    """Return the statistics of every voxel of a stack at its fitted estimates.

    Parameters
    ----------
    products : Products
        The product matrices the fit used.
    re : RandomEffects
    fit_result : FitResult
    contrasts : list of ndarray
        A 1-D vector (p,) is a T contrast, a 2-D matrix (m, p) an F contrast; each
        kind keeps its order in the list.
    two_sided : bool
        T p-values two-sided instead of BLMM's one-sided upper tail.
    minlog : float
        Kept for BLMM compatibility: replaces -inf in -log10 p maps (it cannot occur
        here, since p-values are computed in log space).

    Returns
    -------
    Inference
        NaN where the fit's status says the voxel was dropped.
    """
    v, p = products.n_voxels, products.XtY.shape[1]
    tcons = [np.asarray(c, float) for c in contrasts if np.ndim(c) == 1]
    fcons = [np.atleast_2d(np.asarray(c, float)) for c in contrasts if np.ndim(c) == 2]
    for c in tcons + fcons:
        if c.shape[-1] != p:
            raise ValueError(
                f"contrast {c.tolist()} has {c.shape[-1]} columns, X has {p}"
            )
    nt, nf = len(tcons), len(fcons)
    out = {"covB": np.full((v, p, p), np.nan), "resms": np.full(v, np.nan)}
    out |= {name: np.full((v, nt), np.nan) for name in T_STATISTICS}
    out |= {name: np.full((v, nf), np.nan) for name in F_STATISTICS}
    idx = np.flatnonzero(is_fitted(fit_result.status))
    if idx.size == 0:
        return Inference(**out)
    sub = products.take(idx)
    sq = [psd_sqrt(Dk[idx])[1] for Dk in fit_result.D]
    prof = profile(sub, re, sq, fit_result.reml)
    sigma2 = fit_result.sigma2[idx]
    beta = fit_result.beta[idx]
    m = len(idx)
    out["covB"][idx] = sigma2[:, None, None] * prof.H
    ete = (
        sub.YtY
        - 2 * np.einsum("vp,vp->v", beta, sub.XtY)
        + np.einsum("vp,vpr,vr->v", beta, np.broadcast_to(sub.XtX, (m, p, p)), beta)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        out["resms"][idx] = ete / (sub.n - p)
    curv = curvature(prof)
    scores = score_D(curv, sigma2, Weight.of(fit_result.reml))
    jac, C, held = cholesky_coordinates([Dk[idx] for Dk in fit_result.D], scores, re)
    face = (jac, held)
    J = jac.swapaxes(-1, -2) @ observed_information(prof, sigma2, curv) @ jac - C
    J = np.where(held[:, :, None] | held[:, None, :], 0.0, J)
    J = J + np.einsum("vi,ij->vij", held.astype(float), np.eye(J.shape[-1]))
    for i, c in enumerate(tcons):
        L = np.broadcast_to(c, (m, p))
        est = beta @ c
        var, _ = _variance_gradient(curv, sigma2, L)
        df = satterthwaite(curv, sigma2, J, L, face)
        with np.errstate(divide="ignore", invalid="ignore"):
            T = est / np.sqrt(var)
        logp = np.log(2) + t_logsf(np.abs(T), df) if two_sided else t_logsf(T, df)
        lp = -logp / LN10
        out["con"][idx, i], out["conSE"][idx, i] = est, np.sqrt(var)
        out["conT"][idx, i], out["conT_swedf"][idx, i] = T, df
        out["conTlp"][idx, i] = np.where(lp == -np.inf, minlog, lp)
    for i, c in enumerate(fcons):
        LHL = np.einsum("ap,vpr,br->vab", c, prof.H, c) * sigma2[:, None, None]
        d, P = np.linalg.eigh(LHL)
        keep = d > 1e-10 * d.max(axis=1, keepdims=True)
        rank = keep.sum(1)
        proj = np.einsum("vam,ap,vp->vm", P, c, beta)
        with np.errstate(divide="ignore", invalid="ignore"):
            F = np.where(keep, proj**2 / d, 0.0).sum(1) / rank
        nu = np.empty((m, c.shape[0]))
        for j in range(c.shape[0]):
            Lj = np.einsum("va,ap->vp", P[:, :, j], c)
            nu[:, j] = satterthwaite(curv, sigma2, J, Lj, face)
        nu = np.where(keep, nu, np.nan)
        # lmerTest drops directions of zero variance; keep the leading ones.
        order = np.argsort(~keep, axis=1, kind="stable")
        nu = np.take_along_axis(nu, order, axis=1)
        ddf = (
            np.array([f_ddf(nu[r : r + 1, : rank[r]])[0] for r in range(m)])
            if (np.any(rank < c.shape[0]))
            else f_ddf(nu)
        )
        lp = -f_logsf(F, rank, ddf) / LN10
        out["conF"][idx, i], out["conF_swedf"][idx, i] = F, ddf
        out["conFlp"][idx, i] = np.where(lp == -np.inf, minlog, lp)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["conR2"][idx, i] = rank * F / (rank * F + ddf)
    return Inference(**out)
