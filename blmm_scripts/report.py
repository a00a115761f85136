"""Figures and the run summary of an analysis, for Snakemake's HTML report.

Figures work for any affine (the example's images are tiny and not in MNI space):
orthogonal slices are drawn by nilearn in world coordinates, and the "glass brain" is
a maximum-intensity projection along each voxel axis drawn with matplotlib (nilearn's
``plot_glass_brain`` draws an MNI outline, meaningless elsewhere).  Every map is drawn
over the mask in mid-grey, the rest darker, with colormaps that hold no grey, white
or black.  Maps are thresholded on -log10 p; the threshold is a parameter and is
written on the figure and in the caption.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from blmm_scripts import io
from blmm_scripts.structure import Status

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunMaps:
    """The maps a run summary needs, on the image grid.

    Parameters
    ----------
    mask : ndarray of int, grid shape
        blmm_vox_mask: 1 where the model was fitted and kept.
    n : ndarray of int, grid shape
        blmm_vox_n: images present.
    status : ndarray of int, grid shape
        blmm_vox_status (see :class:`blmm_scripts.structure.Status`).
    nit : ndarray of int, grid shape
        blmm_vox_nit: iterations.
    analysis_mask : ndarray of bool, grid shape
        Voxels the analysis considered (the analysis_mask image, or every voxel).
    """

    mask: NDArray
    n: NDArray
    status: NDArray
    nit: NDArray
    analysis_mask: NDArray[np.bool_]


def run_summary(
    maps: RunMaps, n_images: int, settings: dict, timings: pd.DataFrame | None
) -> pd.DataFrame:
    """Return the run summary as a table of (section, item, value) rows.

    Parameters
    ----------
    maps : RunMaps
    n_images : int
    settings : dict
        The resolved config (inputs.yml): method, estimation, tol, maxnit, and for
        a formula analysis the model and its coefficients.
    timings : DataFrame or None
        From :func:`benchmark_table`; one row per rule.
    """
    kept = maps.mask != 0
    considered = maps.analysis_mask
    status = np.asarray(maps.status)
    nit = np.asarray(maps.nit)[kept]
    rows: list[tuple[str, str, object]] = [
        ("data", "images", n_images),
        ("data", "grid", "x".join(str(s) for s in maps.mask.shape)),
        ("voxels", "in the analysis mask", int(considered.sum())),
        ("voxels", "analysed (final mask)", int(kept.sum())),
        (
            "voxels",
            "inner (all images present)",
            int((kept & (maps.n == n_images)).sum()),
        ),
        (
            "voxels",
            "ring (some images missing)",
            int((kept & (maps.n < n_images)).sum()),
        ),
        (
            "dropped",
            "missingness rules",
            int((considered & (status == Status.OUTSIDE)).sum()),
        ),
    ]
    for reason in (Status.RANK_DEFICIENT, Status.NO_VARIANCE, Status.NOT_FINITE):
        rows.append(("dropped", reason.name.lower(), int((status == reason).sum())))
    rows += [
        ("convergence", "converged", int((status == Status.OK).sum())),
        ("convergence", "stopped at maxnit", int((status == Status.MAXNIT).sum())),
        ("convergence", "iterations, median", float(np.median(nit)) if nit.size else 0),
        ("convergence", "iterations, max", int(nit.max()) if nit.size else 0),
    ]
    if settings.get("model"):  # a formula analysis: the model and its coefficients
        rows.append(("settings", "model", settings["model"]))
        coefficients = settings.get("design", {}).get("coefficients", [])
        rows.append(("settings", "coefficients", ", ".join(coefficients)))
    for key in ("method", "estimation", "tol", "maxnit"):
        rows.append(("settings", key, settings.get(key)))
    if timings is not None and len(timings):
        for rule, t in timings.iterrows():
            rows.append(
                (
                    "time",
                    f"{rule} ({int(t['jobs'])} jobs)",
                    f"{t['s']:.1f} s, max RSS {t['max_rss']:.0f} MB",
                )
            )
    else:
        rows.append(("time", "benchmarks", "none found"))
    return pd.DataFrame(rows, columns=["section", "item", "value"])


def benchmark_table(
    paths: Sequence[Path], root: Path, skip: Sequence[str] = ()
) -> pd.DataFrame:
    """Sum Snakemake benchmark TSV files per rule.

    Parameters
    ----------
    paths : sequence of Path
        Benchmark files, ``<root>/<rule>/<anything>.tsv`` or ``<root>/<rule>.tsv``.
    root : Path
        Their common folder; the first path component below it names the rule.
    skip : sequence of str
        Rules left out (those that may run after the summary, so that its content
        does not depend on job order).

    Returns
    -------
    DataFrame indexed by rule
        ``jobs``, ``s`` (summed wall-clock seconds) and ``max_rss`` (MB, the
        largest of any job).
    """
    frames = []
    for path in paths:
        rel = Path(path).relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if rule in skip:
            continue
        df = pd.read_csv(path, sep="\t")
        frames.append(
            pd.DataFrame(
                {
                    "rule": rule,
                    "s": df["s"].astype(float),
                    "max_rss": pd.to_numeric(df["max_rss"], errors="coerce"),
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=["jobs", "s", "max_rss"])
    all_ = pd.concat(frames)
    return all_.groupby("rule").agg(
        jobs=("s", "size"), s=("s", "sum"), max_rss=("max_rss", "max")
    )


def summary_html(table: pd.DataFrame, title: str) -> str:
    """Return the summary table as a small standalone HTML page."""
    body = table.to_html(index=False, border=0, classes="summary")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif}}"
        "td,th{padding:2px 10px;text-align:left}</style></head>"
        f"<body><h2>{title}</h2>{body}</body></html>\n"
    )


# --------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------

#: Grey levels (0 black, 1 white) of the background every map is drawn over: the
#: voxels of the mask mid-grey, the rest darker.  The colormaps below hold no grey,
#: white or black, so every voxel shown stands out from both.
GREY_INSIDE = 0.6
GREY_OUTSIDE = 0.3


def _pyplot():
    """Return matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stat_colormaps():
    """Return the colormaps of thresholded statistic maps, (unsigned, signed).

    Unsigned (-log10 p, F): red to yellow.  Signed (T): blue to cyan below 0, red to
    yellow above 0, the middle never shown because the maps are thresholded.  The
    peak is yellow (cyan for a negative peak), not the white top of matplotlib's
    ``hot``, which vanished into a light background.
    """
    from matplotlib.colors import LinearSegmentedColormap

    unsigned = LinearSegmentedColormap.from_list("blmm_red_yellow", ["red", "yellow"])
    signed = LinearSegmentedColormap.from_list(
        "blmm_cyan_blue_red_yellow",
        [(0.0, "cyan"), (0.5, "blue"), (0.5, "red"), (1.0, "yellow")],
    )
    return unsigned, signed


