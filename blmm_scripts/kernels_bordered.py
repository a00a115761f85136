"""Compiled per-voxel kernels for several random factors, bordered layout (numba).

Z'Z is the first factor's per-level blocks A_j (q0 x q0), their rows Bm_j (q0 x s)
against the other factors' columns and the border's own block C (s x s)
(:meth:`~blmm_scripts.structure.RandomEffects.unpack_ztz`); Λ = blockdiag(Λ_1 per
level, Λ_s).  One pass over the first factor's levels gives, with G_j = Λ_1 (I +
Λ_1 A_j Λ_1)^-1 Λ_1, the Schur complement of the border and the border's part of
any Z-side vector t = Z'a:

    Css = C - Σ_j Bm_j' G_j Bm_j,      r_t = t_s - Σ_j Bm_j' G_j t_j,

and with S = I + Λ_s Css Λ_s and G_s = Λ_s S^-1 Λ_s (s x s):

    a' V^-1 b = a'b - Σ_j t_a,j' G_j t_b,j - r_a' G_s r_b,
    log|V|    = Σ_j log|I + Λ_1 A_j Λ_1| + log|S|

(the Woodbury form of :func:`blmm_scripts._linalg._woodbury_bordered`, whose
(ΛE) S^-1 (ΛE)' is [-G Bm; I] G_s [-G Bm; I]').  In the same terms, with
N_j = (I - A_j G_j) Bm_j, Z_x = G_s r_X, z = G_s r_ê and Γ = I - G_s Css:

    F_j = (I - A_j G_j)(Z_j'X - Bm_j Z_x),   F_s = Γ' r_X      (Z'V^-1 X)
    s_j = (I - A_j G_j)(Z_j'ê - Bm_j z),     s_s = Γ' r_ê      (Z'V^-1 ê)
    Z'V^-1 Z = [[δ_ij Bv_j - N_i G_s N_j',  N_i Γ], [Γ' N_j',  Css Γ]],

Bv_j = A_j - A_j G_j A_j: the first factor's rows are blocks minus W_i Q W_j' with
W_j = [N_j, F_j] and Q = blockdiag(G_s, H) for Z'PZ (W_j = N_j, Q = G_s for
Z'V^-1 Z), the factored form of :class:`~blmm_scripts.likelihood.BorderedCurvature`
(the numpy path, kept as the reference these kernels are tested against).

* :func:`profile_sums`: log|V|, X'V^-1 X, X'V^-1 Y, Y'V^-1 Y, H = (X'V^-1 X)^-1,
  log|X'V^-1 X|, and Css and r = [r_X, r_Y] for the curvature;
* :func:`curvature_sums`: the level sums of the scores and informations (see
  there) and the border's s x s quantities.

A level touches only the border columns where some voxel has images of it (a
subject sees a few sites or stimuli: :func:`_pattern`), so it costs
O(q0^2 (n_j^2 + n_j p + p^2)) with n_j those columns, and a voxel adds O(s^3) for
the s x s factorisation.  q0 is a compile-time constant (:func:`_effects`), so
the loops over a level's effects unroll.  Chunks of :data:`LANES` voxels, side
by side in a chunk, run in parallel on the threads of
:func:`blmm_scripts.threads.pin_threads` (:func:`blmm_scripts.threads.in_parallel`).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from blmm_scripts.kernels import (
    BLOCK,
    SERIAL_PARALLEL_PASSES,
    _add_logdet,
    _cholesky,
    _inverse_with,
    _lane_flush,
    _symmetrise,
    _woodbury_block,
)
from blmm_scripts.threads import in_parallel

#: Voxels fitted side by side: a parallel task takes LANES voxels and keeps their
#: sums with the lanes last, so each operation of a level runs over the lanes at
#: once (independent operations, not one chain per voxel).  The kernels take it as
#: an argument: LLVM vectorises loops of a run-time length, not loops of a known
#: length as short as 8.
LANES = 8
#: From this border width on, the s x s products of a voxel call BLAS (np.dot)
#: and its inverse LAPACK; below it a call costs more than the loops.
BLAS_FROM = 24


@njit(cache=True)
def _pattern(ZtZ, l0, q0, s):
    """Return the border columns where each level has images at some voxel.

    ZtZ (m, ztz_width) packed as ``RandomEffects.unpack_ztz``.  Returns cols
    (l0, s), the columns of level j in cols[j, :count[j]] in increasing order, and
    count (l0,).
    """
    used = np.zeros((l0, s), dtype=np.bool_)
    for i in range(ZtZ.shape[0]):
        for j in range(l0):
            base = l0 * q0 * q0 + j * q0 * s
            for a in range(q0):
                for c in range(s):
                    if ZtZ[i, base + a * s + c] != 0.0:
                        used[j, c] = True
    cols = np.zeros((l0, s), dtype=np.int64)
    count = np.zeros(l0, dtype=np.int64)
    for j in range(l0):
        for c in range(s):
            if used[j, c]:
                cols[j, count[j]] = c
                count[j] += 1
    return cols, count


@njit(cache=True, inline="always")
def _lane_voxels(chunk, v, nl):
    """Return the voxels of a chunk's nl lanes (the last voxel repeated to fill)."""
    idx = np.empty(nl, dtype=np.int64)
    for lane in range(nl):
        idx[lane] = min(chunk * nl + lane, v - 1)
    return idx


