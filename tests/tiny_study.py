"""The tiny NIfTI study of the tests: 12 images of 6x5x4 voxels and a config.

A module of its own (not conftest.py) so that test files can import it by a name no
other test folder uses.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from blmm_scripts.simulate import simulate_study


def make_tiny_study(
    root: Path, n_subjects: int = 6, visits: int = 2, **overrides
) -> Path:
    """Write a 12-image 6x5x4 study with partial data masks and its config.

    6 subjects x 2 visits with a random intercept per subject (a random slope from
    so few subjects is too ill-posed for comparisons at float32 precision, and the
    engine's own tests cover slopes); paths in the
    config are relative to ``root`` (the Snakemake working directory).  Returns the
    path of ``root/config.yaml``.
    """
    root = Path(root).absolute()
    simulate_study(
        root / "data",
        n_subjects=n_subjects,
        visits=visits,
        shape=(6, 5, 4),
        seed=7,
        partial_fraction=0.4,
        random_slope=False,
    )
    config = yaml.safe_load((root / "data" / "blmm_config.yml").read_text())
    for key in ("Y_files", "data_mask_files", "analysis_mask", "X"):
        config[key] = str(Path(config[key]).relative_to(root))
    for part in ("factor", "design"):
        path = Path(config["Z"][0]["f1"][part])
        config["Z"][0]["f1"][part] = str(path.relative_to(root))
    config["outdir"] = "out"
    config["Missingness"] = {"MinN": 6}
    config["tol"] = 1e-10
    config["resms"] = 1
    config.update(overrides)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
