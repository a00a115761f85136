"""Engine throughput per model structure, side by side with pyblmm 0.1.1 (issue 3, item 6).

    python benchmarks/engine_speed.py [--voxels-only] [--no-pyblmm] [--out FILE]

For each structure (one factor random intercept; one factor intercept + slope; two
crossed factors subject x site) it writes a seeded NIfTI study without partial masks
(every voxel shares the design, so only estimation differs), then on the same images:

* ours: reads the images with nibabel, forms the product matrices, and times
  ``fit`` (pSFS, REML) and ``infer`` (2 T contrasts, Satterthwaite df) with BLAS and
  numba pinned to one thread, by the route the workflow takes (the compiled kernels;
  grouped statistics for the random intercept), and again by the numpy reference
  path (``ours_numpy``: the engine before the kernels) and, for the intercept, the
  kernels on one block per level (``ours_numba_levels``);
* for the slope structure, the cost of boundary fits: new data on the same design,
  half of the voxels without a random slope, iterations and CPU time per voxel of
  the fits that end on the boundary against the interior ones (``boundary``);
* pyblmm 0.1.1: its stages in one process (pyblmm_stages.py, BLAS on one thread), of
  which the ``results`` stage is its estimation + inference.

It reports voxels per second per core, iterations, the flop count per voxel and
iteration of the engine (dominant terms, counted from blmm_scripts/likelihood.py,
_linalg.py and estimation.py; see ``flops_per_iteration``), the achieved flop rate,
and the machine's single-core peak (a large dgemm) and memory bandwidth, so the
distance to the machine's limit is visible.  Results go to
benchmarks/results/engine_speed.json.
"""

from __future__ import annotations

import os

# Pin BLAS, OpenMP and numba to one thread before numpy is imported (reported in
# the JSON).
from blmm_scripts.threads import THREAD_VARIABLES as THREAD_VARS
from blmm_scripts.threads import pin_threads

pin_threads(1)

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from blmm_scripts.estimation import fit  # noqa: E402
from blmm_scripts.grouped import (  # noqa: E402
    batch_groups,
    concat_groups,
    image_order,
    max_level_size,
    pseudo_products,
)
from blmm_scripts.inference import infer  # noqa: E402
from blmm_scripts.likelihood import numpy_engine  # noqa: E402
from blmm_scripts.products import design_products  # noqa: E402
from blmm_scripts.structure import Factor, Products, RandomEffects, build_Z  # noqa: E402

from machine import machine_info, measure_peak  # noqa: E402
from studies import CONTRASTS, Preset, write_study  # noqa: E402

PYBLMM = HERE / ".venv-pyblmm" / "bin" / "python"

#: Structures at realistic sizes: n = 1000 images, p = 4.  The crossed design uses
#: 200 images (50 subjects x 8 sites, q = 58) so that the dense q x q path of older
#: engines (O(q^3) per voxel and iteration) stays measurable side by side.
STRUCTURES = {
    "intercept": Preset(
        "eng-intercept",
        500,
        2,
        (21, 21, 21),
        "intercept",
        partial_fraction=0.0,
        note="1 factor, random intercept: 500 subjects x 2 visits",
    ),
    "slope": Preset(
        "eng-slope",
        250,
        4,
        (21, 21, 21),
        "slope",
        partial_fraction=0.0,
        note="1 factor, random intercept + slope: 250 subjects x 4 visits",
    ),
    "crossed": Preset(
        "eng-crossed",
        50,
        4,
        (21, 21, 21),
        "crossed",
        n_sites=8,
        partial_fraction=0.0,
        note="2 crossed factors, random intercepts: 50 subjects x 8 sites, 200 images",
    ),
}