@njit(cache=True, inline="always")
def _fill(out, src, rows, col, shared):
    """out[lane] = src[rows[lane], col]; one read where shared (every row the same)."""
    if shared:
        x = src[0, col]
        for lane in range(out.shape[0]):
            out[lane] = x
    else:
        for lane in range(out.shape[0]):
            out[lane] = src[rows[lane], col]


@njit(cache=True, inline="always")
def _lane_level(ZtZ, ZtX, ZtY, idx, ia, ix, j, l0, q0, cols, n, Al, Uj):
    """Copy level j's A_j and its columns U_j = [Z_j'X, Z_j'Y, Bm_j], every lane.

    Al (q0, q0, nl); Uj (q0, p + 1 + s, nl), Bm_j's columns cols[:n] from
    p + 1 on.  ia and ix are the lanes' rows of ZtZ and ZtX, all 0 where the
    design is shared by every voxel.
    """
    nl, p = idx.shape[0], ZtX.shape[2]
    s = Uj.shape[1] - p - 1
    shared_a, shared_x = ia[nl - 1] == 0, ix[nl - 1] == 0
    o = j * q0
    ob = l0 * q0 * q0 + j * q0 * s
    for a in range(q0):
        for b in range(q0):
            _fill(Al[a, b], ZtZ, ia, j * q0 * q0 + a * q0 + b, shared_a)
        for d in range(p):
            _fill(Uj[a, d], ZtX[:, o + a], ix, d, shared_x)
        _fill(Uj[a, p], ZtY, idx, o + a, False)
        for t in range(n):
            _fill(Uj[a, p + 1 + t], ZtZ, ia, ob + a * s + cols[t], shared_a)


@njit(cache=True, inline="always")
def _dot(X, i, Y, k, lane, q0):
    """Return Σ_a X[a, i, lane] Y[a, k, lane], a sum over a level's effects."""
    e = 0.0
    for a in range(q0):
        e += X[a, i, lane] * Y[a, k, lane]
    return e


@njit(cache=True, inline="always")
def _lane_G(Al, q0, Lam, idx, lam2, G, lg, det, work):
    """Write G_j = Λ (I + Λ A_j Λ)^-1 Λ of every lane into G (q0, q0, nl).

    Al (q0, q0, nl) the lanes' A_j; lam2 (nl,) their Λ^2 (q0 = 1).  Writes
    |I + Λ A_j Λ| = exp(lg) det: as det for q0 = 1 (the caller multiplies them
    up, one log per many levels), as lg otherwise.
    """
    nl = G.shape[2]
    if q0 == 1:
        for lane in range(nl):
            d = 1.0 + lam2[lane] * Al[0, 0, lane]
            G[0, 0, lane] = lam2[lane] / d
            det[lane] = d
        return
    Aj, Gq, Minv, T, M = work
    for lane in range(nl):
        for a in range(q0):
            for b in range(q0):
                Aj[a, b] = Al[a, b, lane]
        lg[lane] = _woodbury_block(Lam[idx[lane]], Aj, Gq, Minv, T, M)
        for a in range(q0):
            for b in range(q0):
                G[a, b, lane] = Gq[a, b]


@njit(cache=True, inline="always")
def _lane_square(Lam, idx, out):
    """Write Λ_1^2 of every lane (q0 = 1) into out (nl,)."""
    for lane in range(idx.shape[0]):
        out[lane] = Lam[idx[lane], 0, 0] * Lam[idx[lane], 0, 0]


@njit(cache=True, inline="always")
def _q0_work(q0):
    """Allocate the q0 x q0 work arrays of a per-lane Woodbury block."""
    return (
        np.empty((q0, q0)),
        np.empty((q0, q0)),
        np.empty((q0, q0)),
        np.empty((q0, q0)),
        np.empty((q0, q0)),
    )


