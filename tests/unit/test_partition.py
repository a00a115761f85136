"""Image batches and voxel batches: BLMM's memory rule and array_split order."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from blmm_scripts.partition import (
    grouped_batch_size,
    image_batch_size,
    image_batches,
    level_batches,
    make_plan,
    n_voxel_batches,
    voxel_batches,
)
from blmm_scripts.structure import RandomEffects


def test_image_batch_size_matches_blmm_example():
    """MNI 2 mm, MAXMEM 2**32, p = 3 gives BLMM's 24 images per batch."""
    assert image_batch_size(2**32, 91 * 109 * 91, 3) == 24


def test_image_batch_size_too_small():
    """A MAXMEM that cannot hold one image is an error, as in BLMM."""
    with pytest.raises(ValueError, match="too small"):
        image_batch_size(1000, 1000, 2)


@pytest.mark.parametrize(("n", "size"), [(10, 3), (12, 12), (1, 5), (7, 1)])
def test_image_batches_cover_every_image_once(n, size):
    """Batches are consecutive, at most `size` long, and cover 0..n-1."""
    batches = image_batches(n, size)
    rows = np.concatenate([np.arange(a, b) for a, b in batches])
    np.testing.assert_array_equal(rows, np.arange(n))
    assert max(b - a for a, b in batches) <= size


@pytest.mark.parametrize(("v", "k"), [(10, 3), (5, 5), (100, 1), (7, 2)])
def test_voxel_batches_are_array_split(v, k):
    """Voxel batches are np.array_split of the voxel list, as BLMM's blocks."""
    expected = np.array_split(np.arange(v), k)
    got = [np.arange(a, b) for a, b in voxel_batches(v, k)]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_n_voxel_batches_bounds():
    """At least one batch, at most maxnvb, never more batches than voxels."""
    re = RandomEffects((100,), (2,))
    assert n_voxel_batches(50_000, 2**32, 3, re, 60) >= 1
    assert n_voxel_batches(50_000, 2**20, 3, re, 60) == 60
    assert n_voxel_batches(3, 2**10, 3, re, 60) == 3
    assert n_voxel_batches(0, 2**32, 3, re, 60) == 1


def test_plan_ids_are_zero_padded():
    """Wildcards are zero-padded so that they sort in batch order."""
    plan = make_plan(2**16, 4, 30, 120, 100, 4, RandomEffects((10,), (2,)))
    assert plan.batch_ids[0] == "0000"
    assert len(plan.batch_ids) == len(plan.image_batches) > 1
    assert len(plan.voxel_batch_ids) == len(plan.voxel_batches) == 4


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_level_batches_hold_whole_levels(size):
    """Batches cover the images in order and never split a level.

    Each holds at most `size` images unless one level alone has more.
    """
    levels = np.repeat(np.arange(8), [1, 3, 2, 1, 4, 1, 2, 3])
    batches = level_batches(levels, size)
    assert batches[0][0] == 0 and batches[-1][1] == levels.size
    for (_, stop), (start, _) in pairwise(batches):
        assert stop == start
    for a, b in batches:
        assert a == 0 or levels[a] != levels[a - 1]  # starts at a level's start
        assert b - a <= size or np.unique(levels[a:b]).size == 1


def test_grouped_batches_are_bounded_by_their_data():
    """Images per grouped batch follow MAXMEM and the voxels, not p."""
    one = grouped_batch_size(2**30, 20000, 50000)
    assert one == 2**30 // (64 * 20000 + 8 * 50000)
    assert grouped_batch_size(2**31, 20000, 50000) >= 2 * one
    assert grouped_batch_size(1, 20000, 50000) == 1
