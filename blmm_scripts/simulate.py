"""A seeded, simulated longitudinal neuroimaging study for the example and benchmarks.

Each of ``n_subjects`` subjects is scanned at ``visits`` time points.  Inside an
ellipsoidal "brain" every voxel follows

    y_ij = beta_0 + beta_1 t_ij + beta_2 age_i + beta_3 group_i
           + b_0i + b_1i t_ij + e_ij,

with a random intercept and slope per subject, cov(b_i) = sigma2 * D and
e_ij ~ N(0, sigma2).  The time effect beta_1 (positive, so that BLMM's one-sided T
test finds it) and the group effect beta_3 are each non-zero in a spherical blob of
their own and 0 elsewhere, so the T and F maps have something to find and places
where there is nothing to find.
Outside the brain images are 0 (missing, as in BLMM).  A fraction of images gets a
data mask that cuts off the top slices (partial coverage), which makes "ring" voxels.

:func:`simulate_study` writes everything a BLMM config needs (images, masks, lists,
CSVs, an analysis mask and a ``blmm_config.yml``) and is what the ``simulate`` rule
and the benchmarks call.  :func:`make_study` is the same study in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from blmm_scripts import io
from blmm_scripts.config import ConfigError, Inputs, Settings
from blmm_scripts.structure import Factor

logger = logging.getLogger(__name__)

#: Example contrasts (p = 4: intercept, time, age, group).
CONTRASTS = (
    ("time", [0, 1, 0, 0]),
    ("group", [0, 0, 0, 1]),
    ("time_or_group", [[0, 1, 0, 0], [0, 0, 0, 1]]),
)
SIGMA2 = 2.0
#: Where the fixed effects of time and group are non-zero: spheres (centre, radius)
#: in the grid's [-1, 1]^3 coordinates, apart from each other.  In the example's
#: 10x12x10 grid the time sphere holds 63 of the 392 brain voxels (16 %), the group
#: sphere 34.
TIME_BLOB = (np.array([-0.4, -0.35, -0.3]), 0.55)
GROUP_BLOB = (np.array([0.4, 0.4, 0.4]), 0.45)
#: Effect sizes there: time per visit, group difference (image units; the
#: residual SD is sqrt(SIGMA2)).
TIME_EFFECT = 1.0
GROUP_EFFECT = 3.0
D_TRUE = np.array([[2.0, 0.3], [0.3, 0.5]])  # scaled by sigma2


@dataclass(frozen=True)
class Study:
    """A simulated study in memory.

    Parameters
    ----------
    Y : ndarray of shape (n_images, *shape)
        Image data, 0 outside the brain.
    data_masks : ndarray of shape (n_images, *shape), dtype uint8
    analysis_mask : ndarray of shape shape, dtype uint8
    X : ndarray of shape (n_images, 4)
    subject : ndarray of shape (n_images,), dtype int
        Subject label (1-based) of each image.
    Z_design : ndarray of shape (n_images, 2)
        Random-effect covariates: intercept and time.
    affine : ndarray of shape (4, 4)
    names : tuple of str
        Image file stems, ``sub-01_ses-1`` and so on.
    """

    Y: NDArray[np.float64]
    data_masks: NDArray[np.uint8]
    analysis_mask: NDArray[np.uint8]
    X: NDArray[np.float64]
    subject: NDArray[np.int64]
    Z_design: NDArray[np.float64]
    affine: NDArray[np.float64]
    names: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial grid."""
        return tuple(self.Y.shape[1:])

    @property
    def factor(self) -> Factor:
        """The subject factor with random intercept and slope."""
        return Factor.from_labels(self.subject, self.Z_design, "subject")


