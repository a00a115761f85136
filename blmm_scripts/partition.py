"""The shape of the DAG: image batches and voxel batches, known before any job runs.

Image batches follow BLMM's rule (reference section 6): a batch holds
``blksize = floor(MAXMEM / (8 * mem_vol * p))`` images with ``mem_vol = 8 * V`` bytes
for a volume of V voxels, so a batch's data and its products stay within MAXMEM.

Voxel batches are ``np.array_split`` of the analysis-mask voxel list (flat C order)
into ``nvb = min(maxnvb, ceil(V_am / voxels_per_job), V_am)`` parts, where
``voxels_per_job`` is how many voxels fit in MAXMEM by the engine's working-memory
bound (:func:`voxel_bytes`).  Inside a job, estimation runs in chunks of
:func:`voxel_chunk` voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

from blmm_scripts.likelihood import bytes_per_voxel
from blmm_scripts.structure import RandomEffects


def image_batch_size(maxmem: int, n_grid_voxels: int, p: int) -> int:
    """Return the number of images per batch, BLMM's ``blksize``.

    Raises
    ------
    ValueError
        If MAXMEM cannot hold one image's products (BLMM's "Blocksize too small").
    """
    mem_vol = 8 * n_grid_voxels
    size = maxmem // (8 * mem_vol * p)
    if size < 1:
        raise ValueError(
            f"MAXMEM = {maxmem} is too small for one image of {n_grid_voxels} voxels "
            f"and p = {p} (needs at least {8 * mem_vol * p})"
        )
    return int(size)


#: Bytes per image and analysis-mask voxel of a grouped batch job: the data and
#: data mask as float64 while they are read, the missingness and the level sums
#: (measured peak RSS in benchmarks/results/cohort.json).
GROUPED_BYTES = 64


def grouped_batch_size(maxmem: int, n_voxels: int, n_grid_voxels: int) -> int:
    """Return the images per batch of grouped statistics within MAXMEM.

    A grouped batch holds the images at the analysis-mask voxels only (plus one
    whole volume while it is read); unlike BLMM's rule its products do not grow
    with the batch (no Z'Y), so the bound is the data itself.
    """
    per_image = GROUPED_BYTES * n_voxels + 8 * n_grid_voxels
    return int(max(1, maxmem // per_image))


def image_batches(n_images: int, batch_size: int) -> list[tuple[int, int]]:
    """Return (start, stop) image-row ranges of the batches, in order."""
    return [(s, min(s + batch_size, n_images)) for s in range(0, n_images, batch_size)]


def level_batches(
    levels: NDArray[np.integer], batch_size: int
) -> list[tuple[int, int]]:
    """Return image batches that hold whole levels (for grouped statistics).

    Parameters
    ----------
    levels : ndarray of shape (n_images,)
        The level of each image, in the order of the batches (sorted by level).
    batch_size : int
        At most this many images per batch, unless one level alone has more (it
        then gets a batch of its own).
    """
    levels = np.asarray(levels)
    n = levels.size
    starts = np.flatnonzero(np.r_[True, levels[1:] != levels[:-1]]) if n else []
    bounds = [*(int(s) for s in starts), n]
    out, start = [], 0
    for first, nxt in pairwise(bounds):
        if nxt - start > batch_size and first > start:
            out.append((start, first))
            start = first
    if start < n:
        out.append((start, n))
    return out


def voxel_bytes(p: int, re: RandomEffects) -> int:
    """Return the bytes one voxel needs during estimation and inference.

    The engine's own bound (:func:`blmm_scripts.likelihood.bytes_per_voxel`), so
    that a job holds at most MAXMEM of voxel data plus the interpreter.
    """
    return bytes_per_voxel(re, p)


#: Voxels per estimate/inference job above which a study is split into more voxel
#: batches than memory needs, so that several cores work on it: each job costs
#: about 2 s of start-up, small against fitting this many voxels.
VOXELS_PER_JOB = 5000


def n_voxel_batches(
    n_voxels: int, maxmem: int, p: int, re: RandomEffects, maxnvb: int
) -> int:
    """Return the number of voxel batches (jobs), at least 1 and at most maxnvb.

    As many as MAXMEM needs, and at least one per :data:`VOXELS_PER_JOB` voxels.
    """
    per_job = max(1, min(maxmem // voxel_bytes(p, re), VOXELS_PER_JOB))
    return int(max(1, min(maxnvb, math.ceil(n_voxels / per_job), n_voxels)))


def voxel_batches(n_voxels: int, n_batches: int) -> list[tuple[int, int]]:
    """Return (start, stop) ranges into the analysis-mask voxel list, as array_split."""
    bounds = [len(a) for a in np.array_split(np.arange(n_voxels), n_batches)]
    stops = np.cumsum(bounds)
    return [(int(b - n), int(b)) for n, b in zip(bounds, stops, strict=True)]


#: Voxels per fit/infer call at most: vectorisation gains nothing beyond about a
#: thousand voxels, while memory grows with every one (benchmarks/).
MAX_CHUNK = 1000


def voxel_chunk(maxmem: int, p: int, re: RandomEffects) -> int:
    """Return how many voxels one fit/infer call may take within MAXMEM."""
    return int(max(1, min(MAX_CHUNK, maxmem // voxel_bytes(p, re))))


#: Memory of a job beyond MAXMEM: the interpreter, numpy, scipy, nibabel and the
#: job's inputs (MB).  Jobs ask for ``mem_mb = MAXMEM / 2**20 + OVERHEAD_MB``.
OVERHEAD_MB = 512


def job_mem_mb(maxmem: int) -> int:
    """Return the memory (MB) a job asks Snakemake for."""
    return int(maxmem // 2**20 + OVERHEAD_MB)


def chunk_for_job(mem_mb: int, p: int, re: RandomEffects) -> int:
    """Return the voxels per fit/infer call for a job given ``mem_mb``.

    Taken from the job's resources (not from params) so that a profile giving more
    memory allows larger chunks and the chunk size never triggers a rerun.
    """
    budget = max(int(mem_mb) - OVERHEAD_MB, 64) * 2**20
    return voxel_chunk(budget, p, re)


@dataclass(frozen=True)
class Plan:
    """The DAG's shape: which images and voxels each job handles.

    Parameters
    ----------
    image_batches : tuple of (start, stop)
        Rows of the image list per batch job.
    voxel_batches : tuple of (start, stop)
        Positions in the analysis-mask voxel list per voxel-batch job.
    """

    image_batches: tuple[tuple[int, int], ...]
    voxel_batches: tuple[tuple[int, int], ...]

    @property
    def batch_ids(self) -> list[str]:
        """Zero-padded image-batch wildcards, ``0000``, ``0001``, ..."""
        return [f"{b:04d}" for b in range(len(self.image_batches))]

    @property
    def voxel_batch_ids(self) -> list[str]:
        """Zero-padded voxel-batch wildcards."""
        return [f"{j:04d}" for j in range(len(self.voxel_batches))]


def make_plan(
    maxmem: int,
    maxnvb: int,
    n_images: int,
    n_grid_voxels: int,
    n_voxels: int,
    p: int,
    re: RandomEffects,
    levels: NDArray[np.integer] | None = None,
) -> Plan:
    """Return the plan of an analysis (see module docstring).

    Parameters
    ----------
    maxmem : int
        MAXMEM in bytes.
    maxnvb : int
    n_images : int
    n_grid_voxels : int
        Voxels of the image grid (BLMM's mem_vol is 8 bytes per grid voxel).
    n_voxels : int
        Voxels of the analysis mask.
    p : int
    re : RandomEffects
        The structure the engine fits (the pseudo-levels for grouped statistics).
    levels : ndarray of shape (n_images,), optional
        For grouped statistics: each image's level in batch order; batches then
        hold whole levels (:func:`level_batches`).
    """
    size = image_batch_size(maxmem, n_grid_voxels, p)
    if levels is not None:
        size = grouped_batch_size(maxmem, n_voxels, n_grid_voxels)
    nvb = n_voxel_batches(n_voxels, maxmem, p, re, maxnvb)
    batches = (
        image_batches(n_images, size) if levels is None else level_batches(levels, size)
    )
    return Plan(tuple(batches), tuple(voxel_batches(n_voxels, nvb)))
