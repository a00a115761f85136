"""Sufficient statistics that do not grow with the number of levels.

For one random factor with a random intercept, level j's block of V^-1 depends on D
only through n_j, the images of level j present at the voxel:
V_j^-1 = I - d / (1 + d n_j) 1 1'.  Every product the likelihood, its score and its
informations need is then a sum over levels of (a function of d and n_j) times
either 1 (log|V| and the traces of Z'Z alone) or a product of two of the level's
sums u_j = (x̄_j, ȳ_j) = (X_j'1, Y_j'1).  Levels with the same n_j = g can be summed
once, in the batch and concat stages: per voxel and level size g,

    m_g = #{j: n_j = g},   A_g = Σ x̄_j x̄_j',   b_g = Σ x̄_j ȳ_j,   c_g = Σ ȳ_j²

(A_g is shared by every voxel with all images present), O(G p) numbers per voxel
for G level sizes, instead of the q = l numbers of Z'Y.

The engine fits from these through *pseudo-levels*: for each g, p + 1 levels of size
g whose sums reproduce A_g, b_g and c_g exactly (A_g = L L' gives p levels with
x̄ = the columns of L and ȳ = L^+ b_g; one more with x̄ = 0 and
ȳ = sqrt(c_g - b_g' A_g^+ b_g)), each standing for m_g / (p + 1) levels in the sums
of Z'Z alone (:attr:`Products.level_weight`).  So the per-level engine runs
unchanged on G (p + 1) levels, and gives the per-level fit to rounding.

The batch rule sums whole levels: the plan orders the images by level
(:func:`image_order`), so a level never spans two image batches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Self

import numpy as np
from numpy.typing import NDArray

from blmm_scripts.structure import Factor, Products, RandomEffects

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

#: Eigenvalues of A_g below this fraction of the largest are taken as zero.
RANK_TOL = 1e-12


def applies(factors: Sequence[Factor]) -> bool:
    """Return whether grouped statistics represent this model exactly.

    One factor whose random effect is an intercept: one covariate, the same value
    for every image (Z_j'Z_j then depends only on n_j).
    """
    if len(factors) != 1 or factors[0].n_raneffs != 1:
        return False
    z = factors[0].design[:, 0]
    return bool(z.size) and bool(np.all(z == z[0])) and z[0] != 0


def max_level_size(factor: Factor) -> int:
    """Return G, the most images of one level."""
    return int(np.bincount(factor.codes, minlength=factor.n_levels).max())


def is_cheaper(factor: Factor, p: int) -> bool:
    """Return whether G (p + 1) pseudo-levels are fewer than the factor's levels."""
    return max_level_size(factor) * (p + 1) < factor.n_levels


def chosen(statistics: str, factors: Sequence[Factor], p: int) -> bool:
    """Return whether an analysis uses grouped statistics (config key ``statistics``).

    ``grouped`` where it applies (checked with the config), ``levels`` never,
    ``auto`` where it applies and has fewer pseudo-levels than levels.
    """
    if statistics == "levels" or not applies(factors):
        return False
    return statistics == "grouped" or is_cheaper(factors[0], p)


def engine_effects(factor: Factor, p: int) -> RandomEffects:
    """Return the structure the engine fits: G (p + 1) pseudo-levels."""
    return RandomEffects((max_level_size(factor) * (p + 1),), (1,))


def image_order(factor: Factor) -> NDArray[np.intp]:
    """Return the image order of the batches: by level, stable within a level."""
    return np.argsort(factor.codes, kind="stable").astype(np.intp)


@dataclass(frozen=True)
class _Sums:
    """The grouped sums at a stack of voxels, and their ``.npz`` form.

    Per voxel (V voxels, G level sizes): ``n`` (V,) images present, ``XtY``
    (V, p), ``YtY`` (V,), ``m`` (V, G) levels with g images present, ``b``
    (V, G, p), ``c`` (V, G).  ``A`` (G, p, p), ``XtX`` (p, p) and ``m_full`` (G,)
    are those of voxels where every image is present.
    """

    n: NDArray[np.int32]
    XtY: NDArray[np.float64]
    YtY: NDArray[np.float64]
    m: NDArray[np.int32]
    b: NDArray[np.float64]
    c: NDArray[np.float64]
    A: NDArray[np.float64]
    XtX: NDArray[np.float64]
    m_full: NDArray[np.int32]

    def to_arrays(self) -> dict[str, NDArray]:
        """Return the fields as named arrays."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray]) -> Self:
        """Inverse of :meth:`to_arrays`."""
        return cls(**{f.name: arrays[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class GroupedBatch(_Sums):
    """One image batch's grouped sums at every analysis-mask voxel (one ``.npz``).

    The batch holds whole levels; ``A``, ``XtX`` and ``m_full`` hold for voxels
    where every image of the batch is present.  The others (``partial``,
    positions) have their own ``A_partial`` (V_p, G, p, p) and ``XtX_partial``
    (V_p, p, p).
    """

    partial: NDArray[np.intp]
    A_partial: NDArray[np.float64]
    XtX_partial: NDArray[np.float64]


def batch_groups(
    X: NDArray[np.float64],
    factor: Factor,
    images: NDArray[np.intp],
    Y: NDArray[np.float64],
    is_missing: NDArray[np.bool_],
    G: int,
) -> GroupedBatch:
    """Return the grouped sums of one batch of whole levels.

    Parameters
    ----------
    X : ndarray of shape (n_images, p)
        The whole design.
    factor : Factor
        The random factor (a random intercept).
    images : ndarray of shape (n_b,)
        The batch's images (rows of X), sorted by level, every image of each of
        their levels included.
    Y : ndarray of shape (n_b, V)
        0 where missing.
    is_missing : ndarray of shape (n_b, V), bool
    G : int
        The largest level size of the whole design (the same in every batch).
    """
    import scipy.sparse as sp

    images = np.asarray(images, dtype=np.intp)
    if Y.shape[0] != images.size:
        raise ValueError(f"Y has {Y.shape[0]} rows for a batch of {images.size} images")
    codes = factor.codes[images]
    if images.size and np.any(np.diff(codes) < 0):
        raise ValueError("the batch's images are not sorted by level")
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if codes.size else []
    starts = np.asarray(starts, dtype=np.intp)
    full_size = np.bincount(factor.codes, minlength=factor.n_levels)
    if np.any(np.bincount(codes, minlength=factor.n_levels)[codes] != full_size[codes]):
        raise ValueError("an image batch holds part of a level, not all of it")
    z = factor.design[images, 0]
    Xb = X[images] * z[:, None]  # Z_j'X: the intercept's value times X
    Yz = Y if np.all(z == 1) else Y * z[:, None]
    p = X.shape[1]
    n_vox = Y.shape[1]
    n = (is_missing.shape[0] - is_missing.sum(axis=0)).astype(np.int32)
    XtY = Y.T @ X[images]
    YtY = np.einsum("iv,iv->v", Y, Y)
    if images.size == 0:
        zeros = np.zeros
        return GroupedBatch(
            n, XtY, YtY, zeros((n_vox, G), np.int32), zeros((n_vox, G, p)),
            zeros((n_vox, G)), zeros((G, p, p)), zeros((p, p)), zeros(G, np.int32),
            zeros(0, np.intp), zeros((0, G, p, p)), zeros((0, p, p)),
        )  # fmt: skip
    # Sums of whole levels (every image present), as most voxels have them.
    level_of = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, images.size]))
    levels = sp.csr_matrix(
        (np.ones(images.size), (level_of, np.arange(images.size))),
        shape=(starts.size, images.size),
    )
    ybar = np.asarray(levels @ Yz)  # (l_b, V); 0 where missing
    xbar = np.asarray(levels @ Xb)  # (l_b, p)
    size_full = full_size[codes[starts]]
    in_group = (size_full[:, None] == np.arange(1, G + 1)).astype(np.float64)
    m_full = in_group.sum(axis=0).astype(np.int32)
    A = np.einsum("jg,ja,jb->gab", in_group, xbar, xbar)
    b = ybar.T @ (in_group[:, :, None] * xbar[:, None, :]).reshape(-1, G * p)
    b = b.reshape(n_vox, G, p)
    c = (ybar * ybar).T @ in_group  # (V, G)
    m = np.broadcast_to(m_full, (n_vox, G)).copy()
    m[n == 0] = 0
    XtX = X[images].T @ X[images]
    partial, A_partial, XtX_partial = _partial_voxels(
        X[images], Xb, is_missing, n, starts, xbar, ybar, size_full, A, XtX, m, b, c
    )
    logger.info(
        "grouped %d images of %d levels at %d voxels (%d with images missing)",
        images.size,
        starts.size,
        n_vox,
        partial.size,
    )
    return GroupedBatch(
        n, XtY, YtY, m, b, c, A, XtX, m_full, partial, A_partial, XtX_partial
    )


def _partial_voxels(
    Xi: NDArray[np.float64],
    Xb: NDArray[np.float64],
    is_missing: NDArray[np.bool_],
    n: NDArray[np.int32],
    starts: NDArray[np.intp],
    xbar: NDArray[np.float64],
    ybar: NDArray[np.float64],
    size_full: NDArray[np.intp],
    A: NDArray[np.float64],
    XtX: NDArray[np.float64],
    m: NDArray[np.int32],
    b: NDArray[np.float64],
    c: NDArray[np.float64],
) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
    """Return the voxels with some of the batch's images missing, their A and X'X.

    Only the levels that miss an image at a voxel change there: such a level moves
    from the group of its full size to the group of its size at the voxel, with
    x̄ less the missing images' rows.  Cost: one step per (voxel, level) pair with
    a missing image, not per voxel and level.  Corrects ``m``, ``b`` and ``c`` in
    place (they were summed with whole levels).
    """
    import scipy.sparse as sp

    p = Xi.shape[1]
    partial = np.flatnonzero(is_missing.any(axis=0) & (n > 0)).astype(np.intp)
    img, pos = np.nonzero(is_missing[:, partial])  # missing (image, voxel) pairs
    gone = sp.csr_matrix(
        (np.ones(pos.size), (pos, img)), shape=(partial.size, Xi.shape[0])
    )
    outer = np.einsum("ia,ib->iab", Xi, Xi).reshape(Xi.shape[0], -1)
    XtX_partial = XtX - np.asarray(gone @ outer).reshape(partial.size, p, p)
    level = np.searchsorted(starts, img, side="right") - 1
    key = pos.astype(np.int64) * starts.size + level
    order = np.argsort(key, kind="stable")
    key, img = key[order], img[order]
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else []
    first = np.asarray(first, dtype=np.intp)
    pv, pl = key[first] // starts.size, key[first] % starts.size  # voxel, level
    x_gone = np.add.reduceat(Xb[img], first, axis=0) if first.size else np.zeros((0, p))
    n_gone = np.diff(np.r_[first, key.size])
    x_full, g_full = xbar[pl], size_full[pl]
    x_left, g_left = x_full - x_gone, g_full - n_gone
    voxel = partial[pv]
    y = ybar[pl, voxel]  # the level's sum at the voxel (missing images are 0)
    A_partial = np.broadcast_to(A, (partial.size, *A.shape)).copy()

    def move(sign: int, at: NDArray[np.bool_], x: NDArray, g: NDArray) -> None:
        """Add (sign 1) or take away (-1) levels' sums in the group of size g."""
        v, k, yk, xk = voxel[at], pv[at], y[at], x[at]
        np.add.at(A_partial, (k, g[at] - 1), sign * np.einsum("ka,kb->kab", xk, xk))
        np.add.at(m, (v, g[at] - 1), sign)
        np.add.at(b, (v, g[at] - 1), sign * yk[:, None] * xk)
        np.add.at(c, (v, g[at] - 1), sign * yk * yk)

    move(-1, np.ones(pv.size, dtype=bool), x_full, g_full)  # out of its full size
    move(1, g_left >= 1, x_left, g_left)  # into its size at the voxel, if any left
    return partial, A_partial, XtX_partial


@dataclass(frozen=True)
class GroupedStats(_Sums):
    """Grouped sufficient statistics of a batch of voxels (``products.npz``).

    Sums over all images; ``ring`` (positions of the voxels with some image
    missing and n > p) have their own ``A_ring`` and ``XtX_ring``.
    """

    ring: NDArray[np.intp]
    A_ring: NDArray[np.float64]
    XtX_ring: NDArray[np.float64]

    def observed_levels(self) -> NDArray[np.int64]:
        """Return the levels with an image present at each voxel (q_v for safeMode)."""
        return self.m.sum(axis=1).astype(np.int64)


def voxel_slice(part: GroupedBatch, start: int, stop: int) -> GroupedBatch:
    """Return one image batch's grouped sums at voxels start:stop only."""
    rows = slice(start, stop)
    keep = (part.partial >= start) & (part.partial < stop)
    return GroupedBatch(
        part.n[rows], part.XtY[rows], part.YtY[rows], part.m[rows], part.b[rows],
        part.c[rows], part.A, part.XtX, part.m_full, part.partial[keep] - start,
        part.A_partial[keep], part.XtX_partial[keep],
    )  # fmt: skip


def concat_groups(parts: Sequence[GroupedBatch], n_images: int, p: int) -> GroupedStats:
    """Sum the grouped sums of every image batch at the same voxels.

    Voxels with n <= p images can never be fitted; they get no ring products.
    """
    n = np.sum([q.n for q in parts], axis=0, dtype=np.int32)
    total = {
        name: np.sum([getattr(q, name) for q in parts], axis=0)
        for name in ("XtY", "YtY", "b", "c", "A", "XtX")
    }
    m = np.sum([q.m for q in parts], axis=0, dtype=np.int32)
    m_full = np.sum([q.m_full for q in parts], axis=0, dtype=np.int32)
    ring = np.flatnonzero((n < n_images) & (n > p)).astype(np.intp)
    where = np.full(n.size, -1, dtype=np.intp)
    where[ring] = np.arange(ring.size)
    A_ring = np.broadcast_to(total["A"], (ring.size, *total["A"].shape)).copy()
    XtX_ring = np.broadcast_to(total["XtX"], (ring.size, p, p)).copy()
    for q in parts:
        pos = where[q.partial]
        sel = pos >= 0
        A_ring[pos[sel]] += q.A_partial[sel] - q.A
        XtX_ring[pos[sel]] += q.XtX_partial[sel] - q.XtX
        # a voxel where the batch has no image at all: none of its levels count
        none = np.flatnonzero((q.n == 0) & (where >= 0))
        A_ring[where[none]] -= q.A
        XtX_ring[where[none]] -= q.XtX
    logger.info(
        "summed %d image batches at %d voxels: %d with every image, %d with some",
        len(parts),
        n.size,
        int((n == n_images).sum()),
        int(((n > 0) & (n < n_images)).sum()),
    )
    return GroupedStats(
        n, total["XtY"], total["YtY"], m, total["b"], total["c"], total["A"],
        total["XtX"], m_full, ring, A_ring, XtX_ring,
    )  # fmt: skip


def pseudo_products(
    stats: GroupedStats, idx: NDArray[np.intp], ring: bool, z: float = 1.0
) -> tuple[Products, RandomEffects]:
    """Return the products of pseudo-levels for some voxels (see module docstring).

    Parameters
    ----------
    stats : GroupedStats
    idx : ndarray
        Voxel positions, all inner (``ring=False``: every image present) or all
        ring voxels (``ring=True``).
    z : float
        The value of the random intercept's covariate (1 for an intercept).
    """
    G, p = stats.A.shape[0], stats.A.shape[-1]
    if ring:
        where = np.searchsorted(stats.ring, idx)
        A, XtX, m = stats.A_ring[where], stats.XtX_ring[where], stats.m[idx]
    else:
        A, XtX, m = stats.A[None], stats.XtX[None], stats.m_full[None]
    lam, U = np.linalg.eigh(A)  # (k, G, p), (k, G, p, p)
    big = lam.max(axis=-1, keepdims=True)
    keep = lam > RANK_TOL * np.maximum(big, 1e-300)
    root = np.sqrt(np.where(keep, lam, 0.0))
    L = U * root[..., None, :]  # columns: the pseudo-levels' x̄
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = (np.swapaxes(U, -1, -2) @ stats.b[idx][..., None])[..., 0]
        y = np.where(keep, coef / np.where(keep, root, 1.0), 0.0)  # (v, G, p)
    rest = np.sqrt(np.maximum(stats.c[idx] - (y**2).sum(-1), 0.0))  # (v, G)
    k = L.shape[0]
    ZtX = np.concatenate([np.swapaxes(L, -1, -2), np.zeros((k, G, 1, p))], axis=2)
    ZtY = np.concatenate([y, rest[..., None]], axis=2)
    sizes = np.arange(1, G + 1, dtype=np.float64) * z * z
    ZtZ = np.broadcast_to(sizes[:, None], (G, p + 1)).reshape(1, -1, 1, 1)
    weight = np.repeat(m.astype(np.float64) / (p + 1), p + 1, axis=-1)
    n_pseudo = G * (p + 1)
    products = Products(
        XtX,
        ZtX.reshape(k, n_pseudo, p),
        np.ascontiguousarray(ZtZ),
        stats.XtY[idx],
        ZtY.reshape(idx.size, n_pseudo),
        stats.YtY[idx],
        stats.n[idx].astype(np.float64),
        weight,
    )
    return products, RandomEffects((n_pseudo,), (1,))  # = engine_effects
