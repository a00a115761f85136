"""Compiled per-voxel kernels for one random factor (numba).

The numpy engine (:mod:`blmm_scripts.likelihood`) works on whole (voxels x levels x
q0 x q0) arrays: for the 1x1 and 2x2 blocks of a random intercept or slope its cost
is memory traffic and numpy's per-call work, not arithmetic.  The kernels here make
one pass over a voxel's levels and keep only the sums the engine needs, so a voxel's
working set stays in cache and no per-level array is written:

* :func:`profile_sums`: log|V| (level weights included), X'V^-1 X, X'V^-1 Y,
  Y'V^-1 Y at D = Λ Λ' (Woodbury, one q0 x q0 block per level);
* :func:`curvature_sums`: at D and the GLS β (H = (X'V^-1 X)^-1), the level sums of
  the scores and informations: Σ s_j s_j', Σ w_j Bv_j, Σ C_j, Σ w_j Bv_j ⊗ Bv_j,
  Σ (Bv_j ⊗ C_j + C_j ⊗ Bv_j), Σ F_j ⊗ F_j, Σ (s_j s_j') ⊗ Bv_j, Σ s_j ⊗ F_j, with
  Bv_j = A_j - A_j G_j A_j (A_j = Z_j'Z_j, G_j = Λ (I + Λ A_j Λ)^-1 Λ),
  F_j = Z_j'V^-1 X, s_j = Z_j'V^-1 ê and C_j = F_j H F_j'.

The formulas are those of :class:`~blmm_scripts.likelihood.BlockCurvature` (the
numpy path, kept as the reference the kernels are tested against); the layouts of
the returned sums are those of ``likelihood.level_sum``.  Voxels run in parallel
(``prange``) on the threads numba is given (:func:`blmm_scripts.threads.pin_threads`
sizes its pool to the job's cores).  Compiled code is
cached next to this file (or in ``NUMBA_CACHE_DIR``), so only the first job of a
machine compiles.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray


@njit(cache=True)
def _strides(A, B, C, D):
    """Return 1 for each array with a voxel axis, 0 for one shared by every voxel."""
    return (
        int(A.shape[0] > 1),
        int(B.shape[0] > 1),
        int(C.shape[0] > 1),
        int(D.shape[0] > 1),
    )


#: Levels summed before their sum joins the total: blocked summation keeps the
#: rounding of X'V^-1 X, X'V^-1 Y, Y'V^-1 Y (differences of large sums) near that
#: of numpy's pairwise sums instead of growing with the number of levels.
BLOCK = 32


@njit(cache=True, inline="always")
def _flush(tot_xx, acc_xx, tot_xy, acc_xy):
    """Add a block's sums to the totals and zero them (the caller adds Y'V^-1 Y)."""
    p = acc_xy.shape[0]
    for c in range(p):
        tot_xy[c] += acc_xy[c]
        acc_xy[c] = 0.0
        for d in range(c, p):
            tot_xx[c, d] += acc_xx[c, d]
            acc_xx[c, d] = 0.0
    return 0.0


@njit(cache=True, inline="always")
def _profile_outputs(v, p):
    """Allocate log|V|, X'V^-1 X, X'V^-1 Y, Y'V^-1 Y, its inverse and log|X'V^-1 X|."""
    return (
        np.empty(v),
        np.empty((v, p, p)),
        np.empty((v, p)),
        np.empty(v),
        np.empty((v, p, p)),
        np.empty(v),
    )


@njit(cache=True, inline="always")
def _curvature_outputs(v, k, p):
    """Allocate the sums of :func:`curvature_sums` for v voxels."""
    return (
        np.empty((v, k, k)),
        np.empty((v, k, k)),
        np.empty((v, k, k)),
        np.empty((v, k, k, k, k)),
        np.empty((v, k, k, k, k)),
        np.empty((v, k, p, k, p)),
        np.empty((v, k, k, k, k)),
        np.empty((v, k, k, p)),
    )


@njit(cache=True, inline="always")
def _start(XtX, XtY):
    """Return a voxel's totals (X'X, X'Y copies) and zeroed block sums."""
    p = XtY.shape[0]
    return XtX.copy(), XtY.copy(), np.zeros((p, p)), np.zeros(p)


