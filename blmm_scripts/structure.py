"""Random-effects structure, product matrices and result containers.

The engine never sees images: it works from the product matrices of one stack of
voxels (voxel axis first).  Design products (X'X, Z'X, Z'Z) have a leading axis of
length 1 when they are shared by every voxel of the stack ("inner" voxels, where all
images are present) and of length n_voxels otherwise ("ring" voxels).

Z'Z is stored in one of three layouts, chosen by :class:`RandomEffects`:

* one random factor: its diagonal blocks only, shape (m, l, q0, q0), because Z'Z is
  block diagonal (each image belongs to exactly one level);
* several factors, the first the largest (subject x site; the engine puts the
  largest first, :func:`largest_first`): the first factor's
  diagonal blocks plus a dense border for the others, packed flat (m, ztz_width);
* otherwise (or forced with dense=True): the dense matrix, shape (m, q, q).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property

import numpy as np
from numpy.typing import NDArray


class Status(IntEnum):
    """Per-voxel outcome, written to ``blmm_vox_status``.

    Voxels with status OK or MAXNIT have estimates; every other status means the
    voxel was dropped from the analysis mask, for the reason its name gives.
    """

    OUTSIDE = 0  # outside the analysis mask, or dropped by the missingness rules
    OK = 1  # converged
    MAXNIT = 2  # kept, but maxnit was reached before convergence
    RANK_DEFICIENT = 3  # X'X of the images present at the voxel is singular
    NO_VARIANCE = 4  # residuals are zero (e.g. constant data): nothing to estimate
    NOT_FINITE = 5  # the likelihood or an estimate became NaN or infinite


#: Statuses of the voxels that have estimates and stay in the final mask.
FITTED = (int(Status.OK), int(Status.MAXNIT))


def is_fitted(status: NDArray[np.integer]) -> NDArray[np.bool_]:
    """Return where a voxel has estimates (status OK or MAXNIT)."""
    return np.isin(status, FITTED)


#: Statistics of each T contrast and of each F contrast, one map each, in the
#: order the maps are written (``blmm_vox_<name>``).
T_STATISTICS = ("con", "conSE", "conT", "conTlp", "conT_swedf")
F_STATISTICS = ("conF", "conFlp", "conF_swedf", "conR2")


@dataclass(frozen=True)
class Factor:
    """One random factor.

    Parameters
    ----------
    codes : ndarray of shape (n_images,), dtype int
        Level index of each image, 0..n_levels-1, levels in sorted label order.
    design : ndarray of shape (n_images, n_raneffs)
        Random-effect covariates of each image (a column of ones for an intercept).
    n_levels : int
    name : str
    """

    codes: NDArray[np.intp]
    design: NDArray[np.float64]
    n_levels: int
    name: str = ""

    @property
    def n_raneffs(self) -> int:
        """Number of random effects per level (q_k)."""
        return self.design.shape[1]

    @classmethod
    def from_labels(
        cls, labels: NDArray, design: NDArray[np.float64], name: str = ""
    ) -> Factor:
        """Build a factor from level labels, ordering levels by sorted label."""
        levels, codes = np.unique(np.asarray(labels), return_inverse=True)
        design = np.asarray(design, dtype=np.float64)
        if design.ndim == 1:
            design = design[:, None]
        return cls(codes.ravel().astype(np.intp), design, len(levels), name)


@dataclass(frozen=True)
class RandomEffects:
    """Sizes of the random-effects part: factors k = 1..r, l_k levels, q_k effects.

    Z has q = sum_k q_k l_k columns: factors in order, levels of a factor in sorted
    label order, and the q_k effects of a level next to each other (level-major).
    D is block diagonal with block D_k repeated l_k times; its free parameters are
    vech(D_1), ..., vech(D_r), vech being the column-wise lower triangle.
    """

    n_levels: tuple[int, ...]
    n_raneffs: tuple[int, ...]
    dense: bool = False  # force the general dense layout (to test the fast paths)

    @classmethod
    def of(
        cls, factors: list[Factor] | tuple[Factor, ...], dense: bool = False
    ) -> RandomEffects:
        """Return the structure of a list of factors."""
        return cls(
            tuple(f.n_levels for f in factors),
            tuple(f.n_raneffs for f in factors),
            dense,
        )

    @property
    def r(self) -> int:
        """Number of random factors."""
        return len(self.n_levels)

    @property
    def q(self) -> int:
        """Number of columns of Z."""
        return sum(
            lk * qk for lk, qk in zip(self.n_levels, self.n_raneffs, strict=False)
        )

    @property
    def n_vech(self) -> tuple[int, ...]:
        """Number of free parameters of each D_k, q_k(q_k+1)/2."""
        return tuple(qk * (qk + 1) // 2 for qk in self.n_raneffs)

    @property
    def q_u(self) -> int:
        """Number of free variance parameters of D, summed over factors."""
        return sum(self.n_vech)

    @property
    def one_factor(self) -> bool:
        """True when Z'Z is stored as diagonal blocks (a single random factor)."""
        return self.r == 1 and not self.dense

    @property
    def bordered(self) -> bool:
        """True when Z'Z is stored as blocks of factor 1 plus a dense border.

        Used for several factors where the first is the largest (subject x site):
        the cost per voxel is then O(l_1 q_1 s^2 + s^3) with s = q - l_1 q_1 the
        border's width, instead of O(q^3).
        """
        if self.r < 2 or self.dense:
            return False
        sizes = [lk * qk for lk, qk in zip(self.n_levels, self.n_raneffs, strict=True)]
        return sizes[0] == max(sizes)

    @property
    def border(self) -> int:
        """Width s of the dense border: the columns of factors 2..r."""
        return self.q - self.n_levels[0] * self.n_raneffs[0]

    @property
    def ztz_width(self) -> int:
        """Length of one voxel's bordered Z'Z: l q0^2 + l q0 s + s^2."""
        l0, q0, s = self.n_levels[0], self.n_raneffs[0], self.border
        return l0 * q0 * q0 + l0 * q0 * s + s * s

    def unpack_ztz(self, ZtZ: NDArray) -> tuple[NDArray, NDArray, NDArray]:
        """Split a bordered Z'Z (m, ztz_width) into views A, Bm, C.

        A (m, l, q0, q0) the diagonal blocks of factor 1; Bm (m, l q0, s) its
        cross-products with the border; C (m, s, s) the border's own block.
        """
        m = ZtZ.shape[0]
        l0, q0, s = self.n_levels[0], self.n_raneffs[0], self.border
        a, b = l0 * q0 * q0, l0 * q0 * s
        return (
            ZtZ[:, :a].reshape(m, l0, q0, q0),
            ZtZ[:, a : a + b].reshape(m, l0 * q0, s),
            ZtZ[:, a + b :].reshape(m, s, s),
        )

    def pack_ztz(self, ZtZ: NDArray) -> NDArray:
        """Pack dense Z'Z stacks (m, q, q) into the bordered layout (m, ztz_width)."""
        m = ZtZ.shape[0]
        l0, q0 = self.n_levels[0], self.n_raneffs[0]
        w = l0 * q0
        A = np.einsum("mjajb->mjab", ZtZ[:, :w, :w].reshape(m, l0, q0, l0, q0))
        return np.concatenate(
            [
                A.reshape(m, -1),
                ZtZ[:, :w, w:].reshape(m, -1),
                ZtZ[:, w:, w:].reshape(m, -1),
            ],
            axis=1,
        )

    @property
    def border_effects(self) -> RandomEffects:
        """The structure of factors 2..r alone (the border)."""
        return RandomEffects(self.n_levels[1:], self.n_raneffs[1:], dense=True)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """First column of each factor in Z, plus q at the end."""
        sizes = [lk * qk for lk, qk in zip(self.n_levels, self.n_raneffs, strict=False)]
        return tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)]))


