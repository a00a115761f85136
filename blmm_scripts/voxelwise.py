"""Estimate and inference of one voxel batch: the engine applied to its statistics.

Voxels are fitted in chunks (at most ``chunk`` per call, sized from the job's
memory), inner voxels (every image present) sharing the full design's products and
ring voxels getting theirs from the missing images
(:func:`blmm_scripts.products.ring_design_products`).  ``fit.npz`` holds a batch's
estimates (:func:`fit_arrays`, :func:`fit_from`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from blmm_scripts import grouped
from blmm_scripts.batching import VoxelStats
from blmm_scripts.config import Contrast
from blmm_scripts.estimation import fit
from blmm_scripts.grouped import GroupedStats
from blmm_scripts.inference import MINLOG, infer
from blmm_scripts.masks import keep_voxels, observed_raneffs
from blmm_scripts.products import design_products, ring_design_products
from blmm_scripts.structure import (
    F_STATISTICS,
    T_STATISTICS,
    Factor,
    FitResult,
    Products,
    RandomEffects,
    Status,
    is_fitted,
    largest_first,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MissingnessRules:
    """Which voxels are fitted, by their images present (:func:`masks.keep_voxels`)."""

    min_percent: float | None = None
    min_n: float | None = None
    safe_mode: bool = True


Stats = VoxelStats | GroupedStats


def load_stats(arrays: dict[str, NDArray]) -> Stats:
    """Return a voxel batch's statistics (``products.npz``), per level or grouped."""
    if "m_full" in arrays:
        return GroupedStats.from_arrays(arrays)
    return VoxelStats.from_arrays(arrays)


def engine_structure(
    factors: Sequence[Factor], p: int, is_grouped: bool
) -> RandomEffects:
    """Return the structure the engine fits: pseudo-levels, or the largest first."""
    if is_grouped:
        return grouped.engine_effects(factors[0], p)
    return RandomEffects.of([factors[k] for k in largest_first(factors)])


def engine_effects(stats: Stats, factors: Sequence[Factor], p: int) -> RandomEffects:
    """Return the structure the engine fits for these statistics."""
    return engine_structure(factors, p, isinstance(stats, GroupedStats))


def _groups(
    stats: Stats,
    X: NDArray[np.float64],
    factors: Sequence[Factor],
    select: NDArray[np.bool_],
    chunk: int,
) -> Iterator[tuple[NDArray[np.intp], Products, RandomEffects, tuple[int, ...]]]:
    """Yield (voxel positions, Products, structure, factor order) for some voxels.

    Inner voxels (every image present) first, sharing the full design's products;
    then ring voxels, with theirs from :func:`ring_design_products` (or, grouped,
    from :func:`blmm_scripts.grouped.pseudo_products`).  At most ``chunk`` voxels
    per item.  The engine takes the factors largest first
    (:func:`~blmm_scripts.structure.largest_first`); the order says which config
    factor each of its factors is.
    """
    n_images = X.shape[0]
    inner = np.flatnonzero(select & (stats.n == n_images))
    ring = np.flatnonzero(select & (stats.n < n_images))
    if isinstance(stats, GroupedStats):
        z = float(factors[0].design[0, 0])
        for idx, is_ring in _chunks(inner, chunk, False) + _chunks(ring, chunk, True):
            yield idx, *grouped.pseudo_products(stats, idx, is_ring, z), (0,)
        return
    order = largest_first(factors)
    ordered = [factors[k] for k in order]
    re = RandomEffects.of(ordered)
    offsets = RandomEffects.of(list(factors)).offsets  # Z'Y columns: config order
    columns = np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in order])
    if inner.size:
        XtX, ZtX, ZtZ = design_products(X, ordered)
        for idx, _ in _chunks(inner, chunk, False):
            yield idx, _products(stats, idx, columns, XtX, ZtX, ZtZ), re, order
    for idx, _ in _chunks(ring, chunk, True):
        XtX, ZtX, ZtZ = ring_design_products(X, ordered, stats.missing[idx])
        yield idx, _products(stats, idx, columns, XtX, ZtX, ZtZ), re, order