def flops_per_iteration(
    levels: tuple[int, ...], raneffs: tuple[int, ...], p: int, bordered: bool = False
) -> dict:
    """Dominant flops (2 per multiply-add) of one pSFS REML iteration at one voxel.

    One iteration = profile at the current D + curvature and scoring step + profile at
    the new D (estimation.fit).  Lower-order terms (O(l) scalar operations, the
    eigh of q0 x q0 blocks, O(p^3)) are left out.

    One factor, l levels, q0 effects (likelihood.profile / _linalg.woodbury /
    likelihood.curvature, block layout):
      profile  P = 8 l q0^3 (M = I + Λ Z'Z Λ, G = Λ M^-1 Λ; 4 l for q0 = 1)
                 + 2 l q0^2 p (G Z'X) + 2 l q0 p^2 (X'Z G Z'X) + 2 l q0^2 + 2 l q0 p + 2 l q0
      step     C = 4 l q0^3 (Z'V^-1 Z blocks) + 4 l q0^2 p (F, F_j H F_j') + 2 l q0 p^2 (H F')
                 + 6 l q0^4 (three Σ_j R_j ⊗ R_j terms) + 2 l q0^2 p^2 (Σ_j F_j ⊗ F_j)
                 + 2 l q0 p + 4 l q0^2 (s, Σ s s') + 2 q0^2 p^3 + 2 q0^4 p^2
      iteration = 2 P + C
    Several factors, bordered layout (RandomEffects.bordered: the first factor's
    blocks plus a dense border of width s = Σ_{k>1} l_k q_k, m = s + p): see the
    terms in the code below, dominated by 6 l q0^2 m^2 + 6 l q0 s^2.
    Several factors, q = Σ l_k q_k (dense layout):
      profile  P = 4 q^3 (Λ Z'Z Λ) + q^3/3 (Cholesky) + 2 q^3 (inv of the factor)
                 + 2 q^3 (L^-T L^-1) + 4 q^3 (Λ M^-1 Λ) + 2 q^2 p + 2 q p^2 + 2 q^2
      step     C = 4 q^3 (Z'V^-1 Z) + 2 q^2 p + 2 q p^2 + Σ_k 2 l_k^2 q_k^4 (trace terms)
      iteration = 2 P + C  ≈ 28.7 q^3
    """
    if len(levels) == 1:
        nl, q0 = levels[0], raneffs[0]
        wood = 8 * nl * q0**3 if q0 > 1 else 4 * nl
        P = (
            wood
            + 2 * nl * q0**2 * p
            + 2 * nl * q0 * p**2
            + 2 * nl * q0**2
            + 2 * nl * q0 * p
            + 2 * nl * q0
        )
        C = (
            4 * nl * q0**3
            + 4 * nl * q0**2 * p
            + 2 * nl * q0 * p**2
            + 6 * nl * q0**4
            + 2 * nl * q0**2 * p**2
            + 2 * nl * q0 * p
            + 4 * nl * q0**2
            + 2 * q0**2 * p**3
            + 2 * q0**4 * p**2
        )
        formula = "2P + C, P = 8 nl q0^3 + 2 nl q0^2 p + 2 nl q0 p^2 + ..., C = 6 nl q0^4 + 4 nl q0^3 + 2 nl q0^2 p^2 + ..."
    elif bordered:
        # First factor's nl q0 x q0 blocks plus a dense border of s columns (factors
        # 2..r): likelihood.BorderedCurvature, _linalg._woodbury_bordered.
        nl, q0 = levels[0], raneffs[0]
        s = sum(lk * qk for lk, qk in zip(levels[1:], raneffs[1:], strict=False))
        w, m = nl * q0, s + p
        wood = 4 * nl * q0**4 + 6 * nl * q0**2 * s + 4 * w * s**2 + 5 * s**3
        P = wood + (2 * nl * q0**2 + 4 * w * s) * (p + 1) + 2 * (w + s) * (p**2 + p + 1)
        C = (
            4 * nl * q0**3
            + 4 * nl * q0**2 * s
            + 6 * w * s**2
            + 2 * (2 * (w + s) * m**2 + 2 * w * m * s)  # W Q, R0s, Rss for both kinds
            + 6
            * nl
            * q0**2
            * m**2  # Σ_j W_j Q W_j', C_j, S (level sums of the low-rank part)
            + 6 * nl * q0**4
            + 2 * q0**2 * m**3
            + 2 * q0**4 * m**2
            + sum(
                2 * lk**2 * qk**4
                for lk, qk in zip(levels[1:], raneffs[1:], strict=False)
            )
        )
        formula = (
            "bordered: 2P + C, P = 4 nl q0^4 + 6 nl q0^2 s + 4 nl q0 s^2 + 5 s^3 + (2 nl q0^2 + 4 nl q0 s)(p+1) + ..., "
            "C = 6 nl q0^2 m^2 + 6 nl q0 s^2 + 4 (nl q0 + s) m^2 + ..., m = s + p, s = border width"
        )
    else:
        q = sum(lk * qk for lk, qk in zip(levels, raneffs, strict=False))
        P = (4 + 1 / 3 + 2 + 2 + 4) * q**3 + 2 * q**2 * p + 2 * q * p**2 + 2 * q**2
        C = (
            4 * q**3
            + 2 * q**2 * p
            + 2 * q * p**2
            + sum(2 * lk**2 * qk**4 for lk, qk in zip(levels, raneffs, strict=False))
        )
        formula = "2P + C ≈ 28.7 q^3 (dense q x q Woodbury, Cholesky, inverse)"
    return {
        "profile": float(P),
        "step": float(C),
        "iteration": float(2 * P + C),
        "formula": formula,
    }


