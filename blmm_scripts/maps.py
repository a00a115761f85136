"""The output maps: BLMM's names, volume orders and data types.

The maps rule gathers every voxel batch's ``fit.npz`` and ``stats.npz``
(:func:`assemble_maps`) and scatters the values into the image grid
(:func:`to_grid`); the README's output table lists each map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from blmm_scripts.design import Design
from blmm_scripts.structure import F_STATISTICS, T_STATISTICS, FitResult, is_fitted
from blmm_scripts.voxelwise import fit_from

#: Maps written as int32 (counts, masks and codes); every other map is float32.
INT_MAPS = ("mask", "n", "edf", "status", "nit")
#: Maps with one value per voxel (3-D); every other map has a volume per
#: parameter or contrast (4-D, even with one volume).
SCALAR_MAPS = ("mask", "n", "edf", "status", "nit", "sigma2", "llh", "resms")


def map_names(n_t: int, n_f: int, output_cov: bool, resms: bool) -> list[str]:
    """Return the output maps of an analysis (names without ``blmm_vox_``)."""
    names = ["mask", "n", "edf", "beta", "sigma2", "D", "llh", "status", "nit"]
    if output_cov:
        names.append("cov")
    if resms:
        names.append("resms")
    if n_t:
        names += T_STATISTICS
    if n_f:
        names += F_STATISTICS
    return names


def volume_labels(
    names: Sequence[str],
    t_names: Sequence[str],
    f_names: Sequence[str],
    beta: Sequence[str] | None = None,
    D: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Return the names of the volumes of the maps that hold several, by map.

    GIFTI and CIFTI maps carry them (data array ``Name``, CIFTI map names): the
    coefficients and D's entries when a formula names them, the contrasts' names
    for contrast maps; ``<map>_<k>`` where nothing names a volume.
    """
    out: dict[str, list[str]] = {}
    for name in names:
        if name in T_STATISTICS:
            out[name] = list(t_names)
        elif name in F_STATISTICS:
            out[name] = list(f_names)
        elif name == "beta" and beta is not None:
            out[name] = list(beta)
        elif name == "D" and D is not None:
            out[name] = list(D)
    return out


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
    ok = is_fitted(fitted.status)
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
    for name in T_STATISTICS + F_STATISTICS:
        values[name] = np.where(okc, stats[name], 0.0)
    return values


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