def _chunks(
    idx: NDArray[np.intp], chunk: int, ring: bool
) -> list[tuple[NDArray[np.intp], bool]]:
    """Split voxel positions into parts of at most ``chunk``, each with a flag."""
    if idx.size == 0:
        return []
    return [(part, ring) for part in np.array_split(idx, -(-idx.size // chunk))]


def _products(
    stats: VoxelStats, idx: NDArray[np.intp], columns: NDArray[np.intp], XtX, ZtX, ZtZ
) -> Products:
    """Bundle design products with the data products of some voxels.

    ``columns``: the Z'Y columns in the engine's factor order.
    """
    ZtY = stats.ZtY[idx]
    if np.any(columns != np.arange(columns.size)):
        ZtY = ZtY[:, columns]
    return Products(
        XtX,
        ZtX,
        ZtZ,
        stats.XtY[idx],
        ZtY,
        stats.YtY[idx],
        stats.n[idx].astype(np.float64),
    )


def estimate_voxels(
    stats: Stats,
    X: NDArray[np.float64],
    factors: Sequence[Factor],
    rules: MissingnessRules,
    *,
    method: str = "pSFS",
    reml: bool = True,
    tol: float = 1e-6,
    maxnit: int = 10000,
    chunk: int = 10000,
) -> FitResult:
    """Apply the missingness rules and fit the model at every voxel of a batch.

    Returns
    -------
    FitResult
        For every voxel of the batch; voxels dropped by the rules have status
        OUTSIDE and zero estimates.
    """
    n_images, p = X.shape
    re = RandomEffects.of(list(factors))
    if isinstance(stats, GroupedStats):
        q_obs = stats.observed_levels() * re.n_raneffs[0]
    else:
        q_obs = observed_raneffs(stats.missing, factors)
    keep = keep_voxels(
        stats.n,
        n_images,
        p,
        q_obs,
        min_percent=rules.min_percent,
        min_n=rules.min_n,
        safe_mode=rules.safe_mode,
    )
    v = stats.n.size
    beta = np.zeros((v, p))
    sigma2 = np.zeros(v)
    D = [np.zeros((v, qk, qk)) for qk in re.n_raneffs]
    llh = np.zeros(v)
    nit = np.zeros(v, dtype=np.int64)
    status = np.full(v, int(Status.OUTSIDE), dtype=np.int64)
    done = 0
    for idx, products, engine_re, order in _groups(stats, X, factors, keep, chunk):
        res = fit(products, engine_re, method=method, reml=reml, tol=tol, maxnit=maxnit)
        beta[idx], sigma2[idx], llh[idx] = res.beta, res.sigma2, res.llh
        nit[idx], status[idx] = res.nit, res.status
        for k, Rk in zip(order, res.D, strict=True):  # back to the config's order
            D[k][idx] = Rk
        done += idx.size
        logger.info("fitted %d of %d voxels", done, int(keep.sum()))
    counts = {Status(s).name: int((status == s).sum()) for s in np.unique(status)}
    logger.info("status counts: %s", counts)
    return FitResult(beta, sigma2, D, llh, nit, status, reml)


def infer_voxels(
    stats: Stats,
    X: NDArray[np.float64],
    factors: Sequence[Factor],
    fitted: FitResult,
    contrasts: Sequence[Contrast],
    *,
    two_sided: bool = False,
    minlog: float = MINLOG,
    chunk: int = 10000,
) -> dict[str, NDArray[np.float64]]:
    """Return every statistic of a voxel batch (zero where a voxel has no fit).

    Returns
    -------
    dict of str to ndarray
        ``covB`` (v, p, p), ``resms`` (v,), the :data:`T_STATISTICS` (v, n_t) and
        the :data:`F_STATISTICS` (v, n_f).
    """
    v, p = fitted.beta.shape
    n_t = sum(not c.is_f for c in contrasts)
    n_f = len(contrasts) - n_t
    out = {"covB": np.zeros((v, p, p)), "resms": np.zeros(v)}
    for name in T_STATISTICS:
        out[name] = np.zeros((v, n_t))
    for name in F_STATISTICS:
        out[name] = np.zeros((v, n_f))
    ok = is_fitted(fitted.status)
    Ls = [c.L for c in contrasts]
    for idx, products, re, order in _groups(stats, X, factors, ok, chunk):
        sub = FitResult(
            fitted.beta[idx],
            fitted.sigma2[idx],
            [fitted.D[k][idx] for k in order],
            fitted.llh[idx],
            fitted.nit[idx],
            fitted.status[idx],
            fitted.reml,
        )
        res = infer(products, re, sub, Ls, two_sided=two_sided, minlog=minlog)
        for name in out:
            out[name][idx] = getattr(res, name)
    logger.info("inference done for %d voxels", int(ok.sum()))
    return out


def fit_arrays(fitted: FitResult, n: NDArray[np.int32]) -> dict[str, NDArray]:
    """Return a fit and the image counts as named arrays (for ``fit.npz``)."""
    out = {
        "beta": fitted.beta,
        "sigma2": fitted.sigma2,
        "llh": fitted.llh,
        "nit": fitted.nit,
        "status": fitted.status,
        "reml": np.asarray(fitted.reml),
        "n": n,
    }
    out.update({f"D_{k}": Dk for k, Dk in enumerate(fitted.D)})
    return out


def fit_from(arrays: dict[str, NDArray]) -> tuple[FitResult, NDArray[np.int32]]:
    """Inverse of :func:`fit_arrays`."""
    D = []
    while f"D_{len(D)}" in arrays:
        D.append(arrays[f"D_{len(D)}"])
    fitted = FitResult(
        arrays["beta"],
        arrays["sigma2"],
        D,
        arrays["llh"],
        arrays["nit"],
        arrays["status"],
        bool(arrays["reml"]),
    )
    return fitted, arrays["n"]
