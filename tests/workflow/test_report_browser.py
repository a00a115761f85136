"""The example's HTML report, looked at in a real browser (headless Chromium).

The built-in example (config/config.yaml, report on) is run through Snakemake and
``snakemake --report report.html`` builds Snakemake's report, a single-page app whose
figures are PNGs embedded in its ``results`` table.  Chromium renders the start
page, and each figure and the summary as the report shows them: the page is opened
with a few lines of script that do what the figure's eye button does
(``app.setView`` with the embedded file).  A screenshot holds the figure when it has
the figure's coloured pixels, as many as the PNG (drawn at its own size); the
contrast figures have their peak colour, distinct from the grey background, in the
statistic row and in the -log10 p row.  The example's time effect is found where it
was simulated.

Without ``chromium`` (Debian package) on PATH the tests skip, or fail where
BLMM_REQUIRE_BROWSER=1 (CI).  The browser's part is tests/workflow/browser.py.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from browser import (
    CHROMA,
    WINDOW,
    colour_counts,
    coloured,
    dark,
    embedded_png,
    figure_shown,
    page_showing,
    report_results,
    rgb,
    screenshot,
)
from helpers import REPO, run_and_report

from blmm_scripts.report import stat_colormaps
from blmm_scripts.simulate import TIME_BLOB

pytestmark = pytest.mark.slow

REPORT_DIR = "results/example/report"
CONTRASTS = ("c1", "c2", "c3")
FIGURES = [f"contrast_{c}.png" for c in CONTRASTS] + [
    f"map_{name}.png" for name in ("mask", "n", "status", "nit")
]


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    """Run the example (its config has `report: true`), build report.html.

    Returns the working directory, as a first run from the repository leaves it.
    """
    root = tmp_path_factory.mktemp("example")
    shutil.copy(REPO / "config" / "config.yaml", root / "config.yaml")
    run_and_report(root, root / "report.html")
    return root


@pytest.fixture(scope="module")
def results(example) -> dict:
    """Return the report's embedded results table, keyed by file path."""
    return report_results(example / "report.html")


def test_start_page_renders(chromium, example, tmp_path):
    """report.html opens on its navigation and workflow graph, not a blank page.

    Both are drawn by the report's scripts (the page itself holds only a loading
    screen): the navigation's text, and the graph's coloured nodes and icons.
    """
    shot = screenshot(chromium, example / "report.html", tmp_path / "report.png")
    # Measured: 1,000 coloured and 21,000 dark pixels, or 266,000 in the
    # screenshots that catch the navigation bar's background dark, not light.
    assert dark(shot).sum() > 5000, "no text on the start page"
    assert coloured(shot).sum() > 500, "no workflow graph on the start page"


@pytest.mark.parametrize("name", FIGURES)
def test_figure_page_shows_the_figure(chromium, example, results, name, tmp_path):
    """A figure's page shows it whole: its coloured pixels, as many as in the PNG."""
    figure = embedded_png(results, f"{REPORT_DIR}/{name}")
    assert coloured(figure).sum() > 2000, f"{name}: the figure itself is blank"
    report = example / "report.html"
    shown, expected = figure_shown(chromium, report, f"{REPORT_DIR}/{name}", tmp_path)
    # Drawn at its own size, every pixel of the PNG is on screen; 2 % for a row or
    # column the page's padding might cut.
    assert shown >= 0.98 * expected, f"{name}: {shown} of {expected} pixels shown"


def test_summary_page_shows_the_table(chromium, example, results, tmp_path):
    """The summary's page shows its table: as much text as the table on its own.

    The reference is Chromium's picture of the embedded summary.html opened
    directly; the report shows it in a frame right of the navigation bar.
    """
    path = f"{REPORT_DIR}/summary.html"
    uri = results[path]["data_uri"]
    alone = tmp_path / "summary_alone.html"
    alone.write_bytes(base64.b64decode(uri.split("base64,", 1)[1]))
    reference = screenshot(chromium, alone, tmp_path / "summary_alone.png")
    page = page_showing(example / "report.html", path, tmp_path / "page.html")
    shot = screenshot(chromium, page, tmp_path / "summary.png")
    # The navigation bar: the run of its background colour along the middle row.
    row = shot[WINDOW[1] // 2].astype(int)
    edge = int(np.argmin(np.abs(row - row[2]).max(axis=-1) <= 2))
    assert 100 < edge < WINDOW[0] // 2, f"navigation bar {edge} px wide?"
    text, expected = dark(shot[:, edge:]).sum(), dark(reference).sum()
    assert expected > 2000, "the summary itself holds no text"
    # 10 % for the frame's scroll position and font hinting.
    assert text >= 0.9 * expected, f"{text} of {expected} text pixels shown"


@pytest.mark.parametrize(("con", "stat"), [("c1", "T"), ("c2", "T"), ("c3", "F")])
def test_peak_colour_stands_out_in_each_row(results, con, stat):
    """In both rows' projections the peak colour is drawn, and it is no grey.

    The peak colour is the colormap's top (a map's largest value); the projections
    (right 48 % of the figure, clear of the colour bars) hold it, and their
    background, their three commonest colours (white around the panels, the greys
    of the mask and outside it), is far from it.
    """
    unsigned, signed = stat_colormaps()
    figure = embedded_png(results, f"{REPORT_DIR}/contrast_{con}.png")
    height, width = figure.shape[:2]
    rows = {stat: signed if stat == "T" else unsigned, "-log10 p": unsigned}
    for row, (name, cmap) in enumerate(rows.items()):
        peak = np.round(255 * np.array(cmap(1.0)[:3])).astype(int)
        assert coloured(peak[None, :])[0], f"{name}: peak colour {peak} is a grey"
        half = figure[row * height // 2 : (row + 1) * height // 2]
        projections = half[:, int(0.52 * width) :].astype(int)
        # 8 levels for the PNG's rounding of colours.
        n_peak = (np.abs(projections - peak).max(axis=-1) <= 8).sum()
        # One voxel of a projection is about 15 x 15 pixels.
        assert n_peak >= 100, f"{con} {name}: peak colour {peak} on {n_peak} pixels"
        counts = colour_counts(projections)
        for key in sorted(counts, key=counts.get, reverse=True)[:3]:
            background = rgb(key)
            assert np.abs(background - peak).max() >= CHROMA, (
                f"{con} {name}: peak colour {peak} close to the background {background}"
            )


def test_example_finds_its_time_effect(example):
    """c1 (time) passes p < 0.001 in its region (10-20 % of the mask), not outside.

    The region is the simulation's sphere of the time effect, recomputed here from
    its centre and radius on the grid's [-1, 1]^3 coordinates.
    """
    out = example / "results" / "example"
    mask = np.asarray(nib.load(out / "blmm_vox_mask.nii").dataobj) != 0
    lp = np.asarray(nib.load(out / "blmm_vox_conTlp.nii").dataobj)[..., 0]
    axes = [np.linspace(-1, 1, n) for n in mask.shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    centre, radius = TIME_BLOB
    region = mask & (np.linalg.norm(grid - centre, axis=-1) < radius)
    assert 0.10 <= region.sum() / mask.sum() <= 0.20, "region's size"
    found = lp >= 3
    # 55 of its 63 voxels with the example's seed; 75 % leaves room for chance.
    assert found[region].mean() >= 0.75, f"{found[region].mean():.2f} of the region"
    # 1 in 1000 false positives expected outside; a few would be chance.
    assert found[mask & ~region].sum() <= 3, "found outside the region"