def _mip(
    ax_row,
    data: NDArray,
    inside: NDArray[np.bool_],
    cmap,
    vmin: float,
    vmax: float,
    title: str,
):
    """Draw maximum-|value| projections along the three voxel axes (sign kept).

    Underneath, the projection of the mask in mid-grey, the rest darker.
    """
    for axis, ax in enumerate(ax_row):
        ax.imshow(
            np.where(inside.any(axis=axis), GREY_INSIDE, GREY_OUTSIDE).T,
            origin="lower",
            cmap="gray",
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
        )
        idx = np.abs(data).argmax(axis=axis)
        proj = np.take_along_axis(data, np.expand_dims(idx, axis), axis).squeeze(axis)
        proj = np.where(proj == 0, np.nan, proj)
        im = ax.imshow(
            proj.T,
            origin="lower",
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_title(f"{title}, projection along axis {'ijk'[axis]}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return im


def plot_contrast(
    stat: NDArray,
    lp: NDArray,
    mask: NDArray,
    affine: NDArray,
    threshold: float,
    stat_name: str,
    title: str,
    path: Path,
) -> int:
    """Write a figure of one contrast's statistic and -log10 p maps.

    Rows: the statistic (T or F) where -log10 p >= threshold, then -log10 p
    itself, thresholded the same way.  Each row: orthogonal slices through the peak
    (nilearn, in world coordinates) and maximum-intensity projections along the
    three voxel axes, both over the mask in mid-grey (the rest darker), coloured
    with :func:`stat_colormaps`.

    Returns
    -------
    int
        Number of voxels above the threshold.
    """
    import nibabel as nib
    from matplotlib.colors import ListedColormap
    from nilearn import plotting

    plt = _pyplot()
    unsigned, signed_cmap = stat_colormaps()
    inside = np.asarray(mask) != 0
    above = inside & (lp >= threshold)
    shown = {
        stat_name: np.where(above, stat, 0.0),
        "-log10 p": np.where(above, lp, 0.0),
    }
    # The mask 1, the rest 0, and 0 is also what resampling fills in beyond the grid
    # (an oblique affine): two colours, grey levels fixed (nilearn's stat-map
    # background would rescale and dim them).
    background = nib.Nifti1Image(inside.astype(np.float32), affine)
    background_cmap = ListedColormap([str(GREY_OUTSIDE), str(GREY_INSIDE)])
    fig = plt.figure(figsize=(13, 6.5))
    fig.suptitle(
        f"{title}: {int(above.sum())} of {int(inside.sum())} voxels with "
        f"-log10 p >= {threshold:g} (uncorrected)",
        fontsize=11,
    )
    for row, (name, data) in enumerate(shown.items()):
        top = 0.5 - 0.47 * row
        peak = np.unravel_index(np.abs(np.where(inside, data, 0)).argmax(), data.shape)
        vmax = float(np.abs(data).max()) or 1.0
        signed = name != "-log10 p" and stat_name == "T"
        cmap, vmin = (signed_cmap, -vmax) if signed else (unsigned, 0.0)
        # The background as an image of its own, the map as an overlay.
        display = plotting.plot_img(
            background,
            cut_coords=nib.affines.apply_affine(affine, peak),
            display_mode="ortho",
            figure=fig,
            axes=fig.add_axes([0.0, top, 0.5, 0.4]),
            title=name,
            annotate=True,
            draw_cross=False,
            black_bg=False,
            colorbar=False,
            resampling_interpolation="nearest",
            cmap=background_cmap,
            vmin=0.0,
            vmax=1.0,
        )
        display.add_overlay(
            nib.Nifti1Image(data.astype(np.float32), affine),
            threshold=1e-12,
            colorbar=True,
            resampling_interpolation="nearest",
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
        )
        axes = [fig.add_axes([0.52 + 0.16 * k, top, 0.15, 0.38]) for k in range(3)]
        _mip(axes, data, inside, cmap, vmin, vmax, name)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return int(above.sum())


def plot_mosaic(
    data: NDArray,
    title: str,
    path: Path,
    *,
    inside: NDArray[np.bool_] | None = None,
    labels: dict[int, str] | None = None,
    cmap: str = "viridis",
) -> None:
    """Write every axial slice (last voxel axis) of a 3-D map as a mosaic.

    Parameters
    ----------
    data : ndarray, grid shape
    inside : ndarray of bool, grid shape, optional
        The voxels drawn in colour (the analysis mask); the rest is dark grey and
        left out of the colour range.  Default: every voxel.
    labels : dict of int to str, optional
        For a map of codes (blmm_vox_status): a discrete colour per code, named
        in the legend.
    """
    plt = _pyplot()
    data = np.asarray(data)
    inside = np.ones(data.shape, bool) if inside is None else np.asarray(inside, bool)
    n_slices = data.shape[2]
    cols = min(n_slices, 8)
    rows = -(-n_slices // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.7 * cols + 1.5, 1.7 * rows + 0.6), squeeze=False
    )
    if labels is not None:
        codes = sorted(labels)
        cm = plt.get_cmap("tab10", len(codes))
        vmin, vmax = min(codes) - 0.5, max(codes) + 0.5
        cmap_obj = plt.matplotlib.colors.ListedColormap(
            [cm(i) for i in range(len(codes))]
        )
    else:
        values = data[inside]
        vmin, vmax = (
            (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        )
        cmap_obj, vmax = cmap, vmax if vmax > vmin else vmin + 1.0
    im = None
    for k, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if k < n_slices:
            # Voxels outside are masked, so the axes' dark grey shows through.
            ax.set_facecolor(str(GREY_OUTSIDE))
            im = ax.imshow(
                np.ma.masked_array(data[:, :, k], ~inside[:, :, k]).T,
                origin="lower",
                cmap=cmap_obj,
                vmin=vmin,
                vmax=vmax,
                interpolation="nearest",
            )
            ax.set_title(f"k = {k}", fontsize=7)
        else:
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    cbar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    if labels is not None:
        cbar.set_ticks(codes)
        cbar.set_ticklabels([f"{c} {labels[c]}" for c in codes])
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def contrast_volumes(contrasts: Sequence) -> dict[str, dict]:
    """Return, per contrast key c1, c2, ..., its name, statistic and map volume.

    T contrasts are the volumes of blmm_vox_conT / conTlp in config order, F
    contrasts those of blmm_vox_conF / conFlp.

    Parameters
    ----------
    contrasts : sequence of blmm_scripts.config.Contrast

    Returns
    -------
    dict
        ``{"c1": {"name", "stat", "volume", "title"}, ...}``; the title names the
        contrast and, for one written with coefficient names, what it tests
        (``c3 (age_vs_time: age - time), T contrast``).
    """
    out: dict[str, dict] = {}
    counts = {"T": 0, "F": 0}
    for i, c in enumerate(contrasts, start=1):
        stat = "F" if c.is_f else "T"
        name = c.name or f"c{i}"
        expression = getattr(c, "expression", None)
        if expression is not None:
            if not isinstance(expression, str):
                expression = "; ".join(expression)
            name = f"{name}: {expression}"
        out[f"c{i}"] = {
            "name": c.name or f"c{i}",
            "stat": stat,
            "volume": counts[stat],
            "title": f"c{i} ({name}), {stat} contrast",
        }
        counts[stat] += 1
    return out


def volume(data: NDArray, k: int) -> NDArray:
    """Return volume k of a map; a 3-D map (one volume, read squeezed) is volume 0."""
    if data.ndim == 3:
        if k != 0:
            raise ValueError(f"volume {k} requested from a single-volume map")
        return data
    return data[..., k]
