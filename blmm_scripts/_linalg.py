"""Small batched linear algebra and the Woodbury form of V^-1 = (I + Z D Z')^-1.

With D = Λ Λ' (Λ the symmetric square root of the positive semi-definite D) and
M = I + Λ' Z'Z Λ, the Woodbury identity gives, for any images-space vectors a, b with
Z-side products t_a = Z'a, t_b = Z'b:

    a' V^-1 b = a'b - t_a' G t_b,   G = Λ M^-1 Λ' = D (I + Z'Z D)^-1,
    log|V| = log|M|.

M is positive definite even where D is singular (a variance on the boundary), so
every formula holds on the boundary.  G has the block structure of D: one block per
level for one random factor (cost O(l q0^3)), dense otherwise (cost O(q^3)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from blmm_scripts.structure import RandomEffects


def psd_sqrt(D: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
    """Project symmetric matrices onto the PSD cone; return (D_psd, sqrt(D_psd)).

    D : ndarray of shape (..., k, k).  Negative eigenvalues are set to 0, each
    matrix separately (the original tested all voxels jointly).
    """
    if D.shape[-1] == 1:
        d = np.maximum(D, 0.0)
        return d, np.sqrt(d)
    finite = np.isfinite(D).all(axis=(-1, -2))
    D = np.where(finite[..., None, None], D, 0.0)  # non-finite input: D = 0
    w, P = np.linalg.eigh(0.5 * (D + np.swapaxes(D, -1, -2)))
    w = np.maximum(w, 0.0)
    Pt = np.swapaxes(P, -1, -2)
    return (P * w[..., None, :]) @ Pt, (P * np.sqrt(w)[..., None, :]) @ Pt


def psd_project(D: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
    """Project onto the PSD cone; return (D_psd, clipped), clipped (...,) bool.

    clipped is True where a negative eigenvalue had to be set to 0, i.e. where the
    matrix was pushed out of the cone and now lies on its boundary.
    """
    if D.shape[-1] == 1:
        return np.maximum(D, 0.0), D[..., 0, 0] < 0
    finite = np.isfinite(D).all(axis=(-1, -2))
    D = np.where(finite[..., None, None], D, 0.0)
    w, P = np.linalg.eigh(0.5 * (D + np.swapaxes(D, -1, -2)))
    clipped = w[..., 0] < -1e-12 * np.maximum(np.abs(w[..., -1]), 1e-300)
    w = np.maximum(w, 0.0)
    return (P * w[..., None, :]) @ np.swapaxes(P, -1, -2), clipped


def spd_inv_logdet(M: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
    """Return (M^-1, log|M|) of symmetric positive definite (..., k, k) stacks.

    Closed forms for k = 1 and 2 (the common random intercept and intercept +
    slope), Cholesky otherwise.  log|M| is -inf or NaN where M is not positive
    definite.
    """
    k = M.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        if k == 1:
            return 1.0 / M, np.log(M[..., 0, 0])
        if k == 2:
            a, b, c = M[..., 0, 0], M[..., 0, 1], M[..., 1, 1]
            det = a * c - b * b
            inv = np.stack([np.stack([c, -b], -1), np.stack([-b, a], -1)], -2)
            return inv / det[..., None, None], np.log(det)
    finite = np.isfinite(M).all(axis=(-1, -2))
    if not finite.all():
        M = np.where(finite[..., None, None], M, np.eye(k))
    try:
        L = np.linalg.cholesky(M)
        logdet = 2.0 * np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(-1)
        Linv = np.linalg.inv(L)
        inv = np.swapaxes(Linv, -1, -2) @ Linv
    except np.linalg.LinAlgError:
        # some matrix is not positive definite: eigen route, NaN log-determinant there
        w, P = np.linalg.eigh(M)
        with np.errstate(divide="ignore", invalid="ignore"):
            logdet = np.where(w.min(-1) > 0, np.log(np.abs(w)).sum(-1), np.nan)
            winv = np.where(w > 0, 1.0 / w, 0.0)
        inv = (P * winv[..., None, :]) @ np.swapaxes(P, -1, -2)
    if not finite.all():
        logdet = np.where(finite, logdet, np.nan)
    return inv, logdet


def small_matmul(A: NDArray[np.float64], B: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return A @ B for stacks of tiny matrices (inner size <= 3) without matmul.

    numpy's batched matmul has a per-matrix overhead that dominates for 1x1 to 3x3
    blocks; sums of broadcast products are about 2.5 times faster there.
    """
    if A.shape[-1] > 3 or A.shape[-2] > 3:
        return A @ B
    shape = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    out = np.empty((*shape, A.shape[-2], B.shape[-1]))
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite voxels stay NaN
        for i in range(A.shape[-2]):
            acc = A[..., i, 0, None] * B[..., 0, :]
            for j in range(1, A.shape[-1]):
                acc = acc + A[..., i, j, None] * B[..., j, :]
            out[..., i, :] = acc
    return out


