"""The batch and concat stages: sums over image batches equal one batch."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from blmm_scripts.batching import batch_products, concat_batches
from blmm_scripts.masks import missing
from blmm_scripts.structure import Factor


def study(rng, n=20, v=15, p=3):
    """Return X, factors, Y (0 where missing) and missingness with all voxel kinds."""
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    factor = Factor.from_labels(np.repeat(np.arange(n // 2), 2), np.ones((n, 1)))
    Y = rng.standard_normal((n, v)) + 5
    Y[rng.random((n, v)) < 0.2] = 0.0  # ring voxels
    Y[:, 0] = 0.0  # a voxel without data
    Y[2:, 1] = 0.0  # a voxel with 2 images (n <= p)
    Y[:, 2] = rng.standard_normal(n) + 5  # an inner voxel
    M = missing(Y)
    return X, [factor], Y, M


@pytest.mark.parametrize("bounds", [[0, 20], [0, 7, 20], [0, 3, 9, 10, 20]])
def test_concat_of_batches_equals_one_batch(rng, bounds):
    """X'Y, Z'Y, Y'Y, n and the missing images do not depend on the batching."""
    X, factors, Y, M = study(rng)
    n = X.shape[0]
    whole = concat_batches(
        [((0, n), batch_products(X, factors, (0, n), Y, M))], n, 10, X.shape[1]
    )
    parts = [
        ((a, b), batch_products(X, factors, (a, b), Y[a:b], M[a:b]))
        for a, b in pairwise(bounds)
    ]
    split = concat_batches(parts, n, 10, X.shape[1])
    # sums of the same numbers in another order: equal to rounding
    for key in ("XtY", "ZtY", "YtY"):
        np.testing.assert_allclose(
            getattr(split, key), getattr(whole, key), rtol=1e-12, err_msg=key
        )
    np.testing.assert_array_equal(split.n, (~M).sum(axis=0))
    np.testing.assert_array_equal(split.missing.toarray(), whole.missing.toarray())
    fitted = split.n > X.shape[1]
    np.testing.assert_array_equal(split.missing.toarray()[fitted], M.T[fitted])
    assert split.missing[:2].nnz == 0  # voxels that can never be fitted list nothing
