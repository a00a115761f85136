"""Write the small, seeded data sets behind the lme4/lmerTest reference values.

Run from the repository root::

    python tests/reference/make_data.py

Every case gets three files in ``tests/reference/data/``:

``{case}_design.csv``
    one row per image: fixed-effects columns ``x0 .. x{p-1}`` (``x0`` the intercept),
    one label column ``f_{factor}`` per random factor and its random-effect design
    columns ``z_{factor}_{j}`` (``z_{factor}_0`` is the intercept, 1).
``{case}_Y.csv``
    one column per voxel (``v00 .. v11``); ``NaN`` marks an image that is missing at
    that voxel, i.e. absent from that voxel's fit.
``{case}_truth.csv``
    the parameters each voxel was simulated from (documentation only).

``contrasts.csv`` holds the contrasts of every case: one row per contrast row, columns
case, name, type (T or F), row, c0 .. c{p-1}.

The generator is deterministic (``numpy.random.default_rng`` with a fixed seed per
case); rerunning it reproduces the committed files byte for byte.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parent / "data"
N_VOXELS = 12
SEEDS = {
    "intercept": 20240131,
    "slope": 20240132,
    "crossed": 20240133,
    "crossed_slope": 20240134,
}


def _visits(rng: np.random.Generator, n_sub: int, lo: int, hi: int) -> tuple:
    """Return subject labels and visit times, lo..hi visits per subject (unbalanced)."""
    counts = rng.integers(lo, hi + 1, size=n_sub)
    subject = np.repeat([f"s{i:02d}" for i in range(n_sub)], counts)
    # visit k happens around year k, jittered, so time is not the same for everybody
    time = np.concatenate(
        [np.arange(c) + rng.uniform(-0.3, 0.3, size=c) for c in counts]
    )
    return subject, np.round(time, 3), counts


def _missing(
    rng: np.random.Generator,
    groups: list[np.ndarray],
    frac: float,
    min_per_level: int = 2,
) -> np.ndarray:
    """Return a missingness mask with about `frac` of images missing.

    Every level of every factor keeps at least `min_per_level` images, so no level
    disappears from a voxel's fit (that would change the number of levels between
    lme4, which drops unused levels, and the engine's Z).
    """
    n = len(groups[0])
    miss = np.zeros(n, dtype=bool)
    target = max(1, round(frac * n))
    for i in rng.permutation(n):
        if miss.sum() >= target:
            break
        ok = all(np.sum((g == g[i]) & ~miss) > min_per_level for g in groups)
        if ok:
            miss[i] = True
    return miss


def _fixed(rng: np.random.Generator) -> np.ndarray:
    """Return fixed effects of one voxel: a baseline, then two effects around zero."""
    return np.array([rng.normal(5.0, 1.0), rng.normal(0.0, 0.4), rng.normal(0.0, 0.6)])


def _assemble(design: pd.DataFrame, Y: np.ndarray, miss: list, truth: list) -> tuple:
    Y = Y.copy()
    for v, m in enumerate(miss):
        Y[m, v] = np.nan
    ydf = pd.DataFrame(Y, columns=[f"v{v:02d}" for v in range(Y.shape[1])])
    return design, ydf, pd.DataFrame(truth)


def _missing_fracs(rng: np.random.Generator) -> np.ndarray:
    """Return each voxel's missing fraction: a third complete, the rest 5-20%."""
    fr = rng.uniform(0.05, 0.20, size=N_VOXELS)
    fr[rng.permutation(N_VOXELS)[: N_VOXELS // 3]] = 0.0
    return fr


def make_intercept() -> tuple:
    """One factor (40 subjects x 3-5 visits), random intercept, p = 3."""
    rng = np.random.default_rng(SEEDS["intercept"])
    subject, time, counts = _visits(rng, 40, 3, 5)
    n = len(subject)
    age = np.repeat(np.round(rng.normal(0.0, 1.0, size=len(counts)), 3), counts)
    X = np.column_stack([np.ones(n), time, age])
    codes = np.unique(subject, return_inverse=True)[1]
    fracs = _missing_fracs(rng)
    Y = np.empty((n, N_VOXELS))
    miss, truth = [], []
    for v in range(N_VOXELS):
        beta = _fixed(rng)
        sigma2 = rng.uniform(0.5, 2.0)
        d = 0.0 if v == 0 else rng.uniform(0.2, 2.0)  # voxel 0: no subject variance
        b = rng.normal(0.0, np.sqrt(sigma2 * d), size=len(counts))
        Y[:, v] = X @ beta + b[codes] + rng.normal(0.0, np.sqrt(sigma2), size=n)
        miss.append(
            _missing(rng, [subject], fracs[v]) if fracs[v] > 0 else np.zeros(n, bool)
        )
        truth.append({"voxel": v, "beta": list(beta), "sigma2": sigma2, "D": [d]})
    design = pd.DataFrame(
        {
            "x0": X[:, 0],
            "x1": X[:, 1],
            "x2": X[:, 2],
            "f_subject": subject,
            "z_subject_0": 1.0,
        }
    )
    return _assemble(design, Y, miss, truth)


def make_slope() -> tuple:
    """One factor (40 subjects x 3-5 visits), random intercept and slope on time.

    Voxels 0-5 are simulated with zero slope variance (lme4's fit then often sits on
    the boundary, singular), voxels 6-11 with a clearly non-zero one.
    """
    rng = np.random.default_rng(SEEDS["slope"])
    subject, time, counts = _visits(rng, 40, 3, 5)
    n = len(subject)
    group = np.repeat(rng.permutation(np.arange(len(counts)) % 2).astype(float), counts)
    X = np.column_stack([np.ones(n), time, group])
    codes = np.unique(subject, return_inverse=True)[1]
    fracs = _missing_fracs(rng)
    Y = np.empty((n, N_VOXELS))
    miss, truth = [], []
    for v in range(N_VOXELS):
        beta = _fixed(rng)
        sigma2 = rng.uniform(0.5, 2.0)
        if v < 6:
            D = np.array([[rng.uniform(0.5, 2.0), 0.0], [0.0, 0.0]])
        else:
            sd = np.array([rng.uniform(0.7, 1.4), rng.uniform(0.4, 0.8)])
            rho = rng.uniform(-0.5, 0.5)
            D = np.outer(sd, sd) * np.array([[1.0, rho], [rho, 1.0]])
        b = rng.multivariate_normal(np.zeros(2), sigma2 * D, size=len(counts))
        Y[:, v] = (
            X @ beta
            + b[codes, 0]
            + b[codes, 1] * time
            + rng.normal(0.0, np.sqrt(sigma2), size=n)
        )
        miss.append(
            _missing(rng, [subject], fracs[v]) if fracs[v] > 0 else np.zeros(n, bool)
        )
        truth.append(
            {
                "voxel": v,
                "beta": list(beta),
                "sigma2": sigma2,
                "D": [D[0, 0], D[1, 0], D[1, 1]],
            }
        )
    design = pd.DataFrame(
        {
            "x0": X[:, 0],
            "x1": X[:, 1],
            "x2": X[:, 2],
            "f_subject": subject,
            "z_subject_0": 1.0,
            "z_subject_1": time,
        }
    )
    return _assemble(design, Y, miss, truth)


def _crossed_layout(rng: np.random.Generator, n_sub: int, n_site: int) -> tuple:
    """Scan each subject once at each of 4-6 distinct sites (subject x site crossed)."""
    subject, site = [], []
    for i in range(n_sub):
        k = rng.integers(4, n_site + 1)
        for s in np.sort(rng.choice(n_site, size=k, replace=False)):
            subject.append(f"s{i:02d}")
            site.append(f"site{s}")
    return np.array(subject), np.array(site)


def make_crossed() -> tuple:
    """Two crossed factors, 30 subjects x 6 sites, random intercepts for each."""
    rng = np.random.default_rng(SEEDS["crossed"])
    subject, site = _crossed_layout(rng, 30, 6)
    n = len(subject)
    sub_codes = np.unique(subject, return_inverse=True)[1]
    site_codes = np.unique(site, return_inverse=True)[1]
    group = rng.permutation(np.arange(30) % 2).astype(float)[sub_codes]
    x1 = np.round(rng.normal(0.0, 1.0, size=n), 3)  # an image-level covariate
    X = np.column_stack([np.ones(n), x1, group])
    fracs = _missing_fracs(rng)
    Y = np.empty((n, N_VOXELS))
    miss, truth = [], []
    for v in range(N_VOXELS):
        beta = _fixed(rng)
        sigma2 = rng.uniform(0.5, 2.0)
        d_sub = rng.uniform(0.3, 2.0)
        d_site = 0.0 if v == 0 else rng.uniform(0.3, 1.5)  # voxel 0: no site variance
        b_sub = rng.normal(0.0, np.sqrt(sigma2 * d_sub), size=30)
        b_site = rng.normal(0.0, np.sqrt(sigma2 * d_site), size=6)
        Y[:, v] = (
            X @ beta
            + b_sub[sub_codes]
            + b_site[site_codes]
            + rng.normal(0.0, np.sqrt(sigma2), size=n)
        )
        miss.append(
            _missing(rng, [subject, site], fracs[v])
            if fracs[v] > 0
            else np.zeros(n, bool)
        )
        truth.append(
            {"voxel": v, "beta": list(beta), "sigma2": sigma2, "D": [d_sub, d_site]}
        )
    design = pd.DataFrame(
        {
            "x0": X[:, 0],
            "x1": X[:, 1],
            "x2": X[:, 2],
            "f_subject": subject,
            "z_subject_0": 1.0,
            "f_site": site,
            "z_site_0": 1.0,
        }
    )
    return _assemble(design, Y, miss, truth)


def make_crossed_slope() -> tuple:
    """Subject intercept + slope on time, crossed with a site intercept.

    30 subjects x 4-6 visits, each visit at a random one of 6 sites.
    """
    rng = np.random.default_rng(SEEDS["crossed_slope"])
    subject, time, counts = _visits(rng, 30, 4, 6)
    n = len(subject)
    site = np.array([f"site{s}" for s in rng.integers(0, 6, size=n)])
    sub_codes = np.unique(subject, return_inverse=True)[1]
    site_codes = np.unique(site, return_inverse=True)[1]
    group = np.repeat(rng.permutation(np.arange(30) % 2).astype(float), counts)
    X = np.column_stack([np.ones(n), time, group])
    fracs = _missing_fracs(rng)
    Y = np.empty((n, N_VOXELS))
    miss, truth = [], []
    for v in range(N_VOXELS):
        beta = _fixed(rng)
        sigma2 = rng.uniform(0.5, 2.0)
        sd = np.array([rng.uniform(0.7, 1.4), rng.uniform(0.4, 0.8)])
        rho = rng.uniform(-0.5, 0.5)
        D1 = np.outer(sd, sd) * np.array([[1.0, rho], [rho, 1.0]])
        d_site = rng.uniform(0.3, 1.5)
        b_sub = rng.multivariate_normal(np.zeros(2), sigma2 * D1, size=30)
        b_site = rng.normal(0.0, np.sqrt(sigma2 * d_site), size=6)
        Y[:, v] = (
            X @ beta
            + b_sub[sub_codes, 0]
            + b_sub[sub_codes, 1] * time
            + b_site[site_codes]
            + rng.normal(0.0, np.sqrt(sigma2), size=n)
        )
        miss.append(
            _missing(rng, [subject, site], fracs[v])
            if fracs[v] > 0
            else np.zeros(n, bool)
        )
        truth.append(
            {
                "voxel": v,
                "beta": list(beta),
                "sigma2": sigma2,
                "D": [D1[0, 0], D1[1, 0], D1[1, 1], d_site],
            }
        )
    design = pd.DataFrame(
        {
            "x0": X[:, 0],
            "x1": X[:, 1],
            "x2": X[:, 2],
            "f_subject": subject,
            "z_subject_0": 1.0,
            "z_subject_1": time,
            "f_site": site,
            "z_site_0": 1.0,
        }
    )
    return _assemble(design, Y, miss, truth)


CASES = {
    "intercept": make_intercept,
    "slope": make_slope,
    "crossed": make_crossed,
    "crossed_slope": make_crossed_slope,
}

# Every case has p = 3 (intercept, x1, x2).  Two T contrasts on single effects, one on
# a combination, and an F contrast with 2 rows (both non-intercept effects jointly).
CONTRASTS = [
    ("T_x1", "T", [[0.0, 1.0, 0.0]]),
    ("T_x2", "T", [[0.0, 0.0, 1.0]]),
    ("T_x1_minus_x2", "T", [[0.0, 1.0, -1.0]]),
    ("F_x1_x2", "F", [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
]


def _truth_frame(truth: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for t in truth.to_dict("records"):
        row = {"voxel": t["voxel"], "sigma2": t["sigma2"]}
        row.update({f"beta_{j}": b for j, b in enumerate(t["beta"])})
        row.update({f"D_{j}": d for j, d in enumerate(t["D"])})
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    """Write every case's design, Y and truth, and the contrasts, to DATA."""
    DATA.mkdir(parents=True, exist_ok=True)
    fmt = "%.10g"
    for case, make in CASES.items():
        design, Y, truth = make()
        design.to_csv(DATA / f"{case}_design.csv", index=False, float_format=fmt)
        Y.to_csv(DATA / f"{case}_Y.csv", index=False, float_format=fmt, na_rep="NaN")
        _truth_frame(truth).to_csv(
            DATA / f"{case}_truth.csv", index=False, float_format=fmt
        )
    rows = []
    for case in CASES:
        for name, kind, L in CONTRASTS:
            for i, r in enumerate(L):
                rows.append(
                    {"case": case, "name": name, "type": kind, "row": i}
                    | {f"c{j}": c for j, c in enumerate(r)}
                )
    pd.DataFrame(rows).to_csv(DATA / "contrasts.csv", index=False, float_format="%g")


if __name__ == "__main__":
    main()
