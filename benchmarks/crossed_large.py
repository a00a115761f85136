"""Two large crossed factors: the engine's cost per voxel against one lme4 fit.

    python benchmarks/crossed_large.py [--subjects 200] [--stimuli 100] [--out FILE]

Subjects x stimuli (or raters, or pooled data sets): every image belongs to one
subject and one stimulus, each subject sees `--per-subject` random stimuli, random
intercepts for both, p = 4 (intercept, t, age, group).  The engine fits the larger
factor's blocks plus the other as a dense border (``RandomEffects.bordered``), so
each voxel and iteration costs O(l1 (s + p)^2 + s^3) with s the stimuli: the
baseline for issue 11 item 6 (a sparse factorisation of the cross-factor
incidence).  It times ``fit`` + ``infer`` on `--voxels` simulated voxels (BLAS and
numba on one thread) and lme4/lmerTest (``lme4_loop.R``, structure ``crossed``) on
`--lme4-voxels` of them, and checks that the log-likelihoods agree.  Results go to
benchmarks/results/crossed_large.json with the commit.
"""

from __future__ import annotations

from blmm_scripts.threads import pin_threads

pin_threads(1)

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from blmm_scripts.estimation import fit  # noqa: E402
from blmm_scripts.inference import infer  # noqa: E402
from blmm_scripts.products import design_products  # noqa: E402
from blmm_scripts.structure import (  # noqa: E402
    Factor,
    Products,
    RandomEffects,
    build_Z,
    largest_first,
)

from machine import machine_info  # noqa: E402
from studies import CONTRASTS  # noqa: E402


def simulate(n_sub: int, n_stim: int, per_subject: int, n_vox: int, seed: int):
    """Return X, the two factors (config order) and Y (images x voxels)."""
    rng = np.random.default_rng(seed)
    subject = np.repeat(np.arange(n_sub), per_subject)
    stimulus = np.concatenate(
        [rng.choice(n_stim, per_subject, replace=False) for _ in range(n_sub)]
    )
    n = subject.size
    t = rng.uniform(0, 3, n)
    age = np.repeat(rng.normal(size=n_sub), per_subject)
    group = np.repeat(rng.integers(0, 2, n_sub), per_subject).astype(float)
    X = np.column_stack([np.ones(n), t, age, group])
    factors = [
        Factor.from_labels(subject, np.ones((n, 1)), "subject"),
        Factor.from_labels(stimulus, np.ones((n, 1)), "stimulus"),
    ]
    b_sub = rng.normal(0, np.sqrt(2.0), (n_sub, n_vox))
    b_stim = rng.normal(0, 1.0, (n_stim, n_vox))
    Y = X @ rng.normal(size=(4, n_vox)) + b_sub[subject] + b_stim[stimulus]
    Y = Y + rng.normal(0, 1.0, (n, n_vox)) + 100.0
    return X, factors, Y, {"t": t, "age": age, "group": group}


def lme4_fits(X, factors, Y, covariates, voxels: list[int]) -> dict:
    """Fit lme4/lmerTest at some voxels; return {voxel: (llh, seconds)}."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "voxels.csv"
        out = Path(tmp) / "out.csv"
        with data.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["voxel", "y", "t", "age", "group", "subject", "site"])
            for v in voxels:
                for i in range(Y.shape[0]):
                    w.writerow(
                        [
                            v,
                            repr(float(Y[i, v])),
                            covariates["t"][i],
                            covariates["age"][i],
                            covariates["group"][i],
                            factors[0].codes[i],
                            factors[1].codes[i],
                        ]
                    )
        subprocess.run(
            ["Rscript", str(HERE / "lme4_loop.R"), str(data), "crossed", str(out)],
            check=True,
            capture_output=True,
        )
        rows = list(csv.DictReader(out.open()))
    return {int(r["voxel"]): (float(r["llh"]), float(r["seconds"])) for r in rows}


def main() -> None:
    """Time the engine and lme4 on one study; write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=200)
    ap.add_argument("--stimuli", type=int, default=100)
    ap.add_argument("--per-subject", type=int, default=10)
    ap.add_argument("--voxels", type=int, default=40)
    ap.add_argument("--lme4-voxels", type=int, default=5)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", default=str(HERE / "results" / "crossed_large.json"))
    args = ap.parse_args()
    X, factors, Y, cov = simulate(
        args.subjects, args.stimuli, args.per_subject, args.voxels, args.seed
    )
    order = largest_first(factors)
    engine_factors = [factors[k] for k in order]
    re = RandomEffects.of(engine_factors)
    XtX, ZtX, ZtZ = design_products(X, engine_factors)
    Z = build_Z(engine_factors)
    v = Y.shape[1]
    pr = Products(
        XtX, ZtX, ZtZ, Y.T @ X, Y.T @ Z, (Y**2).sum(0), np.full(v, float(Y.shape[0]))
    )
    contrasts = [np.array(vec, float) for _, vec in CONTRASTS]
    fit(pr.take(np.arange(2)), re)  # imports and compiled code, not timed
    c = time.process_time()
    fitted = fit(pr, re)
    infer(pr, re, fitted, contrasts)
    ours_s = (time.process_time() - c) / v
    lme4 = lme4_fits(X, factors, Y, cov, list(range(args.lme4_voxels)))
    llh_diff = max(abs(fitted.llh[k] - llh) for k, (llh, _) in lme4.items())
    lme4_s = float(np.mean([s for _, s in lme4.values()]))
    result = {
        "machine": machine_info(),
        "study": {
            "images": int(Y.shape[0]),
            "subjects": args.subjects,
            "stimuli": args.stimuli,
            "per_subject": args.per_subject,
            "voxels": v,
            "bordered": re.bordered,
            "border_width": re.border,
        },
        "ours_cpu_s_per_voxel": ours_s,
        "ours_nit_mean": float(fitted.nit.mean()),
        "lme4_s_per_fit": lme4_s,
        "ours_over_lme4": ours_s / lme4_s,
        "llh_max_abs_diff_lme4": float(llh_diff),
    }
    print(json.dumps({k: result[k] for k in result if k != "machine"}, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