@njit(cache=True, nogil=True, parallel=SERIAL_PARALLEL_PASSES, error_model="numpy")
def _profile_chunks(c0, c1, design, cols, count, l0, effects, nl, outputs):
    """:func:`profile_sums` for the voxels of lane chunks c0 to c1 - 1.

    design: ZtZ, ZtX, ZtY, Lam, Ls, start, XtX, XtY, YtY; cols and count the
    levels' border columns (:func:`_pattern`); effects: q0 as a tuple's length
    (:func:`_effects`); nl the lanes (:data:`LANES`); outputs: log|V|,
    X'V^-1 X, X'V^-1 Y, Y'V^-1 Y, H, log|X'V^-1 X|, Css and r, written in place.
    """
    ZtZ, ZtX, ZtY, Lam, Ls, start, XtX, XtY, YtY = design
    logdet, XtViX, XtViY, YtViY, H, logdetX, Css, r = outputs
    q0, p = len(effects), ZtX.shape[2]
    v, s = Lam.shape[0], Ls.shape[1]
    sa = int(ZtZ.shape[0] > 1)
    sx = int(ZtX.shape[0] > 1)
    sxx = int(XtX.shape[0] > 1)
    w = l0 * q0
    base_c = w * q0 + w * s
    # every voxel's sums, lanes last (the inner loops run over lanes); work arrays
    # made once for all chunks
    tot_xx = np.empty((p, p, nl))
    tot_xy = np.empty((p, nl))
    acc_xx = np.empty((p, p, nl))
    acc_xy = np.empty((p, nl))
    acc_yy = np.empty(nl)
    yy = np.empty(nl)
    Cl = np.empty((s, s, nl))
    rl = np.empty((s, p + 1, nl))
    ld = np.empty(nl)
    prod = np.empty(nl)
    bad = np.empty(nl, dtype=np.bool_)
    G = np.empty((q0, q0, nl))
    Al = np.empty((q0, q0, nl))
    Uj = np.empty((q0, p + 1 + s, nl))
    GU = np.empty((q0, p + 1 + s, nl))
    lg = np.zeros(nl)  # written by _lane_G for q0 > 1 only,
    det = np.ones(nl)  # for q0 = 1 only
    lam2 = np.empty(nl)
    work = _q0_work(q0)
    Sm = np.empty((s, s))
    Ts = np.empty((s, s))
    L = np.zeros((s, s))
    ut = np.empty((p + 1, s))
    Lp = np.empty((p, p))
    Lip = np.empty((p, p))
    for chunk in range(c0, c1):
        idx = _lane_voxels(chunk, v, nl)
        ia, ix = idx * sa, idx * sx
        acc_xx[:] = 0.0
        acc_xy[:] = 0.0
        acc_yy[:] = 0.0
        yy[:] = 0.0
        ld[:] = 0.0
        prod[:] = 1.0
        bad[:] = False
        _lane_square(Lam, idx, lam2)
        for lane in range(nl):
            i = idx[lane]
            for c in range(p):
                tot_xy[c, lane] = XtY[i, c]
                for d in range(p):
                    tot_xx[c, d, lane] = XtX[i * sxx, c, d]
            for c in range(s):  # Css = C, r = the border's rows of [Z'X, Z'Y]
                for d in range(s):
                    Cl[c, d, lane] = ZtZ[ia[lane], base_c + c * s + d]
                for e in range(p):
                    rl[c, e, lane] = ZtX[ix[lane], w + c, e]
                rl[c, p, lane] = ZtY[i, w + c]
        for j in range(l0):
            if j % BLOCK == BLOCK - 1:
                _lane_flush(tot_xx, acc_xx, tot_xy, acc_xy, yy, acc_yy)
            n = count[j]
            _lane_level(ZtZ, ZtX, ZtY, idx, ia, ix, j, l0, q0, cols[j], n, Al, Uj)
            _lane_G(Al, q0, Lam, idx, lam2, G, lg, det, work)
            for lane in range(nl):
                ld[lane] += lg[lane]
                ld[lane], prod[lane], bad[lane] = _add_logdet(
                    det[lane], 1.0, ld[lane], prod[lane], bad[lane]
                )
            for a in range(q0):  # G_j U_j
                for k in range(p + 1 + n):
                    for lane in range(nl):
                        e = 0.0
                        for b in range(q0):
                            e += G[a, b, lane] * Uj[b, k, lane]
                        GU[a, k, lane] = e
            for c in range(p):  # U_j' G_j U_j: X'X, X'Y, Y'Y, Css and r
                for d in range(c, p):
                    for lane in range(nl):
                        acc_xx[c, d, lane] -= _dot(Uj, c, GU, d, lane, q0)
                for lane in range(nl):
                    acc_xy[c, lane] -= _dot(Uj, c, GU, p, lane, q0)
            for lane in range(nl):
                acc_yy[lane] += _dot(Uj, p, GU, p, lane, q0)
            for t in range(n):
                c, u = cols[j, t], p + 1 + t
                for t2 in range(t, n):
                    c2, u2 = cols[j, t2], p + 1 + t2
                    for lane in range(nl):
                        Cl[c, c2, lane] -= _dot(Uj, u, GU, u2, lane, q0)
                for d in range(p + 1):
                    for lane in range(nl):
                        rl[c, d, lane] -= _dot(GU, u, Uj, d, lane, q0)
        _lane_flush(tot_xx, acc_xx, tot_xy, acc_xy, yy, acc_yy)
        for lane in range(min(nl, v - chunk * nl)):
            i = idx[lane]
            Ci, ri, tot_xx_i, tot_xy_i = Css[i], r[i], XtViX[i], XtViY[i]
            for c in range(s):
                for d in range(c, s):
                    Ci[c, d] = Cl[c, d, lane]
                    Ci[d, c] = Cl[c, d, lane]
                for d in range(p + 1):
                    ri[c, d] = rl[c, d, lane]
            for c in range(p):
                tot_xy_i[c] = tot_xy[c, lane]
                for d in range(c, p):
                    tot_xx_i[c, d] = tot_xx[c, d, lane]
            # the border: S = I + Λ_s Css Λ_s = L L', u = L^-1 Λ_s r
            _sandwich(Ls[i], start, Ci, Sm, Ts, True)
            ld_s = _cholesky(Sm, L)
            if np.isnan(ld_s):  # not positive definite: every sum NaN
                L[:, :] = np.nan
            for c in range(s):  # ut = u' (p + 1, s), by forward substitution
                b = start[0, c]
                for e in range(p + 1):
                    x = 0.0
                    for t in range(start[1, c]):
                        x += Ls[i, c, t] * ri[b + t, e]
                    for t in range(c):
                        x -= L[c, t] * ut[e, t]
                    ut[e, c] = x / L[c, c]
            for c in range(p):
                x = 0.0
                for t in range(s):
                    x += ut[c, t] * ut[p, t]
                tot_xy_i[c] -= x
                for d in range(c, p):
                    x = 0.0
                    for t in range(s):
                        x += ut[c, t] * ut[d, t]
                    tot_xx_i[c, d] -= x
            x = 0.0
            for t in range(s):
                x += ut[p, t] * ut[p, t]
            _symmetrise(tot_xx_i)
            ok = not (bad[lane] or np.isnan(ld_s))
            logdet[i] = ld[lane] + np.log(prod[lane]) + ld_s if ok else np.nan
            YtViY[i] = YtY[i] - yy[lane] - x
            logdetX[i] = _inverse_with(tot_xx_i, H[i], Lp, Lip)