@njit(cache=True, inline="always")
def _symmetrise(M):
    """Copy the upper triangle of M onto the lower."""
    for c in range(M.shape[0]):
        for d in range(c):
            M[c, d] = M[d, c]


@njit(cache=True, inline="always")
def _add_logdet(det, w, ld, prod, bad):
    """Add w log(det) to log|V|: levels of weight 1 into a running product.

    Returns (ld, prod, bad); log|V| is ld + log(prod), NaN if bad (det <= 0).
    """
    if not det > 0:
        bad = True
    elif w == 1.0:
        prod *= det
        if prod > 1e150:
            ld += np.log(prod)
            prod = 1.0
    else:
        ld += w * np.log(det)
    return ld, prod, bad


@njit(cache=True, inline="always")
def _cholesky(M, L):
    """Write the lower Cholesky factor of SPD M (k x k) into L; return log|M|.

    Only L's lower triangle is written.  NaN (and L unfinished) where M is not
    positive definite.
    """
    k = M.shape[0]
    logdet = 0.0
    for j in range(k):
        d = M[j, j]
        for t in range(j):
            d -= L[j, t] * L[j, t]
        if not d > 0:
            return np.nan
        L[j, j] = np.sqrt(d)
        logdet += 2.0 * np.log(L[j, j])
        for i in range(j + 1, k):
            e = M[i, j]
            for t in range(j):
                e -= L[i, t] * L[j, t]
            L[i, j] = e / L[j, j]
    return logdet


@njit(cache=True, inline="always")
def _inverse(M, out):
    """Write the inverse of SPD M (k x k) into out; return log|M| (NaN if not PD)."""
    k = M.shape[0]
    if k <= 2:
        return _inverse_with(M, out, M, M)
    return _inverse_with(M, out, np.empty((k, k)), np.empty((k, k)))


@njit(cache=True, inline="always")
def _inverse_with(M, out, L, Li):
    """:func:`_inverse` with (k, k) work arrays L and Li (unused for k <= 2)."""
    k = M.shape[0]
    if k == 1:
        out[0, 0] = 1.0 / M[0, 0]
        return np.log(M[0, 0]) if M[0, 0] > 0 else np.nan
    if k == 2:
        a, b, c = M[0, 0], M[0, 1], M[1, 1]
        det = a * c - b * b
        out[0, 0] = c / det
        out[0, 1] = -b / det
        out[1, 0] = -b / det
        out[1, 1] = a / det
        return np.log(det) if det > 0 else np.nan
    logdet = _cholesky(M, L)
    if np.isnan(logdet):
        for a in range(k):
            for b in range(k):
                out[a, b] = np.nan
        return np.nan
    # inverse of L by forward substitution, then out = L^-T L^-1
    for j in range(k):
        Li[j, j] = 1.0 / L[j, j]
        for i in range(j + 1, k):
            e = 0.0
            for t in range(j, i):
                e -= L[i, t] * Li[t, j]
            Li[i, j] = e / L[i, i]
    for a in range(k):
        for b in range(k):
            e = 0.0
            for t in range(max(a, b), k):
                e += Li[t, a] * Li[t, b]
            out[a, b] = e
    return logdet


@njit(cache=True, inline="always")
def _woodbury_block(Lam, B, G, Minv, T, M):
    """G = Λ (I + Λ B Λ)^-1 Λ for one level; return log|I + Λ B Λ|.

    T and M are k x k work arrays (allocated once per voxel, not per level).
    """
    k = Lam.shape[0]
    for a in range(k):  # T = Λ B
        for b in range(k):
            e = 0.0
            for t in range(k):
                e += Lam[a, t] * B[t, b]
            T[a, b] = e
    for a in range(k):  # M = I + T Λ
        for b in range(k):
            e = 1.0 if a == b else 0.0
            for t in range(k):
                e += T[a, t] * Lam[t, b]
            M[a, b] = e
    logdet = _inverse(M, Minv)
    for a in range(k):  # T = Λ M^-1, G = T Λ
        for b in range(k):
            e = 0.0
            for t in range(k):
                e += Lam[a, t] * Minv[t, b]
            T[a, b] = e
    for a in range(k):
        for b in range(k):
            e = 0.0
            for t in range(k):
                e += T[a, t] * Lam[t, b]
            G[a, b] = e
    return logdet