def largest_first(factors: Sequence[Factor]) -> tuple[int, ...]:
    """Return the order in which the engine takes the factors: the largest first.

    The largest factor (most columns of Z, l_k q_k) goes first, so that several
    factors use the bordered layout (its blocks plus the others as a border)
    instead of a dense q x q matrix; the others keep their order.  Estimates are
    mapped back to the config's order (:mod:`blmm_scripts.voxelwise`).
    """
    sizes = [f.n_levels * f.n_raneffs for f in factors]
    first = int(np.argmax(sizes)) if sizes else 0
    return (first, *(k for k in range(len(factors)) if k != first))


def build_Z(factors: list[Factor] | tuple[Factor, ...]) -> NDArray[np.float64]:
    """Return the dense Z, shape (n_images, q), in the column order of RandomEffects."""
    blocks = []
    for f in factors:
        n, qk = f.design.shape
        Zk = np.zeros((n, f.n_levels, qk))
        Zk[np.arange(n), f.codes, :] = f.design
        blocks.append(Zk.reshape(n, f.n_levels * qk))
    return np.hstack(blocks)


def vech_indices(qk: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Return (rows, cols) of vech order: column-wise lower triangle incl. diagonal."""
    cols, rows = np.triu_indices(qk)
    return rows, cols


def vech(A: NDArray[np.float64]) -> NDArray[np.float64]:
    """Return vech of a stack of symmetric matrices, (..., q, q) -> (..., q(q+1)/2)."""
    rows, cols = vech_indices(A.shape[-1])
    return A[..., rows, cols]


def unvech(v: NDArray[np.float64], qk: int) -> NDArray[np.float64]:
    """Inverse of :func:`vech`, (..., q(q+1)/2) -> (..., q, q) symmetric."""
    rows, cols = vech_indices(qk)
    A = np.zeros((*v.shape[:-1], qk, qk))
    A[..., rows, cols] = v
    A[..., cols, rows] = v
    return A


def duplication_matrix(qk: int) -> NDArray[np.float64]:
    """Return Dup of shape (q_k**2, q_k(q_k+1)/2) with Dup @ vech(A) = vec(A).

    vec stacks columns, so vec(A)[a + b q_k] = A[a, b].
    """
    rows, cols = vech_indices(qk)
    dup = np.zeros((qk * qk, len(rows)))
    for m, (a, b) in enumerate(zip(rows, cols, strict=False)):
        dup[a + b * qk, m] = 1.0
        dup[b + a * qk, m] = 1.0
    return dup


def every_voxel(index: NDArray, n_voxels: int) -> bool:
    """Return whether an integer index selects voxels 0..n_voxels-1 in order."""
    index = np.asarray(index)
    return (
        index.dtype.kind in "iu"
        and index.shape == (n_voxels,)
        and (n_voxels == 0 or (index[0] == 0 and bool(np.all(np.diff(index) == 1))))
    )


@dataclass(frozen=True)
class Products:
    """Product matrices of a stack of voxels.

    Parameters
    ----------
    XtX : ndarray of shape (m, p, p)
    ZtX : ndarray of shape (m, q, p)
    ZtZ : ndarray of shape (m, l, q0, q0) for one factor, (m, ztz_width) bordered
        (see RandomEffects.bordered), else (m, q, q).
        m is 1 when the design is shared by all voxels, else n_voxels.
    XtY : ndarray of shape (n_voxels, p)
    ZtY : ndarray of shape (n_voxels, q)
    YtY : ndarray of shape (n_voxels,)
    n : ndarray of shape (n_voxels,)
        Number of images present at each voxel.
    level_weight : ndarray of shape (m, l), optional
        One factor only: how many levels each level stands for in the sums that
        involve Z'Z alone (log|V|, Σ_j R_jj, Σ_j R_jj ⊗ R_jj).  1 for real levels;
        the grouped statistics (:mod:`blmm_scripts.grouped`) pass a few
        pseudo-levels per level size that reproduce every sum over levels.
    """

    XtX: NDArray[np.float64]
    ZtX: NDArray[np.float64]
    ZtZ: NDArray[np.float64]
    XtY: NDArray[np.float64]
    ZtY: NDArray[np.float64]
    YtY: NDArray[np.float64]
    n: NDArray[np.float64]
    level_weight: NDArray[np.float64] | None = None

    @property
    def n_voxels(self) -> int:
        """Number of voxels in the stack."""
        return self.YtY.shape[0]

    def take(self, index: NDArray) -> Products:
        """Return the products of a subset of voxels (index into the voxel axis).

        An index of every voxel in order returns these products, uncopied.
        """
        if every_voxel(index, self.n_voxels):
            return self

        def sel(a: NDArray) -> NDArray:
            return a if a.shape[0] == 1 and self.n_voxels != 1 else a[index]

        return Products(
            sel(self.XtX),
            sel(self.ZtX),
            sel(self.ZtZ),
            self.XtY[index],
            self.ZtY[index],
            self.YtY[index],
            self.n[index],
            None if self.level_weight is None else sel(self.level_weight),
        )


@dataclass(frozen=True)
class FitResult:
    """Estimates of one stack of voxels.

    beta (n_voxels, p); sigma2 (n_voxels,); D: list over factors of
    (n_voxels, q_k, q_k), cov(b) = sigma2 * D; llh (n_voxels,) the maximised REML or
    ML log-likelihood with all constants (comparable with lme4's logLik); nit
    (n_voxels,) iterations; status (n_voxels,) a :class:`Status` code.
    """

    beta: NDArray[np.float64]
    sigma2: NDArray[np.float64]
    D: list[NDArray[np.float64]]
    llh: NDArray[np.float64]
    nit: NDArray[np.int64]
    status: NDArray[np.int64]
    reml: bool = True

    @property
    def D_vech(self) -> NDArray[np.float64]:
        """vech(D_1), ..., vech(D_r) side by side, shape (n_voxels, q_u)."""
        return np.concatenate([vech(Dk) for Dk in self.D], axis=1)


@dataclass(frozen=True)
class Inference:
    """Statistics of one stack of voxels (T contrasts first axis order kept).

    Every array has the voxel axis first.  T contrasts: con, conSE, conT, conT_swedf,
    conTlp of shape (n_voxels, n_t); F contrasts: conF, conF_swedf, conFlp, conR2 of
    shape (n_voxels, n_f).  covB (n_voxels, p, p); resms (n_voxels,).
    """

    covB: NDArray[np.float64]
    resms: NDArray[np.float64]
    con: NDArray[np.float64]
    conSE: NDArray[np.float64]
    conT: NDArray[np.float64]
    conT_swedf: NDArray[np.float64]
    conTlp: NDArray[np.float64]
    conF: NDArray[np.float64]
    conF_swedf: NDArray[np.float64]
    conFlp: NDArray[np.float64]
    conR2: NDArray[np.float64]
