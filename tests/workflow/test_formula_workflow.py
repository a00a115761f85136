"""A formula analysis through Snakemake (issue 12).

The tiny study as a participants table and ``~ time + age + group +
(1 | participant_id)`` gives the maps of the same study's hand-built BLMM config;
the dry run prints the coefficient names; inputs.yml holds the design; a bad
formula config stops `snakemake -n` with every problem and outdir untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import planned_jobs, read_maps, snakemake
from tiny_study import make_formula_study

from blmm_scripts import io
from blmm_scripts.design import Design
from blmm_scripts.pipeline import run_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def formula_run(tmp_path_factory) -> Path:
    """Run the formula config of the tiny study; return its folder."""
    root = tmp_path_factory.mktemp("formula")
    make_formula_study(root)
    result = snakemake(root, configfile="config_formula.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_maps_equal_the_blmm_config(formula_run):
    """Every map equals the BLMM config's (run in memory on the CSV design)."""
    blmm = yaml.safe_load((formula_run / "config.yaml").read_text())
    expected, _, _ = run_pipeline(blmm, formula_run)
    actual = read_maps(formula_run / "out_formula")
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        # The same sums in the same order: equal to 1e-10 (in practice, bit for bit).
        np.testing.assert_allclose(
            actual[name], value, rtol=1e-10, atol=0, err_msg=name
        )
    assert actual["mask"].sum() > 10


def test_design_npz_equals_the_csv_design(formula_run):
    """The setup job's design.npz holds the BLMM config's X, codes and design."""
    arrays = io.load_arrays(
        formula_run / "out_formula" / "work" / "setup" / "design.npz"
    )
    design = Design.from_arrays(arrays)
    X = np.loadtxt(formula_run / "data" / "X.csv", delimiter=",")
    np.testing.assert_allclose(design.X, X, rtol=1e-10, atol=0)
    labels = np.loadtxt(formula_run / "data" / "subject.csv")
    np.testing.assert_array_equal(
        design.factors[0].codes, np.unique(labels, return_inverse=True)[1]
    )
    assert design.factors[0].name == "participant_id"


def test_inputs_yml_names_the_volumes(formula_run):
    """inputs.yml: the formula keys, the coefficients, and the volumes by name."""
    resolved = yaml.safe_load((formula_run / "out_formula" / "inputs.yml").read_text())
    assert resolved["model"] == "~ time + age + group + (1 | participant_id)"
    design = resolved["design"]
    assert design["coefficients"] == ["Intercept", "time", "age", "group[T.pat]"]
    assert design["volumes"]["beta"] == design["coefficients"]
    assert design["volumes"]["T"] == ["time", "group"]
    assert design["volumes"]["F"] == ["time_or_group"]
    assert design["factors"][0] | {"labels": None} == {
        "name": "participant_id",
        "levels": 6,
        "q": 1,
        "effects": ["Intercept"],
        "labels": None,
    }
    assert design["contrasts"][1]["c2"]["L"] == [0, 0, 0, 1]


def test_dry_run_prints_coefficients(formula_run):
    """The dry run names the coefficients and the random factors."""
    result = snakemake(
        formula_run, "-n", "--forceall", configfile="config_formula.yaml"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout + result.stderr
    assert "coefficients Intercept, time, age, group[T.pat]" in text
    assert "participant_id (6 levels, q = 1: Intercept)" in text
    assert planned_jobs(result.stdout)["setup"] == 1


def test_bad_formula_config_stops_before_any_job(tmp_path):
    """A missing column, a bad contrast name and a conflicting key, all at once."""
    config_path = make_formula_study(tmp_path)
    config = yaml.safe_load(config_path.read_text())
    config["model"] = "~ time + agee + (1 | participant_id)"
    config["X"] = "data/X.csv"
    config_path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out_formula"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = snakemake(tmp_path, "-n", configfile="config_formula.yaml")
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "2 problem(s)" in text
    assert "data and X" in text
    assert "column 'agee' is not a column of data" in text
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