@njit(cache=True, inline="always")
def _sandwich(Ls, start, X, out, T, identity):
    """Write [I +] Λ_s X Λ_s into out, Λ_s block diagonal and given by its rows.

    Ls (s, k): Λ_s[c, start[0, c] + t] = Ls[c, t] for t < start[1, c] (the rest
    of row c zero); X (s, s) symmetric; T an (s, s) work array.  Row by row
    (contiguous, so the inner loops vectorise): T = (Λ_s X)', out = Λ_s T.
    """
    s = X.shape[0]
    if Ls.shape[1] == 1:  # random intercepts only: Λ_s diagonal
        for c in range(s):
            lc = Ls[c, 0]
            for d in range(s):
                out[c, d] = lc * X[c, d] * Ls[d, 0]
            if identity:
                out[c, c] += 1.0
        return
    for c in range(s):
        for d in range(s):
            out[c, d] = 0.0
        b = start[0, c]
        for t in range(start[1, c]):
            lam = Ls[c, t]
            for d in range(s):
                out[c, d] += lam * X[b + t, d]
    for c in range(s):
        for d in range(s):
            T[c, d] = out[d, c]
    for c in range(s):
        for d in range(s):
            out[c, d] = 1.0 if identity and c == d else 0.0
        b = start[0, c]
        for t in range(start[1, c]):
            lam = Ls[c, t]
            for d in range(s):
                out[c, d] += lam * T[b + t, d]


@njit(cache=True, inline="always")
def _matmul(A, B, out):
    """Write A @ B into out (contiguous arrays): BLAS from BLAS_FROM rows of A."""
    if A.shape[0] >= BLAS_FROM:
        np.dot(A, B, out)
        return
    for c in range(A.shape[0]):  # row by row: the inner loops are contiguous
        for d in range(B.shape[1]):
            out[c, d] = 0.0
        for t in range(A.shape[1]):
            x = A[c, t]
            for d in range(B.shape[1]):
                out[c, d] += x * B[t, d]


@njit(cache=True, inline="always")
def _border(Css, r, beta, Gs, Gam, Rss, Fs, ss, Zr, CG, CGr):
    """Write the border's quantities of one voxel from Css, r and G_s.

    Writes Γ = I - G_s Css, Css Γ (the border's block of Z'V^-1 Z), F_s = Γ' r_X,
    s_s = Γ' r_ê and Zr = [G_s r_X, G_s r_ê] (s, p + 1), with r_ê = r_Y - r_X β;
    CG (s, s) and CGr (s, p + 1) are work arrays.
    """
    s, p = Css.shape[0], beta.shape[0]
    _matmul(Css, Gs, CG)
    _matmul(CG, Css, Rss)
    _matmul(CG, r, CGr)
    _matmul(Gs, r, Zr)
    for c in range(s):
        for d in range(s):
            Rss[c, d] = Css[c, d] - Rss[c, d]
            Gam[c, d] = (1.0 if c == d else 0.0) - CG[d, c]
        e, z = r[c, p] - CGr[c, p], Zr[c, p]
        for d in range(p):
            Fs[c, d] = r[c, d] - CGr[c, d]
            e -= Fs[c, d] * beta[d]
            z -= Zr[c, d] * beta[d]
        ss[c], Zr[c, p] = e, z


