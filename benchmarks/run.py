"""One command: this workflow, pyblmm 0.1.1 and lme4 side by side on one seeded study.

    python benchmarks/run.py PRESET [--work DIR] [--no-pyblmm] [--no-lme4] [--cores 2]

PRESET is one of small, crossed, large, ukb (studies.PRESETS).  Steps:

1. write the seeded NIfTI study (with partial masks) under --work (default
   /tmp/blmm_bench/<preset>; reused when complete);
2. time reading every image (and data mask) once with nibabel: the floor of the
   batch stage;
3. run this workflow: ``snakemake --cores N --configfile <cfg> --directory <dir>``,
   timing it; per-stage wall and CPU time and max RSS come from the Snakemake
   benchmark TSV files when the rules write them, otherwise from the job start and
   finish times in the Snakemake log plus a process-tree sampler (RSS per job, every
   0.25 s);
4. run pyblmm's console script ``blmm <cfg>`` (clusterType local, numNodes 1,
   voxelBatching 1) in benchmarks/.venv-pyblmm, or, where a full run would take too
   long (large, ukb: > ~10 min), its stages in one process on a voxel subsample (every
   10th / 20th voxel), with the results stage extrapolated to all voxels;
5. an lme4/lmerTest loop (lme4_loop.R) over 20 sampled voxels (some with missing
   images), and the agreement of our maps (log-likelihood, beta, Satterthwaite df)
   with lme4 there, and of our maps with pyblmm's (beta, llh) at every voxel;
6. writes benchmarks/results/<preset>.json and redraws benchmarks/results/benchmarks.png
   from every result file present (plot.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from machine import machine_info  # noqa: E402
from studies import (  # noqa: E402
    PRESETS,
    Preset,
    StudyFiles,
    blmm_config,
    write_config,
    write_study,
)

PYBLMM_BIN = HERE / ".venv-pyblmm" / "bin"
N_LME4_VOXELS = 20


# ---------------------------------------------------------------- process sampling
class TreeSampler:
    """Sample the RSS of every process under a root pid every `period` seconds.

    Keeps the peak RSS per process label (a Snakemake job's script name, or the
    command) and the peak of the summed tree.
    """

    def __init__(self, pid: int, period: float = 0.25) -> None:
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.period = period
        self.peak: dict[str, float] = {}
        self.procs: dict[
            int, dict
        ] = {}  # pid -> label, start, last seen, cpu, peak rss
        self.peak_tree = 0.0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def label(cmd: list[str]) -> str:
        text = " ".join(cmd)
        m = re.search(r"\.snakemake/scripts/tmp[^/ ]*?\.([A-Za-z0-9_]+)\.py", text)
        if m:
            return f"job:{m.group(1)}"
        if "snakemake" in text:
            return "snakemake"
        if "distributed" in text or "dask" in text or "multiprocessing" in text:
            return "dask-worker"
        return Path(cmd[0]).name if cmd else "?"

    def _run(self) -> None:
        ps = self.psutil
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except ps.Error:
                break
            total = 0.0
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                    info = self.procs.get(p.pid)
                    if info is None:
                        info = self.procs[p.pid] = {
                            "label": self.label(p.cmdline()),
                            "start": p.create_time(),
                            "rss": 0.0,
                        }
                    cpu = p.cpu_times()
                    info["cpu"] = cpu.user + cpu.system
                    info["last"] = time.time()
                    info["rss"] = max(info["rss"], rss)
                except ps.Error:
                    continue
                lab = info["label"]
                total += rss
                self.peak[lab] = max(self.peak.get(lab, 0.0), rss)
            self.peak_tree = max(self.peak_tree, total)
            self._stop.wait(self.period)

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join()
        jobs: dict[str, dict] = {}
        for info in self.procs.values():
            if not info["label"].startswith("job:") or "last" not in info:
                continue
            st = jobs.setdefault(
                info["label"][4:],
                {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0, "max_rss_mb": 0.0},
            )
            st["jobs"] += 1
            st["wall_s"] += info["last"] - info["start"]
            st["cpu_s"] += info["cpu"]
            st["max_rss_mb"] = max(st["max_rss_mb"], round(info["rss"], 1))
        return {
            "jobs_sampled": jobs,
            "peak_rss_mb_by_process": {
                k: round(v, 1) for k, v in sorted(self.peak.items())
            },
            "peak_rss_mb_tree_sum": round(self.peak_tree, 1),
            "sampling_period_s": self.period,
        }


class DiskSampler:
    """Sample the bytes under a folder every second: the peak, and what is left.

    The image-batch files are temporary, so their share shows only in the peak.
    """

    def __init__(self, folder: Path, period: float = 1.0) -> None:
        self.folder, self.period = Path(folder), period
        self.peak = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _bytes(self, folder: Path) -> int:
        total = 0
        for f in folder.rglob("*"):
            try:
                total += f.stat().st_size if f.is_file() else 0
            except OSError:
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._bytes(self.folder))
            self._stop.wait(self.period)

    def stop(self) -> dict:
        self._stop.set()
        self.thread.join()
        results = self.folder / "results"
        work = results / "work"
        by_folder = {
            "maps": sum(f.stat().st_size for f in results.glob("blmm_vox_*")),
        }
        for name in ("setup", "vox", "batch", "logs", "benchmarks"):
            by_folder[f"work/{name}"] = (
                self._bytes(work / name) if (work / name).exists() else 0
            )
        return {
            "peak_mb": self.peak / 2**20,
            "left_mb": self._bytes(self.folder) / 2**20,
            "left_mb_by_folder": {k: v / 2**20 for k, v in by_folder.items()},
            "sampling_period_s": self.period,
        }


def run_timed(
    cmd: list[str],
    *,
    cwd: Path | None = None,
    env: dict | None = None,
    log: Path | None = None,
    sample: bool = True,
    timeout: float | None = None,
) -> dict:
    """Run a command; wall time, children's CPU time and max RSS, sampled RSS.

    After `timeout` seconds the command's process group is ended (SIGTERM) and
    ``timed_out`` is set.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    timed_out = False
    with Path(log or os.devnull).open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sampler = TreeSampler(proc.pid) if sample else None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGTERM)
            rc = proc.wait()
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = {
        "returncode": rc,
        "wall_s": wall,
        "timed_out": timed_out,
        "cpu_s": (after.ru_utime - before.ru_utime)
        + (after.ru_stime - before.ru_stime),
        "max_rss_mb_any_process": after.ru_maxrss / 1024,
        "cmd": " ".join(map(str, cmd)),
    }
    if sampler:
        res |= sampler.stop()
    return res