@njit(cache=True, parallel=True)
def _profile_sums_k(A, ZtX, ZtY, Lam, weight, XtX, XtY, YtY):
    """Return log|V|, X'V^-1 X, X'V^-1 Y, Y'V^-1 Y, H and log|X'V^-1 X| per voxel.

    A (mA, l, k, k) the blocks Z_j'Z_j; ZtX (mX, l k, p); ZtY (v, l k); Lam
    (v, k, k); weight (mW, l) the level weights (ones for real levels); XtX
    (mXX, p, p); XtY (v, p); YtY (v,).  A leading axis of length 1 is shared by
    every voxel.  Shapes out: (v,), (v, p, p), (v, p), (v,).
    """
    v, k = Lam.shape[0], Lam.shape[1]
    n_levels, p = A.shape[1], ZtX.shape[2]
    logdet, XtViX, XtViY, YtViY, H, logdetX = _profile_outputs(v, p)
    sa, sx, sw, sxx = _strides(A, ZtX, weight, XtX)
    for i in prange(v):
        ia, ix, iw, ixx = i * sa, i * sx, i * sw, i * sxx
        G = np.empty((k, k))
        Minv = np.empty((k, k))
        T = np.empty((k, k))
        M = np.empty((k, k))
        GX = np.empty((k, p))
        gy = np.empty(k)
        tot_xx, tot_xy, acc_xx, acc_xy = _start(XtX[ixx], XtY[i])
        tot_yy, acc_yy = YtY[i], 0.0
        ld = 0.0
        for j in range(n_levels):
            if j % BLOCK == BLOCK - 1:
                tot_yy += _flush(tot_xx, acc_xx, tot_xy, acc_xy) + acc_yy
                acc_yy = 0.0
            ld += weight[iw, j] * _woodbury_block(Lam[i], A[ia, j], G, Minv, T, M)
            o = j * k
            for a in range(k):
                e = 0.0
                for b in range(k):
                    e += G[a, b] * ZtY[i, o + b]
                gy[a] = e
                for c in range(p):
                    e = 0.0
                    for b in range(k):
                        e += G[a, b] * ZtX[ix, o + b, c]
                    GX[a, c] = e
            for c in range(p):
                e = 0.0
                for a in range(k):
                    e += ZtX[ix, o + a, c] * gy[a]
                acc_xy[c] -= e
                for d in range(c, p):
                    e = 0.0
                    for a in range(k):
                        e += ZtX[ix, o + a, c] * GX[a, d]
                    acc_xx[c, d] -= e
            for a in range(k):
                acc_yy -= ZtY[i, o + a] * gy[a]
        tot_yy += _flush(tot_xx, acc_xx, tot_xy, acc_xy) + acc_yy
        _symmetrise(tot_xx)
        logdet[i] = ld
        XtViX[i], XtViY[i], YtViY[i] = tot_xx, tot_xy, tot_yy
        logdetX[i] = _inverse(tot_xx, H[i])
    return logdet, XtViX, XtViY, YtViY, H, logdetX


