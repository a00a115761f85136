"""Product matrices: the sufficient statistics of the mixed model at every voxel.

For images i with design rows x_i (p), z_i (q) and data y_iv, a voxel's model needs
only X'X, X'Z, Z'Z (the design, shared by all voxels where every image is present)
and X'Y, Z'Y, Y'Y (per voxel).  Missing images are excluded by zeroing their data
(so X'Y, Z'Y, Y'Y need no masking) and, for the design products of a "ring" voxel,
by subtracting the missing images' outer products from the full-design products
(Maullin-Sapey & Nichols 2022, section 2.3):

    X'X_v = X'X - sum over missing i of x_i x_i'   (likewise X'Z_v, Z'Z_v).

Z'Z is stored in the layout :class:`~blmm_scripts.structure.RandomEffects` chooses:
the l diagonal q0 x q0 blocks of a single factor; the first factor's blocks plus a
dense border when the first of several factors is the largest; dense otherwise.
The data products of a batch of images are made in :mod:`blmm_scripts.batching`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from blmm_scripts.structure import Factor, RandomEffects, build_Z

if TYPE_CHECKING:
    import scipy.sparse as sp


def design_products(
    X: NDArray[np.float64], factors: Sequence[Factor], dense: bool = False
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Return X'X (1,p,p), Z'X (1,q,p) and Z'Z (in the layout of RandomEffects).

    dense=True forces the general dense Z'Z layout (see RandomEffects.dense).
    """
    re = RandomEffects.of(factors, dense)
    XtX = (X.T @ X)[None]
    if re.one_factor or re.bordered:
        f = factors[0]
        ZtX0 = np.zeros((f.n_levels, f.n_raneffs, X.shape[1]))
        np.add.at(ZtX0, f.codes, f.design[:, :, None] * X[:, None, :])
        A = np.zeros((f.n_levels, f.n_raneffs, f.n_raneffs))
        np.add.at(A, f.codes, f.design[:, :, None] * f.design[:, None, :])
        if re.one_factor:
            return XtX, ZtX0.reshape(1, re.q, -1), A[None]
        Zs = build_Z(factors[1:])
        Bm = np.zeros((f.n_levels, f.n_raneffs, Zs.shape[1]))
        np.add.at(Bm, f.codes, f.design[:, :, None] * Zs[:, None, :])
        ZtX = np.concatenate([ZtX0.reshape(-1, X.shape[1]), Zs.T @ X])
        ZtZ = np.concatenate([A.ravel(), Bm.ravel(), (Zs.T @ Zs).ravel()])
        return XtX, ZtX[None], ZtZ[None]
    Z = build_Z(factors)
    return XtX, (Z.T @ X)[None], (Z.T @ Z)[None]