# ---------------------------------------------------------------- nibabel floor
def read_images_once(files: StudyFiles) -> dict:
    """Time reading every image (then every data mask) once with nibabel."""
    paths = files.Y_files.read_text().split()
    masks = files.data_mask_files.read_text().split()
    t = time.perf_counter()
    for p in paths:
        np.asarray(nib.load(p).dataobj)
    images_s = time.perf_counter() - t
    t = time.perf_counter()
    for p in masks:
        np.asarray(nib.load(p).dataobj)
    masks_s = time.perf_counter() - t
    return {
        "images_s": images_s,
        "masks_s": masks_s,
        "images_and_masks_s": images_s + masks_s,
        "note": "files freshly written, so mostly from the page cache, as for every tool here",
    }


# ---------------------------------------------------------------- our workflow
def snakemake_stages(run_dir: Path) -> dict:
    """Per-rule timings from the rules' benchmark TSVs (where they write them) and the log.

    ``stages_tsv``: Snakemake's benchmark files (wall, CPU, max RSS per job);
    ``stages_log``: job start/finish in the Snakemake log (1 s resolution).  The
    process sampler in run_timed adds ``jobs_sampled`` for every rule.
    """
    tsvs = [p for p in run_dir.rglob("*.tsv") if "benchmarks" in p.parts]
    if tsvs:
        stages: dict[str, dict] = {}
        for p in sorted(tsvs):
            rule = (
                p.parts[p.parts.index("benchmarks") + 1]
                if p.parent.name != "benchmarks"
                else p.stem
            )
            lines = p.read_text().splitlines()
            head = lines[0].split("\t")
            for line in lines[1:]:
                row = dict(zip(head, line.split("\t"), strict=False))

                def num(key, row=row):
                    try:
                        return float(row.get(key, "nan"))
                    except ValueError:
                        return float("nan")

                st = stages.setdefault(
                    rule, {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0, "max_rss_mb": 0.0}
                )
                st["jobs"] += 1
                st["wall_s"] += num("s")
                st["cpu_s"] += num("cpu_time")
                st["max_rss_mb"] = max(st["max_rss_mb"], num("max_rss"))
        out = {"stages_tsv": stages}
    else:
        out = {"stages_tsv": {}}
    logs = sorted((run_dir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        return out | {"stages_log": {}}
    stamp = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")
    now, rule, starts, stages = None, None, {}, {}
    for line in logs[-1].read_text().splitlines():
        m = stamp.match(line)
        if m:
            now = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp()
            continue
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
            continue
        m = re.match(r"^\s+jobid: (\d+)", line)
        if m and rule:
            starts[m.group(1)] = (rule, now)
            continue
        m = re.match(r"^Finished jobid: (\d+)", line)
        if m and m.group(1) in starts:
            r, t0 = starts[m.group(1)]
            st = stages.setdefault(
                r, {"jobs": 0, "wall_s": 0.0, "first_start": t0, "last_end": now}
            )
            st["jobs"] += 1
            st["wall_s"] += now - t0
            st["last_end"] = max(st["last_end"], now)
            st["first_start"] = min(st["first_start"], t0)
    for st in stages.values():
        st["span_s"] = st.pop("last_end") - st.pop("first_start")
    return out | {"stages_log": stages}


def extrapolate_timeout(run_dir: Path, res: dict, cores: int) -> dict:
    """Projected wall time of a run ended by --timeout.

    Jobs per rule from the log's "Job stats"; each unfinished job is charged the mean
    wall time of the finished jobs of its rule (sampled), spread over `cores`.
    """
    logs = sorted((run_dir / ".snakemake" / "log").glob("*.snakemake.log"))
    text = logs[-1].read_text() if logs else ""
    planned = dict(
        re.findall(
            r"^(\w+)\s+(\d+)$",
            text.split("Job stats:", 1)[-1].split("Select jobs", 1)[0],
            re.M,
        )
    )
    done = res.get("stages_log", {})
    sampled = res.get("jobs_sampled", {})
    remaining_s, detail = 0.0, {}
    for rule, count in planned.items():
        if rule in ("total", "all"):
            continue
        n_done = done.get(rule, {}).get("jobs", 0)
        left = int(count) - n_done
        if left <= 0:
            continue
        st = sampled.get(rule)
        mean = st["wall_s"] / st["jobs"] if st and st["jobs"] else None
        if (
            mean is None
        ):  # no job of this rule finished: charge the estimate stage's mean
            st = sampled.get("estimate") or {"wall_s": 0.0, "jobs": 1}
            mean = st["wall_s"] / max(st["jobs"], 1)
        detail[rule] = {
            "planned": int(count),
            "finished": n_done,
            "mean_job_wall_s": mean,
        }
        remaining_s += left * mean / cores
    return {
        "wall_s_projected": res["wall_s"] + remaining_s,
        "remaining_jobs": detail,
        "method": "unfinished jobs x mean wall of the rule's finished jobs / cores",
    }


def run_workflow(
    files: StudyFiles, work: Path, cores: int, timeout: float | None = None
) -> dict:
    run_dir = work / "ours"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg = write_config(
        blmm_config(files, run_dir / "results", pyblmm=False), work / "ours.yml"
    )
    cmd = [
        "snakemake",
        "--cores",
        str(cores),
        "--configfile",
        str(cfg),
        "--directory",
        str(run_dir),
        "--snakefile",
        str(REPO / "Snakefile"),
    ]
    t = time.perf_counter()
    dry = subprocess.run(
        [*cmd, "-n", "--quiet", "rules"], cwd=REPO, capture_output=True
    )
    dry_run_s = time.perf_counter() - t
    disk = DiskSampler(run_dir)
    res = run_timed(cmd, cwd=REPO, log=work / "ours.log", timeout=timeout)
    res["dry_run_s"] = dry_run_s if dry.returncode == 0 else None
    res["disk"] = disk.stop()
    res |= snakemake_stages(run_dir)
    # Per stage: the benchmark TSV where the rule writes one, else the sampler.
    res["stages"] = {
        k: v | {"source": "sampler"} for k, v in res.get("jobs_sampled", {}).items()
    }
    res["stages"] |= {
        k: v | {"source": "benchmark tsv"} for k, v in res["stages_tsv"].items()
    }
    jobs = {
        k: v
        for k, v in res.get("peak_rss_mb_by_process", {}).items()
        if k.startswith("job:")
    }
    res["peak_rss_mb_any_job_sampled"] = max(jobs.values(), default=None)
    res["maps"] = str(run_dir / "results")
    if res["timed_out"]:
        res["timeout_extrapolation"] = extrapolate_timeout(run_dir, res, cores)
    return res


# ---------------------------------------------------------------- pyblmm
def pyblmm_env() -> dict:
    env = os.environ.copy()
    env["PATH"] = f"{PYBLMM_BIN}:{env['PATH']}"
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[v] = "1"  # as dask's workers do by default
    return env


def run_pyblmm(files: StudyFiles, work: Path) -> dict:
    out = work / "pyblmm_out"
    shutil.rmtree(out, ignore_errors=True)
    cfg = write_config(blmm_config(files, out, pyblmm=True), work / "pyblmm.yml")
    res = run_timed(
        [str(PYBLMM_BIN / "blmm"), str(cfg)],
        cwd=work,
        env=pyblmm_env(),
        log=work / "pyblmm.log",
    )
    res["mode"] = (
        "full run of the console script `blmm` (dask LocalCluster, numNodes 1)"
    )
    res["maps"] = str(out)
    return res


def run_pyblmm_stages(cfg_path: Path, log: Path, *args: str) -> tuple[dict, float]:
    """Run pyblmm_stages.py; return its JSON line (or an error) and the wall time."""
    t = time.perf_counter()
    proc = subprocess.run(
        [
            str(PYBLMM_BIN / "python"),
            str(HERE / "pyblmm_stages.py"),
            str(cfg_path),
            *args,
        ],
        env=pyblmm_env(),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}, wall
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def run_pyblmm_subsample(files: StudyFiles, work: Path, fraction: float) -> dict:
    """Pyblmm's stages in one process on every k-th voxel; results stage extrapolated."""
    mask_img = nib.load(files.analysis_mask)
    mask = np.asarray(mask_img.dataobj) > 0
    k = round(1 / fraction)
    sub = np.zeros_like(mask)
    idx = np.flatnonzero(mask)
    sub.flat[idx[::k]] = True
    sub_path = work / "analysis_mask_subsample.nii"
    nib.save(nib.Nifti1Image(sub.astype(np.uint8), mask_img.affine), sub_path)
    out = work / "pyblmm_sub_out"
    shutil.rmtree(out, ignore_errors=True)
    cfg = blmm_config(files, out, pyblmm=True) | {"analysis_mask": str(sub_path)}
    cfg_path = write_config(cfg, work / "pyblmm_sub.yml")
    stages, wall = run_pyblmm_stages(cfg_path, work / "pyblmm_sub.log")
    if "error" in stages:
        return stages
    scale = mask.sum() / sub.sum()
    res_s = stages["stages"]["results"]["wall_s"]
    other = sum(s["wall_s"] for n, s in stages["stages"].items() if n != "results")
    return {
        "mode": f"stages in one process (pyblmm_stages.py) on every {k}th voxel "
        f"({int(sub.sum())} of {int(mask.sum())}); results stage scaled by {scale:.2f}",
        "measured": stages,
        "measured_wall_s": wall,
        "wall_s_extrapolated": other + res_s * scale,
        "extrapolated": True,
        "maps": str(out),
        "voxel_subsample": str(sub_path),
    }


def run_pyblmm_batches(files: StudyFiles, work: Path, k: int) -> dict:
    """Pyblmm's setup and first k image batches; its batch stage extrapolated.

    For a study whose full pyblmm run takes about an hour here: the batch stage
    alone, scaled to every batch, is a lower bound on pyblmm's total time.
    """
    out = work / "pyblmm_batches_out"
    shutil.rmtree(out, ignore_errors=True)
    cfg_path = write_config(blmm_config(files, out, pyblmm=True), work / "pyblmm_b.yml")
    info, wall = run_pyblmm_stages(cfg_path, work / "pyblmm_batches.log", str(k))
    if "error" in info:
        return info
    per_batch = info["stages"]["batch"]["wall_s"] / info["batches_run"]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "mode": f"setup and {info['batches_run']} of {info['n_batches']} image batches "
        "(pyblmm_stages.py); the batch stage scaled to every batch is a lower bound "
        "on the whole run (concat and results not run)",
        "measured": info,
        "measured_wall_s": wall,
        "wall_s_lower_bound": info["stages"]["setup"]["wall_s"]
        + per_batch * info["n_batches"],
        "extrapolated": True,
    }


# ---------------------------------------------------------------- lme4
def sample_voxels(files: StudyFiles, preset: Preset, n: int) -> np.ndarray:
    """Flat indices of n voxels: a quarter near the top (missing images), the rest anywhere."""
    mask = np.asarray(nib.load(files.analysis_mask).dataobj) > 0
    rng = np.random.default_rng(7)
    flat = np.flatnonzero(mask)
    z = np.unravel_index(flat, mask.shape)[2]
    top = flat[z >= preset.shape[2] - 2]
    ring = rng.choice(top, size=min(len(top), n // 4), replace=False)
    rest = rng.choice(np.setdiff1d(flat, ring), size=n - len(ring), replace=False)
    return np.sort(np.concatenate([ring, rest]))


def run_lme4(files: StudyFiles, preset: Preset, work: Path, voxels: np.ndarray) -> dict:
    paths = files.Y_files.read_text().split()
    masks = files.data_mask_files.read_text().split()
    cov = np.genfromtxt(files.folder / "covariates.csv", delimiter=",", names=True)
    rows = []
    for i, (p, m) in enumerate(zip(paths, masks, strict=False)):
        y = np.asarray(nib.load(p).dataobj).ravel()[voxels]
        present = (np.asarray(nib.load(m).dataobj).ravel()[voxels] > 0) & (y != 0)
        for v, yy in zip(voxels[present], y[present], strict=False):
            rows.append(
                (
                    v,
                    yy,
                    cov["t"][i],
                    cov["age"][i],
                    cov["group"][i],
                    cov["subject"][i],
                    cov["site"][i],
                )
            )
    data = work / "lme4_voxels.csv"
    with Path(data).open("w") as f:
        f.write("voxel,y,t,age,group,subject,site\n")
        for r in rows:
            v, y, t, age, group, subject, site = r
            f.write(
                f"{v:d},{y:.9g},{t:.17g},{age:.17g},{group:g},{subject:.0f},{site:.0f}\n"
            )
    out = work / "lme4_out.csv"
    res = run_timed(
        ["Rscript", str(HERE / "lme4_loop.R"), str(data), preset.structure, str(out)],
        log=work / "lme4.log",
        sample=False,
    )
    if res["returncode"]:
        return res | {"error": (work / "lme4.log").read_text()[-2000:]}
    import csv

    with Path(out).open() as f:
        table = list(csv.DictReader(f))
    res["n_voxels"] = len(table)
    res["fit_seconds_per_voxel"] = float(np.mean([float(r["seconds"]) for r in table]))
    res["table"] = table
    return res


def maps_at(folder: Path, name: str, voxels: np.ndarray) -> np.ndarray | None:
    path = folder / f"blmm_vox_{name}.nii"
    if not path.exists():
        path = folder / f"blmm_vox_{name}.nii.gz"
    if not path.exists():
        return None
    data = np.asarray(nib.load(path).dataobj, dtype=np.float64)
    flat = data.reshape(int(np.prod(data.shape[:3])), -1)
    return flat[voxels]


def agreement_lme4(maps: Path, lme4: dict, voxels: np.ndarray) -> dict:
    table = lme4["table"]
    order = {int(r["voxel"]): r for r in table}
    vox = np.array([v for v in voxels if v in order])
    ref = lambda key: np.array([float(order[v][key]) for v in vox])  # noqa: E731
    llh, beta, df = (
        maps_at(maps, "llh", vox),
        maps_at(maps, "beta", vox),
        maps_at(maps, "conT_swedf", vox),
    )
    if llh is None or beta is None:
        return {"error": f"maps missing in {maps}"}
    rb = np.column_stack([ref(f"beta{i}") for i in range(4)])
    rdf = np.column_stack([ref("df_time"), ref("df_group")])
    singular = np.array([order[v]["singular"] == "TRUE" for v in vox])
    out = {
        "n_voxels": len(vox),
        "lme4_singular_fits": int(singular.sum()),
        "llh_float32_spacing_max": float(
            np.max(np.spacing(np.abs(ref("llh")).astype(np.float32)))
        ),
        "llh_ours_minus_lme4_min": float(np.min(llh[:, 0] - ref("llh"))),
        "llh_ours_minus_lme4_max": float(np.max(llh[:, 0] - ref("llh"))),
        "beta_max_rel_diff": float(
            np.max(np.abs(beta - rb) / np.maximum(np.abs(rb), 1e-8))
        ),
        "beta_max_abs_diff": float(np.max(np.abs(beta - rb))),
    }
    if df is not None:
        rel = np.abs(df - rdf) / rdf
        out["df_max_rel_diff"] = float(np.max(rel))
        out["df_max_rel_diff_nonsingular"] = (
            float(np.max(rel[~singular])) if (~singular).any() else None
        )
    return out


def agreement_pyblmm(
    ours: Path, theirs: Path, files: StudyFiles, voxels: np.ndarray | None = None
) -> dict:
    mask = np.asarray(nib.load(files.analysis_mask).dataobj) > 0
    idx = np.flatnonzero(mask) if voxels is None else voxels
    b1, b2 = maps_at(ours, "beta", idx), maps_at(theirs, "beta", idx)
    l1, l2 = maps_at(ours, "llh", idx), maps_at(theirs, "llh", idx)
    if b1 is None or b2 is None:
        return {"error": "maps missing"}
    keep = np.isfinite(b1).all(1) & np.isfinite(b2).all(1) & (b2 != 0).any(1)
    d = (l1[:, 0] - l2[:, 0])[keep]
    return {
        "n_voxels_compared": int(keep.sum()),
        "beta_max_abs_diff": float(np.max(np.abs(b1 - b2)[keep])),
        "beta_max_rel_diff": float(
            np.max((np.abs(b1 - b2) / np.maximum(np.abs(b2), 1e-3))[keep])
        ),
        "llh_ours_minus_pyblmm_min": float(d.min()),
        "llh_ours_minus_pyblmm_max": float(d.max()),
        "llh_ours_minus_pyblmm_median": float(np.median(d)),
        "note": "pyblmm writes its maps in the images' dtype (float32): ~1e-7 relative",
    }


# ---------------------------------------------------------------- main
def peak_rates() -> dict:
    env = os.environ | {
        v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    }
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, machine; print(json.dumps(machine.measure_peak()))",
        ],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Benchmark this workflow against pyblmm and lme4."
    )
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument(
        "--work",
        default=None,
        help="study and run folder (default /tmp/blmm_bench/<preset>)",
    )
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--no-pyblmm", action="store_true")
    ap.add_argument("--no-lme4", action="store_true")
    ap.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="end the workflow run after this many s",
    )
    ap.add_argument(
        "--pyblmm-only",
        action="store_true",
        help="rerun only pyblmm, reusing this workflow's and lme4's results in results/PRESET.json",
    )
    ap.add_argument(
        "--pyblmm-full",
        action="store_true",
        help="full pyblmm run even where it is long",
    )
    args = ap.parse_args()
    preset = PRESETS[args.preset]
    work = Path(args.work or f"/tmp/blmm_bench/{preset.name}").absolute()
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "preset": preset.name,
        "description": preset.note,
        "machine": machine_info(),
        "peak": peak_rates(),
        "cores_used": args.cores,
    }

    t = time.perf_counter()
    files = write_study(preset, work / "study")
    result["study"] = {
        "n_images": files.n_images,
        "n_voxels": files.n_voxels,
        "shape": list(files.shape),
        "structure": preset.structure,
        "n_subjects": preset.n_subjects,
        "visits": preset.visits,
        "n_sites": preset.n_sites,
        "seed": preset.seed,
        "partial_fraction": preset.partial_fraction,
        "folder": str(files.folder),
        "generate_s": time.perf_counter() - t,
    }
    print(
        f"[{preset.name}] study: {files.n_images} images, {files.n_voxels} voxels",
        flush=True,
    )
    result["read_once_nibabel"] = read_images_once(files)

    previous = HERE / "results" / f"{preset.name}.json"
    if args.pyblmm_only and previous.exists():
        old = json.loads(previous.read_text())
        for key in (
            "ours",
            "lme4",
            "lme4_values",
            "agreement_ours_lme4",
            "read_once_nibabel",
            "machine",
            "peak",
        ):
            if key in old:
                result[key] = old[key]
        result["pyblmm_rerun_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        ours = result["ours"]
        if ours.get("timed_out") and "timeout_extrapolation" not in ours:
            ours["timeout_extrapolation"] = extrapolate_timeout(
                work / "ours", ours, args.cores
            )
    else:
        ours = run_workflow(files, work, args.cores, args.timeout)
    result["ours"] = ours
    if ours["returncode"] == 0:
        ours["voxels_per_s"] = files.n_voxels / ours["wall_s"]
        ours["voxels_per_s_per_core"] = ours["voxels_per_s"] / args.cores
    print(
        f"[{preset.name}] ours: rc {ours['returncode']}, {ours['wall_s']:.1f} s",
        flush=True,
    )
    if args.pyblmm_only:
        args.no_lme4 = True

    pb: dict = {"skipped": True}
    if args.no_pyblmm or not (PYBLMM_BIN / "blmm").exists():
        pb["note"] = (
            "not run (--no-pyblmm or benchmarks/.venv-pyblmm missing: bash benchmarks/setup_pyblmm.sh)"
        )
    elif preset.name.startswith("cohort") and not args.pyblmm_full:
        pb = run_pyblmm_batches(files, work, k=4)
        pb["note"] = "a full run would take about an hour on this machine"
    elif preset.name in ("large", "ukb") and not args.pyblmm_full:
        pb = run_pyblmm_subsample(
            files, work, fraction=0.1 if preset.name == "large" else 0.05
        )
        pb["note"] = (
            "a full run would exceed the 10-minute limit per run on this shared machine"
        )
    else:
        pb = run_pyblmm(files, work)
    result["pyblmm"] = pb
    pb_wall = pb.get(
        "wall_s_extrapolated", pb.get("wall_s") if pb.get("returncode") == 0 else None
    )
    if pb_wall and ours.get("timed_out"):
        result["speedup_end_to_end_projected"] = (
            pb_wall / ours["timeout_extrapolation"]["wall_s_projected"]
        )
    if pb.get("wall_s_lower_bound") and ours["returncode"] == 0:
        result["speedup_end_to_end_at_least"] = (
            pb["wall_s_lower_bound"] / ours["wall_s"]
        )
    if pb_wall and ours["returncode"] == 0:
        result["speedup_end_to_end"] = pb_wall / ours["wall_s"]
        pb["voxels_per_s"] = files.n_voxels / pb_wall
        pb["voxels_per_s_per_core"] = pb[
            "voxels_per_s"
        ]  # one dask worker with one thread
    print(f"[{preset.name}] pyblmm: {pb_wall}", flush=True)

    voxels = sample_voxels(files, preset, N_LME4_VOXELS)
    if args.pyblmm_only:
        pass
    elif not args.no_lme4 and shutil.which("Rscript"):
        lm = run_lme4(files, preset, work, voxels)
        result["lme4"] = {k: v for k, v in lm.items() if k != "table"}
        if "table" in lm:
            result["lme4"]["voxels_per_s"] = 1 / lm["fit_seconds_per_voxel"]
            result["lme4"]["wall_s_projected_all_voxels"] = (
                lm["fit_seconds_per_voxel"] * files.n_voxels
            )
            if ours["returncode"] == 0:
                result["agreement_ours_lme4"] = agreement_lme4(
                    Path(ours["maps"]), lm, voxels
                )
            result["lme4_values"] = lm["table"]
    if ours["returncode"] == 0 and "maps" in pb:
        if pb.get("extrapolated"):
            sub = np.asarray(nib.load(pb["voxel_subsample"]).dataobj) > 0
            result["agreement_ours_pyblmm"] = agreement_pyblmm(
                Path(ours["maps"]), Path(pb["maps"]), files, np.flatnonzero(sub)
            )
        elif pb.get("returncode") == 0:
            result["agreement_ours_pyblmm"] = agreement_pyblmm(
                Path(ours["maps"]), Path(pb["maps"]), files
            )
    out = HERE / "results" / f"{preset.name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"[{preset.name}] wrote {out}", flush=True)
    subprocess.run([sys.executable, str(HERE / "plot.py")], check=False)


if __name__ == "__main__":
    main()
