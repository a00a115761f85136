"""Seeded simulated NIfTI studies at the benchmark sizes (issue 6).

``blmm_scripts.simulate`` builds the example study in memory (all images and all
random effects at once, one factor only), which does not scale to ``ukb`` (25,000
images) nor cover the crossed design.  This generator writes the study subject by
subject, so memory stays O(voxels x visits), and supports three random-effects
structures:

=========  ================================================================
intercept  one factor (subject), random intercept
slope      one factor (subject), random intercept and slope on time
crossed    two crossed factors: subject (intercept) x site (intercept); each
           visit of a subject is scanned at a random site
=========  ================================================================

Every voxel inside an ellipsoidal "brain" follows

    y = b0 + b1 t + b2 age + b3 group + (random effects) + e,   e ~ N(0, sigma2),

with cov(b) = sigma2 * D.  Images are float32 and 0 outside the brain; a fraction
of images has a data mask cutting off 1 to shape[2]/3 top slices, which makes
"ring" voxels (images missing at some voxels only).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

SIGMA2 = 2.0
D_SUBJECT = {
    "intercept": [[2.0]],
    "slope": [[2.0, 0.3], [0.3, 0.5]],
    "crossed": [[2.0]],
}
D_SITE = 0.5
#: T contrasts only: pyblmm 0.1.1's F contrasts crash (NameError ``betahat``).
CONTRASTS = (("time", [0, 1, 0, 0]), ("group", [0, 0, 0, 1]))


@dataclass(frozen=True)
class Preset:
    """Size and structure of one benchmark study."""

    name: str
    n_subjects: int
    visits: int
    shape: tuple[int, int, int]
    structure: str  # intercept, slope or crossed
    n_sites: int = 0
    seed: int = 2024
    partial_fraction: float = 0.2
    note: str = ""
    #: Subjects with 1, 2, ... visits (unbalanced, as in a cohort); empty: every
    #: subject has `visits` visits.
    visit_counts: tuple[int, ...] = ()

    def visits_per_subject(self) -> np.ndarray:
        """Return the number of visits of each subject."""
        if not self.visit_counts:
            return np.full(self.n_subjects, self.visits)
        return np.repeat(np.arange(1, len(self.visit_counts) + 1), self.visit_counts)

    @property
    def n_images(self) -> int:
        return int(self.visits_per_subject().sum())


PRESETS = {
    "small": Preset(
        "small",
        50,
        4,
        (21, 21, 21),
        "slope",
        note="200 images, ~4,000 voxels, 50 subjects x 4 visits, random intercept and slope",
    ),
    "crossed": Preset(
        "crossed",
        50,
        4,
        (21, 21, 21),
        "crossed",
        n_sites=8,
        note="200 images, ~4,000 voxels, 50 subjects x 8 sites crossed, random intercepts",
    ),
    "large": Preset(
        "large",
        500,
        4,
        (36, 36, 36),
        "slope",
        note="2,000 images, 19,208 voxels, 500 subjects x 4 visits, random intercept and slope",
    ),
    "ukb": Preset(
        "ukb",
        12500,
        2,
        (37, 37, 37),
        "intercept",
        note="25,000 images, 20,863 voxels, 12,500 subjects x 2 visits, random intercept",
    ),
    "cohort": Preset(
        "cohort",
        17000,
        3,
        (37, 37, 37),
        "intercept",
        partial_fraction=0.03,
        visit_counts=(10000, 6000, 1000),
        note=(
            "25,000 images, 20,863 voxels, 17,000 subjects with 1/2/3 visits "
            "(10,000/6,000/1,000), random intercept, 3% partial masks"
        ),
    ),
    # The cohort on a larger grid: the second voxel count for the extrapolation
    # to a 2 mm MNI brain (README, Performance).
    "cohort_big": Preset(
        "cohort_big",
        17000,
        3,
        (47, 47, 47),
        "intercept",
        partial_fraction=0.03,
        visit_counts=(10000, 6000, 1000),
        note="the cohort preset on a 47^3 grid (about 43,000 voxels)",
    ),
}


def brain_mask(shape: tuple[int, ...]) -> np.ndarray:
    """Ellipsoid filling the grid: about 45% of its voxels."""
    grid = np.stack(
        np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1
    )
    return np.sqrt((grid**2).sum(-1)) < 0.95


@dataclass
class StudyFiles:
    """Paths of a written study (all absolute)."""

    folder: Path
    Y_files: Path
    data_mask_files: Path
    analysis_mask: Path
    X: Path
    factors: list[dict] = field(default_factory=list)  # {name, factor, design}
    n_images: int = 0
    n_voxels: int = 0
    shape: tuple[int, ...] = ()

    def to_json(self) -> dict:
        d = asdict(self)
        return json.loads(json.dumps(d, default=str))


def design(preset: Preset, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Return X (n, 4), subject labels, subject Z design, site labels (n,)."""
    ns = preset.n_subjects
    per = preset.visits_per_subject()
    n = int(per.sum())
    subject = np.repeat(np.arange(1, ns + 1), per)
    visit = np.concatenate([np.arange(k) for k in per]).astype(float)
    t = visit + rng.uniform(-0.2, 0.2, n)
    age = np.repeat(rng.normal(0.0, 1.0, ns), per)
    group = np.repeat(rng.integers(0, 2, ns), per).astype(float)
    X = np.column_stack([np.ones(n), t, age, group])
    Zs = (
        np.column_stack([np.ones(n), t])
        if preset.structure == "slope"
        else np.ones((n, 1))
    )
    site = rng.integers(1, max(preset.n_sites, 1) + 1, n)
    return {"X": X, "subject": subject, "Zs": Zs, "site": site, "t": t}


