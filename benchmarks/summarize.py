"""Print the Markdown tables of the README's Performance section from benchmarks/results/.

python benchmarks/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRESETS = ["small", "crossed", "large", "ukb", "cohort", "cohort_big"]
TARGET = {"small": 10, "crossed": 10, "large": 20}
STAGES = ["setup", "batch", "concat", "estimate", "inference", "maps"]


def fmt(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}"


def stages_of(ours: dict) -> dict:
    """Per-stage wall, CPU and max RSS (older result files kept them in jobs_sampled)."""
    st = ours.get("stages", {})
    if not st or any("cpu_s" not in v for v in st.values()):
        st = ours.get("jobs_sampled", {})
    return st


def main() -> None:
    res = {
        p: json.loads((HERE / "results" / f"{p}.json").read_text())
        for p in PRESETS
        if (HERE / "results" / f"{p}.json").exists()
    }
    print(
        "| preset | images | voxels | model | this workflow wall / CPU (s) | pyblmm 0.1.1 wall (s) "
        "| speed-up (target) | peak RSS of a job (MB) | lme4 loop (s/voxel) |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for p, r in res.items():
        s, o, pb = r["study"], r["ours"], r.get("pyblmm", {})
        model = {
            "slope": "1 factor, int. + slope",
            "intercept": "1 factor, intercept",
            "crossed": "subject × site",
        }[s["structure"]]
        if pb.get("returncode") == 0:
            pbw = fmt(pb["wall_s"])
        elif "wall_s_extrapolated" in pb:
            pbw = f"{fmt(pb['wall_s_extrapolated'], 0)} (extrapolated)"
        elif "wall_s_lower_bound" in pb:
            pbw = f"≥ {fmt(pb['wall_s_lower_bound'], 0)} (batch stage alone)"
        else:
            pbw = "skipped"
        sp = r.get("speedup_end_to_end", r.get("speedup_end_to_end_projected"))
        tgt = TARGET.get(p)
        sp_txt = (
            "–"
            if sp is None
            else f"{sp:.1f}×"
            + (" projected" if "speedup_end_to_end" not in r else "")
            + (f" (≥{tgt}×: {'met' if sp >= tgt else 'missed'})" if tgt else "")
        )
        if sp is None and "speedup_end_to_end_at_least" in r:
            sp_txt = f"≥ {r['speedup_end_to_end_at_least']:.0f}×"
        ours_txt = f"{fmt(o['wall_s'])} / {fmt(o['cpu_s'])}"
        if o.get("timed_out"):
            ours_txt = (
                f"ended at {fmt(o['wall_s'], 0)} s (cap), {fmt(o['cpu_s'], 0)} s CPU; projected "
                f"{fmt(o['timeout_extrapolation']['wall_s_projected'], 0)} s"
            )
        jobs = [v.get("max_rss_mb", 0) for v in stages_of(o).values()]
        lm = r.get("lme4", {})
        print(
            f"| {p} | {fmt(s['n_images'])} | {fmt(s['n_voxels'])} | {model} | {ours_txt} | {pbw} | {sp_txt} "
            f"| {fmt(max(jobs, default=None), 0)} | {fmt(lm.get('fit_seconds_per_voxel'), 3)} |"
        )
    print()
    print(
        "Per stage (this workflow; wall and CPU summed over a stage's jobs, max RSS of its largest job):"
    )
    print()
    print(
        "| preset | " + " | ".join(STAGES) + " | read images + masks once (nibabel) |"
    )
    print("|---|" + "---:|" * (len(STAGES) + 1))
    for p, r in res.items():
        st = stages_of(r["ours"])
        cells = []
        for name in STAGES:
            v = st.get(name)
            cells.append(
                "–"
                if v is None
                else f"{v['jobs']}× {fmt(v['wall_s'])} / {fmt(v['cpu_s'])} s, {fmt(v['max_rss_mb'], 0)} MB"
            )
        rd = r.get("read_once_nibabel", {})
        print(
            f"| {p} | "
            + " | ".join(cells)
            + f" | {fmt(rd.get('images_and_masks_s'), 2)} s |"
        )
    print()
    print("Agreement at the sampled voxels (our maps are float32, like the images):")
    print()
    print(
        "| preset | vs lme4: llh ours − lme4 | β max rel. diff | Satterthwaite df max rel. diff "
        "| vs pyblmm: β max abs diff | llh ours − pyblmm (min, max) |"
    )
    print("|---|---|---:|---:|---:|---|")
    for p, r in res.items():
        a, b = r.get("agreement_ours_lme4", {}), r.get("agreement_ours_pyblmm", {})
        la = (
            (
                f"[{a['llh_ours_minus_lme4_min']:.1e}, {a['llh_ours_minus_lme4_max']:.1e}] "
                f"(float32 spacing {a['llh_float32_spacing_max']:.0e})"
            )
            if "llh_float32_spacing_max" in a
            else "–"
        )
        lb = (
            f"{b['llh_ours_minus_pyblmm_min']:.2g}, {b['llh_ours_minus_pyblmm_max']:.2g}"
            if "llh_ours_minus_pyblmm_min" in b
            else "–"
        )
        print(
            f"| {p} | {la} | {a.get('beta_max_rel_diff', float('nan')):.1e} "
            f"| {a.get('df_max_rel_diff', float('nan')):.1e} | {b.get('beta_max_abs_diff', float('nan')):.1e} | {lb} |"
        )
    eng = HERE / "results" / "engine_speed.json"
    if eng.exists():
        e = json.loads(eng.read_text())
        pk = e["peak"]
        print()
        print(
            f"Engine alone (engine_speed.py, BLAS on 1 thread; 1-core dgemm peak {pk['dgemm_gflops']:.1f} GFLOP/s, "
            f"stream {pk['stream_gbs']:.1f} GB/s):"
        )
        print()
        print(
            "| structure | route | images | levels × effects | voxels | iterations (mean) "
            "| flops / voxel / iteration | fit + infer (s) | voxels/s/core "
            "| achieved GFLOP/s (fit) | % of dgemm peak | numpy path: voxels/s/core "
            "| pyblmm results stage (s) | throughput ratio wall / CPU (target ≥100×) |"
        )
        print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, row in e["structures"].items():
            o, pb = row["ours"], row.get("pyblmm", {})
            lv = " + ".join(
                f"{a}×{b}" for a, b in zip(o["levels"], o["raneffs"], strict=False)
            )
            route = f"{o.get('engine', 'numpy')}, {o.get('route', 'levels')}"
            ref = row.get("ours_numpy", {})
            res_s = pb.get("stages", {}).get("results", {}).get("wall_s")
            ratio = (
                f"{row['speedup_wall']:.1f}× / {row['speedup_cpu']:.1f}× "
                f"({'met' if min(row['speedup_wall'], row['speedup_cpu']) >= 100 else 'missed'})"
                if "speedup_wall" in row
                else "–"
            )
            flops = o.get(
                "flops_per_voxel_iteration",
                row["flops_per_voxel_iteration"]["iteration"],
            )
            print(
                f"| {name} | {route} | {row['n_images']} | {lv} | {o['n_voxels']} | {o['nit_mean']:.1f} "
                f"| {flops:,.0f} "
                f"| {o['fit_wall_s'] + o['infer_wall_s']:.2f} | {o['fit_infer_voxels_per_s_per_core']:,.0f} "
                f"| {o['fit_gflops']:.2f} | {100 * o['fraction_of_dgemm_peak']:.1f}% "
                f"| {ref.get('fit_infer_voxels_per_s_per_core', float('nan')):,.0f} "
                f"| {fmt(res_s)} | {ratio} |"
            )
        for name, row in e["structures"].items():
            bd = row.get("boundary")
            if bd:
                print()
                print(
                    f"Boundary fits ({name}: {bd['face_voxels']} of {bd['n_voxels']} voxels "
                    f"end on a face of the PSD cone): iterations {bd['face']['nit_mean']:.1f} "
                    f"against {bd['interior']['nit_mean']:.1f} interior "
                    f"({bd['face_over_interior_iterations']:.2f}×), CPU per voxel "
                    f"{1e6 * bd['face']['cpu_s_per_voxel']:.0f} µs against "
                    f"{1e6 * bd['interior']['cpu_s_per_voxel']:.0f} µs "
                    f"({bd['face_over_interior_time']:.2f}×; target ≤ 2×)."
                )


if __name__ == "__main__":
    main()
