"""Write the participants table of the formula reference (seeded; see README.md).

30 subjects (text ids ``sub-01``...) with 3 visits each: age, sex (F/M) and group
(a/b/c) per subject, time per visit, and 6 voxels ``y0..y5`` simulated from
``~ age * sex + group + time + (1 + time | participant_id)``.  Two rows have age
``n/a`` (lme4's na.omit and the formula front end both drop them).

    python tests/reference/formula/make_formula_data.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
SEED = 20261201
N_SUBJECTS, VISITS, N_VOXELS = 30, 3, 6


def make_table(rng: np.random.Generator) -> pd.DataFrame:
    """Return the table: one row per image, the design columns and y0..y5."""
    subject = np.repeat(np.arange(N_SUBJECTS), VISITS)
    age = rng.uniform(20, 70, N_SUBJECTS)[subject]
    sex = rng.choice(["F", "M"], N_SUBJECTS)[subject]
    group = rng.choice(["a", "b", "c"], N_SUBJECTS)[subject]
    time = np.tile(np.arange(VISITS), N_SUBJECTS) + rng.uniform(-0.2, 0.2, subject.size)
    male = (sex == "M").astype(float)
    gb, gc = (group == "b").astype(float), (group == "c").astype(float)
    table = pd.DataFrame(
        {
            "participant_id": [f"sub-{s + 1:02d}" for s in subject],
            "age": np.round(age, 1),
            "sex": sex,
            "group": group,
            "time": np.round(time, 3),
        }
    )
    for v in range(N_VOXELS):
        beta = rng.normal(0, 1, 7)
        b0 = rng.normal(0, 1.0, N_SUBJECTS)[subject]
        b1 = rng.normal(0, 0.5, N_SUBJECTS)[subject]
        mean = (
            beta[0]
            + beta[1] * (age - 45) / 10
            + beta[2] * male
            + beta[3] * gb
            + beta[4] * gc
            + beta[5] * time
            + beta[6] * male * (age - 45) / 10
        )
        y = mean + b0 + b1 * time + rng.normal(0, 0.7, subject.size)
        table[f"y{v}"] = np.round(y, 6)
    table = table.astype({"age": object})
    table.loc[[4, 40], "age"] = "n/a"
    return table


if __name__ == "__main__":
    make_table(np.random.default_rng(SEED)).to_csv(
        HERE / "formula_data.tsv", sep="\t", index=False
    )
