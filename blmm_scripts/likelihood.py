"""The (restricted) log-likelihood of the voxelwise mixed model and its derivatives.

Everything here is a function of the product matrices and the random-effects
covariance D only: for a given D the fixed effects are profiled out by generalised
least squares, β̂(D) = (X'V^-1 X)^-1 X'V^-1 Y, and with S = ê'V^-1 ê

    ML:    -2 l  = n log(2π σ²) + log|V| + S / σ²
    REML:  -2 l_R = (n-p) log(2π σ²) + log|V| + log|X'V^-1 X| + S / σ²

(lme4's ``logLik``, all constants included; Bates et al. 2015, eqs. 34 and 41).
The derivatives with respect to σ² and the entries of D are written with the
relative projection P = V^-1 - V^-1 X (X'V^-1 X)^-1 X'V^-1 and, for factor k and
level j, the blocks R_ij = Z_i' A Z_j (A = V^-1 for ML, P for REML), s_j = Z_j' V^-1 ê:

    score     dl/dD_k[a,b]            = 1/2 (σ^-2 Σ_j s_j s_j' - Σ_j R_jj)[a,b]
    expected  I(D_ab, D_cd)           = 1/2 Σ_ij R_ij[b,c] R_ij[a,d]          (= T/2)
    observed  -d²l/dD_ab dD_cd        = -1/2 T + σ^-2 Σ_ij s_i[a] P_ij[b,c] s_j[d]
    observed  -d²l/dσ² dD_ab          = Σ_j s_j[a] s_j[b] / (2σ⁴)
    observed  -d²l/(dσ²)²             = -n'/(2σ⁴) + S/σ⁶,     n' = n-p (REML) or n (ML).

The observed forms are the Hessian of the likelihood profiled over β, which is what
lmerTest differentiates (numerically) for its Satterthwaite degrees of freedom.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from blmm_scripts._linalg import (
    Woodbury,
    small_matmul,
    spd_inv_logdet,
    woodbury,
    ztz_apply,
)
from blmm_scripts.structure import (
    Products,
    RandomEffects,
    duplication_matrix,
    every_voxel,
)

LOG_2PI = np.log(2.0 * np.pi)


class Weight(Enum):
    """The matrix A of the blocks R = Z'AZ: V^-1 (ML) or the REML projection P."""

    V_INV = "V"
    P = "P"

    @classmethod
    def of(cls, reml: bool) -> Weight:
        """Return the weight of the likelihood that is maximised (REML or ML)."""
        return cls.P if reml else cls.V_INV


#: The per-voxel arrays of a :class:`Profile` (its Woodbury's aside).
PROFILE_ARRAYS = (
    "XtViX",
    "H",
    "logdetX",
    "beta",
    "S",
    "n_eff",
    "GZtX",
    "GZtY",
)