def _image_design(
    X: NDArray[np.float64], factors: Sequence[Factor], re: RandomEffects
) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """Return per-image outer products as sparse rows: x x', z x', z z' (layout)."""
    import scipy.sparse as sp

    n, p = X.shape
    XX = sp.csr_matrix(np.einsum("ia,ib->iab", X, X).reshape(n, p * p))
    if re.one_factor:
        f = factors[0]
        q0, l0 = f.n_raneffs, f.n_levels
        cols_zx = (f.codes[:, None, None] * q0 + np.arange(q0)[None, :, None]) * p
        cols_zx = (cols_zx + np.arange(p)[None, None, :]).reshape(n, -1)
        vals_zx = (f.design[:, :, None] * X[:, None, :]).reshape(n, -1)
        cols_zz = f.codes[:, None] * q0 * q0 + np.arange(q0 * q0)[None, :]
        vals_zz = (f.design[:, :, None] * f.design[:, None, :]).reshape(n, -1)
        ZX = _rows_to_csr(cols_zx, vals_zx, re.q * p)
        ZZ = _rows_to_csr(cols_zz, vals_zz, l0 * q0 * q0)
        return XX, ZX, ZZ
    if re.bordered:
        f = factors[0]
        q0, l0, s = f.n_raneffs, f.n_levels, re.border
        Zs = build_Z(factors[1:])
        a, b = l0 * q0 * q0, l0 * q0 * s
        rows0 = f.codes[:, None] * q0 + np.arange(q0)[None, :]  # (n, q0)
        cols_zx = np.concatenate(
            [
                (rows0[:, :, None] * p + np.arange(p)).reshape(n, -1),
                ((l0 * q0 + np.arange(s))[:, None] * p + np.arange(p)).reshape(1, -1)
                + np.zeros((n, 1), dtype=np.intp),
            ],
            axis=1,
        )
        vals_zx = np.concatenate(
            [
                (f.design[:, :, None] * X[:, None, :]).reshape(n, -1),
                (Zs[:, :, None] * X[:, None, :]).reshape(n, -1),
            ],
            axis=1,
        )
        cols_zz = np.concatenate(
            [
                f.codes[:, None] * q0 * q0 + np.arange(q0 * q0)[None, :],
                a + (rows0[:, :, None] * s + np.arange(s)).reshape(n, -1),
                a + b + np.zeros((n, 1), dtype=np.intp) + np.arange(s * s),
            ],
            axis=1,
        )
        vals_zz = np.concatenate(
            [
                (f.design[:, :, None] * f.design[:, None, :]).reshape(n, -1),
                (f.design[:, :, None] * Zs[:, None, :]).reshape(n, -1),
                (Zs[:, :, None] * Zs[:, None, :]).reshape(n, -1),
            ],
            axis=1,
        )
        ZX = _rows_to_csr(cols_zx, vals_zx, re.q * p)
        return XX, ZX, _rows_to_csr(cols_zz, vals_zz, re.ztz_width)
    Z = build_Z(factors)
    nz = [np.flatnonzero(Z[i]) for i in range(n)]
    width = max(len(c) for c in nz)
    cols = np.array([np.pad(c, (0, width - len(c)), mode="edge") for c in nz])
    keep = np.array([np.arange(width) < len(c) for c in nz])
    zvals = np.take_along_axis(Z, cols, axis=1) * keep
    q = re.q
    cols_zx = (cols[:, :, None] * p + np.arange(p)[None, None, :]).reshape(n, -1)
    vals_zx = (zvals[:, :, None] * X[:, None, :]).reshape(n, -1)
    cols_zz = (cols[:, :, None] * q + cols[:, None, :]).reshape(n, -1)
    vals_zz = (zvals[:, :, None] * zvals[:, None, :]).reshape(n, -1)
    return (
        XX,
        _rows_to_csr(cols_zx, vals_zx, q * p),
        _rows_to_csr(cols_zz, vals_zz, q * q),
    )


def _rows_to_csr(cols: NDArray, vals: NDArray, width: int) -> sp.csr_matrix:
    """Build a CSR matrix with one row per image from equal-length column lists."""
    import scipy.sparse as sp

    n, k = cols.shape
    indptr = np.arange(0, n * k + 1, k)
    mat = sp.csr_matrix((vals.ravel(), cols.ravel(), indptr), shape=(n, width))
    mat.sum_duplicates()
    return mat


def ring_design_products(
    X: NDArray[np.float64],
    factors: Sequence[Factor],
    missing: sp.spmatrix,
    dense: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Return per-voxel X'X, Z'X and Z'Z of voxels with missing images.

    Parameters
    ----------
    X : ndarray of shape (n_images, p)
    factors : sequence of Factor
    missing : sparse matrix of shape (n_voxels, n_images)
        Non-zero where an image is missing at a voxel.

    Returns
    -------
    XtX (n_voxels, p, p), ZtX (n_voxels, q, p), ZtZ (n_voxels, layout)
        The full-design products minus the missing images' outer products: one
        sparse product, cost proportional to the number of missing (image, voxel)
        pairs.
    """
    import scipy.sparse as sp

    re = RandomEffects.of(factors, dense)
    p = X.shape[1]
    M = sp.csr_matrix(missing, dtype=np.float64)
    M.data[:] = 1.0
    XtX, ZtX, ZtZ = design_products(X, factors, dense)
    XX, ZX, ZZ = _image_design(X, factors, re)
    v = M.shape[0]
    XtX_v = XtX - (M @ XX).toarray().reshape(v, p, p)
    ZtX_v = ZtX - (M @ ZX).toarray().reshape(v, re.q, p)
    ZtZ_v = ZtZ - (M @ ZZ).toarray().reshape(v, *ZtZ.shape[1:])
    return XtX_v, ZtX_v, ZtZ_v
