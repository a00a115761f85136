"""A UK Biobank-sized table of parcel values through the workflow, against lme4.

    python benchmarks/parcel_table.py [--rows 25000] [--parcels 1000] [--out FILE]

The study: `--rows` images of `--subjects` subjects (the first ones seen twice),
a participants table (``participants.tsv``: scan_id, subject, t, age10, group) and
``Y_table`` (``values.tsv``: scan_id, then one column per parcel, 1 % of the cells
empty), the formula ``~ t + age10 + group + (1 | subject)`` and two T contrasts, run
as a user would: ``snakemake --cores 2`` with the formula interface, rows joined on
scan_id.  Measured: the dry run (the config check reads every cell of the table),
the whole run and each stage (wall, CPU, peak RSS per job from the rules'
benchmark files) against MAXMEM; lme4/lmerTest (``lme4_loop.R``) on
`--lme4-parcels` parcels, timed and extrapolated to all, with the log-likelihoods
compared.  pyblmm reads NIfTI images only, so it has no part here.  Results go to
benchmarks/results/parcel_table.json with the commit.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from machine import machine_info  # noqa: E402
from run import run_timed, snakemake_stages  # noqa: E402


def simulate(folder: Path, rows: int, subjects: int, parcels: int, seed: int) -> None:
    """Write participants.tsv and values.tsv (ids shuffled between the two)."""
    rng = np.random.default_rng(seed)
    twice = rows - subjects
    subject = np.concatenate([np.arange(subjects), np.arange(twice)])
    t = np.concatenate([np.zeros(subjects), rng.uniform(1.5, 3.0, twice)])
    age = rng.uniform(45, 80, subjects)[subject] + t
    group = rng.integers(0, 2, subjects)[subject]
    ids = np.array([f"scan{i:05d}" for i in range(rows)])
    participants = pd.DataFrame(
        {
            "scan_id": ids,
            "subject": [f"sub{s:05d}" for s in subject],
            "t": t.round(4),
            "age10": ((age - 60) / 10).round(5),
            "group": np.where(group == 1, "case", "control"),
        }
    )
    participants.to_csv(folder / "participants.tsv", sep="\t", index=False)
    X = np.column_stack([np.ones(rows), t, participants["age10"], group])
    beta = rng.normal(0, 1, (4, parcels)) * [[1.0], [0.3], [0.5], [0.2]]
    beta[0] += 100
    b = rng.normal(0, 2.0, (subjects, parcels))[subject]
    Y = X @ beta + b + rng.normal(0, 1.0, (rows, parcels))
    Y[rng.random(Y.shape) < 0.01] = np.nan
    order = rng.permutation(rows)  # the table's rows in another order
    with (folder / "values.tsv").open("w") as fh:
        fh.write("\t".join(["scan_id", *(f"parcel{j:04d}" for j in range(parcels))]))
        fh.write("\n")
        for lo in range(0, rows, 2000):
            block = pd.DataFrame(Y[order[lo : lo + 2000]])
            block.insert(0, "scan_id", ids[order[lo : lo + 2000]])
            block.to_csv(fh, sep="\t", header=False, index=False, float_format="%.6f")


def lme4_fits(folder: Path, parcels: list[int]) -> dict:
    """Fit lme4/lmerTest at some parcels; return {parcel: (llh, seconds)}."""
    people = pd.read_csv(folder / "participants.tsv", sep="\t")
    values = pd.read_csv(folder / "values.tsv", sep="\t", index_col=0)
    values = values.loc[people["scan_id"]]
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "parcels.csv", Path(tmp) / "out.csv"
        frames = []
        for j in parcels:
            y = values.iloc[:, j].to_numpy()
            keep = np.isfinite(y)
            frames.append(
                pd.DataFrame(
                    {
                        "voxel": j,
                        "y": y[keep],
                        "t": people["t"][keep],
                        "age": people["age10"][keep],
                        "group": (people["group"] == "case").astype(int)[keep],
                        "subject": people["subject"][keep],
                        "site": 0,
                    }
                )
            )
        pd.concat(frames).to_csv(data, index=False, float_format="%.17g")
        subprocess.run(
            ["Rscript", str(HERE / "lme4_loop.R"), str(data), "intercept", str(out)],
            check=True,
            capture_output=True,
        )
        fits = list(csv.DictReader(out.open()))
    return {int(r["voxel"]): (float(r["llh"]), float(r["seconds"])) for r in fits}


#: Scheduler clients left off PATH: with a SLURM client installed and no slurmctld
#: running, every `snakemake` call here waits about 9 s (measured: a dry run takes
#: 11.1 s with them, 2.1 s without), which would swamp the stages measured.
SCHEDULER_COMMANDS = {
    *("sbatch", "srun", "squeue", "sinfo", "scontrol", "sacct", "scancel", "salloc"),
    *("sacctmgr", "sstat", "qsub", "qstat", "qdel", "qconf", "qhost", "qacct"),
}


def scheduler_free_env(folder: Path) -> dict:
    """Return os.environ with the system bin folders replaced by a copy of links.

    The copy (under `folder`) links every program of /usr/bin but the scheduler
    clients.
    """
    import os

    links = folder / "bin-without-schedulers"
    links.mkdir(parents=True, exist_ok=True)
    for program in Path("/usr/bin").iterdir():
        link = links / program.name
        if program.name not in SCHEDULER_COMMANDS and not link.is_symlink():
            link.symlink_to(program)
    system = {"/usr/bin", "/bin", "/usr/sbin", "/sbin"}
    path = [p for p in os.environ["PATH"].split(":") if p not in system]
    return os.environ | {"PATH": ":".join([*path, str(links)])}


def main() -> None:
    """Simulate (once), run the workflow and lme4, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=25_000)
    ap.add_argument("--subjects", type=int, default=17_000)
    ap.add_argument("--parcels", type=int, default=1_000)
    ap.add_argument("--lme4-parcels", type=int, default=5)
    ap.add_argument("--maxmem", default="2**30")
    ap.add_argument("--work", type=Path, default=Path("/tmp/blmm_bench/parcel_table"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "parcel_table.json")
    args = ap.parse_args()

    study = args.work / f"{args.rows}x{args.parcels}"
    study.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (study / "values.tsv").exists():
        simulate(study, args.rows, args.subjects, args.parcels, seed=11)
    simulate_s = time.perf_counter() - t0
    config = {
        "data": "participants.tsv",
        "Y_table": "values.tsv",
        "model": "~ t + age10 + group + (1 | subject)",
        "contrasts": [
            {"c1": {"name": "time", "vector": "t"}},
            {"c2": {"name": "group", "vector": "group[T.control]"}},
        ],
        "outdir": "out",
        "MAXMEM": args.maxmem,
    }
    (study / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = study
    for old in (run_dir / "out", run_dir / ".snakemake"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    cmd = [
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        "config.yaml",
        "--cores",
        "2",
    ]
    env = scheduler_free_env(args.work)
    dry = run_timed(
        [*cmd, "-n"], cwd=run_dir, env=env, log=run_dir / "dry.log", sample=False
    )
    run = run_timed(cmd, cwd=run_dir, env=env, log=run_dir / "run.log")
    result = {
        "study": {
            "rows": args.rows,
            "subjects": args.subjects,
            "parcels": args.parcels,
            "values_tsv_mb": (study / "values.tsv").stat().st_size / 2**20,
            "simulate_s": simulate_s,
            "model": config["model"],
            "MAXMEM": args.maxmem,
        },
        "dry_run": {k: dry[k] for k in ("returncode", "wall_s", "cpu_s")},
        "workflow": {k: v for k, v in run.items() if k != "samples"},
        **snakemake_stages(run_dir),
        "machine": machine_info(),
    }
    maxmem_mb = eval_maxmem(args.maxmem) / 2**20
    result["workflow"]["maxmem_mb"] = maxmem_mb
    table = pd.read_csv(run_dir / "out" / "blmm_parcels.tsv", sep="\t")
    rng = np.random.default_rng(5)
    parcels = sorted(rng.choice(args.parcels, args.lme4_parcels, replace=False))
    fits = lme4_fits(study, [int(j) for j in parcels])
    ours = table["llh"].to_numpy()
    seconds = [s for _, s in fits.values()]
    diffs = [abs(ours[j] - llh) / abs(llh) for j, (llh, _) in fits.items()]
    result["lme4"] = {
        "parcels": [int(j) for j in parcels],
        "seconds_per_fit": float(np.mean(seconds)),
        "extrapolated_all_parcels_s": float(np.mean(seconds)) * args.parcels,
        # blmm_vox_llh is float32 (BLMM's maps): 6e-8 relative is its rounding
        "llh_max_rel_diff": float(max(diffs)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("dry_run", "lme4")}, indent=2))
    print(f"workflow: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU")
    for rule, st in result["stages_tsv"].items():
        print(
            f"  {rule:12s} {st['jobs']:4d} jobs {st['wall_s']:7.1f} s "
            f"{st['max_rss_mb']:7.0f} MB peak"
        )


def eval_maxmem(text: str) -> int:
    """Return MAXMEM in bytes, as the workflow parses it."""
    from blmm_scripts.values import parse_int_expr

    return parse_int_expr(text)


if __name__ == "__main__":
    main()
