"""Fisher scoring for the voxelwise mixed model, vectorised across voxels.

Four methods, as in BLMM (Maullin-Sapey & Nichols 2022, section 2.2), each by REML
or ML; β always takes its GLS value given D (the β part of a Fisher-scoring step
with unit step length), so they differ in how σ² and D move:

=====  ==============================================================================
FS     joint step in (σ², vech D_1, ..., vech D_r) with the full expected information
pFS    the same in (σ², vec D_1, ...), with the "pseudo" information Σ R_ij ⊗ R_ij
SFS    σ² profiled (closed form), D_k stepped with its own block of the information
pSFS   as SFS in vec form with the pseudo information (BLMM's default)
=====  ==============================================================================

Every step is accepted only if it does not lower the log-likelihood; otherwise its
length λ is halved and the step is retried from the same point (the original
accepted such steps).  D is projected onto the positive semi-definite cone after
each step, so fits on the boundary converge there.  A voxel has converged when an
iteration changes its log-likelihood by less than `tol`.  Starting values: OLS β,
σ² = e'e/n and one scoring step from D = 0 (Demidenko's moment estimator).
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from blmm_scripts._linalg import psd_project, psd_sqrt, solve_pd
from blmm_scripts.likelihood import (
    Profile,
    Weight,
    curvature,
    expected_information,
    observed_information,
    profile,
    profiled_information,
    score_D,
)
from blmm_scripts.structure import (
    FitResult,
    Products,
    RandomEffects,
    Status,
    duplication_matrix,
    is_fitted,
    unvech,
)

logger = logging.getLogger(__name__)

METHODS = ("pSFS", "SFS", "pFS", "FS")
FALLBACK_STEP = 2.0**-6  # steps this short still fail: go to the next mode
SCORING, FACTOR, GRADIENT = 0, 1, 2
MIN_STEP = 2.0**-30  # a gradient step this short still fails: stationary
CHECK_STEP = 2.0**-12  # the same when the gradient only checks a converged point


def _step(prof: Profile, sigma2: NDArray, method: str, weight: Weight) -> tuple:
    """Return the Fisher-scoring direction and the gradient at `prof`.

    Returns (Δσ² or None, [ΔD_k], dl/dσ² or None, [dl/dD_k]); σ² entries are None
    for the methods that profile σ² out.
    """
    re = prof.re
    curv = curvature(prof, observed=False)
    scores = score_D(curv, sigma2, weight)
    vech_form = method in ("FS", "SFS")
    dups = [duplication_matrix(qk) for qk in re.n_raneffs]

    def vec(A: NDArray) -> NDArray:
        return A.swapaxes(-1, -2).reshape(A.shape[0], -1)

    if method in ("SFS", "pSFS"):
        steps = []
        for k, qk in enumerate(re.n_raneffs):
            info = profiled_information(curv, k, sigma2, weight, pseudo=not vech_form)
            g = vec(scores[k])
            if vech_form:
                info = dups[k].T @ info @ dups[k]
                d = dups[k] @ solve_pd(info, g @ dups[k])[..., None]
                d = d[..., 0]
            else:
                d = solve_pd(info, g)
            steps.append(d.reshape(-1, qk, qk).swapaxes(-1, -2))
        return None, steps, None, scores
    # FS, pFS: joint step in σ² and all of D.
    blocks = []
    for k1 in range(re.r):
        row = []
        for k2 in range(re.r):
            info = expected_information(curv, k1, k2, weight, pseudo=not vech_form)
            if vech_form:
                info = dups[k1].T @ info @ dups[k2]
            row.append(info)
        blocks.append(row)
    s2 = sigma2[:, None]
    col = [
        vec(curv.diag_sum(k, weight).swapaxes(-1, -2)) / (2 * s2) for k in range(re.r)
    ]
    if vech_form:
        col = [c @ dups[k] for k, c in enumerate(col)]
    scores_v = [
        vec(sk) @ dups[k] if vech_form else vec(sk) for k, sk in enumerate(scores)
    ]
    I_ss = prof.n_eff / (2 * sigma2**2)
    g_s = -prof.n_eff / (2 * sigma2) + prof.S / (2 * sigma2**2)
    top = np.concatenate([I_ss[:, None, None], *[c[:, None, :] for c in col]], axis=2)
    rows = [top] + [
        np.concatenate([col[k1][:, :, None], *blocks[k1]], axis=2) for k1 in range(re.r)
    ]
    info = np.concatenate(rows, axis=1)
    g = np.concatenate([g_s[:, None], *scores_v], axis=1)
    d = solve_pd(info, g)
    steps, o = [], 1
    for k, qk in enumerate(re.n_raneffs):
        w = dups[k].shape[1] if vech_form else qk * qk
        dk = d[:, o : o + w]
        if vech_form:
            dk = dk @ dups[k].T
        steps.append(dk.reshape(-1, qk, qk).swapaxes(-1, -2))
        o += w
    return d[:, 0], steps, g_s, scores


def _factor_step(
    prof: Profile, sigma2: NDArray, D: list[NDArray], weight: Weight
) -> tuple[list[NDArray], list[NDArray], NDArray]:
    """Scoring step in factors B_k of D_k = B_k B_k' (σ² profiled out).

    Used on the boundary: a rank-deficient D moves along the set of matrices of its
    rank (its range may rotate), where projected steps in D stall.  Returns
    (B_k, ΔB_k), each (v, q_k, q_k), and the step's gain in the quadratic model,
    g'ΔB / 2 (v,): below tol, D is stationary along its face.
    """
    re = prof.re
    curv = curvature(prof, observed=False)
    scores = score_D(curv, sigma2, weight)
    Bs, dBs = [], []
    gain = np.zeros(prof.beta.shape[0])
    for k, qk in enumerate(re.n_raneffs):
        w, P = np.linalg.eigh(D[k])
        B = P * np.sqrt(np.maximum(w, 0.0))[:, None, :]
        eye = np.eye(qk)
        # vec(dB B' + B dB') = J vec(dB), J = (B ⊗ I) + (I ⊗ B) K
        K = duplication_matrix(qk) @ np.linalg.pinv(duplication_matrix(qk))
        K = 2 * K - np.eye(qk * qk)  # commutation matrix
        J = np.einsum("vab,cd->vacbd", B, eye).reshape(-1, qk * qk, qk * qk)
        J = J + (np.einsum("ab,vcd->vacbd", eye, B).reshape(-1, qk * qk, qk * qk) @ K)
        info = profiled_information(curv, k, sigma2, weight, pseudo=False)
        c = scores[k].shape[0]
        Jt = J.swapaxes(-1, -2)
        g = (Jt @ scores[k].swapaxes(-1, -2).reshape(c, -1, 1))[..., 0]
        d = (np.linalg.pinv(Jt @ info @ J, hermitian=True) @ g[..., None])[..., 0]
        Bs.append(B)
        dBs.append(d.reshape(c, qk, qk).swapaxes(-1, -2))
        gain += 0.5 * np.nan_to_num(np.einsum("va,va->v", g, d))
    return Bs, dBs, gain


def on_face_optimum(D: list[NDArray], scores: list[NDArray], tol: float) -> NDArray:
    """Return where D, stationary on a face of the PSD cone, is the constrained optimum.

    With N the null space of each D_k and G_k = dl/dD_k, a point stationary along
    its face (a factor step gains less than tol) is optimal on the cone when no
    direction off the face ascends, N'G_k N negative semidefinite (the KKT
    conditions): here when its largest eigenvalue is at most `tol`, the
    log-likelihood gained per unit of D moved off the face.  An interior D (no
    null space) passes.
    """
    ok = np.ones(D[0].shape[0], dtype=bool)
    for Dk, Gk in zip(D, scores, strict=True):
        w, P = np.linalg.eigh(Dk)
        null = w <= 1e-10 * np.maximum(w[:, -1:], 1e-300)
        Gn = np.swapaxes(P, -1, -2) @ np.nan_to_num(Gk) @ P
        Gn = np.where(null[:, :, None] & null[:, None, :], Gn, 0.0)
        ok &= np.linalg.eigvalsh(Gn)[:, -1] <= tol
    return ok


def _advance(
    mode: NDArray,
    lam: NDArray,
    check: NDArray,
    idx: NDArray,
    accept: NDArray,
    small: NDArray,
    clipped: NDArray,
    flat: NDArray,
) -> NDArray:
    """Update each voxel's mode and step length after an iteration; return done.

    Scoring steps in D are the rule.  An accepted step that had to be projected back
    into the PSD cone puts D on the boundary: there a projected scoring step can
    stall short of the optimum, so the next steps are taken in factors of D (along
    the boundary) until they converge.  Convergence on the boundary is then checked
    by a scoring step (is anything better off the boundary?) and finally by a
    gradient step, whose projection ascends unless the point satisfies the
    optimality (KKT) conditions.  Failing steps are halved; when they get too short
    the next mode is tried, the gradient last.  `check` is 0 while iterating, 1 while
    a scoring step checks a factor fit, 2 while a gradient step checks the boundary
    (:func:`on_face_optimum` ends a check at once where the point is optimal).

    A rejected step that changed the log-likelihood by less than tol is rounding at
    the optimum, not a step too long, where the scoring step itself predicts a gain
    below tol (`flat`): the fit is done; a factor step is then checked as above.
    """
    m, c = mode[idx], check[idx]
    done = np.zeros(len(idx), dtype=bool)
    # accepted steps
    conv = accept & small
    to_scoring_check = conv & (m == FACTOR) & (c == 0)
    to_gradient_check = conv & (m == SCORING) & clipped & (c < 2)
    done |= conv & ~to_scoring_check & ~to_gradient_check
    moved = accept & ~small
    to_factor = moved & (m == SCORING) & clipped
    back = moved & (m == GRADIENT)
    new_mode = np.where(to_scoring_check | back, SCORING, m)
    new_mode = np.where(to_factor, FACTOR, new_mode)
    new_mode = np.where(to_gradient_check, GRADIENT, new_mode)
    restart = to_scoring_check | to_gradient_check | back | to_factor
    new_lam = np.where(restart, 1.0, np.minimum(1.0, 2.0 * lam[idx]))
    new_check = np.where(moved, 0, c)
    new_check = np.where(to_scoring_check, 1, np.where(to_gradient_check, 2, new_check))
    # rejected steps
    rej = ~accept
    done |= rej & flat & (m == SCORING) & (c == 0)
    at_face = rej & small & (m == FACTOR) & (c == 0)
    new_mode = np.where(at_face, SCORING, new_mode)
    new_check = np.where(at_face, 1, new_check)
    rej = rej & ~at_face
    new_lam = np.where(at_face, 1.0, new_lam)
    half = 0.5 * lam[idx]
    short = rej & (half < FALLBACK_STEP)
    done |= rej & (m == GRADIENT) & (half < np.where(c == 2, CHECK_STEP, MIN_STEP))
    escalate = short & (m < GRADIENT)
    new_lam = np.where(rej, np.where(escalate, 1.0, half), new_lam)
    new_mode = np.where(escalate, np.where(c == 1, GRADIENT, m + 1), new_mode)
    new_check = np.where(escalate & (c == 1), 2, new_check)
    mode[idx], lam[idx], check[idx] = new_mode, new_lam, new_check
    return done


def _polish(
    products: Products,
    re: RandomEffects,
    D: list[NDArray],
    idx: NDArray,
    reml: bool,
    weight: Weight,
    steps: int = 3,
) -> tuple[NDArray, NDArray, NDArray]:
    """Newton steps with the exact observed information at converged fits.

    Convergence on the log-likelihood pins the parameters only to about sqrt(tol);
    Newton steps (σ² profiled out) converge quadratically from there, so estimates
    become exact to rounding and independent of the path that found them (e.g. of
    how the images were split into batches).  Steps that would leave the PSD cone or
    lower the log-likelihood beyond its rounding error are not taken, so fits on the
    boundary keep the estimates their iterations reached.  Updates D in place and
    returns β, σ² (profiled) and the log-likelihood at the final D of the voxels
    `idx`, shapes (n, p), (n,), (n,).
    """
    dups = [duplication_matrix(qk) for qk in re.n_raneffs]
    p = products.XtY.shape[1]
    beta, sigma2, llh = np.empty((idx.size, p)), np.empty(idx.size), np.empty(idx.size)
    at = np.arange(idx.size)  # the positions in idx of the voxels still stepping
    carried = None  # the profile at the updated D of the voxels still stepping
    for _ in range(steps):
        ii = idx[at]
        if ii.size == 0:
            break
        if carried is None:
            sub = products.take(ii)
            prof = profile(sub, re, [psd_sqrt(Dk[ii])[1] for Dk in D], reml)
            beta[at], sigma2[at], llh[at] = prof.beta, prof.sigma2, prof.llh()
        else:
            prof, sub = carried, carried.products
        s2 = prof.sigma2
        curv = curvature(prof)
        J = observed_information(prof, s2, curv)
        H = J[:, 1:, 1:] - J[:, 1:, :1] * J[:, :1, 1:] / J[:, :1, :1]
        scores = score_D(curv, s2, weight)
        del curv
        g = np.concatenate(
            [
                G.swapaxes(-1, -2).reshape(len(ii), -1) @ dups[k]
                for k, G in enumerate(scores)
            ],
            axis=1,
        )
        step = solve_pd(H, g)
        new_D, clipped, o = [], np.zeros(ii.size, dtype=bool), 0
        for Dk, qk, w in zip(D, re.n_raneffs, re.n_vech, strict=True):
            move = unvech(np.nan_to_num(step[:, o : o + w]), qk)
            Dn, clip = psd_project(Dk[ii] + move)
            new_D.append(Dn)
            clipped |= clip
            o += w
        old = prof.llh()
        new_prof = profile(sub, re, [psd_sqrt(Dn)[1] for Dn in new_D], reml)
        new = new_prof.llh()
        # Near the optimum the log-likelihood is flat to its rounding error (S is a
        # difference of large sums of squares, good to ~1e-12 of Y'Y), so a Newton
        # step may show a change of that size either way.
        noise = 1e-9 * np.maximum(1.0, np.abs(old))
        ok = ~clipped & np.isfinite(new) & (new >= old - noise)
        for Dk, Dn in zip(D, new_D, strict=True):
            Dk[ii[ok]] = Dn[ok]
        beta[at[ok]], sigma2[at[ok]], llh[at[ok]] = (
            new_prof.beta[ok],
            new_prof.sigma2[ok],
            new[ok],
        )
        # voxels whose step was already at rounding level need no further step
        scale = np.maximum(
            1.0,
            np.concatenate([np.abs(Dk[ii]).reshape(ii.size, -1) for Dk in D], 1).max(1),
        )
        more = ok & (np.abs(step).max(axis=1) > 1e-12 * scale)
        at = at[more]
        carried = new_prof.take(np.flatnonzero(more))
    return beta, sigma2, llh


def _ols(products: Products, re: RandomEffects) -> Profile:
    """Return the profile at D = 0 by ML: the OLS fit of every voxel."""
    v = products.n_voxels
    zero = [np.zeros((v, qk, qk)) for qk in re.n_raneffs]
    return profile(products, re, zero, reml=False)


def _no_variance(prof: Profile) -> NDArray[np.bool_]:
    """Return where the residuals are zero to rounding (constant data, n = p)."""
    return ~(1e-12 * np.maximum(np.abs(prof.products.YtY), 1e-300) < prof.S)


def _initial_D(ols: Profile) -> list[NDArray]:
    """One ML scoring step from D = 0 at the OLS fit: Demidenko's moment estimator."""
    steps = _step(ols, ols.sigma2, "SFS", Weight.V_INV)[1]
    return [psd_sqrt(np.nan_to_num(s))[0] for s in steps]