def make_study(
    n_subjects: int = 40,
    visits: int = 3,
    shape: tuple[int, int, int] = (10, 12, 10),
    seed: int = 2024,
    partial_fraction: float = 0.2,
    random_slope: bool = True,
) -> Study:
    """Return the simulated study in memory (same numbers as :func:`simulate_study`).

    With ``random_slope=False`` the subject factor has a random intercept only (the
    slope is still simulated, so the model is misspecified but well posed).
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    n = n_subjects * visits
    subject, X, Z_design = _design(rng, n_subjects, visits, random_slope)
    t = X[:, 1]
    grid, analysis_mask = _grid(shape)
    brain = np.sqrt((grid**2).sum(axis=-1)) < 0.95
    time_blob = np.sqrt(((grid - TIME_BLOB[0]) ** 2).sum(axis=-1)) < TIME_BLOB[1]
    group_blob = np.sqrt(((grid - GROUP_BLOB[0]) ** 2).sum(axis=-1)) < GROUP_BLOB[1]
    beta = np.zeros((*shape, 4))
    beta[..., 0] = 100.0
    beta[..., 1] = np.where(time_blob, TIME_EFFECT, 0.0)
    beta[..., 2] = 0.5
    beta[..., 3] = np.where(group_blob, GROUP_EFFECT, 0.0)

    n_vox = int(np.prod(shape))
    chol = np.linalg.cholesky(SIGMA2 * D_TRUE)
    b = rng.standard_normal((n_subjects, n_vox, 2)) @ chol.T  # (subjects, voxels, 2)
    fixed = X @ beta.reshape(n_vox, 4).T  # (n, voxels)
    random = b[subject - 1, :, 0] + b[subject - 1, :, 1] * t[:, None]  # (n, voxels)
    noise = rng.normal(0.0, np.sqrt(SIGMA2), (n, n_vox))
    Y = (fixed + random + noise).reshape(n, *shape)
    Y[:, ~brain] = 0.0

    data_masks = np.ones((n, *shape), dtype=np.uint8)
    partial = rng.random(n) < partial_fraction
    cut = rng.integers(1, max(2, shape[2] // 3) + 1, n)
    for i in np.flatnonzero(partial):
        data_masks[i, :, :, shape[2] - cut[i] :] = 0

    names = tuple(
        f"sub-{s:02d}_ses-{v + 1}"
        for s, v in zip(subject, np.tile(np.arange(visits), n_subjects), strict=True)
    )
    return Study(
        Y, data_masks, analysis_mask, X, subject, Z_design, _affine(shape), names
    )


def _design(
    rng: np.random.Generator, n_subjects: int, visits: int, random_slope: bool
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """Return subject labels, X and the random-effect design: the first draws of rng.

    The study's images are drawn from the same generator afterwards, so the design
    alone (:func:`planned_inputs`) needs only these draws.
    """
    n = n_subjects * visits
    subject = np.repeat(np.arange(1, n_subjects + 1), visits)
    t = np.tile(np.arange(visits, dtype=float), n_subjects) + rng.uniform(-0.2, 0.2, n)
    age = np.repeat(rng.normal(0.0, 1.0, n_subjects), visits)
    group = np.repeat(np.arange(n_subjects) % 2, visits).astype(float)  # balanced
    X = np.column_stack([np.ones(n), t, age, group])
    Z_design = np.column_stack([np.ones(n), t]) if random_slope else np.ones((n, 1))
    return subject, X, Z_design


def _grid(shape: tuple[int, ...]) -> tuple[NDArray[np.float64], NDArray[np.uint8]]:
    """Return voxel coordinates in [-1, 1]^3 (shape + (3,)) and the analysis mask."""
    grid = np.stack(
        np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), axis=-1
    )
    radius = np.sqrt((grid**2).sum(axis=-1))
    return grid, (radius < 1.05).astype(np.uint8)


def _affine(shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Return the images' affine: 2 mm voxels, centred."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -np.array(shape) + 1.0
    return affine


def study_files(outdir: Path, n_subjects: int = 40, visits: int = 3) -> dict[str, Path]:
    """Return the paths :func:`simulate_study` writes (without writing anything)."""
    outdir = Path(outdir)
    stems = [
        f"sub-{s:02d}_ses-{v}"
        for s in range(1, n_subjects + 1)
        for v in range(1, visits + 1)
    ]
    files = {
        "Y_files": outdir / "Y.txt",
        "data_mask_files": outdir / "M.txt",
        "X": outdir / "X.csv",
        "factor": outdir / "subject.csv",
        "design": outdir / "subject_design.csv",
        "analysis_mask": outdir / "analysis_mask.nii",
        "config": outdir / "blmm_config.yml",
    }
    files.update({f"image {s}": outdir / "images" / f"{s}.nii" for s in stems})
    files.update({f"mask {s}": outdir / "masks" / f"{s}_mask.nii" for s in stems})
    return files


def planned_inputs(settings: Settings) -> Inputs:
    """Return the inputs the ``simulate`` rule will write, without simulating.

    The design (X, the subject factor), the grid, the affine and the analysis mask
    follow from the simulation's parameters (``settings.simulate``) alone, so
    ``snakemake -n`` lists every job of the example before the study exists.

    Raises
    ------
    ConfigError
        If the config's paths are not the files the simulation writes.
    """
    sim = settings.simulate
    files = study_files(sim.folder, sim.n_subjects, sim.visits)
    problems = [
        f"{key}: with 'simulate', must be {files[key]} (got {value})"
        for key, value in (
            ("Y_files", settings.Y_files),
            ("X", settings.X),
            ("data_mask_files", settings.data_mask_files),
            ("analysis_mask", settings.analysis_mask),
        )
        if value is not None and Path(value) != files[key]
    ]
    for k, spec in enumerate(settings.factors, start=1):
        if (spec.factor, spec.design) != (files["factor"], files["design"]):
            problems.append(f"Z f{k}: with 'simulate', must use the simulated files")
    if problems:
        raise ConfigError(problems)
    rng = np.random.default_rng(sim.seed)
    subject, X, Z_design = _design(rng, sim.n_subjects, sim.visits, True)
    _, analysis_mask = _grid(sim.shape)
    images = tuple(v for k, v in files.items() if k.startswith("image "))
    masks = tuple(v for k, v in files.items() if k.startswith("mask "))
    return Inputs(
        images=images,
        data_masks=masks if settings.data_mask_files is not None else None,
        shape=tuple(sim.shape),
        affine=_affine(sim.shape),
        X=X,
        factors=(Factor.from_labels(subject, Z_design, "subject"),),
        n_voxels=int(np.count_nonzero(analysis_mask))
        if settings.analysis_mask is not None
        else int(np.prod(sim.shape)),
    )


def simulate_study(
    outdir: Path | str,
    n_subjects: int = 40,
    visits: int = 3,
    shape: tuple[int, int, int] = (10, 12, 10),
    seed: int = 2024,
    *,
    partial_fraction: float = 0.2,
    random_slope: bool = True,
    results_dir: Path | str | None = None,
) -> Path:
    """Write a simulated study and a BLMM config for it; return the config's path.

    Parameters
    ----------
    outdir : Path
        Folder to write into (created).  Lists and the config hold absolute paths,
        so the config works from any working directory.
    n_subjects, visits, shape, seed, partial_fraction, random_slope
        See :func:`make_study`.
    results_dir : Path, optional
        ``outdir`` key of the written config; default ``<outdir>/results``.
    """
    outdir = Path(outdir).absolute()
    study = make_study(n_subjects, visits, shape, seed, partial_fraction, random_slope)
    files = study_files(outdir, n_subjects, visits)
    (outdir / "images").mkdir(parents=True, exist_ok=True)
    (outdir / "masks").mkdir(parents=True, exist_ok=True)

    def save(path: Path, data: NDArray, dtype: type) -> None:
        """Write one NIfTI volume."""
        img = nib.Nifti1Image(np.asarray(data, dtype=dtype), study.affine)
        img.header.set_xyzt_units("mm")
        with io.atomic_path(path) as tmp:
            nib.save(img, str(tmp))

    for i, name in enumerate(study.names):
        save(files[f"image {name}"], study.Y[i], np.float32)
        save(files[f"mask {name}"], study.data_masks[i], np.uint8)
    save(files["analysis_mask"], study.analysis_mask, np.uint8)
    io.write_text(
        files["Y_files"], "".join(f"{files[f'image {s}']}\n" for s in study.names)
    )
    io.write_text(
        files["data_mask_files"],
        "".join(f"{files[f'mask {s}']}\n" for s in study.names),
    )
    for key, table, fmt in (
        ("X", study.X, "%.17g"),
        ("factor", study.subject[:, None], "%d"),
        ("design", study.Z_design, "%.17g"),
    ):
        with io.atomic_path(files[key]) as tmp:
            np.savetxt(tmp, table, delimiter=",", fmt=fmt)
    config = {
        "Y_files": str(files["Y_files"]),
        "data_mask_files": str(files["data_mask_files"]),
        "analysis_mask": str(files["analysis_mask"]),
        "X": str(files["X"]),
        "Z": [
            {
                "f1": {
                    "name": "subject",
                    "factor": str(files["factor"]),
                    "design": str(files["design"]),
                }
            }
        ],
        "outdir": str(
            Path(results_dir).absolute() if results_dir else outdir / "results"
        ),
        "contrasts": [
            {f"c{i + 1}": {"name": name, "vector": vec}}
            for i, (name, vec) in enumerate(CONTRASTS)
        ],
        "Missingness": {"MinPercent": 0.5},
    }
    io.write_yaml(files["config"], config)
    logger.info(
        "Simulated %d images of shape %s (seed %d) in %s",
        len(study.names),
        study.shape,
        seed,
        outdir,
    )
    return files["config"]
