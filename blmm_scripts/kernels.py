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
the returned sums are those of ``likelihood.level_sum``.  The scalar kernels (q0 = 1,
q0 >= 3) take one voxel at a time; the random intercept and slope (q0 = 2) kernels
take :data:`LANES` voxels side by side, each loop over them a SIMD loop, and the
curvature kernel makes only the sums a caller needs (:data:`SUMS_ML`, ...: a scoring
step needs neither the observed information's sums nor, by ML, REML's).  Voxels (or
blocks of lanes) run in parallel (``prange``) on the threads numba is given
(:func:`blmm_scripts.threads.pin_threads` sizes its pool to the job's cores).
Compiled code is cached next to this file (or in ``NUMBA_CACHE_DIR``), so only the
first job of a machine compiles.
"""

from __future__ import annotations

import warnings

import numpy as np
from numba import njit, prange
from numba.core.errors import NumbaPerformanceWarning
from numpy.typing import NDArray

#: numba's parallel pipeline with every parallel transformation off, for kernels
#: whose chunks of voxels run on threads (:func:`blmm_scripts.threads.in_parallel`).
#: No loop is parallelised, but the pipeline's IR passes still run, and with them
#: these loop nests ran twice as fast as under a plain ``njit`` (a crossed study's
#: profile: 4.2 against 8.4 ms), while a ``prange`` around them doubles the compile
#: time (16 against 30 s).
SERIAL_PARALLEL_PASSES = dict.fromkeys(
    (
        "comprehension",
        "reduction",
        "inplace_binop",
        "setitem",
        "numpy",
        "stencil",
        "fusion",
        "prange",
    ),
    False,
)
# numba warns, at each such kernel's compilation, that it found nothing to run in
# parallel: here that is the intent.
warnings.filterwarnings(
    "ignore",
    message=r"(?s).*'parallel=True' was specified but no transformation",
    category=NumbaPerformanceWarning,
)


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


#: Voxels a k = 2 kernel takes side by side ("lanes").  Each per-voxel quantity of a
#: level is a row of `lanes` numbers, and every loop over the lanes is innermost and
#: free of branches, so LLVM's loop vectoriser turns it into SIMD instructions; each
#: lane does one voxel's operations in a fixed order, so the results do not depend
#: on the lane count (tests/unit/test_kernels.py).  What keeps those loops
#: vectorised, as LLVM's remarks showed (numba 0.68): the count is an argument, not
#: a constant (a constant trip count is unrolled first, and numba leaves LLVM's SLP
#: vectoriser off, so the unrolled code stays scalar); error_model="numpy" (Python's
#: ZeroDivisionError check is a branch in every division); and no loop reads one
#: row of an array while writing another (LLVM cannot tell the rows apart without
#: more run-time checks than it allows).  32 lanes keep a block's sums in L1 for p
#: up to about 6 (16 and 64 were slower for p = 4).
LANES = 32

#: What :func:`curvature_sums` computes (each includes the ones before): the ML
#: score and expected information (Σ s s', Σ w Bv, Σ w Bv ⊗ Bv); REML's (and the
#: contrast gradients'): Σ C, Σ (Bv ⊗ C + C ⊗ Bv), Σ F ⊗ F; the observed
#: information's: Σ (s s') ⊗ Bv, Σ s ⊗ F.  Sums not computed are NaN.
SUMS_ML, SUMS_REML, SUMS_ALL = 0, 1, 2


@njit(cache=True, inline="always")
def _lane_rows(n, W):
    """Return (n, W) work rows of a block of lanes."""
    return np.empty((n, W))


@njit(cache=True, inline="always")
def _lane_start(Lam, i0, W):
    """Return Λ of a block of lanes as rows (l00, l01, l10, l11); i0 its first voxel.

    Lanes past the last voxel repeat it (their results are not written).
    """
    v = Lam.shape[0]
    L = _lane_rows(4, W)
    for w in range(W):
        i = min(i0 + w, v - 1)
        L[0, w], L[1, w] = Lam[i, 0, 0], Lam[i, 0, 1]
        L[2, w], L[3, w] = Lam[i, 1, 0], Lam[i, 1, 1]
    return L


@njit(cache=True, inline="always")
def _lane_level(A, ZtX, ZtY, weight, j, i0, lv, X0, X1):
    """Fill a block's rows of level j: lv = (a, b, c, w, y0, y1), X0, X1 (p, W).

    A = [[a, b], [b, c]] is the level's Z_j'Z_j, w its weight, (y0, y1) its Z_j'Y
    and X0, X1 the rows of its Z_j'X.  Shared design blocks (leading axis 1) are
    broadcast; per-voxel ones are gathered.
    """
    v, W, p, o = ZtY.shape[0], lv.shape[1], ZtX.shape[2], 2 * j
    for w in range(W):
        i = min(i0 + w, v - 1)
        lv[4, w], lv[5, w] = ZtY[i, o], ZtY[i, o + 1]
    if A.shape[0] == 1 and weight.shape[0] == 1:
        a, b, c, wt = A[0, j, 0, 0], A[0, j, 0, 1], A[0, j, 1, 1], weight[0, j]
        for w in range(W):
            lv[0, w], lv[1, w], lv[2, w], lv[3, w] = a, b, c, wt
    else:
        sa, sw = int(A.shape[0] > 1), int(weight.shape[0] > 1)
        for w in range(W):
            i = min(i0 + w, v - 1)
            lv[0, w], lv[1, w] = A[i * sa, j, 0, 0], A[i * sa, j, 0, 1]
            lv[2, w], lv[3, w] = A[i * sa, j, 1, 1], weight[i * sw, j]
    if ZtX.shape[0] == 1:
        for m in range(p):
            x0, x1 = ZtX[0, o, m], ZtX[0, o + 1, m]
            for w in range(W):
                X0[m, w], X1[m, w] = x0, x1
    else:
        for w in range(W):
            i = min(i0 + w, v - 1)
            for m in range(p):
                X0[m, w], X1[m, w] = ZtX[i, o, m], ZtX[i, o + 1, m]


@njit(cache=True, inline="always")
def _lane_woodbury(L, lv, G):
    """Fill rows (g00, g01, g11, |M|) of G = Λ M^-1 Λ, M = I + Λ A Λ, from lv's A."""
    for w in range(L.shape[1]):
        l00, l01, l10, l11 = L[0, w], L[1, w], L[2, w], L[3, w]
        a, b, c = lv[0, w], lv[1, w], lv[2, w]
        t00, t01 = l00 * a + l01 * b, l00 * b + l01 * c
        t10, t11 = l10 * a + l11 * b, l10 * b + l11 * c
        m00 = 1.0 + t00 * l00 + t01 * l10
        m01 = t00 * l01 + t01 * l11
        m11 = 1.0 + t10 * l01 + t11 * l11
        det = m00 * m11 - m01 * m01
        i00, i01, i11 = m11 / det, -m01 / det, m00 / det
        u00, u01 = l00 * i00 + l01 * i01, l00 * i01 + l01 * i11
        u10, u11 = l10 * i00 + l11 * i01, l10 * i01 + l11 * i11
        G[0, w] = u00 * l00 + u01 * l10
        G[1, w] = u00 * l01 + u01 * l11
        G[2, w] = u10 * l01 + u11 * l11
        G[3, w] = det


@njit(cache=True, parallel=True, error_model="numpy")
def _profile_sums_2(A, ZtX, ZtY, Lam, weight, XtX, XtY, YtY, lanes):
    """:func:`_profile_sums_k` for a random intercept and slope (k = 2).

    ``lanes`` voxels at a time (:data:`LANES`).  With error_model="numpy" a division
    by zero would give inf rather than raise; it cannot happen (|I + Λ A Λ| >= 1).
    """
    v, n_levels, p = Lam.shape[0], A.shape[1], ZtX.shape[2]
    logdet, XtViX, XtViY, YtViY, H, logdetX = _profile_outputs(v, p)
    sxx = int(XtX.shape[0] > 1)
    W = lanes
    for blk in prange((v + W - 1) // W):
        i0 = blk * W
        L = _lane_start(Lam, i0, W)
        lv, G = _lane_rows(6, W), _lane_rows(4, W)
        X0, X1 = _lane_rows(p, W), _lane_rows(p, W)
        gx0, gx1 = _lane_rows(p, W), _lane_rows(p, W)
        gy, ld, prod = _lane_rows(2, W), np.zeros(W), np.ones(W)
        bad = np.zeros(W, dtype=np.bool_)
        tot_xx, acc_xx = np.empty((p, p, W)), np.zeros((p, p, W))
        tot_xy, acc_xy = _lane_rows(p, W), np.zeros((p, W))
        tot_yy, acc_yy = np.empty(W), np.zeros(W)
        for w in range(W):
            i = min(i0 + w, v - 1)
            tot_yy[w] = YtY[i]
            for c in range(p):
                tot_xy[c, w] = XtY[i, c]
                for d in range(c, p):
                    tot_xx[c, d, w] = XtX[i * sxx, c, d]
        for j in range(n_levels):
            if j % BLOCK == BLOCK - 1:
                _lane_flush(tot_xx, acc_xx, tot_xy, acc_xy, tot_yy, acc_yy)
            _lane_level(A, ZtX, ZtY, weight, j, i0, lv, X0, X1)
            _lane_woodbury(L, lv, G)
            for w in range(W):
                ld[w], prod[w], bad[w] = _add_logdet(
                    G[3, w], lv[3, w], ld[w], prod[w], bad[w]
                )
            for w in range(W):
                g00, g01, g11, y0, y1 = G[0, w], G[1, w], G[2, w], lv[4, w], lv[5, w]
                gy0, gy1 = g00 * y0 + g01 * y1, g01 * y0 + g11 * y1
                gy[0, w], gy[1, w] = gy0, gy1
                acc_yy[w] -= y0 * gy0 + y1 * gy1
            for c in range(p):
                for w in range(W):
                    x0, x1 = X0[c, w], X1[c, w]
                    acc_xy[c, w] -= x0 * gy[0, w] + x1 * gy[1, w]
                    gx0[c, w] = G[0, w] * x0 + G[1, w] * x1
                    gx1[c, w] = G[1, w] * x0 + G[2, w] * x1
            for c in range(p):
                for d in range(c, p):
                    for w in range(W):
                        acc_xx[c, d, w] -= gx0[c, w] * X0[d, w] + gx1[c, w] * X1[d, w]
        _lane_flush(tot_xx, acc_xx, tot_xy, acc_xy, tot_yy, acc_yy)
        for w in range(min(W, v - i0)):
            i = i0 + w
            for c in range(p):
                XtViY[i, c] = tot_xy[c, w]
                for d in range(c, p):
                    XtViX[i, c, d] = tot_xx[c, d, w]
            _symmetrise(XtViX[i])
            YtViY[i] = tot_yy[w]
            logdet[i] = np.nan if bad[w] else ld[w] + np.log(prod[w])
            logdetX[i] = _inverse(XtViX[i], H[i])
    return logdet, XtViX, XtViY, YtViY, H, logdetX


@njit(cache=True, inline="always")
def _lane_flush(tot_xx, acc_xx, tot_xy, acc_xy, tot_yy, acc_yy):
    """:func:`_flush` for a block of lanes, Y'V^-1 Y included."""
    p, W = acc_xy.shape
    for w in range(W):
        tot_yy[w] += acc_yy[w]
        acc_yy[w] = 0.0
    for c in range(p):
        for w in range(W):
            tot_xy[c, w] += acc_xy[c, w]
            acc_xy[c, w] = 0.0
        for d in range(c, p):
            for w in range(W):
                tot_xx[c, d, w] += acc_xx[c, d, w]
                acc_xx[c, d, w] = 0.0


@njit(cache=True, parallel=True, error_model="numpy")
def _curvature_sums_2(A, ZtX, ZtY, Lam, weight, H, beta, sums, lanes):
    """:func:`_curvature_sums_k` for a random intercept and slope (k = 2).

    ``lanes`` voxels at a time (:data:`LANES`), the sums up to ``sums``
    (:data:`SUMS_ML`, ...).  Symmetric 2 x 2 blocks are kept as their three
    entries (00, 01, 11), index a + b, and expanded into the full layouts at the
    end.
    """
    v, n_levels, p = Lam.shape[0], A.shape[1], ZtX.shape[2]
    outputs = _curvature_outputs(v, 2, p)
    _, _, Cs, _, BC, FF, ssBv, sF = outputs
    W = lanes
    for blk in prange((v + W - 1) // W):
        i0 = blk * W
        L = _lane_start(Lam, i0, W)
        bb, Hb = _lane_rows(p, W), np.empty((p, p, W))
        for w in range(W):
            i = min(i0 + w, v - 1)
            for m in range(p):
                bb[m, w] = beta[i, m]
                for n in range(p):
                    Hb[m, n, w] = H[i, m, n]
        lv, G = _lane_rows(6, W), _lane_rows(4, W)
        X0, X1 = _lane_rows(p, W), _lane_rows(p, W)
        F0, F1 = _lane_rows(p, W), _lane_rows(p, W)
        # per level: ag00, ag01, ag10, ag11 (A_j G_j) and Bv (3); s (2) and s s'
        # (3); C (3) and H F_0, H F_1 of one row.  (A loop that reads and writes
        # different rows of one array is not vectorised: LLVM cannot tell they
        # do not overlap.)
        t, sv, cc = _lane_rows(7, W), _lane_rows(5, W), _lane_rows(5, W)
        # sums: s s' (3), w Bv (3), C (3), w Bv Bv' (9), Bv C' + C Bv' (9), s s' Bv' (9)
        acc = np.zeros((36, W))
        a_FF, a_sF = np.zeros((3, p, p, W)), np.zeros((4, p, W))
        for j in range(n_levels):
            _lane_level(A, ZtX, ZtY, weight, j, i0, lv, X0, X1)
            _lane_woodbury(L, lv, G)
            for w in range(W):
                a, b, c = lv[0, w], lv[1, w], lv[2, w]
                g00, g01, g11 = G[0, w], G[1, w], G[2, w]
                ag00, ag01 = a * g00 + b * g01, a * g01 + b * g11
                ag10, ag11 = b * g00 + c * g01, b * g01 + c * g11
                t[0, w], t[1, w], t[2, w], t[3, w] = ag00, ag01, ag10, ag11
                t[4, w] = a - (ag00 * a + ag01 * b)
                t[5, w] = b - (ag00 * b + ag01 * c)
                t[6, w] = c - (ag10 * b + ag11 * c)
            for m in range(p):  # r = Z_j'(y - X β), in the rows of y
                for w in range(W):
                    lv[4, w] -= X0[m, w] * bb[m, w]
                    lv[5, w] -= X1[m, w] * bb[m, w]
            for w in range(W):
                r0, r1 = lv[4, w], lv[5, w]
                s0 = r0 - (t[0, w] * r0 + t[1, w] * r1)
                s1 = r1 - (t[2, w] * r0 + t[3, w] * r1)
                sv[0, w], sv[1, w] = s0, s1
                sv[2, w], sv[3, w], sv[4, w] = s0 * s0, s0 * s1, s1 * s1
            for P in range(3):
                for w in range(W):
                    acc[P, w] += sv[2 + P, w]
                    acc[3 + P, w] += lv[3, w] * t[4 + P, w]
                for Q in range(P, 3):
                    for w in range(W):
                        acc[9 + 3 * P + Q, w] += lv[3, w] * t[4 + P, w] * t[4 + Q, w]
            if sums < SUMS_REML:
                continue
            for m in range(p):  # F = (I - A_j G_j) Z_j'X
                for w in range(W):
                    x0, x1 = X0[m, w], X1[m, w]
                    F0[m, w] = x0 - (t[0, w] * x0 + t[1, w] * x1)
                    F1[m, w] = x1 - (t[2, w] * x0 + t[3, w] * x1)
            for w in range(W):
                cc[0, w], cc[1, w], cc[2, w] = 0.0, 0.0, 0.0
            for m in range(p):  # C = F H F'
                for w in range(W):
                    cc[3, w], cc[4, w] = 0.0, 0.0
                for n in range(p):
                    for w in range(W):
                        cc[3, w] += Hb[m, n, w] * F0[n, w]
                        cc[4, w] += Hb[m, n, w] * F1[n, w]
                for w in range(W):
                    cc[0, w] += F0[m, w] * cc[3, w]
                    cc[1, w] += F0[m, w] * cc[4, w]
                    cc[2, w] += F1[m, w] * cc[4, w]
            for P in range(3):
                for w in range(W):
                    acc[6 + P, w] += cc[P, w]
                for Q in range(P, 3):
                    for w in range(W):
                        acc[18 + 3 * P + Q, w] += (
                            t[4 + P, w] * cc[Q, w] + cc[P, w] * t[4 + Q, w]
                        )
            for m in range(p):
                for n in range(m, p):  # the F_0 F_0' and F_1 F_1' blocks: upper
                    for w in range(W):
                        a_FF[0, m, n, w] += F0[m, w] * F0[n, w]
                        a_FF[2, m, n, w] += F1[m, w] * F1[n, w]
                for n in range(p):
                    for w in range(W):
                        a_FF[1, m, n, w] += F0[m, w] * F1[n, w]
            if sums < SUMS_ALL:
                continue
            for P in range(3):
                for Q in range(3):
                    for w in range(W):
                        acc[27 + 3 * P + Q, w] += sv[2 + P, w] * t[4 + Q, w]
            for m in range(p):
                for w in range(W):
                    s0, s1, f0, f1 = sv[0, w], sv[1, w], F0[m, w], F1[m, w]
                    a_sF[0, m, w] += s0 * f0
                    a_sF[1, m, w] += s0 * f1
                    a_sF[2, m, w] += s1 * f0
                    a_sF[3, m, w] += s1 * f1
        for w in range(min(W, v - i0)):
            _lane_outputs_2(i0 + w, w, acc, a_FF, a_sF, outputs)
    if sums < SUMS_REML:
        Cs[:], BC[:], FF[:] = np.nan, np.nan, np.nan
    if sums < SUMS_ALL:
        ssBv[:], sF[:] = np.nan, np.nan
    return outputs


@njit(cache=True, inline="always")
def _lane_outputs_2(i, w, acc, a_FF, a_sF, outputs):
    """Expand lane w's sums into voxel i's outputs (the layouts of level_sum)."""
    ss, Bw, Cs, BwBv, BC, FF, ssBv, sF = outputs
    p = a_FF.shape[1]
    for x in range(2):
        for y in range(2):
            P = x + y
            ss[i, x, y], Bw[i, x, y], Cs[i, x, y] = (
                acc[P, w],
                acc[3 + P, w],
                acc[6 + P, w],
            )
            for z in range(2):
                for u in range(2):
                    Q = z + u
                    up = 3 * min(P, Q) + max(P, Q)  # BB and BC: upper triangle
                    BwBv[i, x, y, z, u], BC[i, x, y, z, u] = (
                        acc[9 + up, w],
                        acc[18 + up, w],
                    )
                    ssBv[i, x, y, z, u] = acc[27 + 3 * P + Q, w]
            for m in range(p):
                sF[i, x, y, m] = a_sF[2 * x + y, m, w]
    for m in range(p):
        for n in range(p):
            lo, hi = min(m, n), max(m, n)
            FF[i, 0, m, 0, n] = a_FF[0, lo, hi, w]
            FF[i, 0, m, 1, n] = a_FF[1, m, n, w]
            FF[i, 1, n, 0, m] = a_FF[1, m, n, w]
            FF[i, 1, m, 1, n] = a_FF[2, lo, hi, w]


@njit(cache=True, parallel=True)
def trace_products(H, FF):
    """Return tr(Q_cd Q_ab), Q_xy = H F_xy, of each voxel as (v, k, k, k, k) [a,b,c,d].

    H (v, p, p); FF (v, k, p, k, p), F_xy = FF[:, x, :, y, :] (Σ_j F_j ⊗ F_j): the
    low-rank part of REML's trace term (``likelihood._low_rank_trace``).
    """
    v, k, p = FF.shape[0], FF.shape[1], FF.shape[2]
    out = np.empty((v, k * k, k * k))  # rows (a, b), columns (c, d)
    for i in prange(v):
        Q = np.empty((k * k, p, p))
        for xy in range(k * k):
            x, y = xy // k, xy % k
            for m in range(p):
                for n in range(p):
                    e = 0.0
                    for t in range(p):
                        e += H[i, m, t] * FF[i, x, t, y, n]
                    Q[xy, m, n] = e
        for ab in range(k * k):
            for cd in range(k * k):
                e = 0.0
                for m in range(p):
                    for n in range(p):
                        e += Q[cd, m, n] * Q[ab, n, m]
                out[i, ab, cd] = e
    return out.reshape(v, k, k, k, k)


@njit(cache=True)
def spd_inverse(M):
    """Return the inverses and log-determinants of SPD M (v, p, p), as the kernels do.

    Cholesky; NaN where M is not positive definite.
    """
    v, p = M.shape[0], M.shape[1]
    out, logdet = np.empty((v, p, p)), np.empty(v)
    for i in range(v):
        logdet[i] = _inverse(M[i], out[i])
    return out, logdet


def profile_sums(A, ZtX, ZtY, Lam, weight, XtX, XtY, YtY):
    """Return log|V|, X'V^-1 X, X'V^-1 Y, Y'V^-1 Y, H and log|X'V^-1 X| per voxel.

    A (mA, l, k, k) the blocks Z_j'Z_j; ZtX (mX, l k, p); ZtY (v, l k); Lam
    (v, k, k); weight (mW, l) the level weights (ones for real levels); XtX
    (mXX, p, p); XtY (v, p); YtY (v,).  A leading axis of length 1 is shared by
    every voxel.  Shapes out: (v,), (v, p, p), (v, p), (v,), (v, p, p), (v,);
    H = (X'V^-1 X)^-1 by Cholesky, NaN (and log|X'V^-1 X| NaN) where it is not
    positive definite.
    """
    k = Lam.shape[-1]
    if k == 2:
        return _profile_sums_2(A, ZtX, ZtY, Lam, weight, XtX, XtY, YtY, LANES)
    kernel = _profile_sums_1 if k == 1 else _profile_sums_k
    return kernel(A, ZtX, ZtY, Lam, weight, XtX, XtY, YtY)


def curvature_sums(A, ZtX, ZtY, Lam, weight, H, beta, sums=SUMS_ALL):
    """Return the level sums of one factor's scores and informations at each voxel.

    Inputs as :func:`profile_sums`, plus H (v, p, p) = (X'V^-1 X)^-1 and the GLS
    beta (v, p).  Returns, in the layouts of ``likelihood.level_sum``:
    ss (v, k, k) Σ s s'; Bw (v, k, k) Σ w Bv; C (v, k, k) Σ F H F';
    BwBv (v, k, k, k, k) Σ w Bv ⊗ Bv; BC (v, k, k, k, k) Σ (Bv ⊗ C + C ⊗ Bv);
    FF (v, k, p, k, p) Σ F ⊗ F; ssBv (v, k, k, k, k) Σ (s s') ⊗ Bv;
    sF (v, k, k, p) Σ s ⊗ F.  ``sums``: the sums needed (:data:`SUMS_ML`, ...); the
    k = 2 kernel skips the others (NaN), the other kernels compute every sum.
    """
    k = Lam.shape[-1]
    if k == 2:
        return _curvature_sums_2(A, ZtX, ZtY, Lam, weight, H, beta, sums, LANES)
    kernel = _curvature_sums_1 if k == 1 else _curvature_sums_k
    return kernel(A, ZtX, ZtY, Lam, weight, H, beta)


def as_weight(level_weight: NDArray | None, n_levels: int) -> NDArray[np.float64]:
    """Return the level weights as the kernels take them: ones when there are none."""
    if level_weight is None:
        return np.ones((1, n_levels))
    return np.ascontiguousarray(level_weight, dtype=np.float64)
