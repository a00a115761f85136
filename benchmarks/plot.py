"""Plot wall time against images and against voxels from every benchmarks/results/<preset>.json.

python benchmarks/plot.py   ->  benchmarks/results/benchmarks.png
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
PRESET_ORDER = ["small", "crossed", "large", "ukb"]


def load() -> list[dict]:
    out = []
    for name in PRESET_ORDER:
        path = HERE / "results" / f"{name}.json"
        if path.exists():
            out.append(json.loads(path.read_text()))
    return out


def points(results: list[dict]) -> dict[str, list[tuple]]:
    """Per tool: (images, voxels, seconds, preset, measured?)."""
    series: dict[str, list[tuple]] = {
        "this workflow": [],
        "pyblmm 0.1.1": [],
        "lme4 loop (projected)": [],
        "read images once (nibabel)": [],
    }
    for r in results:
        n, v, name = r["study"]["n_images"], r["study"]["n_voxels"], r["preset"]
        o = r.get("ours", {})
        if o.get("returncode") == 0:
            series["this workflow"].append((n, v, o["wall_s"], name, True))
        elif "timeout_extrapolation" in o:
            series["this workflow"].append(
                (n, v, o["timeout_extrapolation"]["wall_s_projected"], name, False)
            )
        pb = r.get("pyblmm", {})
        if pb.get("returncode") == 0:
            series["pyblmm 0.1.1"].append((n, v, pb["wall_s"], name, True))
        elif "wall_s_extrapolated" in pb:
            series["pyblmm 0.1.1"].append(
                (n, v, pb["wall_s_extrapolated"], name, False)
            )
        lm = r.get("lme4", {})
        if "wall_s_projected_all_voxels" in lm:
            series["lme4 loop (projected)"].append(
                (n, v, lm["wall_s_projected_all_voxels"], name, False)
            )
        rd = r.get("read_once_nibabel", {})
        if "images_and_masks_s" in rd:
            series["read images once (nibabel)"].append(
                (n, v, rd["images_and_masks_s"], name, True)
            )
    return series


def main() -> None:
    results = load()
    if not results:
        return
    series = points(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = {
        "this workflow": "C0o-",
        "pyblmm 0.1.1": "C3s-",
        "lme4 loop (projected)": "C2^:",
        "read images once (nibabel)": "C7d:",
    }
    for ax, col, xlabel in ((axes[0], 0, "images"), (axes[1], 1, "voxels")):
        for label, pts in series.items():
            if not pts:
                continue
            pts = sorted(pts, key=lambda p: (p[col], p[2]))
            xs, ys = [p[col] for p in pts], [p[2] for p in pts]
            ax.plot(xs, ys, styles[label], label=label, alpha=0.8)
            for p in pts:
                if not p[4]:
                    ax.plot(p[col], p[2], styles[label][:3], mfc="white")
                ax.annotate(
                    p[3],
                    (p[col], p[2]),
                    textcoords="offset points",
                    xytext=(4, 3),
                    fontsize=7,
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("wall time (s)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    m = results[-1]["machine"]
    fig.suptitle(
        f"BLMM end-to-end wall time ({m['cores']} cores, {m['cpu']}); hollow = extrapolated or projected",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(HERE / "results" / "benchmarks.png", dpi=110)


if __name__ == "__main__":
    main()
