"""The stages of a BLMM analysis as pure functions, and a direct in-memory run.

The Snakemake rules call these functions through thin adapters
(``blmm_scripts/workflow/*.py``) on one image batch or one voxel batch each;
:func:`run_pipeline` calls them on everything at once.  The workflow tests check
that both give the same maps.

Stages (``rules/*.smk``)::

    batch b      images of batch b  -> X'Y, Z'Y (touched columns), Y'Y, n, missing
    concat j     batch parts        -> sufficient statistics of voxel batch j
    estimate j   statistics         -> missingness rules, fit (beta, sigma2, D, status)
    inference j  statistics + fit   -> contrasts, standard errors, T/F, p-values, df
    maps         all j              -> NIfTI maps
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from blmm_scripts import io
from blmm_scripts.config import Contrast, Inputs, Settings, check_inputs, parse_settings
from blmm_scripts.estimation import fit
from blmm_scripts.inference import infer
from blmm_scripts.masks import analysis_voxels, keep_voxels, missing, observed_raneffs
from blmm_scripts.products import (
    chunk_products,
    design_products,
    ring_design_products,
)
from blmm_scripts.structure import (
    Factor,
    FitResult,
    Products,
    RandomEffects,
    Status,
)

logger = logging.getLogger(__name__)

#: Statuses whose voxels stay in the final mask.
KEPT = (int(Status.OK), int(Status.MAXNIT))


# --------------------------------------------------------------------------------
# setup: the design
# --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """What every job needs to know about the analysis.

    Parameters
    ----------
    X : ndarray of shape (n_images, p)
    factors : tuple of Factor
    voxels : ndarray of shape (n_voxels,)
        Flat C-order indices of the analysis-mask voxels, in voxel-batch order.
    shape : tuple of int
        The image grid.
    """

    X: NDArray[np.float64]
    factors: tuple[Factor, ...]
    voxels: NDArray[np.intp]
    shape: tuple[int, ...]

    @property
    def random_effects(self) -> RandomEffects:
        """Sizes of the random-effects part."""
        return RandomEffects.of(list(self.factors))

    def summary(self) -> dict[str, Any]:
        """Return the design's sizes (for ``plan.json``)."""
        re = self.random_effects
        return {
            "n_images": int(self.X.shape[0]),
            "p": int(self.X.shape[1]),
            "q": int(re.q),
            "factors": [
                {"name": f.name, "levels": int(f.n_levels), "raneffs": f.n_raneffs}
                for f in self.factors
            ],
            "shape": list(self.shape),
            "n_voxels": int(self.voxels.size),
        }

    def to_arrays(self) -> dict[str, NDArray]:
        """Return the design as named arrays (for ``.npz``)."""
        out = {"X": self.X, "voxels": self.voxels, "shape": np.asarray(self.shape)}
        for k, f in enumerate(self.factors):
            out[f"codes_{k}"] = f.codes
            out[f"design_{k}"] = f.design
            out[f"n_levels_{k}"] = np.asarray(f.n_levels)
            out[f"name_{k}"] = np.asarray(f.name)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray]) -> Design:
        """Inverse of :meth:`to_arrays`."""
        factors = []
        k = 0
        while f"codes_{k}" in arrays:
            factors.append(
                Factor(
                    arrays[f"codes_{k}"].astype(np.intp),
                    arrays[f"design_{k}"],
                    int(arrays[f"n_levels_{k}"]),
                    str(arrays[f"name_{k}"]),
                )
            )
            k += 1
        return cls(
            arrays["X"],
            tuple(factors),
            arrays["voxels"].astype(np.intp),
            tuple(int(s) for s in arrays["shape"]),
        )