@njit(cache=True, parallel=True)
def _curvature_sums_k(A, ZtX, ZtY, Lam, weight, H, beta):
    """Return the level sums of one factor's scores and informations at each voxel.

    Inputs as :func:`profile_sums`, plus H (v, p, p) = (X'V^-1 X)^-1 and the GLS
    beta (v, p).  Returns, in the layouts of ``likelihood.level_sum``:
    ss (v, k, k) Σ s s'; Bw (v, k, k) Σ w Bv; C (v, k, k) Σ F H F';
    BwBv (v, k, k, k, k) Σ w Bv ⊗ Bv; BC (v, k, k, k, k) Σ (Bv ⊗ C + C ⊗ Bv);
    FF (v, k, p, k, p) Σ F ⊗ F; ssBv (v, k, k, k, k) Σ (s s') ⊗ Bv;
    sF (v, k, k, p) Σ s ⊗ F.
    """
    v, k = Lam.shape[0], Lam.shape[1]
    n_levels, p = A.shape[1], ZtX.shape[2]
    ss, Bw, Cs, BwBv, BC, FF, ssBv, sF = _curvature_outputs(v, k, p)
    sa, sx, sw, _ = _strides(A, ZtX, weight, weight)
    for i in prange(v):
        ia, ix, iw = i * sa, i * sx, i * sw
        G = np.empty((k, k))
        Minv = np.empty((k, k))
        T = np.empty((k, k))
        M = np.empty((k, k))
        AG = np.empty((k, k))
        Bv = np.empty((k, k))
        F = np.empty((k, p))
        FH = np.empty((k, p))
        C = np.empty((k, k))
        r = np.empty(k)
        s = np.empty(k)
        a_ss = np.zeros((k, k))
        a_Bw = np.zeros((k, k))
        a_C = np.zeros((k, k))
        a_BwBv = np.zeros((k, k, k, k))
        a_BC = np.zeros((k, k, k, k))
        a_FF = np.zeros((k, p, k, p))
        a_ssBv = np.zeros((k, k, k, k))
        a_sF = np.zeros((k, k, p))
        for j in range(n_levels):
            Aj = A[ia, j]
            w = weight[iw, j]
            _woodbury_block(Lam[i], Aj, G, Minv, T, M)
            o = j * k
            for a in range(k):  # AG = A_j G_j
                for b in range(k):
                    e = 0.0
                    for t in range(k):
                        e += Aj[a, t] * G[t, b]
                    AG[a, b] = e
            for a in range(k):  # Bv = A - AG A
                for b in range(k):
                    e = Aj[a, b]
                    for t in range(k):
                        e -= AG[a, t] * Aj[t, b]
                    Bv[a, b] = e
            for a in range(k):  # r = Z_j'(y - X β)
                e = ZtY[i, o + a]
                for c in range(p):
                    e -= ZtX[ix, o + a, c] * beta[i, c]
                r[a] = e
            for a in range(k):  # F = (I - AG) Z_j'X, s = (I - AG) r
                e = r[a]
                for t in range(k):
                    e -= AG[a, t] * r[t]
                s[a] = e
                for c in range(p):
                    e = ZtX[ix, o + a, c]
                    for t in range(k):
                        e -= AG[a, t] * ZtX[ix, o + t, c]
                    F[a, c] = e
            for a in range(k):  # FH = F H, C = FH F'
                for c in range(p):
                    e = 0.0
                    for d in range(p):
                        e += F[a, d] * H[i, d, c]
                    FH[a, c] = e
            for a in range(k):
                for b in range(k):
                    e = 0.0
                    for c in range(p):
                        e += FH[a, c] * F[b, c]
                    C[a, b] = e
            for a in range(k):
                for b in range(k):
                    a_ss[a, b] += s[a] * s[b]
                    a_Bw[a, b] += w * Bv[a, b]
                    a_C[a, b] += C[a, b]
                    for c in range(k):
                        for d in range(k):
                            a_BwBv[a, b, c, d] += w * Bv[a, b] * Bv[c, d]
                            a_BC[a, b, c, d] += Bv[a, b] * C[c, d] + C[a, b] * Bv[c, d]
                            a_ssBv[a, b, c, d] += s[a] * s[b] * Bv[c, d]
                    for m in range(p):
                        a_sF[a, b, m] += s[a] * F[b, m]
                        for c in range(p):
                            a_FF[a, m, b, c] += F[a, m] * F[b, c]
        ss[i], Bw[i], Cs[i], BwBv[i], BC[i] = a_ss, a_Bw, a_C, a_BwBv, a_BC
        FF[i], ssBv[i], sF[i] = a_FF, a_ssBv, a_sF
    return ss, Bw, Cs, BwBv, BC, FF, ssBv, sF