@njit(cache=True, nogil=True, parallel=SERIAL_PARALLEL_PASSES, error_model="numpy")
def _curvature_chunks(c0, c1, design, reml, cols, count, l0, effects, nl, out):
    """:func:`curvature_sums` for the voxels of lane chunks c0 to c1 - 1.

    design: ZtZ, ZtX, ZtY, Lam, Ls, start, Css, r, H, beta; the others as
    :func:`_profile_chunks`; out as :func:`_curvature_arrays`, written in place.
    """
    ZtZ, ZtX, ZtY, Lam, Ls, start, Css, r, H, beta = design
    q0, p = len(effects), ZtX.shape[2]
    v, s = Lam.shape[0], Ls.shape[1]
    m = s + p
    ss, Bs, CN, CF, BB, BCN, BCF, ssB, WW, sW = out[:10]
    Gs, Gam, Rss, RPss, Fs, s_s, TQ, EQE = out[10:]
    sa = int(ZtZ.shape[0] > 1)
    sx = int(ZtX.shape[0] > 1)
    # each lane's border quantities, and its G_s, Zr, H, beta lanes last; work
    # arrays made once for all chunks
    Sm = np.empty((s, s))
    Sinv = np.empty((s, s))
    Ts = np.empty((s, s))
    Zr = np.empty((s, p + 1))
    CGr = np.empty((s, p + 1))
    CG = np.empty((s, s))
    FHs = np.empty((s, p))
    Lw = np.empty((s, s))
    Liw = np.empty((s, s))
    Gl = np.empty((s, s, nl))
    Zl = np.empty((s, p + 1, nl))
    Hl = np.empty((p, p, nl))
    bl = np.empty((p, nl))
    work = _lane_work(q0, s, p, nl)
    QS = np.empty((q0, q0, m, m))
    QE = np.empty((q0, q0, m))
    Sb = np.empty((m, m))
    for chunk in range(c0, c1):
        idx = _lane_voxels(chunk, v, nl)
        ia, ix = idx * sa, idx * sx
        _lane_square(Lam, idx, work[14])
        for lane in range(nl):
            i = idx[lane]
            Hi, Gsi = H[i], Gs[i]
            _sandwich(Ls[i], start, Css[i], Sm, Ts, True)
            if s >= BLAS_FROM and np.isfinite(Sm).all():
                Sinv[:, :] = np.linalg.inv(Sm)  # LAPACK; Sm is I + a PSD matrix
            else:
                _inverse_with(Sm, Sinv, Lw, Liw)
            _sandwich(Ls[i], start, Sinv, Gsi, Ts, False)
            _border(
                Css[i], r[i], beta[i], Gsi, Gam[i], Rss[i], Fs[i], s_s[i], Zr, CG, CGr
            )
            for c in range(s):  # Z'PZ's border block: Css Γ - F_s H F_s'
                for d in range(p):
                    e = 0.0
                    for t in range(p):
                        e += Fs[i, c, t] * Hi[t, d]
                    FHs[c, d] = e
                for d in range(c + 1):
                    e = Rss[i, c, d]
                    for t in range(p):
                        e -= FHs[c, t] * Fs[i, d, t]
                    RPss[i, c, d] = e
                    RPss[i, d, c] = e
            for c in range(s):
                for d in range(s):
                    Gl[c, d, lane] = Gsi[c, d]
                for d in range(p + 1):
                    Zl[c, d, lane] = Zr[c, d]
            for c in range(p):
                bl[c, lane] = beta[i, c]
                for d in range(p):
                    Hl[c, d, lane] = Hi[c, d]
        sums = (
            ss[chunk],
            Bs[chunk],
            CN[chunk],
            CF[chunk],
            BB[chunk],
            BCN[chunk],
            BCF[chunk],
            ssB[chunk],
            WW[chunk],
            sW[chunk],
        )
        design, lanes, per_lane = (ZtZ, ZtX, ZtY, Lam), (idx, ia, ix), (Gl, Zl, Hl, bl)
        for j in range(l0):
            _curvature_level(
                design, lanes, per_lane, j, l0, q0, cols[j], count[j], sums, work
            )
        WWc, sWc = WW[chunk], sW[chunk]
        for x in range(q0):  # W ⊗ W from its entries c q0 + x <= d q0 + y
            for y in range(q0):
                for c in range(m):
                    for d in range(m):
                        if c * q0 + x > d * q0 + y:
                            for lane in range(nl):
                                WWc[x, c, y, d, lane] = WWc[y, d, x, c, lane]
        for lane in range(min(nl, v - chunk * nl)):
            i = idx[lane]
            _low_rank_terms(
                WWc[:, :, :, :, lane],
                sWc[:, :, :, lane],
                Gs[i],
                H[i],
                reml,
                q0,
                QS,
                QE,
                Sb,
                TQ[i],
                EQE[i],
            )


@njit(cache=True, inline="always")
def _lane_work(q0, s, p, nl):
    """Allocate the per-level work arrays of :func:`_curvature_level`, lanes last.

    Λ_1^2 (nl,) is written per chunk (:func:`_lane_square`).
    """
    return (
        np.empty((q0, q0, nl)),
        np.empty((q0, q0, nl)),
        np.empty((q0, q0, nl)),
        np.empty((q0, q0, nl)),
        np.empty((q0, p + 1 + s, nl)),
        np.empty((q0, p + 1, nl)),
        np.empty((q0, s, nl)),
        np.empty((s, q0, nl)),
        np.empty((q0, p + 1, nl)),
        np.empty((q0, p, nl)),
        np.empty((q0, q0, nl)),
        np.empty((q0, q0, nl)),
        np.zeros(nl),
        np.ones(nl),
        np.empty(nl),
        _q0_work(q0),
    )