def read_design(
    X_path: Path,
    factor_files: Sequence[tuple[Path, Path]],
    names: Sequence[str],
    analysis_mask: Path | None,
    first_image: Path,
) -> Design:
    """Read X, the random factors and the analysis-mask voxels from their files."""
    X = io.read_numeric_table(X_path)
    factors = tuple(
        Factor.from_labels(io.read_numeric_table(f)[:, 0], io.read_numeric_table(d), n)
        for (f, d), n in zip(factor_files, names, strict=True)
    )
    shape, _ = io.image_grid(first_image)
    mask = io.load_volume(analysis_mask) if analysis_mask else None
    design = Design(X, factors, analysis_voxels(mask, shape), shape)
    logger.info("design: %s", design.summary())
    return design


# --------------------------------------------------------------------------------
# batch: one chunk of images
# --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchProducts:
    """Products of one batch of images at every analysis-mask voxel.

    Parameters
    ----------
    XtY : ndarray of shape (n_voxels, p)
    ZtY : ndarray of shape (n_voxels, k)
        Only the k columns of Z that the batch's images touch.
    ZtY_columns : ndarray of shape (k,)
        Their column indices in Z.
    YtY : ndarray of shape (n_voxels,)
    n : ndarray of shape (n_voxels,), int32
        Images of the batch present at each voxel.
    missing : csr_matrix of shape (n_voxels, n_batch_images), bool
        Missing images, listed only for voxels with 0 < n < n_batch_images (a voxel
        with n = 0 misses every image of the batch, one with n = n_batch_images none),
        so that voxels outside the brain cost nothing.
    """

    XtY: NDArray[np.float64]
    ZtY: NDArray[np.float64]
    ZtY_columns: NDArray[np.intp]
    YtY: NDArray[np.float64]
    n: NDArray[np.int32]
    missing: sp.csr_matrix

    def to_arrays(self) -> dict[str, NDArray]:
        """Return the fields as named arrays; ``missing`` as CSR parts."""
        out = {k: getattr(self, k) for k in ("XtY", "ZtY", "ZtY_columns", "YtY", "n")}
        out.update(_csr_arrays(self.missing))
        return out


def _csr_arrays(M: sp.csr_matrix) -> dict[str, NDArray]:
    """Return a sparse matrix as named arrays."""
    M = sp.csr_matrix(M)
    return {
        "missing_indices": M.indices.astype(np.int64),
        "missing_indptr": M.indptr.astype(np.int64),
        "missing_shape": np.asarray(M.shape),
    }


def _csr_from(arrays: dict[str, NDArray]) -> sp.csr_matrix:
    """Inverse of :func:`_csr_arrays`."""
    indices = arrays["missing_indices"]
    return sp.csr_matrix(
        (np.ones(indices.size, dtype=bool), indices, arrays["missing_indptr"]),
        shape=tuple(int(s) for s in arrays["missing_shape"]),
    )


