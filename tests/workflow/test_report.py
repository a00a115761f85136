"""The HTML report, the FDR maps and the compare target, end to end on a tiny study.

One analysis (the tiny study's random intercept, ``report`` and ``fdr`` on) is run
and its report built as a zip; a second analysis of the same images with a random
intercept and a random slope on time is compared with it through
``snakemake compare``.  Every expected value is
recomputed here from the output maps, independently of the code under test.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import read_maps, run_and_report, snakemake
from scipy import stats
from tiny_study import make_tiny_study

from blmm_scripts.report import benchmark_table

pytestmark = pytest.mark.slow

FIGURES = [
    "contrast_c1.png",
    "contrast_c2.png",
    "contrast_c3.png",
    "map_mask.png",
    "map_n.png",
    "map_status.png",
    "map_nit.png",
]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Run the tiny study with report and fdr on, and build report.zip."""
    root = tmp_path_factory.mktemp("report")
    make_tiny_study(root, report=True, fdr=True)
    run_and_report(root, root / "report.zip")
    return root


@pytest.fixture(scope="module")
def with_slope(study) -> Path:
    """Analyse the same images with a random intercept and slope on time, out_ris/."""
    config = yaml.safe_load((study / "config.yaml").read_text())
    X = pd.read_csv(study / config["X"], header=None).to_numpy(float)
    design = np.column_stack([np.ones(len(X)), X[:, 1]])  # intercept, time
    np.savetxt(study / "data/ris_design.csv", design, delimiter=",")
    config["Z"][0]["f1"]["design"] = "data/ris_design.csv"
    # 6 subjects x 2 random effects = 12 = n: safeMode would drop every voxel.
    config.update(outdir="out_ris", report=False, fdr=False, safeMode=0)
    (study / "config_ris.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(study, configfile="config_ris.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return study / "out_ris"


def _zip_names(study: Path) -> list[str]:
    with zipfile.ZipFile(study / "report.zip") as zf:
        return zf.namelist()


def _report_html(study: Path) -> str:
    with zipfile.ZipFile(study / "report.zip") as zf:
        return zf.read("report/report.html").decode()


def test_report_holds_every_figure_and_table(study):
    """report.zip has each contrast figure, the four maps and the summary."""
    names = {Path(n).name for n in _zip_names(study)}
    assert set(FIGURES) <= names
    assert {"summary.html", "summary.tsv"} <= names


def test_captions_state_threshold_and_contrasts(study):
    """Captions name every contrast and state the -log10 p threshold."""
    html = _report_html(study)
    assert "p &gt;= 3.0" in html
    for name in ("time", "group", "time_or_group"):
        assert f"({name})" in html


def test_summary_values_match_the_maps(study):
    """Summary counts equal those recomputed from the maps and the inputs."""
    with zipfile.ZipFile(study / "report.zip") as zf:
        tsv = next(n for n in zf.namelist() if n.endswith("summary.tsv"))
        with zf.open(tsv) as fh:
            table = pd.read_csv(fh, sep="\t")
    value = dict(zip(table["item"], table["value"].astype(str), strict=True))
    maps = read_maps(study / "out")
    config = yaml.safe_load((study / "config.yaml").read_text())
    n_images = len((study / config["Y_files"]).read_text().split())
    analysis = np.asarray(nib.load(study / config["analysis_mask"]).dataobj) != 0
    kept = maps["mask"] == 1
    assert value["images"] == str(n_images)
    assert value["in the analysis mask"] == str(int(analysis.sum()))
    assert value["analysed (final mask)"] == str(int(kept.sum()))
    inner = int((kept & (maps["n"] == n_images)).sum())
    assert value["inner (all images present)"] == str(inner)
    assert value["ring (some images missing)"] == str(int(kept.sum()) - inner)
    dropped = int((analysis & (maps["status"] == 0)).sum())
    assert value["missingness rules"] == str(dropped)
    assert value["converged"] == str(int((maps["status"] == 1).sum()))
    assert value["iterations, max"] == str(int(maps["nit"].max()))
    assert value["estimation"] == "REML"


def test_fdr_maps_equal_scipy(study):
    """blmm_vox_conTlq / conFlq equal scipy's BH over the mask voxels, per contrast."""
    maps = read_maps(study / "out")
    inside = maps["mask"] == 1
    for stat in ("T", "F"):
        lp, lq = maps[f"con{stat}lp"], maps[f"con{stat}lq"]
        assert lq.dtype == np.float32
        if lp.ndim == 3:
            lp, lq = lp[..., None], lq[..., None]
        for k in range(lp.shape[-1]):
            p = 10.0 ** -lp[..., k][inside].astype(np.float64)
            ok = np.isfinite(p)
            q = stats.false_discovery_control(p[ok], method="bh")
            # Maps are float32: rtol 1e-5.
            np.testing.assert_allclose(
                lq[..., k][inside][ok], -np.log10(q), rtol=1e-5, atol=1e-6
            )
            assert np.all(lq[..., k][~inside] == 0)


def test_compare_random_slope(study, with_slope):
    """compare: Chi2 = 2 (llh1 - llh0) on both masks, p from 0.5 chi2_1 + 0.5 chi2_2."""
    result = snakemake(
        study,
        "compare",
        "--config",
        "compare_small=out",
        "compare_large=out_ris",
        "compare_out=cmp",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    small, large = read_maps(study / "out"), read_maps(with_slope)
    out = read_maps(study / "cmp")
    both = (small["mask"] == 1) & (large["mask"] == 1)
    assert both.sum() >= 10  # not vacuous
    np.testing.assert_array_equal(out["mask"], both.astype(np.int32))
    assert out["mask"].dtype == np.int32 and out["Chi2"].dtype == np.float32
    chi2 = np.where(both, np.maximum(2 * (large["llh"] - small["llh"]), 0), 0)
    # llh maps are float32 (~1e-7 relative of |llh| ~ 20): atol 1e-4 on Chi2.
    np.testing.assert_allclose(out["Chi2"], chi2, atol=1e-4)
    x = out["Chi2"][both].astype(np.float64)
    assert np.sum(x > 0.01) >= 3  # some voxels away from the boundary
    p = 0.5 * stats.chi2.sf(x, 1) + 0.5 * stats.chi2.sf(x, 2)
    expected = np.where(x > 0, -np.log10(p), 0.0)
    np.testing.assert_allclose(out["Chi2lp"][both], expected, rtol=1e-5, atol=1e-6)
    assert np.all(out["Chi2lp"][~both] == 0)
    log = (study / "cmp/logs/compare.log").read_text()
    assert "50:50 mixture of chi2_1 and chi2_2" in log
    ref = nib.load(study / "out/blmm_vox_mask.nii")
    np.testing.assert_array_equal(
        nib.load(study / "cmp/blmm_vox_Chi2.nii").affine, ref.affine
    )


def test_compare_refuses_swapped_models(study, with_slope):
    """The larger model given as the smaller: the job fails and the log says why."""
    result = snakemake(
        study,
        "compare",
        "--config",
        "compare_small=out_ris",
        "compare_large=out",
        "compare_out=cmp_swapped",
    )
    assert result.returncode != 0
    log = (study / "cmp_swapped/logs/compare.log").read_text()
    assert "the models cannot be compared" in log
    assert "are not contained in those of out" in log
    assert not (study / "cmp_swapped/blmm_vox_Chi2.nii").exists()


def test_compare_without_folders_says_what_to_give(study):
    """`snakemake compare` without compare_small/large fails naming the keys."""
    result = snakemake(study, "-n", "compare")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "give --config compare_small=DIR compare_large=DIR" in output


def test_benchmark_table_sums_per_rule(tmp_path):
    """Benchmark TSVs (Snakemake's columns) are summed per rule, max RSS kept."""
    columns = "s h:m:s max_rss max_vms max_uss max_pss io_in io_out mean_load cpu_time"
    header = "\t".join(columns.split()) + "\n"
    rows = {
        "estimate/0000.tsv": (2.5, 100.0),
        "estimate/0001.tsv": (1.5, 300.0),
        "maps.tsv": (0.25, 50.0),
    }
    for name, (s, rss) in rows.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(header + f"{s}\t0:00:02\t{rss}\t1\t1\t1\t0\t0\t0\t{s}\n")
    table = benchmark_table(sorted(tmp_path.rglob("*.tsv")), tmp_path)
    assert table.loc["estimate", "jobs"] == 2
    assert table.loc["estimate", "s"] == 4.0 and table.loc["estimate", "max_rss"] == 300
    assert table.loc["maps", "s"] == 0.25
    skipped = benchmark_table(sorted(tmp_path.rglob("*.tsv")), tmp_path, ["maps"])
    assert list(skipped.index) == ["estimate"]