@njit(cache=True, inline="always")
def _curvature_level(design, lanes, per_lane, j, l0, q0, cols, n, sums, work):
    """Add level j's terms to the level sums of a chunk's lanes.

    design: ZtZ, ZtX, ZtY, Lam; lanes: the lanes' voxels and their rows of ZtZ and
    ZtX (:func:`_lane_level`); per_lane: Gl (s, s, nl), Zl (s, p + 1, nl), Hl
    (p, p, nl), bl (p, nl), each lane's G_s, [Z_x, z], H and beta; cols[:n] the
    level's border columns.
    """
    ZtZ, ZtX, ZtY, Lam = design
    idx, ia, ix = lanes
    Gl, Zl, Hl, bl = per_lane
    s, p = Gl.shape[0], Hl.shape[0]
    G, Al, AG, Bv, Uj, tx, N, GN, Fx, FH, Cn, Cf, lg, det, lam2, q0w = work
    ssl, Bsl, CNl, CFl, BBl, BCNl, BCFl, ssBl, WWl, sWl = sums
    nl = idx.shape[0]
    _lane_level(ZtZ, ZtX, ZtY, idx, ia, ix, j, l0, q0, cols, n, Al, Uj)
    _lane_G(Al, q0, Lam, idx, lam2, G, lg, det, q0w)
    for a in range(q0):  # AG = A_j G_j
        for b in range(q0):
            for lane in range(nl):
                e = 0.0
                for k in range(q0):
                    e += Al[a, k, lane] * G[k, b, lane]
                AG[a, b, lane] = e
    for a in range(q0):  # Bv = A - AG A
        for b in range(q0):
            for lane in range(nl):
                e = Al[a, b, lane]
                for k in range(q0):
                    e -= AG[a, k, lane] * Al[k, b, lane]
                Bv[a, b, lane] = e
    for a in range(q0):  # tx = [Z_j'X - Bm_j Z_x, Z_j'ê - Bm_j z]
        for d in range(p + 1):
            for lane in range(nl):
                tx[a, d, lane] = Uj[a, d, lane]
            for t in range(n):
                c = cols[t]
                for lane in range(nl):
                    tx[a, d, lane] -= Uj[a, p + 1 + t, lane] * Zl[c, d, lane]
        for d in range(p):
            for lane in range(nl):
                tx[a, p, lane] -= Uj[a, d, lane] * bl[d, lane]
    for a in range(q0):  # N = (I - AG) Bm_j, [F, s] = (I - AG) tx
        for t in range(n):
            for lane in range(nl):
                e = Uj[a, p + 1 + t, lane]
                for b in range(q0):
                    e -= AG[a, b, lane] * Uj[b, p + 1 + t, lane]
                N[a, t, lane] = e
        for d in range(p + 1):
            for lane in range(nl):
                e = tx[a, d, lane]
                for b in range(q0):
                    e -= AG[a, b, lane] * tx[b, d, lane]
                Fx[a, d, lane] = e
    for a in range(q0):  # FH = F H
        for d in range(p):
            for lane in range(nl):
                FH[a, d, lane] = 0.0
            for c in range(p):
                for lane in range(nl):
                    FH[a, d, lane] += Fx[a, c, lane] * Hl[c, d, lane]
    for b in range(q0):  # GN = G_s N' on the level's columns
        for t in range(n):
            c = cols[t]
            for lane in range(nl):
                GN[t, b, lane] = 0.0
            for t2 in range(n):
                c2 = cols[t2]
                for lane in range(nl):
                    GN[t, b, lane] += Gl[c, c2, lane] * N[b, t2, lane]
    for a in range(q0):  # C_j of both low-rank parts: N G_s N', F H F'
        for b in range(q0):
            for lane in range(nl):
                Cn[a, b, lane] = 0.0
                Cf[a, b, lane] = 0.0
            for t in range(n):
                for lane in range(nl):
                    Cn[a, b, lane] += N[a, t, lane] * GN[t, b, lane]
            for d in range(p):
                for lane in range(nl):
                    Cf[a, b, lane] += FH[a, d, lane] * Fx[b, d, lane]
    for a in range(q0):  # the q0 x q0 sums
        for b in range(q0):
            for lane in range(nl):
                ssl[a, b, lane] += Fx[a, p, lane] * Fx[b, p, lane]
                Bsl[a, b, lane] += Bv[a, b, lane]
                CNl[a, b, lane] += Cn[a, b, lane]
                CFl[a, b, lane] += Cf[a, b, lane]
            for c in range(q0):
                for d in range(q0):
                    for lane in range(nl):
                        bv, bv2 = Bv[a, b, lane], Bv[c, d, lane]
                        BBl[a, b, c, d, lane] += bv * bv2
                        BCNl[a, b, c, d, lane] += (
                            bv * Cn[c, d, lane] + Cn[a, b, lane] * bv2
                        )
                        BCFl[a, b, c, d, lane] += (
                            bv * Cf[c, d, lane] + Cf[a, b, lane] * bv2
                        )
                        ssBl[a, b, c, d, lane] += Fx[a, p, lane] * Fx[b, p, lane] * bv2
    for x in range(q0):  # W_j ⊗ W_j (entries c q0 + x <= d q0 + y) and s_j ⊗ W_j
        for y in range(q0):
            after = int(x > y)
            for t in range(n):
                c = cols[t]
                for t2 in range(t + after, n):
                    c2 = cols[t2]
                    for lane in range(nl):
                        WWl[x, c, y, c2, lane] += N[x, t, lane] * N[y, t2, lane]
                for d in range(p):
                    for lane in range(nl):
                        WWl[x, c, y, s + d, lane] += N[x, t, lane] * Fx[y, d, lane]
                for lane in range(nl):
                    sWl[x, y, c, lane] += Fx[x, p, lane] * N[y, t, lane]
            for c in range(p):
                for d in range(c + after, p):
                    for lane in range(nl):
                        WWl[x, s + c, y, s + d, lane] += Fx[x, c, lane] * Fx[y, d, lane]
                for lane in range(nl):
                    sWl[x, y, s + c, lane] += Fx[x, p, lane] * Fx[y, c, lane]