@njit(cache=True, parallel=True)
def _profile_sums_1(A, ZtX, ZtY, Lam, weight, XtX, XtY, YtY):
    """:func:`_profile_sums_k` for a random intercept (k = 1), in scalars.

    log|V| is accumulated as a product over the levels of weight 1 (one log per
    1e150 of growth instead of one per level).
    """
    v, n_levels, p = Lam.shape[0], A.shape[1], ZtX.shape[2]
    logdet, XtViX, XtViY, YtViY, H, logdetX = _profile_outputs(v, p)
    sa, sx, sw, sxx = _strides(A, ZtX, weight, XtX)
    for i in prange(v):
        ia, ix, iw, ixx = i * sa, i * sx, i * sw, i * sxx
        lam2 = Lam[i, 0, 0] * Lam[i, 0, 0]
        tot_xx, tot_xy, acc_xx, acc_xy = _start(XtX[ixx], XtY[i])
        tot_yy, acc_yy = YtY[i], 0.0
        ld, prod, bad = 0.0, 1.0, False
        for j in range(n_levels):
            if j % BLOCK == BLOCK - 1:
                tot_yy += _flush(tot_xx, acc_xx, tot_xy, acc_xy) + acc_yy
                acc_yy = 0.0
            Mj = 1.0 + lam2 * A[ia, j, 0, 0]
            g = lam2 / Mj
            ld, prod, bad = _add_logdet(Mj, weight[iw, j], ld, prod, bad)
            y = ZtY[i, j]
            gy = g * y
            acc_yy -= y * gy
            for c in range(p):
                xc = ZtX[ix, j, c]
                acc_xy[c] -= xc * gy
                gxc = g * xc
                for d in range(c, p):
                    acc_xx[c, d] -= gxc * ZtX[ix, j, d]
        tot_yy += _flush(tot_xx, acc_xx, tot_xy, acc_xy) + acc_yy
        _symmetrise(tot_xx)
        logdet[i] = np.nan if bad else ld + np.log(prod)
        XtViX[i], XtViY[i], YtViY[i] = tot_xx, tot_xy, tot_yy
        logdetX[i] = _inverse(tot_xx, H[i])
    return logdet, XtViX, XtViY, YtViY, H, logdetX


@njit(cache=True, parallel=True)
def _curvature_sums_1(A, ZtX, ZtY, Lam, weight, H, beta):
    """:func:`_curvature_sums_k` for a random intercept (k = 1), in scalars."""
    v, n_levels, p = Lam.shape[0], A.shape[1], ZtX.shape[2]
    ss, Bw, Cs, BwBv, BC, FF, ssBv, sF = _curvature_outputs(v, 1, p)
    sa, sx, sw, _ = _strides(A, ZtX, weight, weight)
    for i in prange(v):
        ia, ix, iw = i * sa, i * sx, i * sw
        lam2 = Lam[i, 0, 0] * Lam[i, 0, 0]
        Hi = H[i]
        a_ss = a_Bw = a_C = a_BwBv = a_BC = a_ssBv = 0.0
        a_FF = np.zeros((p, p))
        a_sF = np.zeros(p)
        for j in range(n_levels):
            a = A[ia, j, 0, 0]
            w = weight[iw, j]
            ag = a * lam2 / (1.0 + lam2 * a)
            bv = a - ag * a
            f = 1.0 - ag
            r = ZtY[i, j]
            for c in range(p):
                r -= ZtX[ix, j, c] * beta[i, c]
            s = f * r
            xhx = 0.0
            for c in range(p):
                xc = ZtX[ix, j, c]
                e = 0.0
                for d in range(c + 1, p):
                    e += Hi[c, d] * ZtX[ix, j, d]
                xhx += xc * (Hi[c, c] * xc + 2.0 * e)
            C = f * f * xhx
            a_ss += s * s
            a_Bw += w * bv
            a_C += C
            a_BwBv += w * bv * bv
            a_BC += 2.0 * bv * C
            a_ssBv += s * s * bv
            ff = f * f
            sf = s * f
            for c in range(p):
                xc = ZtX[ix, j, c]
                a_sF[c] += sf * xc
                fxc = ff * xc
                for d in range(c, p):
                    a_FF[c, d] += fxc * ZtX[ix, j, d]
        for c in range(p):
            for d in range(c):
                a_FF[c, d] = a_FF[d, c]
        ss[i, 0, 0], Bw[i, 0, 0], Cs[i, 0, 0] = a_ss, a_Bw, a_C
        BwBv[i, 0, 0, 0, 0], BC[i, 0, 0, 0, 0] = a_BwBv, a_BC
        ssBv[i, 0, 0, 0, 0] = a_ssBv
        FF[i, 0, :, 0, :] = a_FF
        sF[i, 0, 0, :] = a_sF
    return ss, Bw, Cs, BwBv, BC, FF, ssBv, sF


