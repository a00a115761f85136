"""Generated analyses for dry runs: the DAG's shape at any number of images, on no data.

At parse time the workflow reads the image list, every image's header (shape and affine),
X and the factor CSVs (``blmm_scripts.config.check_inputs``); the plan then depends only on the
number of images, the grid, p, the factors and MAXMEM. So a study of n images can list one
brain-sized image n times, with X and the factor CSVs written for n rows, and the dry run plans
exactly the jobs a real study of that size would get.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

#: A 2 mm MNI152 grid, the usual voxel grid of a UK Biobank-style analysis.
MNI_2MM_SHAPE = (91, 109, 91)
MNI_2MM_AFFINE = np.array(
    [[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]]
)


def write_scaled_study(
    root: Path, n_images: int, visits: int = 2, maxmem: str = "2**32"
) -> Path:
    """Write a config for n_images (n_images / visits subjects) on one shared image.

    X has p = 4 columns (intercept, time, a covariate, group); one random factor
    `subject` with an intercept and a time slope. Returns the config's path.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    image = root / "brain.nii"
    if not image.exists():
        data = np.zeros(MNI_2MM_SHAPE, dtype=np.uint8)
        nib.save(nib.Nifti1Image(data, MNI_2MM_AFFINE), image)
    rng = np.random.default_rng(n_images)
    subject = np.arange(n_images) // visits + 1
    time = (np.arange(n_images) % visits).astype(float)
    covariate = rng.normal(size=n_images)
    group = (subject % 2).astype(float)
    X = np.column_stack([np.ones(n_images), time, covariate, group])
    np.savetxt(root / "X.csv", X, delimiter=",", fmt="%.6g")
    np.savetxt(root / "subject.csv", subject, fmt="%d")
    np.savetxt(
        root / "subject_design.csv",
        np.column_stack([np.ones(n_images), time]),
        delimiter=",",
        fmt="%.6g",
    )
    (root / "Y.txt").write_text(f"{image}\n" * n_images)
    config = {
        "Y_files": str(root / "Y.txt"),
        "X": str(root / "X.csv"),
        "Z": [
            {
                "f1": {
                    "name": "subject",
                    "factor": str(root / "subject.csv"),
                    "design": str(root / "subject_design.csv"),
                }
            }
        ],
        "outdir": str(root / "results"),
        "contrasts": [{"c1": {"name": "time", "vector": [0, 1, 0, 0]}}],
        "MAXMEM": maxmem,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