@njit(cache=True, inline="always")
def _low_rank_terms(WW, sW, Gs, H, reml, q0, QS, QE, Sb, TQ, EQE):
    """Write one voxel's low-rank terms of the first factor's trace and data sums.

    TQ[a,b,c,d] = tr(Q S_cd Q S_ab) with S_xy[m,n] = WW[x,m,y,n] (Z'PZ, or Z'V^-1 Z
    when not reml: Q = G_s and S's border part only) and
    EQE[a,b,c,d] = Σ_mn E[a,b,m] Q[m,n] E[d,c,n] with E = sW (Z'PZ); Q is
    blockdiag(G_s, H).  QS (q0, q0, m, m), QE (q0, q0, m) and Sb (m, m) are work
    arrays.
    """
    s, p = Gs.shape[0], H.shape[0]
    mq = s + p if reml else s
    for x in range(q0):
        for y in range(q0):
            for i in range(s + p):
                e = 0.0  # QE = Q E_xy
                if i < s:
                    for k in range(s):
                        e += Gs[i, k] * sW[x, y, k]
                else:
                    for k in range(p):
                        e += H[i - s, k] * sW[x, y, s + k]
                QE[x, y, i] = e
            for i in range(s + p):  # QS = Q S_xy
                for j in range(s + p):
                    Sb[i, j] = WW[x, i, y, j]
            _matmul(Gs, Sb[:s], QS[x, y, :s])
            _matmul(H, Sb[s:], QS[x, y, s:])
    for a in range(q0):
        for b in range(q0):
            for c in range(q0):
                for d in range(q0):
                    e = 0.0
                    for i in range(mq):
                        for j in range(mq):
                            e += QS[c, d, i, j] * QS[a, b, j, i]
                    TQ[a, b, c, d] = e
                    e = 0.0
                    for i in range(s + p):
                        e += sW[a, b, i] * QE[d, c, i]
                    EQE[a, b, c, d] = e


def profile_sums(ZtZ, ZtX, ZtY, Lam, Ls, start, XtX, XtY, YtY, l0):
    """Return log|V|, X'V^-1 X, X'V^-1 Y, Y'V^-1 Y, H, log|X'V^-1 X|, Css and r.

    ZtZ (mA, ztz_width) the packed bordered Z'Z; ZtX (mX, q, p); ZtY (v, q); Lam
    (v, q0, q0) the first factor's Λ_1; Ls (v, s, k) and start (2, s) the border's
    Λ_s in compact rows (:func:`border_sqrt`); XtX (mXX, p, p); XtY (v, p); YtY
    (v,); l0 the first factor's number of levels.  A leading axis of length 1 is
    shared by every voxel.  The first six as
    :func:`blmm_scripts.kernels.profile_sums`; Css (v, s, s) and r (v, s, p + 1)
    as this module's docstring, the inputs of :func:`curvature_sums`.
    """
    v, s, p = Lam.shape[0], Ls.shape[1], ZtX.shape[2]
    cols, count = _pattern(ZtZ, l0, Lam.shape[-1], s)
    shapes = [(v,), (v, p, p), (v, p), (v,), (v, p, p), (v,), (v, s, s), (v, s, p + 1)]
    outputs = tuple(_touched(shape) for shape in shapes)
    design = (ZtZ, ZtX, ZtY, Lam, Ls, start, XtX, XtY, YtY)
    rest = (design, cols, count, l0, _effects(Lam), LANES, outputs)
    in_parallel(_profile_chunks, _chunks(v), rest)
    return outputs


