"""Validation and the DAG's shape; input functions.  No rules here.

Everything is decided at parse time from the config, the image headers, the CSV
files and the analysis mask, so `snakemake -n` lists every job of the analysis.
A bad config stops here, with every problem listed, before any job exists.
"""

import math
import threading
from pathlib import Path

from snakemake.logging import logger
from snakemake.utils import validate

from blmm_scripts import config as blmm_config
from blmm_scripts import grouped as blmm_grouped
from blmm_scripts import io as blmm_io
from blmm_scripts import runlock
from blmm_scripts.batching import BATCH_ARRAYS
from blmm_scripts import maps as blmm_maps
from blmm_scripts.maps import map_names
from blmm_scripts.partition import job_mem_mb, make_plan
from blmm_scripts.simulate import planned_inputs
from blmm_scripts.voxelwise import engine_structure

validate(config, schema="../config/config.schema.yaml")
# Jobs spawned by Snakemake re-parse this file; only the main process reads the
# header of every image (thousands of files on a big study).  The example's
# study is planned from its simulation parameters until it is written.
SETTINGS, INPUTS = blmm_config.load(
    config,
    Path.cwd(),
    check_images=workflow.is_main_process,
    planned=planned_inputs,
)
# A formula analysis: the design it built, on the terminal (the dry run too).
if INPUTS.formula is not None and workflow.is_main_process:
    logger.info(
        f"BLMM model {SETTINGS.model.text}: {INPUTS.n_images} images, coefficients "
        f"{', '.join(INPUTS.formula.coefficients)}; random factors "
        + "; ".join(
            f"{f.name} ({f.n_levels} levels, q = {f.n_raneffs}: {', '.join(e)})"
            for f, e in zip(INPUTS.factors, INPUTS.formula.effects)
        )
    )
# Grouped statistics (sums per level size, blmm_scripts.grouped) where they apply
# and are smaller; image batches then hold whole levels, in level order.
GROUPED = blmm_grouped.chosen(SETTINGS.statistics, INPUTS.factors, INPUTS.p)
IMAGE_ORDER = (
    blmm_grouped.image_order(INPUTS.factors[0]) if GROUPED else range(INPUTS.n_images)
)
PLAN = make_plan(
    SETTINGS.MAXMEM,
    SETTINGS.maxnvb,
    INPUTS.n_images,
    math.prod(INPUTS.shape),
    INPUTS.n_voxels,
    INPUTS.p,
    engine_structure(INPUTS.factors, INPUTS.p, GROUPED),
    levels=INPUTS.factors[0].codes[IMAGE_ORDER] if GROUPED else None,
)
# One image batch (every image fits in MAXMEM at once): the batch job writes each
# voxel batch's statistics itself, and there is no concat stage (one job less in
# a row; most studies of a few hundred images are such).
ONE_IMAGE_BATCH = len(PLAN.image_batches) == 1
# The files of one image batch: one .npz of grouped sums, or one .npy per array
# (concat memory-maps its voxels' rows of the large Z'Y) and the missing images.
BATCH_FILES = (
    {"groups": "groups.npz"}
    if GROUPED
    else {name: f"{name}.npy" for name in BATCH_ARRAYS} | {"missing": "missing.npz"}
)
N_T = sum(not c.is_f for c in SETTINGS.contrasts)
N_F = len(SETTINGS.contrasts) - N_T
MAPS = map_names(N_T, N_F, SETTINGS.output_cov_b, SETTINGS.resms)
# Memory of one job: MAXMEM plus the interpreter and libraries (documented in README).
MEM_MB = job_mem_mb(SETTINGS.MAXMEM)


def job_mem(wildcards, attempt):
    """Return a job's mem_mb: MEM_MB, times the attempt (a retry gets more)."""
    return MEM_MB * attempt


def as_relative(path):
    """Return a path relative to the working directory when it lies below it."""
    path = Path(path)
    return (
        str(path.relative_to(Path.cwd()))
        if path.is_relative_to(Path.cwd())
        else str(path)
    )


OUTDIR = as_relative(SETTINGS.outdir)
# Maps come out in the kind of the images: NIfTI, GIFTI, CIFTI or a parcel TSV.
MAP_SUFFIX = blmm_io.map_suffix(INPUTS.kind, SETTINGS.output_compression)


def work(name):
    """Return the path of an intermediate file under <outdir>/work."""
    return f"{OUTDIR}/work/{name}"


def intermediate(path):
    """Mark per-voxel-batch statistics temporary unless keep_intermediates."""
    return path if SETTINGS.keep_intermediates else temp(path)


def temporary_until_maps():
    """Return the temporary statistics, so that they are removed only after maps.

    Snakemake deletes a temp() file once every job that reads it has finished;
    listing them as inputs of maps keeps them until the maps exist.
    """
    return [] if SETTINGS.keep_intermediates else all_voxel_batches("products.npz")


wildcard_constraints:
    b=r"\d{4}\d*",
    j=r"\d{4}\d*",


def image_range(wildcards):
    """Return (start, stop) of image batch b in the image list."""
    return PLAN.image_batches[int(wildcards.get("b", 0))]


def batch_images(wildcards):
    """Return the images of image batch b (a table study: the table's values)."""
    if INPUTS.table is not None:
        return [work("setup/values.npy")]
    start, stop = image_range(wildcards)
    return [as_relative(INPUTS.images[i]) for i in IMAGE_ORDER[start:stop]]


