"""Report figures of surface and parcel studies (GIFTI, CIFTI-2, Y_table).

A contrast of surface data is drawn on the mesh of the ``surface_mesh`` key
(nilearn's ``plot_surf_stat_map``, lateral and medial views over a grey mesh), one
hemisphere per mesh: the GIFTI data's own, or CIFTI's CortexLeft and CortexRight
(its volume structures are counted in the title but not drawn).  Without a mesh,
and for the diagnostics maps, values are drawn against the vertex (or
grayordinate) index over the analysis mask in grey.  A parcel study's contrast
is a table of its parcels sorted by -log10 p (TSV, and the top of it as HTML)
and a bar chart of the strongest parcels with the threshold drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from blmm_scripts import io

#: Colour of the analysis mask that maps are drawn over against an index.
GREY = "#b0b0b0"
#: The parcels the bar chart shows (the table lists all).
TOP_PARCELS = 30


def _pyplot():
    """Return matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def one_volume(data: NDArray, k: int) -> NDArray:
    """Return volume k of a surface or parcel map ((n,) for a one-volume map)."""
    data = np.asarray(data)
    if data.ndim == 1:
        if k != 0:
            raise ValueError(f"volume {k} requested from a single-volume map")
        return data
    return data[:, k]


def read_mesh(path: Path) -> tuple[NDArray, NDArray]:
    """Return (coordinates (n, 3), triangles (t, 3)) of a GIFTI surface mesh.

    Raises
    ------
    ValueError
        If the file has no point set or no triangles.
    """
    import nibabel as nib

    img = nib.load(str(path))
    coords = img.agg_data("NIFTI_INTENT_POINTSET")
    faces = img.agg_data("NIFTI_INTENT_TRIANGLE")
    if coords is None or faces is None or not len(coords):
        raise ValueError(f"{path} is not a surface mesh (no points or no triangles)")
    return np.asarray(coords, np.float64), np.asarray(faces, np.int64)


def hemispheres(
    values: NDArray, reference: Path, meshes: Sequence[Path]
) -> list[tuple[str, Path, NDArray]]:
    """Return (name, mesh, values per mesh vertex) for each hemisphere to draw.

    GIFTI: the one mesh and the values as they are.  CIFTI: each cortex structure
    with a mesh (the first mesh for CortexLeft, the second for CortexRight), its
    grayordinates placed at their vertices, NaN at the others (the medial wall).

    Raises
    ------
    ValueError
        If a mesh has another number of vertices than its data.
    """
    values = np.asarray(values, np.float64)
    if io.kind_of(reference) == "gifti":
        pairs = [("surface", meshes[0], values)]
    else:
        import nibabel as nib

        models = nib.load(str(reference)).header.get_axis(1)
        order = {"CIFTI_STRUCTURE_CORTEX_LEFT": 0, "CIFTI_STRUCTURE_CORTEX_RIGHT": 1}
        pairs = []
        for name, where, bm in models.iter_structures():
            k = order.get(name)
            if k is None or k >= len(meshes):
                continue
            full = np.full(bm.nvertices[name], np.nan)
            full[bm.vertex] = values[where]
            label = name.removeprefix("CIFTI_STRUCTURE_").replace("_", " ").lower()
            pairs.append((label, meshes[k], full))
    for label, mesh, data in pairs:
        n = len(read_mesh(mesh)[0])
        if n != data.size:
            raise ValueError(
                f"surface_mesh {mesh} has {n} vertices, the {label} data {data.size}"
            )
    return pairs


def plot_surface_contrast(
    stat: NDArray,
    lp: NDArray,
    mask: NDArray,
    reference: Path,
    meshes: Sequence[Path],
    threshold: float,
    stat_name: str,
    title: str,
    path: Path,
) -> int:
    """Write a figure of one contrast of surface data: statistic and -log10 p.

    Rows: the statistic where -log10 p >= threshold, then -log10 p, each on every
    hemisphere's mesh (lateral and medial), or against the vertex index without a
    mesh.  Returns the number of vertices (grayordinates) above the threshold.
    """
    plt = _pyplot()
    inside = np.asarray(mask) != 0
    above = inside & (np.asarray(lp) >= threshold)
    shown = {
        stat_name: np.where(above, stat, np.nan),
        "-log10 p": np.where(above, lp, np.nan),
    }
    heading = (
        f"{title}: {int(above.sum())} of {int(inside.sum())} vertices with "
        f"-log10 p >= {threshold:g} (uncorrected)"
    )
    if not meshes:
        fig = _index_figure(shown, inside, stat_name, heading, plt)
    else:
        fig = _mesh_figure(shown, inside, reference, meshes, stat_name, heading, plt)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return int(above.sum())


def _colours(name: str, stat_name: str, data: NDArray) -> tuple:
    """Return (colormap, vmin, vmax) of a row, the volume figures' colours.

    -log10 p and F red to yellow (the peak), T also blue to cyan below 0
    (:func:`blmm_scripts.report.stat_colormaps`).
    """
    from blmm_scripts.report import stat_colormaps

    unsigned, signed = stat_colormaps()
    vmax = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
    vmax = vmax or 1.0
    if name != "-log10 p" and stat_name == "T":
        return signed, -vmax, vmax
    return unsigned, 0.0, vmax