def read_batch_data(
    images: Sequence[Path],
    data_masks: Sequence[Path] | None,
    voxels: NDArray[np.intp],
    thresh: float | None,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Return the data (0 where missing) and missingness of images at some voxels.

    Returns
    -------
    Y : ndarray of shape (n_images, n_voxels)
    is_missing : ndarray of shape (n_images, n_voxels), bool
    """
    Y = io.load_voxels(images, voxels)
    M = io.load_voxels(data_masks, voxels) if data_masks is not None else None
    is_missing = missing(Y, M, thresh)
    Y[is_missing] = 0.0
    logger.info(
        "read %d images (%s data masks) at %d voxels: %d of %d values missing",
        len(images),
        "with" if M is not None else "no",
        Y.shape[1],
        int(is_missing.sum()),
        is_missing.size,
    )
    return Y, is_missing


def batch_products(
    X: NDArray[np.float64],
    factors: Sequence[Factor],
    rows: tuple[int, int],
    Y: NDArray[np.float64],
    is_missing: NDArray[np.bool_],
) -> BatchProducts:
    """Return the products of one batch of images.

    Parameters
    ----------
    X : ndarray of shape (n_images, p)
        The whole design.
    factors : sequence of Factor
    rows : (start, stop)
        The batch's images, rows start:stop of X.
    Y : ndarray of shape (n_batch_images, n_voxels)
        0 where missing.
    is_missing : ndarray of shape (n_batch_images, n_voxels), bool
    """
    index = np.arange(*rows)
    cp = chunk_products(X, list(factors), index, Y)
    n = (~is_missing).sum(axis=0).astype(np.int32)
    partial = (n > 0) & (n < index.size)
    M = sp.csr_matrix(is_missing.T & partial[:, None])
    return BatchProducts(
        np.asarray(cp.XtY),
        np.asarray(cp.ZtY),
        np.asarray(cp.ZtY_columns, dtype=np.intp),
        np.asarray(cp.YtY),
        n,
        M,
    )


# --------------------------------------------------------------------------------
# concat: sufficient statistics of one voxel batch
# --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoxelStats:
    """Sufficient statistics of a batch of voxels (sums over all images).

    Parameters
    ----------
    XtY : ndarray of shape (n_voxels, p)
    ZtY : ndarray of shape (n_voxels, q)
    YtY : ndarray of shape (n_voxels,)
    n : ndarray of shape (n_voxels,), int32
    missing : csr_matrix of shape (n_voxels, n_images), bool
        Missing images of each voxel (all images for a voxel with n = 0).
    """

    XtY: NDArray[np.float64]
    ZtY: NDArray[np.float64]
    YtY: NDArray[np.float64]
    n: NDArray[np.int32]
    missing: sp.csr_matrix

    def to_arrays(self) -> dict[str, NDArray]:
        """Return the fields as named arrays; ``missing`` as CSR parts."""
        out = {k: getattr(self, k) for k in ("XtY", "ZtY", "YtY", "n")}
        out.update(_csr_arrays(self.missing))
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray]) -> VoxelStats:
        """Inverse of :meth:`to_arrays`."""
        return cls(
            arrays["XtY"], arrays["ZtY"], arrays["YtY"], arrays["n"], _csr_from(arrays)
        )


def batch_rows(
    arrays: dict[str, NDArray], missing: dict[str, NDArray], start: int, stop: int
) -> BatchProducts:
    """Return the products of voxels start:stop of one image batch.

    Parameters
    ----------
    arrays : dict of str to ndarray
        ``XtY``, ``ZtY``, ``ZtY_columns``, ``YtY``, ``n``, possibly memory-mapped.
    missing : dict of str to ndarray
        The CSR parts of the batch's missing images.
    """
    rows = slice(start, stop)
    return BatchProducts(
        np.asarray(arrays["XtY"][rows]),
        np.asarray(arrays["ZtY"][rows]),
        np.asarray(arrays["ZtY_columns"]),
        np.asarray(arrays["YtY"][rows]),
        np.asarray(arrays["n"][rows]),
        _csr_from(missing)[rows],
    )


def concat_batches(
    parts: Sequence[tuple[tuple[int, int], BatchProducts]],
    n_images: int,
    q: int,
    p: int,
) -> VoxelStats:
    """Sum the batch products of the same voxels into sufficient statistics.

    Parameters
    ----------
    parts : sequence of ((start, stop), BatchProducts)
        Every image batch, its rows into the image list and its products restricted
        to the voxels of this voxel batch (the same voxels in every part).
    n_images : int
    q : int
        Columns of Z.
    p : int
        Columns of X.  Voxels with n <= p images can never be fitted; their
        missing images are not listed (outside the brain that would be every
        image at every voxel), and their rows of ``missing`` are empty.
    """
    first = parts[0][1]
    n_vox = first.YtY.shape[0]
    n = np.sum([part.n for _, part in parts], axis=0, dtype=np.int32)
    need = n > p
    XtY = np.zeros_like(first.XtY)
    ZtY = np.zeros((n_vox, q))
    YtY = np.zeros(n_vox)
    vox_ids, img_ids = [], []
    for (start, stop), part in parts:
        XtY += part.XtY
        ZtY[:, part.ZtY_columns] += part.ZtY
        YtY += part.YtY
        coo = part.missing.tocoo()
        keep = need[coo.row]
        vox_ids.append(coo.row[keep])
        img_ids.append(coo.col[keep] + start)
        empty = np.flatnonzero((part.n == 0) & need)
        vox_ids.append(np.repeat(empty, stop - start))
        img_ids.append(np.tile(np.arange(start, stop), empty.size))
    rows = np.concatenate(vox_ids).astype(np.intp)
    cols = np.concatenate(img_ids).astype(np.intp)
    M = sp.csr_matrix(
        (np.ones(rows.size, dtype=bool), (rows, cols)), shape=(n_vox, n_images)
    )
    M.sort_indices()
    logger.info(
        "summed %d image batches at %d voxels: %d with every image, %d with some, "
        "%d with none",
        len(parts),
        n_vox,
        int((n == n_images).sum()),
        int(((n > 0) & (n < n_images)).sum()),
        int((n == 0).sum()),
    )
    return VoxelStats(XtY, ZtY, YtY, n, M)


# --------------------------------------------------------------------------------
# estimate and inference: one voxel batch
# --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """The missingness rules of a voxel (see :mod:`blmm_scripts.masks`)."""

    min_percent: float | None = None
    min_n: float | None = None
    safe_mode: bool = True


def _groups(
    stats: VoxelStats,
    X: NDArray[np.float64],
    factors: Sequence[Factor],
    select: NDArray[np.bool_],
    chunk: int,
) -> Iterator[tuple[NDArray[np.intp], Products]]:
    """Yield (voxel positions, Products) for the selected voxels, inner then ring.

    Inner voxels (every image present) share the full design's products; ring
    voxels get theirs from :func:`ring_design_products`.  At most ``chunk`` voxels
    per item.
    """
    n_images = X.shape[0]
    inner = np.flatnonzero(select & (stats.n == n_images))
    ring = np.flatnonzero(select & (stats.n < n_images))
    if inner.size:
        XtX, ZtX, ZtZ = design_products(X, list(factors))
        for idx in np.array_split(inner, -(-inner.size // chunk)):
            yield idx, _products(stats, idx, XtX, ZtX, ZtZ)
    for idx in np.array_split(ring, -(-ring.size // chunk)) if ring.size else []:
        XtX, ZtX, ZtZ = ring_design_products(X, list(factors), stats.missing[idx])
        yield idx, _products(stats, idx, XtX, ZtX, ZtZ)


def _products(stats: VoxelStats, idx: NDArray[np.intp], XtX, ZtX, ZtZ) -> Products:
    """Bundle design products with the data products of some voxels."""
    return Products(
        XtX,
        ZtX,
        ZtZ,
        stats.XtY[idx],
        stats.ZtY[idx],
        stats.YtY[idx],
        stats.n[idx].astype(np.float64),
    )


def estimate_voxels(
    stats: VoxelStats,
    X: NDArray[np.float64],
    factors: Sequence[Factor],
    rules: Rules,
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
    for idx, products in _groups(stats, X, factors, keep, chunk):
        res = fit(products, re, method=method, reml=reml, tol=tol, maxnit=maxnit)
        beta[idx], sigma2[idx], llh[idx] = res.beta, res.sigma2, res.llh
        nit[idx], status[idx] = res.nit, res.status
        for Dk, Rk in zip(D, res.D, strict=True):
            Dk[idx] = Rk
        done += idx.size
        logger.info("fitted %d of %d voxels", done, int(keep.sum()))
    counts = {Status(s).name: int((status == s).sum()) for s in np.unique(status)}
    logger.info("status counts: %s", counts)
    return FitResult(beta, sigma2, D, llh, nit, status, reml)


def infer_voxels(
    stats: VoxelStats,
    X: NDArray[np.float64],
    factors: Sequence[Factor],
    fitted: FitResult,
    contrasts: Sequence[Contrast],
    *,
    two_sided: bool = False,
    minlog: float = -323.3062153431158,
    chunk: int = 10000,
) -> dict[str, NDArray[np.float64]]:
    """Return every statistic of a voxel batch (zero where a voxel has no fit).

    Returns
    -------
    dict of str to ndarray
        ``covB`` (v, p, p), ``resms`` (v,), T statistics ``con``, ``conSE``,
        ``conT``, ``conTlp``, ``conT_swedf`` (v, n_t) and F statistics ``conF``,
        ``conFlp``, ``conF_swedf``, ``conR2`` (v, n_f).
    """
    re = RandomEffects.of(list(factors))
    v, p = fitted.beta.shape
    n_t = sum(not c.is_f for c in contrasts)
    n_f = len(contrasts) - n_t
    out = {"covB": np.zeros((v, p, p)), "resms": np.zeros(v)}
    for name in ("con", "conSE", "conT", "conTlp", "conT_swedf"):
        out[name] = np.zeros((v, n_t))
    for name in ("conF", "conFlp", "conF_swedf", "conR2"):
        out[name] = np.zeros((v, n_f))
    ok = np.isin(fitted.status, KEPT)
    Ls = [c.L for c in contrasts]
    for idx, products in _groups(stats, X, factors, ok, chunk):
        sub = FitResult(
            fitted.beta[idx],
            fitted.sigma2[idx],
            [Dk[idx] for Dk in fitted.D],
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


# --------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------

#: Maps and whether they are integer (int32) maps; order as written.
INT_MAPS = ("mask", "n", "edf", "status", "nit")
SCALAR_MAPS = ("mask", "n", "edf", "status", "nit", "sigma2", "llh", "resms")


def map_names(n_t: int, n_f: int, output_cov: bool, resms: bool) -> list[str]:
    """Return the output maps of an analysis (names without ``blmm_vox_``)."""
    names = ["mask", "n", "edf", "beta", "sigma2", "D", "llh", "status", "nit"]
    if output_cov:
        names.append("cov")
    if resms:
        names.append("resms")
    if n_t:
        names += ["con", "conSE", "conT", "conTlp", "conT_swedf"]
    if n_f:
        names += ["conF", "conFlp", "conF_swedf", "conR2"]
    return names


def voxel_maps(
    n: NDArray[np.int32],
    fitted: FitResult,
    stats: dict[str, NDArray[np.float64]],
    p: int,
) -> dict[str, NDArray]:
    """Return every map's values at a list of voxels, volumes on the last axis.

    Outside the final mask (status not OK or MAXNIT) every map is 0, except
    ``status`` (why the voxel was dropped) and ``n`` (images present).
    """
    ok = np.isin(fitted.status, KEPT)
    v = n.size
    okc = ok[:, None]
    values: dict[str, NDArray] = {
        "mask": ok.astype(np.int32),
        "n": n.astype(np.int32),
        "edf": np.where(ok, n - p, 0).astype(np.int32),
        "status": fitted.status.astype(np.int32),
        "nit": np.where(ok, fitted.nit, 0).astype(np.int32),
        "beta": np.where(okc, fitted.beta, 0.0),
        "sigma2": np.where(ok, fitted.sigma2, 0.0),
        "D": np.where(okc, fitted.D_vech, 0.0),
        "llh": np.where(ok, fitted.llh, 0.0),
        "cov": np.where(okc, stats["covB"].reshape(v, p * p), 0.0),
        "resms": np.where(ok, stats["resms"], 0.0),
    }
    for name in ("con", "conSE", "conT", "conTlp", "conT_swedf"):
        values[name] = np.where(okc, stats[name], 0.0)
    for name in ("conF", "conFlp", "conF_swedf", "conR2"):
        values[name] = np.where(okc, stats[name], 0.0)
    return values


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


def assemble_maps(
    fits: Sequence[dict[str, NDArray]],
    stats: Sequence[dict[str, NDArray]],
    design: Design,
    names: Sequence[str],
) -> dict[str, NDArray]:
    """Return every map on the image grid from the voxel batches' results, in order."""
    parts = [fit_from(f) for f in fits]
    fitted = FitResult(
        np.concatenate([f.beta for f, _ in parts]),
        np.concatenate([f.sigma2 for f, _ in parts]),
        [np.concatenate([f.D[k] for f, _ in parts]) for k in range(len(parts[0][0].D))],
        np.concatenate([f.llh for f, _ in parts]),
        np.concatenate([f.nit for f, _ in parts]),
        np.concatenate([f.status for f, _ in parts]),
        parts[0][0].reml,
    )
    n = np.concatenate([n for _, n in parts])
    inf = {k: np.concatenate([s[k] for s in stats]) for k in stats[0]}
    values = voxel_maps(n, fitted, inf, design.X.shape[1])
    return {
        name: to_grid(values[name], design.voxels, design.shape, name) for name in names
    }


def to_grid(
    values: NDArray, voxels: NDArray[np.intp], shape: tuple[int, ...], name: str
) -> NDArray:
    """Scatter voxel values into the image grid, as int32 or float32.

    Scalar maps are 3-D; maps that hold one volume per parameter or contrast
    (beta, D, cov, con*, conF*, conR2) are always 4-D, volumes last.
    """
    dtype = np.int32 if name in INT_MAPS else np.float32
    n_grid = int(np.prod(shape))
    if name in SCALAR_MAPS:
        grid = np.zeros(n_grid, dtype=dtype)
        grid[voxels] = values
        return grid.reshape(shape)
    grid = np.zeros((n_grid, values.shape[1]), dtype=dtype)
    grid[voxels] = values
    return grid.reshape(*shape, values.shape[1])


# --------------------------------------------------------------------------------
# direct run
# --------------------------------------------------------------------------------


def run_pipeline(
    config: dict[str, Any], workdir: Path
) -> tuple[dict[str, NDArray], Settings, Inputs]:
    """Run a whole analysis in memory, in one image batch and one voxel batch.

    Parameters
    ----------
    config : dict
        A BLMM config (as loaded from YAML).
    workdir : Path
        Directory relative paths resolve against.

    Returns
    -------
    maps : dict of str to ndarray
        Every output map on the image grid (int32 or float32), keyed by the name
        without ``blmm_vox_``.
    settings, inputs
        The parsed config and checked inputs.
    """
    settings = parse_settings(config, workdir)
    inputs = check_inputs(settings)
    design = read_design(
        settings.X,
        [(f.factor, f.design) for f in settings.factors],
        [f.name for f in settings.factors],
        settings.analysis_mask,
        inputs.images[0],
    )
    Y, is_missing = read_batch_data(
        inputs.images, inputs.data_masks, design.voxels, settings.data_mask_thresh
    )
    n_images = inputs.n_images
    part = batch_products(design.X, design.factors, (0, n_images), Y, is_missing)
    stats = concat_batches(
        [((0, n_images), part)], n_images, design.random_effects.q, design.X.shape[1]
    )
    fitted = estimate_voxels(
        stats,
        design.X,
        design.factors,
        Rules(settings.min_percent, settings.min_n, settings.safe_mode),
        method=settings.method,
        reml=settings.reml,
        tol=settings.tol,
        maxnit=settings.maxnit,
    )
    inf = infer_voxels(
        stats,
        design.X,
        design.factors,
        fitted,
        settings.contrasts,
        two_sided=settings.two_sided,
        minlog=settings.minlog,
    )
    n_t = sum(not c.is_f for c in settings.contrasts)
    names = map_names(
        n_t, len(settings.contrasts) - n_t, settings.output_cov_b, settings.resms
    )
    maps = assemble_maps([fit_arrays(fitted, stats.n)], [inf], design, names)
    return maps, settings, inputs