@njit(cache=True, inline="always")
def _woodbury_2(Lam, a, b, c):
    """Random intercept and slope (k = 2): G = Λ (I + Λ A Λ)^-1 Λ in scalars.

    A = [[a, b], [b, c]].  Returns (g00, g01, g11, |I + Λ A Λ|).
    """
    l00, l01, l10, l11 = Lam[0, 0], Lam[0, 1], Lam[1, 0], Lam[1, 1]
    t00, t01 = l00 * a + l01 * b, l00 * b + l01 * c
    t10, t11 = l10 * a + l11 * b, l10 * b + l11 * c
    m00 = 1.0 + t00 * l00 + t01 * l10
    m01 = t00 * l01 + t01 * l11
    m11 = 1.0 + t10 * l01 + t11 * l11
    det = m00 * m11 - m01 * m01
    i00, i01, i11 = m11 / det, -m01 / det, m00 / det
    u00, u01 = l00 * i00 + l01 * i01, l00 * i01 + l01 * i11
    u10, u11 = l10 * i00 + l11 * i01, l10 * i01 + l11 * i11
    return (
        u00 * l00 + u01 * l10,
        u00 * l01 + u01 * l11,
        u10 * l01 + u11 * l11,
        det,
    )


@njit(cache=True, parallel=True)
def _profile_sums_2(A, ZtX, ZtY, Lam, weight, XtX, XtY, YtY):
    """:func:`_profile_sums_k` for a random intercept and slope (k = 2), in scalars."""
    v, n_levels, p = Lam.shape[0], A.shape[1], ZtX.shape[2]
    logdet, XtViX, XtViY, YtViY, H, logdetX = _profile_outputs(v, p)
    sa, sx, sw, sxx = _strides(A, ZtX, weight, XtX)
    for i in prange(v):
        ia, ix, iw, ixx = i * sa, i * sx, i * sw, i * sxx
        tot_xx, tot_xy, acc_xx, acc_xy = _start(XtX[ixx], XtY[i])
        tot_yy, acc_yy = YtY[i], 0.0
        gx0 = np.empty(p)
        gx1 = np.empty(p)
        ld, prod, bad = 0.0, 1.0, False
        for j in range(n_levels):
            if j % BLOCK == BLOCK - 1:
                tot_yy += _flush(tot_xx, acc_xx, tot_xy, acc_xy) + acc_yy
                acc_yy = 0.0
            Aj = A[ia, j]
            g00, g01, g11, det = _woodbury_2(Lam[i], Aj[0, 0], Aj[0, 1], Aj[1, 1])
            ld, prod, bad = _add_logdet(det, weight[iw, j], ld, prod, bad)
            o = 2 * j
            y0, y1 = ZtY[i, o], ZtY[i, o + 1]
            gy0, gy1 = g00 * y0 + g01 * y1, g01 * y0 + g11 * y1
            acc_yy -= y0 * gy0 + y1 * gy1
            for c in range(p):
                x0, x1 = ZtX[ix, o, c], ZtX[ix, o + 1, c]
                acc_xy[c] -= x0 * gy0 + x1 * gy1
                gx0[c] = g00 * x0 + g01 * x1
                gx1[c] = g01 * x0 + g11 * x1
            for c in range(p):
                for d in range(c, p):
                    acc_xx[c, d] -= gx0[c] * ZtX[ix, o, d] + gx1[c] * ZtX[ix, o + 1, d]
        tot_yy += _flush(tot_xx, acc_xx, tot_xy, acc_xy) + acc_yy
        _symmetrise(tot_xx)
        logdet[i] = np.nan if bad else ld + np.log(prod)
        XtViX[i], XtViY[i], YtViY[i] = tot_xx, tot_xy, tot_yy
        logdetX[i] = _inverse(tot_xx, H[i])
    return logdet, XtViX, XtViY, YtViY, H, logdetX