def write_study(
    preset: Preset, folder: Path | str, *, force: bool = False
) -> StudyFiles:
    """Write the study of `preset` into `folder` (skipped if already complete)."""
    folder = Path(folder).absolute()
    stamp = folder / "study.json"
    if stamp.exists() and not force:
        info = json.loads(stamp.read_text())
        if info.get("preset") == asdict(preset) | {"shape": list(preset.shape)}:
            return _files(folder, preset, info["n_voxels"])
    rng = np.random.default_rng(preset.seed)
    shape = preset.shape
    brain = brain_mask(shape)
    nvox = int(brain.sum())
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    des = design(preset, rng)
    X, subject, Zs, site = des["X"], des["subject"], des["Zs"], des["site"]
    n = len(subject)

    # Fixed effects: time effect in one half of the brain, group effect in a blob.
    grid = np.stack(
        np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1
    )
    g = grid[brain]
    beta = np.zeros((nvox, 4))
    beta[:, 0] = 100.0
    beta[:, 1] = np.where(g[:, 0] > 0, -1.0, 0.0)
    beta[:, 2] = 0.5
    beta[:, 3] = np.where(np.sqrt(((g - 0.4) ** 2).sum(-1)) < 0.45, 3.0, 0.0)
    fixed = X @ beta.T  # (n, nvox)
    chol = np.linalg.cholesky(SIGMA2 * np.array(D_SUBJECT[preset.structure]))
    site_eff = (
        rng.normal(0.0, np.sqrt(SIGMA2 * D_SITE), (preset.n_sites, nvox))
        if preset.structure == "crossed"
        else None
    )
    partial = rng.random(n) < preset.partial_fraction
    cut = rng.integers(1, max(2, shape[2] // 3) + 1, n)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -np.array(shape) + 1.0
    per = preset.visits_per_subject()
    first = np.concatenate([[0], np.cumsum(per)])
    visit = np.concatenate([np.arange(k) for k in per])
    names = [f"sub-{s:05d}_ses-{v + 1}" for s, v in zip(subject, visit, strict=True)]
    vol = np.zeros(shape, dtype=np.float32)
    full_mask = np.ones(shape, dtype=np.uint8)
    for s in range(preset.n_subjects):
        rows = np.arange(first[s], first[s + 1])
        b = rng.standard_normal((nvox, chol.shape[0])) @ chol.T  # (nvox, q0)
        y = fixed[rows] + Zs[rows] @ b.T  # (visits, nvox)
        if site_eff is not None:
            y = y + site_eff[site[rows] - 1]
        y = y + rng.normal(0.0, np.sqrt(SIGMA2), y.shape)
        for k, i in enumerate(rows):
            vol[brain] = y[k]
            nib.save(
                nib.Nifti1Image(vol, affine), folder / "images" / f"{names[i]}.nii"
            )
            mask = full_mask
            if partial[i]:
                mask = full_mask.copy()
                mask[:, :, shape[2] - cut[i] :] = 0
            nib.save(
                nib.Nifti1Image(mask, affine), folder / "masks" / f"{names[i]}_mask.nii"
            )
    nib.save(
        nib.Nifti1Image(brain.astype(np.uint8), affine), folder / "analysis_mask.nii"
    )
    (folder / "Y.txt").write_text(
        "".join(f"{folder / 'images' / nm}.nii\n" for nm in names)
    )
    (folder / "M.txt").write_text(
        "".join(f"{folder / 'masks' / nm}_mask.nii\n" for nm in names)
    )
    np.savetxt(folder / "X.csv", X, delimiter=",", fmt="%.17g")
    np.savetxt(folder / "subject.csv", subject[:, None], delimiter=",", fmt="%d")
    np.savetxt(folder / "subject_design.csv", Zs, delimiter=",", fmt="%.17g")
    if preset.structure == "crossed":
        np.savetxt(folder / "site.csv", site[:, None], delimiter=",", fmt="%d")
        np.savetxt(folder / "site_design.csv", np.ones((n, 1)), delimiter=",", fmt="%d")
    covariates = np.column_stack(
        [X[:, 1:], subject, site, partial, np.where(partial, cut, 0)]
    )
    np.savetxt(
        folder / "covariates.csv",
        covariates,
        delimiter=",",
        fmt="%.17g",
        header="t,age,group,subject,site,partial,cut",
        comments="",
    )
    stamp.write_text(
        json.dumps(
            {"preset": asdict(preset) | {"shape": list(shape)}, "n_voxels": nvox}
        )
    )
    return _files(folder, preset, nvox)


def _files(folder: Path, preset: Preset, nvox: int) -> StudyFiles:
    factors = [
        {
            "name": "subject",
            "factor": folder / "subject.csv",
            "design": folder / "subject_design.csv",
        }
    ]
    if preset.structure == "crossed":
        factors.append(
            {
                "name": "site",
                "factor": folder / "site.csv",
                "design": folder / "site_design.csv",
            }
        )
    return StudyFiles(
        folder,
        folder / "Y.txt",
        folder / "M.txt",
        folder / "analysis_mask.nii",
        folder / "X.csv",
        factors,
        preset.n_images,
        nvox,
        preset.shape,
    )


def blmm_config(files: StudyFiles, outdir: Path, *, pyblmm: bool) -> dict:
    """Return a BLMM config for the study; `pyblmm` adds the keys pyblmm 0.1.1 needs."""
    cfg: dict = {
        "Y_files": str(files.Y_files),
        "data_mask_files": str(files.data_mask_files),
        "analysis_mask": str(files.analysis_mask),
        "X": str(files.X),
        "Z": [
            {
                f"f{k + 1}": {
                    "name": f["name"],
                    "factor": str(f["factor"]),
                    "design": str(f["design"]),
                }
            }
            for k, f in enumerate(files.factors)
        ],
        "outdir": str(outdir),
        "contrasts": [
            {f"c{i + 1}": {"name": nm, "vector": str(vec)}}
            for i, (nm, vec) in enumerate(CONTRASTS)
        ],
        "Missingness": {"MinPercent": 0.5},
        "MAXMEM": "2**32",
        "method": "pSFS",
        "tol": "1e-6",
        "OutputCovB": True,
    }
    if pyblmm:
        # pyblmm eval()s MAXMEM and tol; it needs a cluster type and node count, and
        # its non-batched results mode is broken.
        cfg |= {"clusterType": "local", "numNodes": 1, "voxelBatching": 1}
    return cfg


def write_config(cfg: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