def _index_figure(shown, inside, stat_name, heading, plt):
    """Return a figure of each row's values against the vertex index."""
    fig, axes = plt.subplots(len(shown), 1, figsize=(12, 6), squeeze=False)
    index = np.arange(inside.size)
    for ax, (name, data) in zip(axes[:, 0], shown.items(), strict=True):
        cmap, vmin, vmax = _colours(name, stat_name, data)
        low, high = 1.1 * vmin, 1.1 * vmax
        ax.bar(index, np.where(inside, high - low, 0.0), bottom=low, width=1.0,
               color=GREY, alpha=0.5)  # fmt: skip
        ax.set_ylim(low, high)
        ax.set_xlim(-0.5, inside.size - 0.5)
        good = np.isfinite(data)
        sc = ax.scatter(
            index[good], data[good], c=data[good], cmap=cmap, vmin=vmin, vmax=vmax,
            s=14, edgecolors="black", linewidths=0.3,
        )  # fmt: skip
        ax.set_ylabel(name)
        fig.colorbar(sc, ax=ax)
    axes[-1, 0].set_xlabel("vertex (grayordinate) index; grey: analysis mask")
    fig.suptitle(heading, fontsize=11)
    return fig


def _mesh_figure(shown, inside, reference, meshes, stat_name, heading, plt):
    """Return a figure of each row on every hemisphere's mesh, two views each."""
    from nilearn import plotting

    rows = {name: hemispheres(data, reference, meshes) for name, data in shown.items()}
    mask_hemis = hemispheres(inside.astype(np.float64), reference, meshes)
    n_cols = 2 * len(mask_hemis)
    fig = plt.figure(figsize=(3.2 * n_cols + 1, 6.4))
    for r, (name, hemis) in enumerate(rows.items()):
        cmap, vmin, vmax = _colours(name, stat_name, shown[name])
        for h, (label, mesh, data) in enumerate(hemis):
            # background: the mesh in grey, the analysis mask a shade lighter
            bg = np.where(np.nan_to_num(mask_hemis[h][2]) > 0, 0.7, 0.35)
            for v, view in enumerate(("lateral", "medial")):
                ax = fig.add_subplot(
                    2, n_cols, r * n_cols + 2 * h + v + 1, projection="3d"
                )
                plotting.plot_surf_stat_map(
                    read_mesh(mesh),
                    np.nan_to_num(data),
                    bg_map=bg,
                    hemi="left" if "left" in label or label == "surface" else "right",
                    view=view,
                    cmap=cmap,
                    vmin=vmin if vmin < 0 else None,
                    vmax=vmax,
                    threshold=1e-12,
                    colorbar=v == 1,
                    symmetric_cbar=vmin < 0,
                    bg_on_data=False,
                    axes=ax,
                    figure=fig,
                    title=f"{name}, {label}, {view}",
                    title_font_size=8,
                    engine="matplotlib",
                )
    fig.suptitle(heading, fontsize=11)
    return fig


def plot_index_map(
    data: NDArray,
    title: str,
    path: Path,
    *,
    labels: dict[int, str] | None = None,
) -> None:
    """Write a diagnostics map of a surface or parcel study against its index."""
    plt = _pyplot()
    data = np.asarray(data, np.float64)
    fig, ax = plt.subplots(figsize=(12, 3.2))
    index = np.arange(data.size)
    if labels is not None:
        codes = sorted(labels)
        cm = plt.get_cmap("tab10", len(codes))
        for i, code in enumerate(codes):
            hit = data == code
            ax.scatter(index[hit], data[hit], s=12, color=cm(i), label=labels[code])
        ax.legend(fontsize=7, loc="upper right", ncols=min(len(codes), 6))
    else:
        ax.bar(index, data, width=1.0, color="#31688e")
    ax.set_xlabel("vertex, grayordinate or parcel index")
    ax.set_title(title, fontsize=10)
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)


def parcel_ranking(
    parcels: Sequence[str], stat: NDArray, lp: NDArray, mask: NDArray, stat_name: str
):
    """Return the fitted parcels as a table sorted by -log10 p, strongest first."""
    import pandas as pd

    inside = np.asarray(mask) != 0
    table = pd.DataFrame(
        {"parcel": list(parcels), stat_name: stat, "-log10 p": lp, "fitted": inside}
    )
    table = table[table["fitted"]].drop(columns="fitted")
    return table.sort_values("-log10 p", ascending=False, kind="stable")


def plot_parcels(
    parcels: Sequence[str],
    stat: NDArray,
    lp: NDArray,
    mask: NDArray,
    threshold: float,
    stat_name: str,
    title: str,
    figure: Path,
    table_path: Path,
) -> int:
    """Write a contrast of a parcel study: a bar chart and the ranked table.

    The chart shows the TOP_PARCELS strongest parcels' -log10 p, coloured by the
    statistic as the other figures are, the threshold drawn as a line; the table
    (TSV) lists every fitted parcel.  Returns the number of parcels above the threshold.
    """
    plt = _pyplot()
    ranked = parcel_ranking(parcels, stat, lp, mask, stat_name)
    n_above = int((ranked["-log10 p"] >= threshold).sum())
    top = ranked.head(TOP_PARCELS)
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(top) + 1.6))
    ax.set_facecolor(GREY)
    # the volume figures' colours: the statistic's value (T signed), peak yellow
    values = top[stat_name].to_numpy(np.float64)
    cmap, vmin, vmax = _colours(stat_name, stat_name, values)
    colours = cmap((values - vmin) / (vmax - vmin) if vmax > vmin else values * 0)
    ax.barh(np.arange(len(top)), top["-log10 p"], color=colours, edgecolor="black")
    ax.set_yticks(np.arange(len(top)), [str(p) for p in top["parcel"]], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel(
        "-log10 p; colour: "
        + ("T (red to yellow > 0, blue to cyan < 0)" if stat_name == "T" else "F")
    )
    ax.set_title(
        f"{title}: {n_above} of {len(ranked)} parcels with -log10 p >= {threshold:g} "
        f"(dashed; uncorrected); the {len(top)} strongest",
        fontsize=9,
    )
    with io.atomic_path(figure) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
    io.write_text(table_path, ranked.to_csv(sep="\t", index=False, float_format="%.6g"))
    return n_above