@njit(cache=True, parallel=True)
def _curvature_sums_2(A, ZtX, ZtY, Lam, weight, H, beta):
    """:func:`_curvature_sums_k` for a random intercept and slope (k = 2).

    Symmetric 2 x 2 blocks are kept as their three entries (00, 01, 11), index
    a + b, and expanded into the full layouts at the end.
    """
    v, n_levels, p = Lam.shape[0], A.shape[1], ZtX.shape[2]
    ss, Bw, Cs, BwBv, BC, FF, ssBv, sF = _curvature_outputs(v, 2, p)
    sa, sx, sw, _ = _strides(A, ZtX, weight, weight)
    for i in prange(v):
        ia, ix, iw = i * sa, i * sx, i * sw
        Hi = H[i]
        F = np.empty((2, p))
        HF = np.empty((2, p))
        bv = np.empty(3)
        cc = np.empty(3)
        sv = np.empty(3)
        a_ss = np.zeros(3)
        a_Bw = np.zeros(3)
        a_C = np.zeros(3)
        a_BB = np.zeros((3, 3))
        a_BC = np.zeros((3, 3))
        a_sB = np.zeros((3, 3))
        a_FF = np.zeros((3, p, p))
        a_sF = np.zeros((2, 2, p))
        for j in range(n_levels):
            Aj = A[ia, j]
            a, b, c = Aj[0, 0], Aj[0, 1], Aj[1, 1]
            g00, g01, g11, _ = _woodbury_2(Lam[i], a, b, c)
            w = weight[iw, j]
            ag00, ag01 = a * g00 + b * g01, a * g01 + b * g11
            ag10, ag11 = b * g00 + c * g01, b * g01 + c * g11
            bv[0] = a - (ag00 * a + ag01 * b)
            bv[1] = b - (ag00 * b + ag01 * c)
            bv[2] = c - (ag10 * b + ag11 * c)
            o = 2 * j
            r0, r1 = ZtY[i, o], ZtY[i, o + 1]
            for m in range(p):
                r0 -= ZtX[ix, o, m] * beta[i, m]
                r1 -= ZtX[ix, o + 1, m] * beta[i, m]
            s0 = r0 - (ag00 * r0 + ag01 * r1)
            s1 = r1 - (ag10 * r0 + ag11 * r1)
            for m in range(p):
                x0, x1 = ZtX[ix, o, m], ZtX[ix, o + 1, m]
                F[0, m] = x0 - (ag00 * x0 + ag01 * x1)
                F[1, m] = x1 - (ag10 * x0 + ag11 * x1)
            for t in range(2):
                for m in range(p):
                    e = 0.0
                    for n in range(p):
                        e += Hi[m, n] * F[t, n]
                    HF[t, m] = e
            c00 = c01 = c11 = 0.0
            for m in range(p):
                c00 += F[0, m] * HF[0, m]
                c01 += F[0, m] * HF[1, m]
                c11 += F[1, m] * HF[1, m]
            cc[0], cc[1], cc[2] = c00, c01, c11
            sv[0], sv[1], sv[2] = s0 * s0, s0 * s1, s1 * s1
            for P in range(3):  # BB and BC are symmetric: upper triangle only
                a_ss[P] += sv[P]
                wb = w * bv[P]
                a_Bw[P] += wb
                a_C[P] += cc[P]
                for Q in range(P, 3):
                    a_BB[P, Q] += wb * bv[Q]
                    a_BC[P, Q] += bv[P] * cc[Q] + cc[P] * bv[Q]
                for Q in range(3):
                    a_sB[P, Q] += sv[P] * bv[Q]
            for m in range(p):
                f0, f1 = F[0, m], F[1, m]
                a_sF[0, 0, m] += s0 * f0
                a_sF[0, 1, m] += s0 * f1
                a_sF[1, 0, m] += s1 * f0
                a_sF[1, 1, m] += s1 * f1
                for n in range(m, p):  # the F_0 F_0' and F_1 F_1' blocks: upper
                    a_FF[0, m, n] += f0 * F[0, n]
                    a_FF[2, m, n] += f1 * F[1, n]
                for n in range(p):
                    a_FF[1, m, n] += f0 * F[1, n]
        for P in range(3):
            for Q in range(P):
                a_BB[P, Q], a_BC[P, Q] = a_BB[Q, P], a_BC[Q, P]
        for m in range(p):
            for n in range(m):
                a_FF[0, m, n], a_FF[2, m, n] = a_FF[0, n, m], a_FF[2, n, m]
        for x in range(2):
            for y in range(2):
                ss[i, x, y] = a_ss[x + y]
                Bw[i, x, y] = a_Bw[x + y]
                Cs[i, x, y] = a_C[x + y]
                for z in range(2):
                    for u in range(2):
                        BwBv[i, x, y, z, u] = a_BB[x + y, z + u]
                        BC[i, x, y, z, u] = a_BC[x + y, z + u]
                        ssBv[i, x, y, z, u] = a_sB[x + y, z + u]
                for m in range(p):
                    sF[i, x, y, m] = a_sF[x, y, m]
        for m in range(p):
            for n in range(p):
                FF[i, 0, m, 0, n] = a_FF[0, m, n]
                FF[i, 0, m, 1, n] = a_FF[1, m, n]
                FF[i, 1, n, 0, m] = a_FF[1, m, n]
                FF[i, 1, m, 1, n] = a_FF[2, m, n]
    return ss, Bw, Cs, BwBv, BC, FF, ssBv, sF


