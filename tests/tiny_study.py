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


def make_formula_study(
    root: Path, shuffle: bool = False, n_subjects: int = 6, visits: int = 2, **overrides
) -> Path:
    """Write the tiny study as a participants table and a formula config.

    The table ``data/participants.tsv`` holds the BLMM config's design (X columns
    1, time, age, group) with group as text (``ctl``/``pat``) and subject labels
    as text (``sub-01``); image and mask paths are relative to the table's folder.
    ``config_formula.yaml`` (the formula) and ``config.yaml`` (the BLMM design)
    describe the same model.  ``shuffle`` writes the rows in a seeded random
    order.  Returns the path of ``root/config_formula.yaml``.
    """
    import numpy as np
    import pandas as pd

    blmm_path = make_tiny_study(root, n_subjects=n_subjects, visits=visits)
    root = Path(root).absolute()
    blmm = yaml.safe_load(blmm_path.read_text())
    data = root / "data"
    X = np.loadtxt(root / blmm["X"], delimiter=",", ndmin=2)
    subject = np.loadtxt(root / blmm["Z"][0]["f1"]["factor"], ndmin=1)
    images = (root / blmm["Y_files"]).read_text().split()
    masks = (root / blmm["data_mask_files"]).read_text().split()
    table = pd.DataFrame(
        {
            "participant_id": [f"sub-{int(s):02d}" for s in subject],
            "time": [repr(float(v)) for v in X[:, 1]],
            "age": [repr(float(v)) for v in X[:, 2]],
            "group": np.where(X[:, 3] == 1, "pat", "ctl"),
            "image": [str(Path(p).relative_to(data)) for p in images],
            "mask": [str(Path(p).relative_to(data)) for p in masks],
        }
    )
    if shuffle:
        table = table.sample(frac=1.0, random_state=3)
    table.to_csv(data / "participants.tsv", sep="\t", index=False)
    config = {
        key: value
        for key, value in blmm.items()
        if key not in ("Y_files", "X", "Z", "data_mask_files")
    }
    config.update(
        data="data/participants.tsv",
        masks="mask",
        model="~ time + age + group + (1 | participant_id)",
        contrasts=[
            {"c1": {"name": "time", "vector": "time"}},
            {"c2": {"name": "group", "vector": "group[T.pat]"}},
            {"c3": {"name": "time_or_group", "vector": ["time", "group[T.pat]"]}},
        ],
        outdir="out_formula",
    )
    config.update(overrides)
    path = root / "config_formula.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
