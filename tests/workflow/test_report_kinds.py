"""The report of surface and parcel studies: figures drawn, effect shown.

The built-in example is simulated, then written as GIFTI (one grid mesh), CIFTI-2
(a mesh per cortex) and a parcel table (tests/kind_study.py), each run through
Snakemake with the report on.  Each contrast figure must show the -log10 p
colormap's colours on enough pixels (the example's time effect, 63 voxels, is
drawn); the parcel study's ranking puts the time region's parcels first; and
``snakemake --report`` builds a report holding the parcel tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from browser import figure_shown
from helpers import REPO, snakemake
from kind_study import KINDS, convert_study
from PIL import Image

from blmm_scripts.report import stat_colormaps
from blmm_scripts.simulate import TIME_BLOB

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Simulate the example, run its copy in every kind with the report on."""
    root = tmp_path_factory.mktemp("example_kinds")
    example = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    (root / "config.yaml").write_text(yaml.safe_dump(example))
    result = snakemake(root, "example/Y.txt")  # the simulation alone
    assert result.returncode == 0, result.stderr[-3000:]
    outdirs = {}
    for kind in KINDS:
        path = convert_study(
            root,
            root / "config.yaml",
            root / "config.yaml",
            kind,
            f"results/{kind}",
            data="example",
        )
        config = yaml.safe_load(path.read_text())
        config.pop("simulate")
        config["report"] = True
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        result = snakemake(root, configfile=path.name)
        assert result.returncode == 0, result.stderr[-3000:]
        outdirs[kind] = root / "results" / kind
    return root, outdirs


def _pixels_near(figure: np.ndarray, colours: np.ndarray, tol: int = 12) -> int:
    """Return how many pixels are within tol of one of some colours."""
    rgb = figure[..., :3].astype(int).reshape(-1, 1, 3)
    return int((np.abs(rgb - colours[None]).max(axis=-1) <= tol).any(axis=1).sum())


@pytest.mark.parametrize("kind", KINDS)
def test_time_contrast_figure_shows_the_effect(studies, kind):
    _, outdirs = studies
    figure = np.asarray(Image.open(outdirs[kind] / "report" / "contrast_c1.png"))
    assert figure.shape[0] > 300 and figure.shape[1] > 600
    unsigned, _ = stat_colormaps()
    # the upper half of the -log10 p colormap (orange to yellow) and the T row's
    reds = np.round(255 * unsigned(np.linspace(0.3, 1.0, 15))[:, :3]).astype(int)
    n = _pixels_near(figure, reds)
    assert n >= 400, f"{kind}: {n} pixels of the -log10 p colours"
    # the figure is not one colour: grey background and white around it too
    assert len(np.unique(figure[..., :3].reshape(-1, 3), axis=0)) > 50


@pytest.mark.parametrize("kind", KINDS)
def test_diagnostics_figures_are_drawn(studies, kind):
    _, outdirs = studies
    for name in ("mask", "n", "status", "nit"):
        figure = np.asarray(Image.open(outdirs[kind] / "report" / f"map_{name}.png"))
        dark = (figure[..., :3].astype(int).sum(axis=-1) < 600).sum()
        assert dark > 500, f"{kind} map_{name}: {dark} drawn pixels"


def test_parcel_ranking_puts_the_time_region_first(studies):
    _, outdirs = studies
    ranking = pd.read_csv(
        outdirs["table"] / "report" / "contrast_c1_parcels.tsv", sep="\t"
    )
    assert list(ranking.columns) == ["parcel", "T", "-log10 p"]
    assert ranking["-log10 p"].is_monotonic_decreasing
    shape = tuple(
        yaml.safe_load((REPO / "config" / "config.yaml").read_text())["simulate"][
            "shape"
        ]
    )
    axes = [np.linspace(-1, 1, n) for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    centre, radius = TIME_BLOB
    region = np.linalg.norm(grid - centre, axis=-1) < radius
    top = [int(p.removeprefix("vox")) for p in ranking["parcel"][:30]]
    assert np.mean(region[top]) >= 0.9, "the 30 strongest parcels lie in the region"


def test_report_html_holds_the_parcel_tables(studies):
    root, _ = studies
    report = root / "report_table.html"
    result = snakemake(root, "--report", str(report), configfile="config_table.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    for con in ("c1", "c2", "c3"):
        assert f"contrast_{con}_parcels.tsv" in text
        assert f"contrast_{con}.png" in text


@pytest.mark.parametrize(
    ("kind", "figure"),
    [
        ("gifti", "contrast_c1.png"),
        ("cifti", "contrast_c3.png"),
        ("table", "contrast_c1.png"),
    ],
)
def test_report_page_shows_the_figure(studies, chromium, kind, figure, tmp_path):
    """Chromium shows a surface or parcel figure whole, as the report's page does."""
    root, _ = studies
    report = root / f"report_{kind}.html"
    if not report.exists():
        result = snakemake(
            root, "--report", str(report), configfile=f"config_{kind}.yaml"
        )
        assert result.returncode == 0, result.stderr[-3000:]
    shown, expected = figure_shown(
        chromium, report, f"results/{kind}/report/{figure}", tmp_path
    )
    assert expected > 2000, f"{kind} {figure}: the figure itself is blank"
    assert shown >= 0.98 * expected, f"{kind} {figure}: {shown} of {expected} shown"
