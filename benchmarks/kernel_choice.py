"""numba or JAX for the engine's per-voxel kernels: the same sums, timed side by side.

    python benchmarks/kernel_choice.py [--out FILE]

For the one-factor structures of ``engine_speed.py`` (random intercept: 500 levels;
intercept + slope: 250 levels of 2 x 2 blocks) it times, on one thread and the same
products, the two kernels the engine calls every iteration:

* the profile sums (log|V|, X'V^-1 X, X'V^-1 Y, Y'V^-1 Y), and
* the level sums of scores and informations (``kernels.curvature_sums``),

by numba (``blmm_scripts.kernels``, the engine's), by JAX (``jax.jit`` of a
``jax.vmap`` over voxels, float64, written with the same formulas over a voxel's
levels) and by the numpy reference path (``likelihood.profile`` and
``likelihood.curvature`` with ``numpy_engine``).  It checks that the three agree and
reports each one's compile time and time per call.  Results go to
benchmarks/results/kernel_choice.json with the commit.
"""

from __future__ import annotations

import os

from blmm_scripts.threads import pin_threads

pin_threads(1)
os.environ["XLA_FLAGS"] = (
    "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ["JAX_ENABLE_X64"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from blmm_scripts import kernels  # noqa: E402
from blmm_scripts._linalg import psd_sqrt  # noqa: E402
from blmm_scripts.likelihood import (  # noqa: E402
    Weight,
    _kernel_inputs,
    curvature,
    numpy_engine,
    profile,
)
from blmm_scripts.products import design_products  # noqa: E402
from blmm_scripts.structure import Products, RandomEffects, build_Z  # noqa: E402

from engine_speed import STRUCTURES, load_study  # noqa: E402
from machine import machine_info  # noqa: E402
from studies import write_study  # noqa: E402

REPEATS = 5


def _voxel_profile(A, ZtX, ZtY, Lam, w, XtX, XtY, YtY):
    """One voxel's profile sums in JAX: A (l, k, k), ZtX (l, k, p), ZtY (l, k)."""
    k = Lam.shape[-1]
    M = jnp.eye(k) + Lam @ A @ Lam  # (l, k, k)
    Minv = jnp.linalg.inv(M)
    logdet = jnp.sum(w * jnp.linalg.slogdet(M)[1])
    G = Lam @ Minv @ Lam
    GX = G @ ZtX
    gy = jnp.einsum("jab,jb->ja", G, ZtY)
    XtViX = XtX - jnp.einsum("jap,jaq->pq", ZtX, GX)
    XtViY = XtY - jnp.einsum("jap,ja->p", ZtX, gy)
    YtViY = YtY - jnp.sum(ZtY * gy)
    return logdet, XtViX, XtViY, YtViY


def _voxel_curvature(A, ZtX, ZtY, Lam, w, H, beta):
    """One voxel's level sums of scores and informations in JAX (kernels' layout)."""
    k = Lam.shape[-1]
    M = jnp.eye(k) + Lam @ A @ Lam
    G = Lam @ jnp.linalg.inv(M) @ Lam
    AG = A @ G
    Bv = A - AG @ A
    r = ZtY - ZtX @ beta
    s = r - jnp.einsum("jab,jb->ja", AG, r)
    F = ZtX - AG @ ZtX
    C = jnp.einsum("jap,pq,jbq->jab", F, H, F)
    return (
        jnp.einsum("ja,jb->ab", s, s),
        jnp.einsum("j,jab->ab", w, Bv),
        C.sum(0),
        jnp.einsum("j,jab,jcd->abcd", w, Bv, Bv),
        jnp.einsum("jab,jcd->abcd", Bv, C) + jnp.einsum("jab,jcd->abcd", C, Bv),
        jnp.einsum("jam,jbn->ambn", F, F),
        jnp.einsum("ja,jb,jcd->abcd", s, s, Bv),
        jnp.einsum("ja,jbm->abm", s, F),
    )


def jax_kernels(n_levels: int, k: int):
    """Return jitted profile and curvature sums over voxels (shared design)."""
    profile_j = jax.jit(
        jax.vmap(_voxel_profile, in_axes=(None, None, 0, 0, None, None, 0, 0))
    )
    curvature_j = jax.jit(
        jax.vmap(_voxel_curvature, in_axes=(None, None, 0, 0, None, 0, 0))
    )

    def per_level(A, ZtX, ZtY, Lam, w):
        """Return the kernels' shared arguments with the level axis JAX takes."""
        v, p = ZtY.shape[0], ZtX.shape[-1]
        return (
            A[0],
            ZtX[0].reshape(n_levels, k, p),
            ZtY.reshape(v, n_levels, k),
            Lam,
            w[0],
        )

    def run_profile(A, ZtX, ZtY, Lam, w, XtX, XtY, YtY):
        return profile_j(*per_level(A, ZtX, ZtY, Lam, w), XtX[0], XtY, YtY)

    def run_curvature(A, ZtX, ZtY, Lam, w, H, beta):
        return curvature_j(*per_level(A, ZtX, ZtY, Lam, w), H, beta)

    return run_profile, run_curvature


def timed(fn, *args) -> tuple[float, float, tuple]:
    """Return (first call incl. compile, best of REPEATS, result) in seconds."""

    def call():
        out = fn(*args)
        return tuple(np.asarray(jax.block_until_ready(o)) for o in out)

    t = time.perf_counter()
    out = call()
    first = time.perf_counter() - t
    best = np.inf
    for _ in range(REPEATS):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
    return first, best, out


def measure(name: str, folder: Path) -> dict:
    """Time the kernels of one structure by numba, JAX and numpy."""
    files = write_study(STRUCTURES[name], folder / name)
    Y, X, factors, _ = load_study(files)
    re = RandomEffects.of(factors)
    XtX, ZtX, ZtZ = design_products(X, factors)
    Z = build_Z(factors)
    v = Y.shape[1]
    pr = Products(
        XtX, ZtX, ZtZ, Y.T @ X, Y.T @ Z, np.einsum("iv,iv->v", Y, Y), np.full(v, 1.0)
    )
    k, n_levels = re.n_raneffs[0], re.n_levels[0]
    rng = np.random.default_rng(1)
    B = rng.normal(size=(v, k, k))
    lam = psd_sqrt(B @ B.swapaxes(-1, -2))[1]
    args = _kernel_inputs(pr, re, lam)
    design = (np.ascontiguousarray(pr.XtX), pr.XtY, pr.YtY)
    prof = profile(pr, re, [lam], True)
    extra = (np.ascontiguousarray(prof.H), np.ascontiguousarray(prof.beta))
    run_profile, run_curvature = jax_kernels(n_levels, k)
    out = {"levels": n_levels, "raneffs": k, "n_voxels": v}
    results = {}
    for engine, fns in (
        ("numba", (kernels.profile_sums, kernels.curvature_sums)),
        ("jax", (run_profile, run_curvature)),
    ):
        p_first, p_best, p_out = timed(fns[0], *args, *design)
        c_first, c_best, c_out = timed(fns[1], *args, *extra)
        results[engine] = (p_out, c_out)
        out[engine] = {
            "profile_first_call_s": p_first,
            "profile_s": p_best,
            "curvature_first_call_s": c_first,
            "curvature_s": c_best,
            "ns_per_level": 1e9 * (p_best + c_best) / (v * n_levels),
        }
    agree = {}
    names = ("logdet", "XtViX", "XtViY", "YtViY")
    for i, nm in enumerate(names):
        a, b = results["numba"][0][i], results["jax"][0][i]
        agree[nm] = float(np.abs(a - b).max() / np.abs(b).max())
    for i, nm in enumerate(("ss", "Bw", "C", "BwBv", "BC", "FF", "ssBv", "sF")):
        a, b = results["numba"][1][i], results["jax"][1][i]
        agree[nm] = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))
    out["numba_vs_jax_max_scaled_difference"] = agree
    with numpy_engine():
        t = time.perf_counter()
        ref = profile(pr, re, [lam], True)
        out["numpy"] = {"profile_s": time.perf_counter() - t}
        t = time.perf_counter()
        c = curvature(ref)
        for weight in Weight:
            c.diag_sum(0, weight)
            c.trace_term(0, 0, weight)
        c.data_term(0, 0)
        out["numpy"]["curvature_s"] = time.perf_counter() - t
    out["numba_vs_numpy_XtViX"] = float(
        np.abs(results["numba"][0][1] - ref.XtViX).max() / np.abs(ref.XtViX).max()
    )
    return out


def main() -> None:
    """Measure every one-factor structure and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results" / "kernel_choice.json"))
    ap.add_argument("--studies", default="/tmp/blmm_bench/engine")
    args = ap.parse_args()
    info = machine_info()
    info["versions"]["numba"] = __import__("numba").__version__
    info["versions"]["jax"] = jax.__version__
    result = {"machine": info, "structures": {}}
    for name in ("intercept", "slope"):
        result["structures"][name] = measure(name, Path(args.studies))
        print(name, json.dumps(result["structures"][name], indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