def load_study(files) -> tuple:
    """Read the images once with nibabel; return Y (n, v), X, factors."""
    mask = np.asarray(nib.load(files.analysis_mask).dataobj) > 0
    paths = files.Y_files.read_text().split()
    t = time.perf_counter()
    Y = np.empty((len(paths), int(mask.sum())))
    for i, path in enumerate(paths):
        Y[i] = np.asarray(nib.load(path).dataobj, dtype=np.float64)[mask]
    read_s = time.perf_counter() - t
    X = np.loadtxt(files.X, delimiter=",", ndmin=2)
    factors = []
    for f in files.factors:
        labels = np.loadtxt(f["factor"], delimiter=",")
        design = np.loadtxt(f["design"], delimiter=",", ndmin=2)
        factors.append(Factor.from_labels(labels, design, f["name"]))
    return Y, X, factors, read_s


def grouped_products(Y, X, factors) -> tuple[Products, RandomEffects]:
    """Return the grouped products: the workflow's route for one random intercept.

    (statistics: auto) Levels of the same size are summed per voxel
    (blmm_scripts.grouped) and the engine fits G (p + 1) pseudo-levels instead of
    one per subject.
    """
    factor = factors[0]
    order = image_order(factor)
    missing = np.zeros(Y.shape, dtype=bool)
    part = batch_groups(
        X, factor, order, Y[order], missing[order], max_level_size(factor)
    )
    stats = concat_groups([part], X.shape[0], X.shape[1])
    return pseudo_products(stats, np.arange(Y.shape[1]), ring=False)


def our_engine(Y, X, factors, *, engine: str = "numba", route: str = "levels") -> dict:
    """Products, fit and infer on one core; timings and iteration counts.

    engine: "numba" (the compiled kernels, the default) or "numpy" (the reference
    path); route: "levels" (one block per level) or "grouped" (pseudo-levels).
    """
    t0 = time.perf_counter()
    if route == "grouped":
        pr, re = grouped_products(Y, X, factors)
    else:
        re = RandomEffects.of(factors)
        XtX, ZtX, ZtZ = design_products(X, factors)
        Z = build_Z(factors)
        v = Y.shape[1]
        pr = Products(
            XtX,
            ZtX,
            ZtZ,
            Y.T @ X,
            Y.T @ Z,
            np.einsum("iv,iv->v", Y, Y),
            np.full(v, float(Y.shape[0])),
        )
    products_s = time.perf_counter() - t0
    v = pr.n_voxels
    contrasts = [np.array(vec, float) for _, vec in CONTRASTS]
    with numpy_engine() if engine == "numpy" else nullcontext():
        # compiled code loaded and modules imported (as in a job's start), not timed
        warm = pr.take(np.arange(min(v, 8)))
        infer(warm, re, fit(warm, re), contrasts)
        w, c = time.perf_counter(), time.process_time()
        fitted = fit(pr, re, method="pSFS", reml=True)
        fit_wall, fit_cpu = time.perf_counter() - w, time.process_time() - c
        w, c = time.perf_counter(), time.process_time()
        infer(pr, re, fitted, contrasts)
        inf_wall, inf_cpu = time.perf_counter() - w, time.process_time() - c
    nit = fitted.nit
    return {
        # the dense layout (several factors, none the largest) has no kernel
        "engine": engine if re.one_factor or re.bordered else "numpy",
        "route": route,
        "n_voxels": v,
        "q": re.q,
        "levels": list(re.n_levels),
        "raneffs": list(re.n_raneffs),
        "bordered": bool(getattr(re, "bordered", False)),
        "products_s": products_s,
        "fit_wall_s": fit_wall,
        "fit_cpu_s": fit_cpu,
        "infer_wall_s": inf_wall,
        "infer_cpu_s": inf_cpu,
        "nit_mean": float(nit.mean()),
        "nit_median": float(np.median(nit)),
        "nit_max": int(nit.max()),
        "voxel_iterations": int(nit.sum()),
        "status": {
            str(s): int((fitted.status == s).sum()) for s in np.unique(fitted.status)
        },
        "beta_mean": fitted.beta.mean(0).tolist(),
        "llh": fitted.llh,
        "beta": fitted.beta,
    }