@dataclass(frozen=True)
class Profile:
    """Quantities of a stack of voxels at a given D, with β at its GLS value.

    Shapes: XtViX, H = XtViX^-1 (v, p, p); beta (v, p); S, sigma2, logdetX, n_eff
    (v,); F = Z'V^-1 X (v, q, p); s = Z'V^-1 ê (v, q).
    """

    products: Products
    re: RandomEffects
    reml: bool
    wood: Woodbury
    XtViX: NDArray[np.float64]
    H: NDArray[np.float64]
    logdetX: NDArray[np.float64]
    beta: NDArray[np.float64]
    S: NDArray[np.float64]
    n_eff: NDArray[np.float64]
    GZtX: NDArray[np.float64]
    GZtY: NDArray[np.float64]

    @property
    def sigma2(self) -> NDArray[np.float64]:
        """σ² maximising the likelihood at this D: S / n'."""
        return self.S / self.n_eff

    def llh(self, sigma2: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """Log-likelihood at this D and σ² (default: the profiled σ²)."""
        if sigma2 is None:
            sigma2 = self.sigma2
        with np.errstate(divide="ignore", invalid="ignore"):
            m2l = self.n_eff * (LOG_2PI + np.log(sigma2)) + self.wood.logdet
            m2l = m2l + self.S / sigma2
            if self.reml:
                m2l = m2l + self.logdetX
        return -0.5 * m2l

    def take(self, index: NDArray) -> Profile:
        """Return the profile of a subset of voxels (index into the voxel axis)."""
        if every_voxel(index, self.beta.shape[0]):
            return self
        return self._rows(lambda a: a[index], self.products.take(index))

    def where(self, use: NDArray[np.bool_], other: Profile) -> Profile:
        """Return, voxel by voxel, `other` where `use` is True and self elsewhere.

        Both profiles are of the same voxels (the same products), at different D.
        """

        def pick(a: NDArray, b: NDArray) -> NDArray:
            return np.where(use.reshape(-1, *[1] * (a.ndim - 1)), b, a)

        return self._rows(pick, self.products, other)

    def _rows(self, fn, products: Products, other: Profile | None = None) -> Profile:
        """Apply fn to every per-voxel array (and to other's, as a 2nd argument)."""

        def arr(name: str, mine: object, theirs: object) -> NDArray | None:
            a = getattr(mine, name)
            if a is None:
                return None
            return fn(a) if other is None else fn(a, getattr(theirs, name))

        wood = Woodbury(
            self.wood.re,
            *(
                arr(name, self.wood, other and other.wood)
                for name in ("G", "logdet", "LE", "Sinv")
            ),
        )
        changes = {name: arr(name, self, other) for name in PROFILE_ARRAYS}
        if isinstance(self, FusedProfile):
            for name in ("sqrtD", "border"):
                mine = getattr(self, name)
                theirs = mine if other is None else getattr(other, name)
                changes[name] = tuple(
                    fn(a) if other is None else fn(a, b)
                    for a, b in zip(mine, theirs, strict=True)
                )
        return replace(self, products=products, wood=wood, **changes)

    @cached_property
    def F(self) -> NDArray[np.float64]:
        """Z'V^-1 X, shape (v, q, p)."""
        return self.products.ZtX - ztz_apply(self.products.ZtZ, self.GZtX, self.re)

    @cached_property
    def s(self) -> NDArray[np.float64]:
        """Z'V^-1 ê, shape (v, q)."""
        pr = self.products
        ZtViY = pr.ZtY - ztz_apply(pr.ZtZ, self.GZtY, self.re)[..., 0]
        return ZtViY - np.einsum("vqp,vp->vq", self.F, self.beta)


@dataclass(frozen=True)
class FusedProfile(Profile):
    """A :class:`Profile` computed by the compiled kernels (one factor or bordered).

    It keeps no per-level arrays: ``wood.G``, ``GZtX`` and ``GZtY`` are None, and
    F and s (used by inference) come from the numpy path when asked for.
    """

    sqrtD: tuple[NDArray[np.float64], ...] = ()
    #: bordered layout: the Schur complement Css (v, s, s) and the border's
    #: r = [r_X, r_Y] (v, s, p + 1) (:mod:`blmm_scripts.kernels_bordered`)
    border: tuple[NDArray[np.float64], ...] = ()

    @cached_property
    def reference(self) -> Profile:
        """The same profile by the numpy path (with its per-level arrays)."""
        return _numpy_profile(self.products, self.re, list(self.sqrtD), self.reml)

    @cached_property
    def F(self) -> NDArray[np.float64]:
        """Z'V^-1 X, shape (v, q, p)."""
        return self.reference.F

    @cached_property
    def s(self) -> NDArray[np.float64]:
        """Z'V^-1 ê, shape (v, q)."""
        return self.reference.s


#: Use the compiled kernels for one random factor (:mod:`blmm_scripts.kernels`) and
#: for the bordered layout (:mod:`blmm_scripts.kernels_bordered`);
#: ``BLMM_ENGINE=numpy`` (or :func:`numpy_engine`) takes the numpy reference path.
USE_KERNELS = os.environ.get("BLMM_ENGINE", "numba") != "numpy"


@contextmanager
def numpy_engine() -> Iterator[None]:
    """Run the enclosed code on the numpy reference path (to test the kernels)."""
    global USE_KERNELS
    saved, USE_KERNELS = USE_KERNELS, False
    try:
        yield
    finally:
        USE_KERNELS = saved


def _kernel_inputs(pr: Products, re: RandomEffects, lam: NDArray) -> tuple:
    """Arguments shared by both kernels, contiguous float64."""
    from blmm_scripts.kernels import as_weight

    def c(a: NDArray) -> NDArray:
        return np.ascontiguousarray(a, dtype=np.float64)

    return (
        c(pr.ZtZ),
        c(pr.ZtX),
        c(pr.ZtY),
        c(lam),
        as_weight(pr.level_weight, re.n_levels[0]),
    )


def _bordered_inputs(pr: Products, re: RandomEffects, sqrtD: list[NDArray]) -> tuple:
    """Arguments of both bordered kernels, contiguous float64 (l0 last)."""
    from blmm_scripts.kernels_bordered import border_sqrt

    def c(a: NDArray) -> NDArray:
        return np.ascontiguousarray(a, dtype=np.float64)

    Ls, start = border_sqrt(sqrtD[1:], re.n_levels[1:], re.n_raneffs[1:])
    return (c(pr.ZtZ), c(pr.ZtX), c(pr.ZtY), c(sqrtD[0]), Ls, start)


def _kernel_profile(
    pr: Products, re: RandomEffects, sqrtD: list[NDArray]
) -> tuple[tuple, tuple]:
    """Return the profile kernel's sums for the layout of `re`, or () for numpy.

    One factor and the bordered layout (without level weights) have kernels.
    Returns the six sums of :func:`blmm_scripts.kernels.profile_sums` and what
    the curvature kernel takes from the profile (bordered: Css and r).
    """
    tail = tuple(
        np.ascontiguousarray(a, dtype=np.float64) for a in (pr.XtX, pr.XtY, pr.YtY)
    )
    if USE_KERNELS and re.one_factor:
        from blmm_scripts.kernels import profile_sums

        lam = np.ascontiguousarray(sqrtD[0], dtype=np.float64)
        if not lam.any():  # D = 0, the OLS start: no pass over the levels
            return _sums_at_zero(*tail), ()
        return profile_sums(*_kernel_inputs(pr, re, lam), *tail), ()
    if USE_KERNELS and re.bordered and pr.level_weight is None:
        from blmm_scripts.kernels_bordered import profile_sums

        sums = profile_sums(*_bordered_inputs(pr, re, sqrtD), *tail, re.n_levels[0])
        return sums[:6], sums[6:]
    return (), ()


def profile(
    products: Products, re: RandomEffects, sqrtD: list[NDArray], reml: bool
) -> Profile:
    """Return the :class:`Profile` of a stack of voxels at D = sqrtD sqrtD'."""
    sums, border = _kernel_profile(products, re, sqrtD)
    if not sums:
        return _numpy_profile(products, re, sqrtD, reml)
    pr = products
    logdet, XtViX, XtViY, YtViY, H, logdetX = sums
    odd = np.flatnonzero(~np.isfinite(logdetX))
    if odd.size:  # not positive definite: the numpy path's eigen route there
        H[odd], logdetX[odd] = spd_inv_logdet(XtViX[odd])
    beta = np.einsum("vpr,vr->vp", H, XtViY)
    S = YtViY - np.einsum("vp,vp->v", beta, XtViY)
    p = pr.XtX.shape[-1]
    n_eff = pr.n - p if reml else pr.n.astype(np.float64)
    wood = Woodbury(re, None, logdet)
    sq = tuple(np.ascontiguousarray(Lk, dtype=np.float64) for Lk in sqrtD)
    return FusedProfile(
        pr, re, reml, wood, XtViX, H, logdetX, beta, S, n_eff, None, None, sq, border
    )


def _sums_at_zero(XtX: NDArray, XtY: NDArray, YtY: NDArray) -> tuple:
    """Return the sums of :func:`blmm_scripts.kernels.profile_sums` at D = 0 (V = I).

    X'V^-1 X = X'X and so on, log|V| = 0; (X'X)^-1 and its log-determinant as the
    kernels compute them, once for a design shared by every voxel.
    """
    from blmm_scripts.kernels import spd_inverse

    v = XtY.shape[0]

    def every(a: NDArray) -> NDArray:
        return np.broadcast_to(a, (v, *a.shape[1:])).copy()

    H, logdetX = spd_inverse(XtX)
    return np.zeros(v), every(XtX), XtY.copy(), YtY.copy(), every(H), every(logdetX)


def _numpy_profile(
    products: Products, re: RandomEffects, sqrtD: list[NDArray], reml: bool
) -> Profile:
    """Return the profile by the numpy path (every layout; per-level arrays kept)."""
    pr = products
    wood = woodbury(pr.ZtZ, re, sqrtD, pr.level_weight)
    GZtX = wood.apply(pr.ZtX)
    GZtY = wood.apply(pr.ZtY[..., None])
    ZtXt = np.swapaxes(pr.ZtX, -1, -2)
    XtViX = pr.XtX - ZtXt @ GZtX
    XtViY = pr.XtY - (ZtXt @ GZtY)[..., 0]
    YtViY = pr.YtY - np.einsum("vq,vq->v", pr.ZtY, GZtY[..., 0])
    H, logdetX = spd_inv_logdet(XtViX)
    beta = np.einsum("vpr,vr->vp", H, XtViY)
    S = YtViY - np.einsum("vp,vp->v", beta, XtViY)
    p = pr.XtX.shape[-1]
    n_eff = pr.n - p if reml else pr.n.astype(np.float64)
    return Profile(pr, re, reml, wood, XtViX, H, logdetX, beta, S, n_eff, GZtX, GZtY)


def level_sum(A: NDArray[np.float64], B: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return Σ_j A_j ⊗ B_j over the level axis, (v, l, *a), (v, l, *b) -> (v, *a, *b).

    One matrix product per voxel (A_flat' B_flat), which BLAS does far faster than
    the equivalent einsum loops; a leading 1 broadcasts.
    """
    va, l0 = A.shape[:2]
    vb = B.shape[0]
    a_shape, b_shape = A.shape[2:], B.shape[2:]
    out = np.swapaxes(A.reshape(va, l0, -1), 1, 2) @ B.reshape(vb, l0, -1)
    return out.reshape(out.shape[0], *a_shape, *b_shape)


def _pairs(R: NDArray[np.float64]) -> NDArray[np.float64]:
    """(v, l1, q1, l2, q2) -> (v, l1 l2, q1, q2): level pairs on one axis."""
    v, l1, q1, l2, q2 = R.shape
    return R.transpose(0, 1, 3, 2, 4).reshape(v, l1 * l2, q1, q2)


def _dense_data_term(s1: NDArray, R12: NDArray, s2: NDArray) -> NDArray:
    """Σ_ij s1_i[a] R_ij[b,c] s2_j[d] for R12 (v, l1, q1, l2, q2)."""
    v, l1, q1, l2, q2 = R12.shape
    Rt = R12.transpose(0, 1, 2, 4, 3).reshape(v, l1 * q1 * q2, l2)
    RS = (Rt @ s2).reshape(v, l1, q1, q2, s2.shape[-1])  # Σ_j R[i,b,j,c] s_j[d]
    return level_sum(s1, RS)


def vec_matrix(T: NDArray[np.float64]) -> NDArray[np.float64]:
    """Turn T[v, a, b, c, d] into the matrix with rows vec(a, b), columns vec(c, d).

    vec stacks columns, so (a, b) has index a + b q.
    """
    v, q1, _, q2, _ = T.shape
    return T.transpose(0, 2, 1, 4, 3).reshape(v, q1 * q1, q2 * q2)


def _low_rank_trace(
    Bv: NDArray, C: NDArray, W: NDArray, Q: NDArray, Bw: NDArray | None = None
) -> NDArray:
    """T for R = blockdiag(Bv_j) - W Q W' (W_j the level rows of W), via level sums.

    T = Σ_j Bv⊗Bv - Σ_j (Bv⊗C + C⊗Bv) + tr(Q S_cd Q S_ab), S_xy = Σ_j W_j[x] W_j[y]',
    C_j = W_j Q W_j'; index order as in :meth:`BlockCurvature.trace_term`.  Bw: Bv
    times the level weights, for the one sum of Z'Z blocks alone (default Bv).
    """
    Bw = Bv if Bw is None else Bw
    cross = level_sum(Bw, Bv) - level_sum(Bv, C) - level_sum(C, Bv)
    return _factored_trace(cross, level_sum(W, W), Q)


def _factored_trace(cross: NDArray, WW: NDArray, Q: NDArray) -> NDArray:
    """T of :func:`_low_rank_trace` from its level sums.

    cross = Σ_j (Bw⊗Bv - Bv⊗C - C⊗Bv) (v, q0, q0, q0, q0), WW = Σ_j W_j ⊗ W_j
    (v, q0, m, q0, m) and Q (v, m, m).
    """
    S = WW.transpose(0, 1, 3, 2, 4)  # (v, x, y, m, n)
    QS = Q[:, None, None] @ S
    return cross.transpose(0, 3, 1, 2, 4) + np.einsum("vcdij,vabji->vabcd", QS, QS)


def _low_rank_data(sb: NDArray, Bv: NDArray, W: NDArray, Q: NDArray) -> NDArray:
    """U for R = blockdiag(Bv_j) - W Q W': Σ_j s_j[a] Bv_j[b,c] s_j[d] - E_ab'Q E_dc."""
    ss = sb[..., :, None] * sb[..., None, :]  # (v, l, a, d)
    return _factored_data(level_sum(ss, Bv), level_sum(sb, W), Q)


def _factored_data(ssBv: NDArray, E: NDArray, Q: NDArray) -> NDArray:
    """U of :func:`_low_rank_data` from Σ_j (s_j s_j') ⊗ Bv_j and E = Σ_j s_j ⊗ W_j."""
    U = ssBv.transpose(0, 1, 3, 4, 2)
    return U - np.einsum("vabm,vmn,vdcn->vabcd", E, Q, E)


class BlockCurvature:
    """Sums over level pairs of the Z'AZ blocks that scores and informations need.

    One random factor uses the block-diagonal Z'V^-1 Z plus the rank-p REML
    correction F H F' in factored form: O(l q0^2 p^2) per voxel.  Several factors use
    dense q x q matrices: O(q^3) per voxel.
    """

    def __init__(self, prof: Profile) -> None:
        """Precompute the blocks of Z'V^-1 Z (and F H F') at `prof`."""
        self.prof = prof
        self.re = prof.re
        v = prof.beta.shape[0]
        self.v = v
        G, ZtZ = prof.wood.G, prof.products.ZtZ
        if self.re.one_factor:
            l0, q0 = self.re.n_levels[0], self.re.n_raneffs[0]
            # (v, l, q0, q0) blocks of Z'V^-1 Z
            self.Bv = ZtZ - small_matmul(small_matmul(ZtZ, G), ZtZ)
            # and weighted by the levels' multiplicity, for the sums of Z'Z alone
            w = prof.products.level_weight
            self.Bw = self.Bv if w is None else self.Bv * w[..., None, None]
            self.Fb = prof.F.reshape(v, l0, q0, -1)
            self.sb = prof.s.reshape(v, l0, q0)
            HF = (prof.F @ np.swapaxes(prof.H, -1, -2)).reshape(self.Fb.shape)
            # F_j H F_j' per level
            self.C = (self.Fb[..., :, None, :] * HF[..., None, :, :]).sum(-1)
        else:
            Rv = ZtZ - ZtZ @ G @ ZtZ
            self.Rv = np.broadcast_to(Rv, (v, *Rv.shape[1:]))
            FH = prof.F @ prof.H
            self.Rp = self.Rv - FH @ np.swapaxes(prof.F, -1, -2)

    def _dense_block(self, R: NDArray, k1: int, k2: int) -> NDArray:
        """Rows of factor k1, columns of factor k2 as (v, l1, q1, l2, q2)."""
        re = self.re
        o1, o2 = re.offsets[k1], re.offsets[k2]
        l1, q1, l2, q2 = (
            re.n_levels[k1],
            re.n_raneffs[k1],
            re.n_levels[k2],
            re.n_raneffs[k2],
        )
        return R[:, o1 : o1 + l1 * q1, o2 : o2 + l2 * q2].reshape(
            self.v, l1, q1, l2, q2
        )

    def _s(self, k: int) -> NDArray:
        """Blocks s_j of factor k, shape (v, l_k, q_k)."""
        re = self.re
        o, lk, qk = re.offsets[k], re.n_levels[k], re.n_raneffs[k]
        return self.prof.s[:, o : o + lk * qk].reshape(self.v, lk, qk)

    def ss(self, k: int) -> NDArray:
        """Σ_j s_j s_j' of factor k, shape (v, q_k, q_k)."""
        sk = self._s(k)
        return level_sum(sk, sk)

    def _F(self, k: int) -> NDArray:
        """Rows of factor k of F = Z'V^-1 X, shape (v, l_k q_k, p)."""
        re = self.re
        o = re.offsets[k]
        return self.prof.F[:, o : o + re.n_levels[k] * re.n_raneffs[k]]

    def quadratic(self, k: int, h: NDArray) -> NDArray:
        """Σ_j (F_j h)(F_j h)' over the levels j of factor k, h (v, p)."""
        K = np.einsum("vqp,vp->vq", self._F(k), h)
        Kk = K.reshape(self.v, self.re.n_levels[k], self.re.n_raneffs[k])
        return np.einsum("vja,vjb->vab", Kk, Kk)

    def diag_sum(self, k: int, weight: Weight) -> NDArray:
        """Σ_j R_jj of factor k, R = Z'V^-1 Z (V_INV) or Z'PZ (P)."""
        if self.re.one_factor:
            out = self.Bw.sum(1)
            out = np.broadcast_to(out, (self.v, *out.shape[1:]))
            return out - self.C.sum(1) if weight is Weight.P else out
        R = self.Rp if weight is Weight.P else self.Rv
        return np.einsum("vjajb->vab", self._dense_block(R, k, k))

    def trace_term(self, k1: int, k2: int, weight: Weight) -> NDArray:
        """T[v,a,b,c,d] = Σ_ij R_ij[b,c] R_ij[a,d] for factors k1, k2."""
        if self.re.one_factor:
            if weight is Weight.P:
                return _low_rank_trace(self.Bv, self.C, self.Fb, self.prof.H, self.Bw)
            return level_sum(self.Bw, self.Bv).transpose(0, 3, 1, 2, 4)
        R = self.Rp if weight is Weight.P else self.Rv
        R12 = _pairs(self._dense_block(R, k1, k2))
        return level_sum(R12, R12).transpose(0, 3, 1, 2, 4)

    def data_term(self, k1: int, k2: int) -> NDArray:
        """U[v,a,b,c,d] = Σ_ij s_i[a] P_ij[b,c] s_j[d] for factors k1, k2."""
        if self.re.one_factor:
            return _low_rank_data(self.sb, self.Bv, self.Fb, self.prof.H)
        P12 = self._dense_block(self.Rp, k1, k2)
        return _dense_data_term(self._s(k1), P12, self._s(k2))


class BorderedCurvature(BlockCurvature):
    """The sums of :class:`BlockCurvature` for the bordered layout.

    Z'AZ is the first factor's block-diagonal part minus a low-rank part, plus a
    dense border: with K = Z'Z Λ E (q x s, see _linalg._woodbury_bordered),
    W = [K, F] and Q = blockdiag(S^-1, H) (REML; W = K, Q = S^-1 for ML)

        Z'AZ = [[Bv, N], [N', Css]] - W Q W',

    Bv the blocks A - A G1 A, N = Bm - A G1 Bm, Css = C - Bm' G1 Bm.  Sums over the
    first factor's level pairs use the factored form, O(l q0^2 m^2) with m = s + p;
    pairs involving the border use dense (l q0 x s) blocks.
    """

    def __init__(self, prof: Profile) -> None:
        """Precompute the blocks and low-rank factors at `prof`."""
        self.prof = prof
        re = self.re = prof.re
        v = self.v = prof.beta.shape[0]
        l0, q0, s = re.n_levels[0], re.n_raneffs[0], re.border
        w = self.w = l0 * q0
        wood = prof.wood
        A, Bm, C = re.unpack_ztz(prof.products.ZtZ)
        AG1 = small_matmul(A, wood.G)
        self.Bv = A - small_matmul(AG1, A)
        Bm4 = Bm.reshape(Bm.shape[0], l0, q0, s)
        N = Bm - small_matmul(AG1, Bm4).reshape(v, w, s)
        Css = C - np.swapaxes(Bm, -1, -2) @ small_matmul(wood.G, Bm4).reshape(v, w, s)
        K = ztz_apply(prof.products.ZtZ, wood.LE, re)
        p = prof.H.shape[-1]
        Q = np.zeros((v, s + p, s + p))
        Q[:, :s, :s], Q[:, s:, s:] = wood.Sinv, prof.H
        self.low = {
            Weight.V_INV: (K, wood.Sinv),
            Weight.P: (np.concatenate([K, prof.F], 2), Q),
        }
        self._N, self._Css = N, Css
        self._dense: dict[Weight, tuple[NDArray, NDArray]] = {}
        self._Cs: dict[Weight, NDArray] = {}
        self.Bv = np.broadcast_to(self.Bv, (v, *self.Bv.shape[1:]))

    def dense(self, weight: Weight) -> tuple[NDArray, NDArray]:
        """Return the blocks of Z'AZ next to the border: (rows of factor 1, border).

        Made for the weight a caller asks for (an iteration of REML needs P only).
        """
        if weight not in self._dense:
            W, Qk = self.low[weight]
            w = self.w
            WQ = W @ Qk
            Ws = np.swapaxes(W[:, w:], -1, -2)
            self._dense[weight] = (self._N - WQ[:, :w] @ Ws, self._Css - WQ[:, w:] @ Ws)
        return self._dense[weight]

    def border_block(self, weight: Weight) -> NDArray:
        """Return the border's own block of Z'AZ, (v, s, s)."""
        return self.dense(weight)[1]

    def _W(self, weight: Weight) -> tuple[NDArray, NDArray]:
        """Return the first factor's rows of W as (v, l, q0, m), and Q."""
        W, Q = self.low[weight]
        l0, q0 = self.re.n_levels[0], self.re.n_raneffs[0]
        return W[:, : self.w].reshape(self.v, l0, q0, -1), Q

    def _C(self, weight: Weight) -> NDArray:
        """Per-level diagonal blocks W_j Q W_j' of the low-rank part, (v, l, q0, q0)."""
        if weight not in self._Cs:
            W, Q = self._W(weight)
            WQ = W @ Q[:, None]
            self._Cs[weight] = (WQ[..., :, None, :] * W[..., None, :, :]).sum(-1)
        return self._Cs[weight]

    def _cross(self, k1: int, k2: int, weight: Weight) -> NDArray:
        """Dense block (v, l1, q1, l2, q2) of Z'AZ for a pair involving the border."""
        re, w = self.re, self.w
        if k1 == 0:
            o2 = re.offsets[k2] - w
            cols = slice(o2, o2 + re.n_levels[k2] * re.n_raneffs[k2])
            return self.dense(weight)[0][:, :, cols].reshape(
                self.v,
                re.n_levels[0],
                re.n_raneffs[0],
                re.n_levels[k2],
                re.n_raneffs[k2],
            )
        if k2 == 0:
            return self._cross(0, k1, weight).transpose(0, 3, 4, 1, 2)
        o1, o2 = re.offsets[k1] - w, re.offsets[k2] - w
        rows = slice(o1, o1 + re.n_levels[k1] * re.n_raneffs[k1])
        cols = slice(o2, o2 + re.n_levels[k2] * re.n_raneffs[k2])
        return self.border_block(weight)[:, rows, cols].reshape(
            self.v, re.n_levels[k1], re.n_raneffs[k1], re.n_levels[k2], re.n_raneffs[k2]
        )

    def diag_sum(self, k: int, weight: Weight) -> NDArray:
        """Σ_j R_jj of factor k, R = Z'V^-1 Z (V_INV) or Z'PZ (P)."""
        if k > 0:
            return np.einsum("vjajb->vab", self._cross(k, k, weight))
        return self.Bv.sum(1) - self._C(weight).sum(1)

    def trace_term(self, k1: int, k2: int, weight: Weight) -> NDArray:
        """T[v,a,b,c,d] = Σ_ij R_ij[b,c] R_ij[a,d] for factors k1, k2."""
        if k1 > 0 or k2 > 0:
            R12 = _pairs(self._cross(k1, k2, weight))
            return level_sum(R12, R12).transpose(0, 3, 1, 2, 4)
        W, Q = self._W(weight)
        return _low_rank_trace(self.Bv, self._C(weight), W, Q)

    def data_term(self, k1: int, k2: int) -> NDArray:
        """U[v,a,b,c,d] = Σ_ij s_i[a] P_ij[b,c] s_j[d] for factors k1, k2."""
        if k1 > 0 or k2 > 0:
            P12 = self._cross(k1, k2, Weight.P)
            return _dense_data_term(self._s(k1), P12, self._s(k2))
        W, Q = self._W(Weight.P)
        return _low_rank_data(self._s(0), self.Bv, W, Q)


def score_D(curv: BlockCurvature, sigma2: NDArray, weight: Weight) -> list[NDArray]:
    """Return dl/dD_k of every factor as symmetric (v, q_k, q_k) matrices.

    1/2 (σ^-2 Σ_j s_j s_j' - Σ_j R_jj), R = Z'V^-1 Z (ML) or Z'PZ (REML).
    """
    return [
        0.5 * (curv.ss(k) / sigma2[:, None, None] - curv.diag_sum(k, weight))
        for k in range(curv.re.r)
    ]


class FusedCurvature(BlockCurvature):
    """The sums of :class:`BlockCurvature` (one factor) from the compiled kernel.

    One pass over each voxel's levels (:func:`blmm_scripts.kernels.curvature_sums`)
    gives the level sums; the terms below combine them exactly as
    :func:`_low_rank_trace` and :func:`_low_rank_data` do.  With
    ``observed=False`` only the sums of the score and the expected information of
    the profile's likelihood (REML or ML) are made, which is all a scoring step
    needs (for q0 = 2 the kernel then skips the others).
    """

    def __init__(self, prof: FusedProfile, observed: bool = True) -> None:
        """Compute the level sums at `prof`."""
        from blmm_scripts.kernels import SUMS_ALL, SUMS_ML, SUMS_REML, curvature_sums

        self.prof = prof
        self.re = prof.re
        self.v = prof.beta.shape[0]
        #: whether the sums of REML's expected information and of the observed
        #: information were made
        self.has_reml = observed or prof.reml
        self.has_observed = observed
        sums = SUMS_ALL if observed else (SUMS_REML if prof.reml else SUMS_ML)
        (
            self.sum_ss,
            self.sum_Bw,
            self.sum_C,
            self.sum_BwBv,
            self.sum_BC,
            self.sum_FF,
            self.sum_ssBv,
            self.sum_sF,
        ) = curvature_sums(
            *_kernel_inputs(prof.products, prof.re, prof.sqrtD[0]),
            np.ascontiguousarray(prof.H),
            np.ascontiguousarray(prof.beta),
            sums,
        )

    @staticmethod
    def _need(made: bool, what: str) -> None:
        """Raise if the sums behind `what` were not made (``observed=False``)."""
        if not made:
            raise ValueError(f"{what} needs curvature(prof, observed=True)")

    def ss(self, k: int) -> NDArray:
        """Σ_j s_j s_j', shape (v, q0, q0)."""
        return self.sum_ss

    def quadratic(self, k: int, h: NDArray) -> NDArray:
        """Σ_j (F_j h)(F_j h)' from Σ_j F_j ⊗ F_j, h (v, p): (v, q0, q0)."""
        self._need(self.has_reml, "quadratic")
        v, q0, p = self.sum_FF.shape[:3]
        # two matrix-vector products (numpy's three-operand einsum is 4x slower)
        t = (self.sum_FF.reshape(v, -1, p) @ h[:, :, None]).reshape(v, q0, p, q0)
        return (t.swapaxes(-1, -2) @ h[:, None, :, None])[..., 0]

    def diag_sum(self, k: int, weight: Weight) -> NDArray:
        """Σ_j R_jj, R = Z'V^-1 Z (V_INV) or Z'PZ (P)."""
        if weight is Weight.V_INV:
            return self.sum_Bw
        self._need(self.has_reml, "the REML weight")
        return self.sum_Bw - self.sum_C

    def trace_term(self, k1: int, k2: int, weight: Weight) -> NDArray:
        """T[v,a,b,c,d] = Σ_ij R_ij[b,c] R_ij[a,d]."""
        if weight is Weight.V_INV:
            return self.sum_BwBv.transpose(0, 3, 1, 2, 4)
        from blmm_scripts.kernels import trace_products

        self._need(self.has_reml, "the REML weight")
        cross = self.sum_BwBv - self.sum_BC
        QQ = trace_products(np.ascontiguousarray(self.prof.H), self.sum_FF)
        return cross.transpose(0, 3, 1, 2, 4) + QQ

    def data_term(self, k1: int, k2: int) -> NDArray:
        """U[v,a,b,c,d] = Σ_ij s_i[a] P_ij[b,c] s_j[d]."""
        self._need(self.has_observed, "data_term")
        U = self.sum_ssBv.transpose(0, 1, 3, 4, 2)
        v, q0, _, p = self.sum_sF.shape
        E = self.sum_sF.reshape(v, q0 * q0, p)
        # Σ_mn E[a,b,m] H[m,n] E[d,c,n] as two matrix products, indices (a, b, d, c)
        EHE = ((E @ self.prof.H) @ E.swapaxes(-1, -2)).reshape(v, q0, q0, q0, q0)
        return U - EHE.swapaxes(-1, -2)


class FusedBorderedCurvature(BorderedCurvature):
    """The sums of :class:`BorderedCurvature` from the compiled kernel.

    One pass over each voxel's first-factor levels
    (:func:`blmm_scripts.kernels_bordered.curvature_sums`) gives the level sums of
    the factored form, W_j = [N_j, F_j], and the border's s x s quantities; no
    (voxels x levels x ...) array is made.  The first factor's rows of Z'AZ
    against the border are W_i Y (Y = [Γ; -H F_s'] for P, Γ for V^-1), so its
    sums with a border factor are sums of Y_j' (Σ_i W_i ⊗ W_i) Y_j; pairs of
    border factors use the dense border block as :class:`BorderedCurvature` does.
    """

    def __init__(self, prof: FusedProfile) -> None:
        """Compute the level sums at `prof`."""
        from blmm_scripts.kernels_bordered import curvature_sums

        self.prof = prof
        re = self.re = prof.re
        self.v = prof.beta.shape[0]
        self.w = re.n_levels[0] * re.n_raneffs[0]
        self._made: dict[tuple, NDArray] = {}
        sums = curvature_sums(
            *_bordered_inputs(prof.products, re, list(prof.sqrtD)),
            *prof.border,
            np.ascontiguousarray(prof.H),
            np.ascontiguousarray(prof.beta),
            prof.reml,
            re.n_levels[0],
        )
        self.sum_ss, self.sum_Bv, self.sum_CN, self.sum_CF = sums[:4]
        self.sum_BB, self.sum_BCN, self.sum_BCF, self.sum_ssBv = sums[4:8]
        self.sum_WW, self.sum_sW = sums[8:10]
        self.Gs, self.Gam, self.RVss, self.RPss, self.Fs, self.s_border = sums[10:16]
        self.TQ, self.EQE = sums[16:]

    def _memo(self, key: tuple, make: Callable[[], NDArray]) -> NDArray:
        """Return make(), computed once per key (the engine asks for terms twice)."""
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def _low(self, weight: Weight) -> tuple[NDArray, NDArray]:
        """Return Σ_j W_j ⊗ W_j and Q of the first factor's low-rank part."""
        s = self.re.border
        if weight is Weight.V_INV:
            return self.sum_WW[:, :, :s, :, :s], self.Gs

        def make() -> NDArray:
            p = self.prof.H.shape[-1]
            Q = np.zeros((self.v, s + p, s + p))
            Q[:, :s, :s], Q[:, s:, s:] = self.Gs, self.prof.H
            return Q

        return self.sum_WW, self._memo(("Q",), make)

    def _Y(self, k: int, weight: Weight) -> NDArray:
        """Return Y's columns of border factor k as (v, m, l_k, q_k)."""

        def make() -> NDArray:
            if weight is Weight.V_INV:
                return self.Gam
            HF = self.prof.H @ np.swapaxes(self.Fs, -1, -2)
            return np.concatenate([self.Gam, -HF], axis=1)

        re = self.re
        o = re.offsets[k] - self.w
        Y = self._memo(("Y", weight), make)[
            :, :, o : o + re.n_levels[k] * re.n_raneffs[k]
        ]
        return Y.reshape(self.v, Y.shape[1], re.n_levels[k], re.n_raneffs[k])

    def border_block(self, weight: Weight) -> NDArray:
        """Return the border's own block of Z'AZ, (v, s, s)."""
        return self.RVss if weight is Weight.V_INV else self.RPss

    def _s(self, k: int) -> NDArray:
        """Blocks s_j of border factor k (k > 0), shape (v, l_k, q_k)."""
        re = self.re
        o = re.offsets[k] - self.w
        lk, qk = re.n_levels[k], re.n_raneffs[k]
        return self.s_border[:, o : o + lk * qk].reshape(self.v, lk, qk)

    def _F(self, k: int) -> NDArray:
        """Rows of border factor k (k > 0) of F = Z'V^-1 X, (v, l_k q_k, p)."""
        re = self.re
        o = re.offsets[k] - self.w
        return self.Fs[:, o : o + re.n_levels[k] * re.n_raneffs[k]]

    def ss(self, k: int) -> NDArray:
        """Σ_j s_j s_j' of factor k, shape (v, q_k, q_k)."""
        return self.sum_ss if k == 0 else super().ss(k)

    def quadratic(self, k: int, h: NDArray) -> NDArray:
        """Σ_j (F_j h)(F_j h)' over the levels j of factor k, h (v, p)."""
        if k > 0:
            return super().quadratic(k, h)
        s = self.re.border
        FF = self.sum_WW[:, :, s:, :, s:]
        return np.einsum("vambn,vm,vn->vab", FF, h, h)

    def diag_sum(self, k: int, weight: Weight) -> NDArray:
        """Σ_j R_jj of factor k, R = Z'V^-1 Z (V_INV) or Z'PZ (P)."""
        if k > 0:
            return super().diag_sum(k, weight)
        out = self.sum_Bv - self.sum_CN
        return out - self.sum_CF if weight is Weight.P else out

    def trace_term(self, k1: int, k2: int, weight: Weight) -> NDArray:
        """T[v,a,b,c,d] = Σ_ij R_ij[b,c] R_ij[a,d] for factors k1, k2."""
        if k1 > 0 and k2 > 0:
            return super().trace_term(k1, k2, weight)
        if k1 > 0:  # R_ij for (k1, 0) is R_ji' for (0, k1)
            return self.trace_term(k2, k1, weight).transpose(0, 4, 3, 2, 1)
        if k2 == 0:
            cross = self.sum_BB - self.sum_BCN
            if weight is Weight.P:
                cross = cross - self.sum_BCF
            if weight is Weight.of(self.prof.reml):  # the kernel's low-rank term
                return cross.transpose(0, 3, 1, 2, 4) + self.TQ
            return _factored_trace(cross, *self._low(weight))

        def make() -> NDArray:  # Σ_j Σ_mn WW[b,m,a,n] Y_j[m,c] Y_j[n,d]
            WW = self._low(weight)[0]
            Yk = self._Y(k2, weight)
            v, m = Yk.shape[:2]
            q0 = WW.shape[1]
            WY = WW.reshape(v, q0 * m * q0, m) @ Yk.reshape(v, m, -1)
            WY = WY.reshape(v, q0, m, q0, *Yk.shape[2:])  # (v, b, m, a, j, d)
            return np.einsum("vbmajd,vmjc->vabcd", WY, Yk)

        return self._memo(("T", k2, weight), make)

    def data_term(self, k1: int, k2: int) -> NDArray:
        """U[v,a,b,c,d] = Σ_ij s_i[a] P_ij[b,c] s_j[d] for factors k1, k2."""
        if k1 > 0 and k2 > 0:
            return super().data_term(k1, k2)
        if k1 > 0:
            return self.data_term(k2, k1).transpose(0, 4, 3, 2, 1)
        if k2 == 0:
            return self.sum_ssBv.transpose(0, 1, 3, 4, 2) - self.EQE

        def make() -> NDArray:  # Σ_m E[a,b,m] Σ_j Y_j[m,c] s_j[d], E = Σ_i s_i ⊗ W_i
            Ys = np.einsum("vmjc,vjd->vmcd", self._Y(k2, Weight.P), self._s(k2))
            return np.einsum("vabm,vmcd->vabcd", self.sum_sW, Ys)

        return self._memo(("U", k2), make)


def curvature(prof: Profile, observed: bool = True) -> BlockCurvature:
    """Return the level-pair sums of `prof` for its Z'Z layout.

    observed : False when only the score and the expected information of the
        profile's likelihood (REML or ML) are needed (a scoring step), so the
        kernels can skip the sums of the observed information.
    """
    if isinstance(prof, FusedProfile):
        if prof.re.bordered:
            return FusedBorderedCurvature(prof)
        return FusedCurvature(prof, observed)
    if prof.re.bordered:
        return BorderedCurvature(prof)
    return BlockCurvature(prof)


def expected_information(
    curv: BlockCurvature, k1: int, k2: int, weight: Weight, pseudo: bool
) -> NDArray:
    """Return the expected information of (vec D_k1, vec D_k2), true or pseudo form."""
    T = curv.trace_term(k1, k2, weight)
    if pseudo:
        T = T.swapaxes(3, 4)  # Σ R_ij[b,d] R_ij[a,c], i.e. Σ R_ij ⊗ R_ij
    return 0.5 * vec_matrix(T)


def profiled_information(
    curv: BlockCurvature, k: int, sigma2: NDArray, weight: Weight, pseudo: bool
) -> NDArray:
    """Return the information of vec D_k with σ² profiled out (vec form).

    The Schur complement I_DD - I_Ds I_ss^-1 I_sD; BLMM used I_DD, a shorter step.
    """
    info = expected_information(curv, k, k, weight, pseudo)
    Dk_sum = curv.diag_sum(k, weight)
    c = Dk_sum.swapaxes(-1, -2).reshape(Dk_sum.shape[0], -1) / (2 * sigma2[:, None])
    I_ss = curv.prof.n_eff / (2 * sigma2**2)
    return info - c[:, :, None] * c[:, None, :] / I_ss[:, None, None]


def observed_information(
    prof: Profile, sigma2: NDArray, curv: BlockCurvature | None = None
) -> NDArray:
    """Observed information of θ = (σ², vech D_1, ..., vech D_r), (v, 1+q_u, 1+q_u).

    Minus the Hessian of the log-likelihood profiled over β (REML or ML as fitted);
    formulas in this module's docstring.  `curv`: the level sums of `prof`, if made
    already.
    """
    re = prof.re
    weight = Weight.of(prof.reml)
    curv = curvature(prof) if curv is None else curv
    dups = [duplication_matrix(qk) for qk in re.n_raneffs]
    s2 = sigma2[:, None, None]
    J_ss = -prof.n_eff / (2 * sigma2**2) + prof.S / sigma2**3
    col = []
    for k in range(re.r):
        ss = curv.ss(k).swapaxes(-1, -2).reshape(len(sigma2), -1)
        col.append(ss @ dups[k] / (2 * sigma2[:, None] ** 2))
    rows = [
        np.concatenate([J_ss[:, None, None], *[c[:, None, :] for c in col]], axis=2)
    ]
    for k1 in range(re.r):
        row = [col[k1][:, :, None]]
        for k2 in range(re.r):
            T = curv.trace_term(k1, k2, weight)
            U = curv.data_term(k1, k2)
            J = vec_matrix(-0.5 * T + U / s2[..., None, None])
            row.append(dups[k1].T @ J @ dups[k2])
        rows.append(np.concatenate(row, axis=2))
    return np.concatenate(rows, axis=1)


def bytes_per_voxel(re: RandomEffects, p: int) -> int:
    """Return the peak working memory of fit/infer per voxel, in bytes (float64).

    Counts the arrays alive at once in the largest step (the information sums of
    inference), from the layouts of :mod:`blmm_scripts.likelihood`; measured peaks
    stay below it (benchmarks/).  A job's memory is then at most MAXMEM plus the
    interpreter and libraries (about 150 MB) when chunks hold
    ``MAXMEM // bytes_per_voxel`` voxels.
    """
    qk_max = max(re.n_raneffs)
    if re.one_factor or re.bordered:
        l0, q0 = re.n_levels[0], re.n_raneffs[0]
        s = re.border if re.bordered else 0
        m = s + p
        floats = (
            14 * l0 * q0 * q0  # Z'Z blocks, M, M^-1, G, Bv, C and temporaries
            + 10 * l0 * q0 * m  # F, K, W, N, the border blocks of both kinds
            + 8 * s * s
            + 2 * q0 * q0 * m * m  # S and QS of the low-rank information term
        )
    else:
        floats = 12 * re.q * re.q
    floats += 6 * re.q * p + 4 * qk_max**4 * re.r**2 + 8 * p * p + 4 * (re.q + p)
    return 8 * int(floats)