def solve_pd(A: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Solve A x = b for stacks of small symmetric matrices, pseudo-inverse if singular.

    A (..., k, k), b (..., k) -> x (..., k).
    """
    finite = np.isfinite(A).all(axis=(-1, -2)) & np.isfinite(b).all(-1)
    if not finite.all():
        A = np.where(finite[..., None, None], A, np.eye(A.shape[-1]))
        b = np.where(finite[..., None], b, 0.0)
    try:
        x = np.linalg.solve(A, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        x = (np.linalg.pinv(A, hermitian=True) @ b[..., None])[..., 0]
    return np.where(finite[..., None], x, np.nan)


@dataclass(frozen=True)
class Woodbury:
    """G = D (I + Z'Z D)^-1 and log|V| for a stack of voxels.

    G : ndarray of shape (v, l, q0, q0) for one factor or the blocks of the first
        factor (bordered layout), else (v, q, q).
    logdet : ndarray of shape (v,), log|I + Z D Z'|.
    LE, Sinv : bordered layout only.  G = blockdiag(G, 0) + LE Sinv LE', with
        LE (v, q, s) and Sinv (v, s, s) from the Schur complement of the border.
    """

    re: RandomEffects
    G: NDArray[np.float64]
    logdet: NDArray[np.float64]
    LE: NDArray[np.float64] | None = None
    Sinv: NDArray[np.float64] | None = None

    def apply(self, t: NDArray[np.float64]) -> NDArray[np.float64]:
        """Return G t for t of shape (m, q, k)."""
        if not self.re.bordered:
            return apply_blocks(self.G, t, self.re)
        l0, q0 = self.re.n_levels[0], self.re.n_raneffs[0]
        w = l0 * q0
        v = self.G.shape[0]
        t0 = t[:, :w].reshape(t.shape[0], l0, q0, t.shape[-1])
        head = small_matmul(self.G, t0).reshape(v, w, t.shape[-1])
        low = self.LE @ (self.Sinv @ (np.swapaxes(self.LE, -1, -2) @ t))
        low[:, :w] += head
        return low


def apply_blocks(
    A: NDArray[np.float64], t: NDArray[np.float64], re: RandomEffects
) -> NDArray[np.float64]:
    """Multiply a Z-space matrix in its layout (blocks or dense) by t (m, q, k)."""
    if not re.one_factor:
        return A @ t
    m, l0, q0, _ = A.shape
    tb = t.reshape(t.shape[0], l0, q0, t.shape[-1])
    return small_matmul(A, tb).reshape(max(m, t.shape[0]), l0 * q0, t.shape[-1])


def ztz_apply(
    ZtZ: NDArray[np.float64], t: NDArray[np.float64], re: RandomEffects
) -> NDArray[np.float64]:
    """Return Z'Z t for Z'Z in the layout of `re` and t of shape (m, q, k)."""
    if not re.bordered:
        return apply_blocks(ZtZ, t, re)
    A, Bm, C = re.unpack_ztz(ZtZ)
    l0, q0 = re.n_levels[0], re.n_raneffs[0]
    w = l0 * q0
    t0, ts = t[:, :w], t[:, w:]
    head = small_matmul(A, t0.reshape(t.shape[0], l0, q0, t.shape[-1]))
    head = head.reshape(head.shape[0], w, t.shape[-1]) + Bm @ ts
    return np.concatenate([head, np.swapaxes(Bm, -1, -2) @ t0 + C @ ts], axis=1)


def block_diag_factors(blocks: list[NDArray], re: RandomEffects) -> NDArray:
    """Expand per-factor (v, q_k, q_k) blocks into the dense (v, q, q) D (or Λ)."""
    v = blocks[0].shape[0]
    out = np.zeros((v, re.q, re.q))
    for k, B in enumerate(blocks):
        lk, qk, o = re.n_levels[k], re.n_raneffs[k], re.offsets[k]
        full = np.einsum("ij,vab->viajb", np.eye(lk), B).reshape(v, lk * qk, lk * qk)
        out[:, o : o + lk * qk, o : o + lk * qk] = full
    return out


def woodbury(
    ZtZ: NDArray[np.float64],
    re: RandomEffects,
    sqrtD: list[NDArray],
    level_weight: NDArray[np.float64] | None = None,
) -> Woodbury:
    """Return the Woodbury quantities at D = sqrtD sqrtD' (per factor (v, q_k, q_k)).

    ZtZ : ndarray in the layout of `re`, leading axis 1 or v.
    level_weight : ndarray (1 or v, l), optional
        One factor only: the multiplicity of each level in log|V| (see
        :class:`~blmm_scripts.structure.Products`).
    """
    if re.one_factor:
        Lam = sqrtD[0]
        if Lam.shape[-1] == 1:
            lam2 = Lam[:, None, 0, 0] ** 2  # (v, 1)
            M = 1.0 + lam2 * ZtZ[..., 0, 0]  # (v, l)
            with np.errstate(divide="ignore", invalid="ignore"):
                G = (lam2 / M)[..., None, None]
                logM = np.log(M)
                if level_weight is not None:
                    logM = logM * level_weight
                logdet = logM.sum(-1)
            return Woodbury(re, G, logdet)
        G, logdet = _blocks_woodbury(ZtZ, Lam)
        if level_weight is not None:
            logdet = logdet * level_weight
        return Woodbury(re, G, logdet.sum(-1))
    if re.bordered:
        return _woodbury_bordered(ZtZ, re, sqrtD)
    Lam = block_diag_factors(sqrtD, re)
    M = np.eye(re.q) + Lam @ ZtZ @ Lam
    Minv, logdet = spd_inv_logdet(M)
    return Woodbury(re, Lam @ Minv @ Lam, logdet)


def _sandwich(Lam: NDArray, B: NDArray) -> NDArray:
    """Return Λ B_j Λ for every level j: (v, k, k) and (m, l, k, k) -> (v, l, k, k).

    Written as one matrix product per voxel, vec(Λ B Λ) = (Λ ⊗ Λ) vec(B), which BLAS
    does much faster than l tiny products.
    """
    v, k = Lam.shape[0], Lam.shape[-1]
    m, l0 = B.shape[:2]
    kron = np.einsum("vab,vcd->vacbd", Lam, Lam).reshape(v, k * k, k * k)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite voxels stay NaN
        out = kron @ B.reshape(m, l0, k * k).transpose(0, 2, 1)
    return out.transpose(0, 2, 1).reshape(v, l0, k, k)


def _blocks_woodbury(
    B: NDArray, Lam: NDArray, inverse: bool = False
) -> tuple[NDArray, ...]:
    """Return per-level G_j = Λ (I + Λ B_j Λ)^-1 Λ (v, l, k, k) and log|I + Λ B_j Λ|.

    With inverse=True also return (I + Λ B_j Λ)^-1.
    """
    M = np.eye(Lam.shape[-1]) + _sandwich(Lam, B)
    Minv, logdet = spd_inv_logdet(M)
    G = _sandwich(Lam, Minv)
    return (G, logdet, Minv) if inverse else (G, logdet)


def _woodbury_bordered(
    ZtZ: NDArray, re: RandomEffects, sqrtD: list[NDArray]
) -> Woodbury:
    """Woodbury quantities by the Schur complement of the border (several factors).

    With Λ = blockdiag(Λ_1 per level, Λ_s) and M = I + Λ Z'Z Λ partitioned as
    [[M11, M12], [M21, M22]] (M11 block diagonal over the first factor's levels):
    S = M22 - M21 M11^-1 M12, log|M| = Σ_j log|M11_j| + log|S| and
    G = Λ M^-1 Λ = blockdiag(Λ_1 M11^-1 Λ_1, 0) + (ΛE) S^-1 (ΛE)', E = [-M11^-1 M12; I].
    """
    A, Bm, C = re.unpack_ztz(ZtZ)
    l0, q0, s = re.n_levels[0], re.n_raneffs[0], re.border
    Lb = sqrtD[0][:, None]  # (v, 1, q0, q0)
    Ls = block_diag_factors(sqrtD[1:], re.border_effects)  # (v, s, s)
    v = Ls.shape[0]
    G1, ld1, M11inv = _blocks_woodbury(A, sqrtD[0], inverse=True)
    M12 = small_matmul(Lb, Bm.reshape(Bm.shape[0], l0, q0, s)) @ Ls[:, None]
    E0 = -small_matmul(M11inv, M12)  # (v, l, q0, s)
    S = np.eye(s) + Ls @ C @ Ls + np.einsum("vjas,vjat->vst", M12, E0)
    Sinv, ld2 = spd_inv_logdet(S)
    LE = np.concatenate([small_matmul(Lb, E0).reshape(v, l0 * q0, s), Ls], axis=1)
    return Woodbury(re, G1, ld1.sum(-1) + ld2, LE, Sinv)