def boundary_cost(Y, X, factors, seed: int = 3) -> dict:
    """Return iterations and time per voxel of boundary fits against interior ones.

    The slope study's design with new data: every voxel has a random intercept,
    half of them no random slope (their fits end on a face of the PSD cone).
    """
    rng = np.random.default_rng(seed)
    factor = factors[0]
    re = RandomEffects.of(factors)
    Z = build_Z(factors)
    n, v = Y.shape
    sd = np.sqrt(2.0 * np.array([2.0, 0.5]))
    b = rng.standard_normal((factor.n_levels, 2, v)) * sd[None, :, None]
    b[:, 1, : v // 2] = 0.0
    Yb = X @ rng.normal(size=(X.shape[1], v)) + Z @ b.reshape(-1, v) + 100.0
    Yb = Yb + rng.normal(0.0, np.sqrt(2.0), (n, v))
    XtX, ZtX, ZtZ = design_products(X, factors)
    pr = Products(
        XtX, ZtX, ZtZ, Yb.T @ X, Yb.T @ Z, (Yb**2).sum(0), np.full(v, float(n))
    )
    fitted = fit(pr, re)
    eig = np.linalg.eigvalsh(fitted.D[0])
    face = eig[:, 0] < 1e-8 * eig[:, 1]
    out = {"n_voxels": v, "face_voxels": int(face.sum())}
    for name, where in (("face", face), ("interior", ~face)):
        idx = np.flatnonzero(where)
        c = time.process_time()
        part = fit(pr.take(idx), re)
        cpu = time.process_time() - c
        out[name] = {
            "nit_mean": float(part.nit.mean()),
            "nit_max": int(part.nit.max()),
            "cpu_s_per_voxel": cpu / idx.size,
        }
    out["face_over_interior_time"] = (
        out["face"]["cpu_s_per_voxel"] / out["interior"]["cpu_s_per_voxel"]
    )
    out["face_over_interior_iterations"] = (
        out["face"]["nit_mean"] / out["interior"]["nit_mean"]
    )
    return out


def pyblmm_stages(files, workdir: Path) -> dict:
    """Run pyblmm's stages in one process on the study; return its timings."""
    from studies import blmm_config, write_config

    cfg = write_config(
        blmm_config(files, workdir / "pyblmm_out", pyblmm=True), workdir / "pyblmm.yml"
    )
    env = os.environ.copy()
    w = time.perf_counter()
    proc = subprocess.run(
        [str(PYBLMM), str(HERE / "pyblmm_stages.py"), str(cfg)],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - w
    if proc.returncode:
        return {"error": proc.stderr[-2000:], "wall_s": wall}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-pyblmm", action="store_true")
    ap.add_argument("--structures", nargs="*", default=list(STRUCTURES))
    ap.add_argument("--work", default="/tmp/blmm_bench/engine")
    ap.add_argument("--out", default=str(HERE / "results" / "engine_speed.json"))
    args = ap.parse_args()
    work = Path(args.work)
    result = {
        "machine": machine_info(),
        "peak": measure_peak(),
        "threads": {v: os.environ[v] for v in THREAD_VARS},
        "structures": {},
    }
    print(
        f"1-core dgemm peak {result['peak']['dgemm_gflops']:.1f} GFLOP/s, "
        f"stream {result['peak']['stream_gbs']:.1f} GB/s"
    )
    for name in args.structures:
        preset = STRUCTURES[name]
        files = write_study(preset, work / name / "study")
        Y, X, factors, read_s = load_study(files)
        grouped = name == "intercept"  # the workflow's route (statistics: auto)
        ours = our_engine(Y, X, factors, route="grouped" if grouped else "levels")
        others = {"numpy": our_engine(Y, X, factors, engine="numpy")}
        if grouped:
            others["numba_levels"] = our_engine(Y, X, factors)
        fl = flops_per_iteration(
            tuple(ours["levels"]), tuple(ours["raneffs"]), X.shape[1], ours["bordered"]
        )
        v = ours["n_voxels"]
        row = {
            "preset": preset.note,
            "n_images": Y.shape[0],
            "p": X.shape[1],
            "read_images_s": read_s,
            "ours": {k: val for k, val in ours.items() if k not in ("llh", "beta")},
            "flops_per_voxel_iteration": fl,
        }
        for key, run in others.items():
            row[f"ours_{key}"] = {
                k: val for k, val in run.items() if k not in ("llh", "beta")
            }
            row[f"ours_{key}"]["llh_max_abs_diff_to_ours"] = float(
                np.nanmax(np.abs(run["llh"] - ours["llh"]))
            )
        if name == "slope":
            row["boundary"] = boundary_cost(Y, X, factors)
        for key in ("ours", *(f"ours_{k}" for k in others)):
            o = row[key]
            flk = flops_per_iteration(
                tuple(o["levels"]), tuple(o["raneffs"]), X.shape[1], o["bordered"]
            )
            o["flops_per_voxel_iteration"] = flk["iteration"]
            o["fit_infer_voxels_per_s_per_core"] = v / (
                o["fit_wall_s"] + o["infer_wall_s"]
            )
            o["fit_infer_voxels_per_cpu_s"] = v / (o["fit_cpu_s"] + o["infer_cpu_s"])
            o["fit_gflops"] = (
                flk["iteration"] * o["voxel_iterations"] / o["fit_cpu_s"] / 1e9
            )
            o["fraction_of_dgemm_peak"] = (
                o["fit_gflops"] / result["peak"]["dgemm_gflops"]
            )
        o = row["ours"]
        if not args.no_pyblmm and PYBLMM.exists():
            pb = pyblmm_stages(files, work / name)
            row["pyblmm"] = pb
            if "stages" in pb:
                res = pb["stages"]["results"]
                pb["results_voxels_per_s_per_core"] = v / res["wall_s"]
                pb["results_voxels_per_cpu_s"] = v / res["cpu_s"]
                row["speedup_wall"] = (
                    o["fit_infer_voxels_per_s_per_core"]
                    / pb["results_voxels_per_s_per_core"]
                )
                row["speedup_cpu"] = (
                    o["fit_infer_voxels_per_cpu_s"] / pb["results_voxels_per_cpu_s"]
                )
                out_dir = work / name / "pyblmm_out"
                pmask = np.asarray(nib.load(files.analysis_mask).dataobj) > 0
                pbeta = np.asarray(nib.load(out_dir / "blmm_vox_beta.nii").dataobj)[
                    pmask
                ]
                pllh = np.asarray(
                    nib.load(out_dir / "blmm_vox_llh.nii").dataobj
                ).reshape(pmask.shape)[pmask]
                row["agreement_pyblmm"] = {
                    "max_abs_beta_diff": float(np.nanmax(np.abs(pbeta - ours["beta"]))),
                    "llh_ours_minus_pyblmm_max": float(np.nanmax(ours["llh"] - pllh)),
                    "llh_ours_minus_pyblmm_min": float(np.nanmin(ours["llh"] - pllh)),
                    "note": "pyblmm writes maps in the images' dtype (float32)",
                }
        result["structures"][name] = row
        print(
            json.dumps(
                {
                    name: {
                        "voxels": v,
                        "nit_mean": o["nit_mean"],
                        "fit_s": round(o["fit_wall_s"], 2),
                        "infer_s": round(o["infer_wall_s"], 2),
                        "vox/s/core": round(o["fit_infer_voxels_per_s_per_core"]),
                        "flops/vox/it": fl["iteration"],
                        "GFLOP/s": round(o["fit_gflops"], 3),
                        "pyblmm results s": row.get("pyblmm", {})
                        .get("stages", {})
                        .get("results", {})
                        .get("wall_s"),
                        "speedup_cpu": row.get("speedup_cpu"),
                    }
                }
            ),
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