def curvature_sums(ZtZ, ZtX, ZtY, Lam, Ls, start, Css, r, H, beta, reml, l0):
    """Return the level sums of the scores and informations at each voxel.

    Inputs as :func:`profile_sums`, plus its Css and r, H (v, p, p) =
    (X'V^-1 X)^-1, the GLS beta (v, p) and reml (which weight's trace term to
    finish, below).  With m = s + p, W_j = [N_j, F_j] (q0, m), C_j^N = N_j G_s
    N_j' and C_j^F = F_j H F_j', returns in the layouts of ``likelihood.level_sum``:
    Σ s_j s_j', Σ Bv_j, Σ C_j^N, Σ C_j^F (v, q0, q0); Σ Bv ⊗ Bv,
    Σ (Bv ⊗ C^N + C^N ⊗ Bv), Σ (Bv ⊗ C^F + C^F ⊗ Bv), Σ (s s') ⊗ Bv
    (v, q0, q0, q0, q0); Σ W ⊗ W (v, q0, m, q0, m); Σ s ⊗ W (v, q0, q0, m); the
    border's G_s, Γ, Css Γ and Css Γ - F_s H F_s' (the border blocks of Z'V^-1 Z
    and Z'PZ) (v, s, s), F_s (v, s, p) and s_s (v, s); and the low-rank terms of
    :func:`_low_rank_terms` (v, q0, q0, q0, q0).
    """
    v, q0, s, p = Lam.shape[0], Lam.shape[-1], Ls.shape[1], ZtX.shape[2]
    cols, count = _pattern(ZtZ, l0, q0, s)
    out = _curvature_arrays(v, q0, s, p, LANES)
    design = (ZtZ, ZtX, ZtY, Lam, Ls, start, Css, r, H, beta)
    rest = (design, reml, cols, count, l0, _effects(Lam), LANES, out)
    in_parallel(_curvature_chunks, _chunks(v), rest)
    return tuple(_voxels_first(a, v) for a in out[:10]) + out[10:]


def _chunks(v: int) -> int:
    """Return the number of chunks of :data:`LANES` voxels that hold v voxels."""
    return (v + LANES - 1) // LANES


def _curvature_arrays(v: int, q0: int, s: int, p: int, nl: int) -> tuple[NDArray, ...]:
    """Allocate the outputs of :func:`_curvature_chunks` (zeros).

    The level sums with the lanes last, (chunks, ..., nl), as the kernel
    accumulates them (:func:`curvature_sums` puts the voxels first); the border's
    arrays (v, ...).
    """
    m, nc = s + p, (v + nl - 1) // nl
    sums = [(q0, q0)] * 4 + [(q0, q0, q0, q0)] * 4 + [(q0, m, q0, m), (q0, q0, m)]
    border = [(s, s)] * 4 + [(s, p), (s,), (q0, q0, q0, q0), (q0, q0, q0, q0)]
    return tuple(_touched((nc, *shape, nl)) for shape in sums) + tuple(
        _touched((v, *shape)) for shape in border
    )


def _touched(shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Return zeros whose pages this thread has written already.

    np.zeros leaves fresh pages to the first write: the kernels' threads would then
    take the page faults, and two threads faulting at once ran slower than one
    (a crossed study's curvature sums: 37 against 22 ms).
    """
    return np.full(shape, 0.0)


def _voxels_first(a: NDArray, v: int) -> NDArray:
    """Turn a kernel's (chunks, ..., lanes) sums into (v, ...)."""
    return np.moveaxis(a, -1, 1).reshape(-1, *a.shape[1:-1])[:v]


def _effects(Lam: NDArray) -> tuple[int, ...]:
    """Return q0 zeros.

    A tuple's length is part of its numba type: the kernels are compiled for each
    q0 with it a constant, so the loops over a level's effects unroll (numba's
    ``literally`` would retype the whole kernel at every call).
    """
    return (0,) * Lam.shape[-1]


def border_sqrt(
    sqrtD: list[NDArray], n_levels: tuple[int, ...], n_raneffs: tuple[int, ...]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Return Λ_s = blockdiag(Λ_k per level, k = 2..r) in compact rows, and its blocks.

    sqrtD: Λ_2, ..., Λ_r, each (v, q_k, q_k); n_levels, n_raneffs those factors'.
    Returns Ls (v, s, max q_k) with Λ_s[c, start[0, c] + t] = Ls[c, t] for
    t < start[1, c] (row c's block starts at column start[0, c] and has
    start[1, c] columns), and start (2, s).
    """
    s = sum(lk * qk for lk, qk in zip(n_levels, n_raneffs, strict=True))
    v = sqrtD[0].shape[0]
    Ls = np.zeros((v, s, max(n_raneffs)))
    start = np.empty((2, s), dtype=np.int64)
    o = 0
    for Lk, lk, qk in zip(sqrtD, n_levels, n_raneffs, strict=True):
        rows = slice(o, o + lk * qk)
        Ls[:, rows, :qk] = np.broadcast_to(Lk[:, None], (v, lk, qk, qk)).reshape(
            v, lk * qk, qk
        )
        start[0, rows] = o + np.repeat(np.arange(lk) * qk, qk)
        start[1, rows] = qk
        o += lk * qk
    return Ls, start