def profile_sums(A, ZtX, ZtY, Lam, weight, XtX, XtY, YtY):
    """Return log|V|, X'V^-1 X, X'V^-1 Y, Y'V^-1 Y, H and log|X'V^-1 X| per voxel.

    A (mA, l, k, k) the blocks Z_j'Z_j; ZtX (mX, l k, p); ZtY (v, l k); Lam
    (v, k, k); weight (mW, l) the level weights (ones for real levels); XtX
    (mXX, p, p); XtY (v, p); YtY (v,).  A leading axis of length 1 is shared by
    every voxel.  Shapes out: (v,), (v, p, p), (v, p), (v,), (v, p, p), (v,);
    H = (X'V^-1 X)^-1 by Cholesky, NaN (and log|X'V^-1 X| NaN) where it is not
    positive definite.
    """
    kernel = (_profile_sums_1, _profile_sums_2, _profile_sums_k)[
        min(Lam.shape[-1], 3) - 1
    ]
    return kernel(A, ZtX, ZtY, Lam, weight, XtX, XtY, YtY)


def curvature_sums(A, ZtX, ZtY, Lam, weight, H, beta):
    """Return the level sums of one factor's scores and informations at each voxel.

    Inputs as :func:`profile_sums`, plus H (v, p, p) = (X'V^-1 X)^-1 and the GLS
    beta (v, p).  Returns, in the layouts of ``likelihood.level_sum``:
    ss (v, k, k) Σ s s'; Bw (v, k, k) Σ w Bv; C (v, k, k) Σ F H F';
    BwBv (v, k, k, k, k) Σ w Bv ⊗ Bv; BC (v, k, k, k, k) Σ (Bv ⊗ C + C ⊗ Bv);
    FF (v, k, p, k, p) Σ F ⊗ F; ssBv (v, k, k, k, k) Σ (s s') ⊗ Bv;
    sF (v, k, k, p) Σ s ⊗ F.
    """
    kernel = (_curvature_sums_1, _curvature_sums_2, _curvature_sums_k)[
        min(Lam.shape[-1], 3) - 1
    ]
    return kernel(A, ZtX, ZtY, Lam, weight, H, beta)


def as_weight(level_weight: NDArray | None, n_levels: int) -> NDArray[np.float64]:
    """Return the level weights as the kernels take them: ones when there are none."""
    if level_weight is None:
        return np.ones((1, n_levels))
    return np.ascontiguousarray(level_weight, dtype=np.float64)