def _degenerate(products: Products) -> NDArray[np.int64]:
    """Status of voxels that cannot be fitted at all: rank-deficient or no variance."""
    v = products.n_voxels
    status = np.full(v, Status.OK, dtype=np.int64)
    XtX = products.XtX
    scale = np.sqrt(np.einsum("vii->vi", XtX))
    scale = np.where(scale > 0, scale, 1.0)
    corr = XtX / scale[:, :, None] / scale[:, None, :]
    rank = np.linalg.matrix_rank(corr, tol=1e-10, hermitian=True)
    rank = np.broadcast_to(rank, (v,))
    status[rank < XtX.shape[-1]] = Status.RANK_DEFICIENT
    return status


def fit(
    products: Products,
    re: RandomEffects,
    *,
    method: str = "pSFS",
    reml: bool = True,
    tol: float = 1e-6,
    maxnit: int = 10000,
) -> FitResult:
    """Fit the mixed model at every voxel of a stack.

    Parameters
    ----------
    products : Products
        Product matrices of n_voxels voxels (shared or per-voxel design).
    re : RandomEffects
    method : {"pSFS", "SFS", "pFS", "FS"}
    reml : bool
        REML (default, as BLMM) or ML.
    tol : float
        Convergence when an iteration changes the log-likelihood by less than tol.
    maxnit : int
        Iteration limit; voxels reaching it keep their estimates, status MAXNIT.

    Returns
    -------
    FitResult
        NaN estimates where the status says the voxel was dropped.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    weight = Weight.of(reml)
    v, p = products.n_voxels, products.XtY.shape[1]
    status = _degenerate(products)
    ok = np.flatnonzero(status == Status.OK)
    D = [np.zeros((v, qk, qk)) for qk in re.n_raneffs]
    sigma2 = np.full(v, np.nan)
    llh = np.full(v, np.nan)
    nit = np.zeros(v, dtype=np.int64)
    beta = np.full((v, p), np.nan)
    carried = None  # the profile at the current D of the voxels still iterating

    if ok.size:
        # no residual variance (constant data, n = p): nothing to estimate
        ols = _ols(products.take(ok), re)
        flat = _no_variance(ols)
        status[ok[flat]] = Status.NO_VARIANCE
        ols, ok = ols.take(np.flatnonzero(~flat)), ok[~flat]
    if ok.size:
        sub = products.take(ok)
        D0 = _initial_D(ols)
        del ols  # its per-level arrays, before the next profile's
        sq = [psd_sqrt(Dk)[1] for Dk in D0]
        prof = profile(sub, re, sq, reml)
        no_var = _no_variance(prof)
        with np.errstate(divide="ignore", invalid="ignore"):
            s2 = prof.sigma2
            l0 = prof.llh()
        bad = ~np.isfinite(l0)
        status[ok[no_var]] = Status.NO_VARIANCE
        status[ok[bad & ~no_var]] = Status.NOT_FINITE
        for k in range(re.r):
            D[k][ok] = D0[k]
        sigma2[ok], llh[ok] = s2, l0
        carried = prof.take(np.flatnonzero(~(no_var | bad)))

    lam = np.ones(v)
    mode = np.full(v, SCORING)  # per voxel: scoring in D, in factors, or gradient
    check = np.zeros(v, dtype=np.int8)  # see _advance
    active = status == Status.OK
    for it in range(1, maxnit + 1):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        if carried is None:
            sub = products.take(idx)
            prof = profile(sub, re, [psd_sqrt(Dk[idx])[1] for Dk in D], reml)
        else:
            prof, sub = carried, carried.products
        s2_now = sigma2[idx] if method in ("FS", "pFS") else prof.sigma2
        d_s2, d_D, g_s2, g_D = _step(prof, s2_now, method, weight)
        # the gain of a full scoring step in the quadratic model, g'd / 2
        gain = sum(
            np.sum(np.nan_to_num(g * d), axis=(1, 2))
            for g, d in zip(g_D, d_D, strict=True)
        )
        if d_s2 is not None:
            gain = gain + np.nan_to_num(g_s2 * d_s2)
        flat = 0.5 * gain < tol
        # a converged fit on the boundary whose check is pending: done if optimal
        optimal = np.zeros(len(idx), dtype=bool)
        pending = check[idx] > 0
        if pending.any():
            at = np.flatnonzero(pending)
            Dp = [Dk[idx[at]] for Dk in D]
            fprof = prof.take(at)
            along = _factor_step(fprof, fprof.sigma2, Dp, weight)[2] < tol
            optimal[at] = along & on_face_optimum(Dp, [g[at] for g in g_D], tol)
        step = lam[idx]
        mode_now = mode[idx]
        grad = mode_now == GRADIENT
        if grad.any():
            # Projected scoring steps kept failing (on the boundary of the PSD cone a
            # preconditioned step need not point uphill): follow the gradient, scaled
            # to the scoring step's length; its projection always ascends.
            size = sum(np.sum(d.reshape(len(idx), -1) ** 2, 1) for d in d_D)
            gsize = sum(np.sum(g.reshape(len(idx), -1) ** 2, 1) for g in g_D)
            if d_s2 is not None:
                size, gsize = size + d_s2**2, gsize + g_s2**2
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.nan_to_num(np.sqrt(size / gsize))[grad]
            for k in range(re.r):
                d_D[k][grad] = g_D[k][grad] * scale[:, None, None]
            if d_s2 is not None:
                d_s2[grad] = g_s2[grad] * scale
        clipped = np.zeros(len(idx), dtype=bool)
        new_D = []
        for k in range(re.r):
            Dk, clip = psd_project(
                D[k][idx] + step[:, None, None] * np.nan_to_num(d_D[k])
            )
            new_D.append(Dk)
            clipped |= clip
        fac = np.flatnonzero(mode_now == FACTOR)
        if fac.size:
            fprof = prof.take(fac)
            Bs, dBs, _ = _factor_step(
                fprof, fprof.sigma2, [Dk[idx[fac]] for Dk in D], weight
            )
            for k in range(re.r):
                Bn = Bs[k] + step[fac, None, None] * np.nan_to_num(dBs[k])
                new_D[k][fac] = Bn @ Bn.swapaxes(-1, -2)
        new_prof = profile(sub, re, [psd_sqrt(Dk)[1] for Dk in new_D], reml)
        if d_s2 is None:
            new_s2 = new_prof.sigma2
        else:
            new_s2 = s2_now + step * np.nan_to_num(d_s2)
            new_s2 = np.where(new_s2 > 0, new_s2, 0.5 * s2_now)
            new_s2[fac] = new_prof.sigma2[fac]
        new_llh = new_prof.llh(new_s2)
        old_llh = llh[idx]
        accept = np.isfinite(new_llh) & (new_llh >= old_llh) & ~optimal
        change = np.abs(new_llh - old_llh)
        nit[idx] = it
        a = idx[accept]
        for k in range(re.r):
            D[k][a] = new_D[k][accept]
        sigma2[a] = new_s2[accept]
        llh[a] = new_llh[accept]
        small = change < tol
        done = _advance(mode, lam, check, idx, accept, small, clipped, flat) | optimal
        active[idx[done]] = False
        # D moved where the step was accepted: the profile there is new_prof's
        carried = prof.where(accept, new_prof).take(np.flatnonzero(~done))
        if it % 50 == 0:
            logger.info(
                "iteration %d: %d of %d voxels still iterating", it, active.sum(), v
            )
    status[active] = Status.MAXNIT
    # β and σ² given D in closed form (FS and pFS end within tol of it): from the
    # polishing's last profiles, or a profile of the fits that reached maxnit
    idx = np.flatnonzero(status == Status.OK)
    beta[idx], sigma2[idx], llh[idx] = _polish(products, re, D, idx, reml, weight)
    idx = np.flatnonzero(status == Status.MAXNIT)
    if idx.size:
        prof = profile(products.take(idx), re, [psd_sqrt(Dk[idx])[1] for Dk in D], reml)
        beta[idx], sigma2[idx], llh[idx] = prof.beta, prof.sigma2, prof.llh()
    idx = np.flatnonzero(is_fitted(status))
    bad = ~(np.isfinite(llh[idx]) & np.isfinite(beta[idx]).all(1))
    status[idx[bad]] = Status.NOT_FINITE
    dropped = ~is_fitted(status)
    beta[dropped], sigma2[dropped], llh[dropped] = np.nan, np.nan, np.nan
    for Dk in D:
        Dk[dropped] = np.nan
    codes, n_each = np.unique(status, return_counts=True)
    counts = {Status(c).name: int(k) for c, k in zip(codes, n_each, strict=True)}
    logger.info(
        "fitted %d voxels by %s (%s): %s",
        v,
        method,
        "REML" if reml else "ML",
        dict(counts),
    )
    return FitResult(beta, sigma2, D, llh, nit, status, reml)