def batch_table_rows(wildcards):
    """Return the table rows of image batch b (a table study), else None."""
    if INPUTS.table is None:
        return None
    start, stop = image_range(wildcards)
    return [INPUTS.table.rows[i] for i in IMAGE_ORDER[start:stop]]


def grid_reference():
    """Return the file the maps take their grid and header from.

    The first image; for a table study, the parcel list the table rule writes.
    """
    if INPUTS.table is not None:
        return work("setup/parcels.tsv")
    return as_relative(INPUTS.images[0])


def batch_masks(wildcards):
    """Return the data masks of image batch b (none without data_mask_files)."""
    if INPUTS.data_masks is None:
        return []
    start, stop = image_range(wildcards)
    return [as_relative(INPUTS.data_masks[i]) for i in IMAGE_ORDER[start:stop]]


def voxel_range(wildcards):
    """Return (start, stop) of voxel batch j in the analysis-mask voxel list."""
    return PLAN.voxel_batches[int(wildcards.j)]


def all_batches(name):
    """Return one intermediate file of every image batch."""
    return [work(f"batch/{b}/{name}") for b in PLAN.batch_ids]


def all_voxel_batches(name):
    """Return one intermediate file of every voxel batch."""
    return [work(f"vox/{j}/{name}") for j in PLAN.voxel_batch_ids]


def design_inputs():
    """Return the files setup reads: the design (CSVs or the table) and the mask."""
    if SETTINGS.data is not None:
        files = {"data": as_relative(SETTINGS.data)}
    elif SETTINGS.Y_table is not None:
        files = {"X": as_relative(SETTINGS.X)}
    else:
        files = {"X": as_relative(SETTINGS.X)}
    for k, spec in enumerate(SETTINGS.factors, start=1):
        files[f"f{k}_factor"] = as_relative(spec.factor)
        files[f"f{k}_design"] = as_relative(spec.design)
    if SETTINGS.analysis_mask is not None:
        files["analysis_mask"] = as_relative(SETTINGS.analysis_mask)
    return files


def formula_params():
    """Return what setup needs to rebuild a formula's design (None for BLMM's)."""
    if SETTINGS.data is None:
        return None
    return {
        "model": SETTINGS.model.text,
        "images": SETTINGS.images,
        "masks": SETTINGS.masks,
    }


def resolved_config():
    """Return the config for inputs.yml: BLMM's keys resolved, then any others.

    A formula analysis adds `design`: what the model built (coefficients, factors,
    dropped rows) and the names of the map volumes.
    """
    resolved = SETTINGS.to_dict()
    if INPUTS.formula is not None:
        resolved["design"] = INPUTS.formula.describe() | {
            "volumes": INPUTS.formula.volumes()
            | {
                stat: [c.name for c in SETTINGS.contrasts if c.is_f == (stat == "F")]
                for stat in ("T", "F")
            },
            "contrasts": [
                {f"c{i}": {"name": c.name, "L": c.L.tolist()}}
                for i, c in enumerate(SETTINGS.contrasts, start=1)
            ],
        }
    return resolved | {k: v for k, v in config.items() if k not in resolved}


def map_files():
    """Return the output maps, in BLMM's names."""
    return {name: f"{OUTDIR}/blmm_vox_{name}{MAP_SUFFIX}" for name in MAPS}


def volume_names():
    """Return the names of the volumes of each map (GIFTI and CIFTI carry them)."""
    if INPUTS.kind not in ("gifti", "cifti"):
        return {}
    formula = INPUTS.formula
    return blmm_maps.volume_labels(
        MAPS,
        [c.name for c in SETTINGS.contrasts if not c.is_f],
        [c.name for c in SETTINGS.contrasts if c.is_f],
        formula.coefficients if formula else None,
        formula.volumes()["D"] if formula else None,
    )


def final_outputs():
    """Return every final output: the maps and inputs.yml."""
    return [*map_files().values(), f"{OUTDIR}/inputs.yml"]


# One run per outdir (README, Reliability): the main Snakemake process takes the
# lock when it is about to start jobs (onstart) and holds it until it ends.
RUN_LOCKS = []


def lock_outdir():
    """Take outdir's lock, or stop before any job if another run holds it.

    With the lock held, temporary files of killed jobs are removed (they are never
    read; this only tidies).
    """
    RUN_LOCKS.append(runlock.acquire(SETTINGS.outdir, Path.cwd()))
    blmm_io.remove_partial_files(SETTINGS.outdir)


def unlock_outdir():
    """Release outdir's lock (the end of the process would drop it too)."""
    for lock in RUN_LOCKS:
        lock.release()


def end_promptly():
    """Cancel Snakemake's pending scheduler wake-up, so that the run ends at once.

    After each round of job selection Snakemake (9.x) starts a threading.Timer of
    one `max-jobs-per-timespan` timespan (default 1 s) that only wakes its
    scheduler; the last one is not a daemon thread, so it kept a finished run's
    process alive for up to that long.
    """
    for timer in threading.enumerate():
        wake = getattr(timer, "function", None)
        if isinstance(timer, threading.Timer) and getattr(
            wake, "__module__", ""
        ).startswith("snakemake.scheduling"):
            timer.cancel()
