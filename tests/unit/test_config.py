"""Config parsing and the checks of issue 2, item 3: every bad input, one test each.

Each check asserts that the message names the key or file and says what is wrong,
and that nothing was created in outdir.  tests/workflow/test_validation.py runs a
few of them through a real ``snakemake -n``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from blmm_scripts.config import ConfigError, check_inputs, parse_settings
from blmm_scripts.config import load as load_config
from blmm_scripts.values import parse_fraction, parse_int_expr, parse_vector


def load(config_path: Path) -> dict:
    """Read a config file."""
    return yaml.safe_load(config_path.read_text())


def problems_of(config: dict, root: Path) -> list[str]:
    """Return the problems parse + check report for a config (empty if none)."""
    try:
        check_inputs(parse_settings(config, root))
    except ConfigError as err:
        assert not (root / "out").exists(), "outdir must stay untouched"
        return err.problems
    return []


# ---- value parsers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("2**32", 2**32), (4096, 4096), ("2 ** 10 * 3", 3072), ("(2+2)//3", 1)],
)
def test_parse_int_expr(text, value):
    """MAXMEM strings are integer arithmetic."""
    assert parse_int_expr(text) == value


@pytest.mark.parametrize(
    "text", ["__import__('os')", "2.5*2", "2**10000", "x", "open('f')", "1/2", True]
)
def test_parse_int_expr_rejects_non_integer_arithmetic(text):
    """Anything but integer literals and + - * ** // is refused, never evaluated."""
    with pytest.raises(ValueError):
        parse_int_expr(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[1, 0, 0]", [1, 0, 0]),
        ("[1 0 0]", [1, 0, 0]),
        ("[1,-0.5, 2e-1]", [1, -0.5, 0.2]),
        ([0, 1], [0, 1]),
        ("[[1,0,0],[0,1,0]]", [[1, 0, 0], [0, 1, 0]]),
        ("[[1 0 0] [0 1 0]]", [[1, 0, 0], [0, 1, 0]]),
        ([[1, 0]], [[1, 0]]),
    ],
)
def test_parse_vector(value, expected):
    """Contrasts parse from lists and BLMM strings; nesting decides T (1-D) or F."""
    out = parse_vector(value)
    np.testing.assert_array_equal(out, np.array(expected, dtype=float))
    assert out.ndim == np.ndim(expected)


@pytest.mark.parametrize("value", ["[1, 0", "[[1,0],[1]]", "[1, a]", "import os", []])
def test_parse_vector_rejects(value):
    """Malformed contrasts raise ValueError."""
    with pytest.raises(ValueError):
        parse_vector(value)


def test_parse_fraction():
    """MinPercent accepts fractions and percentages."""
    assert parse_fraction("10%") == pytest.approx(0.1)
    assert parse_fraction(0.25) == 0.25


def test_defaults_are_blmm_defaults(tiny_study):
    """Keys left out take BLMM's defaults (and REML, one-sided T, .nii)."""
    config = load(tiny_study)
    for key in ("MAXMEM", "tol", "resms", "Missingness"):
        config.pop(key, None)
    s = parse_settings(config, tiny_study.parent)
    assert (s.MAXMEM, s.tol, s.maxnit, s.maxnvb, s.method) == (
        2**32,
        1e-6,
        10000,
        60,
        "pSFS",
    )
    assert s.output_cov_b and s.safe_mode and s.reml and not s.resms
    assert not s.two_sided and s.keep_intermediates and not s.output_compression
    assert s.minlog == -323.3062153431158


def test_relative_paths_resolve_against_workdir(tiny_study):
    """Relative paths are taken from the working directory, as BLMM did."""
    s = parse_settings(load(tiny_study), tiny_study.parent)
    root = tiny_study.parent
    assert (s.X, s.outdir) == (root / "data" / "X.csv", root / "out")


def test_ignored_blmm_keys_are_accepted(tiny_study, caplog):
    """clusterType, numNodes and voxelBatching are accepted with a notice."""
    config = load(tiny_study) | {"clusterType": "slurm", "numNodes": 10}
    with caplog.at_level("INFO"):
        parse_settings(config, tiny_study.parent)
    assert "clusterType" in caplog.text and "numNodes" in caplog.text


def test_good_config_has_no_problems(tiny_study):
    """The tiny study itself passes every check."""
    assert problems_of(load(tiny_study), tiny_study.parent) == []


# ---- one test per kind of bad input ---------------------------------------------


def edit_csv(path: Path, transform) -> None:
    """Rewrite a numeric CSV through a function of its array."""
    arr = np.loadtxt(path, delimiter=",", ndmin=2)
    np.savetxt(path, transform(arr), delimiter=",", fmt="%.17g")


def single(problems: list[str], *words: str) -> str:
    """Assert exactly one problem, containing every word; return it."""
    assert len(problems) == 1, problems
    assert all(w in problems[0] for w in words), problems[0]
    return problems[0]


def test_x_wrong_number_of_rows(tiny_study):
    """X with a row too few is reported with its file and the row counts."""
    root = tiny_study.parent
    edit_csv(root / "data" / "X.csv", lambda a: a[:-1])
    single(problems_of(load(tiny_study), root), "X:", "X.csv", "11 rows", "12 images")


def test_x_with_nan(tiny_study):
    """X containing NaN is reported."""
    root = tiny_study.parent
    edit_csv(root / "data" / "X.csv", lambda a: np.where(np.arange(4) == 2, np.nan, a))
    single(problems_of(load(tiny_study), root), "X:", "NaN")


def test_x_rank_deficient(tiny_study):
    """X without full column rank is reported."""
    root = tiny_study.parent
    edit_csv(root / "data" / "X.csv", lambda a: np.column_stack([a, a[:, 1]]))
    config = load(tiny_study)
    config["contrasts"] = [{"c1": {"vector": [0, 1, 0, 0, 0]}}]
    single(problems_of(config, root), "X:", "rank deficient")


def test_contrast_wrong_length(tiny_study):
    """A contrast without p columns is reported with its number and name."""
    config = load(tiny_study)
    config["contrasts"].append({"c4": {"name": "short", "vector": "[1 0 0]"}})
    single(problems_of(config, tiny_study.parent), "c4", "short", "3 columns", "p = 4")


def test_f_contrast_rank_deficient(tiny_study):
    """An F contrast without full row rank is reported."""
    config = load(tiny_study)
    config["contrasts"].append({"c4": {"vector": [[0, 1, 0, 0], [0, 2, 0, 0]]}})
    single(problems_of(config, tiny_study.parent), "c4", "rank deficient")


def test_factor_wrong_number_of_rows(tiny_study):
    """A factor file with too many rows is reported."""
    root = tiny_study.parent
    edit_csv(root / "data" / "subject.csv", lambda a: np.vstack([a, a[:1]]))
    single(problems_of(load(tiny_study), root), "Z f1 factor", "subject.csv", "13 rows")


def test_design_not_numeric(tiny_study):
    """A design file with a non-numeric cell is reported."""
    root = tiny_study.parent
    path = root / "data" / "subject_design.csv"
    lines = path.read_text().splitlines()
    lines[3] = "abc"
    path.write_text("\n".join(lines) + "\n")
    single(problems_of(load(tiny_study), root), "Z f1 design", "numbers only", "abc")


def test_wrong_number_of_data_masks(tiny_study):
    """data_mask_files must list one mask per image."""
    root = tiny_study.parent
    path = root / "data" / "M.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-2]))
    single(problems_of(load(tiny_study), root), "data_mask_files", "10 masks", "12")


def test_missing_image(tiny_study):
    """An image listed in Y_files that does not exist is reported by path."""
    root = tiny_study.parent
    victim = root / "data" / "images" / "sub-03_ses-2.nii"
    victim.unlink()
    single(problems_of(load(tiny_study), root), "Y_files image", str(victim), "exist")


def test_image_with_other_shape(tiny_study):
    """An image on another grid is reported with both shapes."""
    root = tiny_study.parent
    victim = root / "data" / "images" / "sub-02_ses-1.nii"
    nib.save(nib.Nifti1Image(np.ones((6, 5, 3), np.float32), np.eye(4)), victim)
    single(problems_of(load(tiny_study), root), str(victim), "(6, 5, 3)", "(6, 5, 4)")


def test_mask_with_other_affine(tiny_study):
    """A data mask with another affine is reported."""
    root = tiny_study.parent
    victim = root / "data" / "masks" / "sub-02_ses-1_mask.nii"
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.uint8), np.eye(4)), victim)
    single(problems_of(load(tiny_study), root), "data_mask_files mask 3", "affine")


def test_analysis_mask_missing(tiny_study):
    """A missing analysis mask is reported."""
    config = load(tiny_study) | {"analysis_mask": "data/nothere.nii"}
    single(problems_of(config, tiny_study.parent), "analysis_mask", "nothere.nii")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("MAXMEM", "__import__('os').system('true')", ["MAXMEM", "integer"]),
        ("MAXMEM", 0, ["MAXMEM", "out of range"]),
        ("tol", "-1e-6", ["tol", "out of range"]),
        ("tol", "tiny", ["tol", "number"]),
        ("maxnit", 0, ["maxnit", "out of range"]),
        ("maxnvb", 0, ["maxnvb", "out of range"]),
        ("minlog", 5, ["minlog", "out of range"]),
        ("method", "Newton", ["method", "Newton"]),
        ("estimation", "Bayes", ["estimation", "Bayes"]),
        ("Missingness", {"MinPercent": 1.5}, ["MinPercent", "out of range"]),
        ("Missingness", {"MinPercent": "ten%"}, ["MinPercent", "number"]),
        ("Missingness", {"MinN": -2}, ["MinN", "out of range"]),
        ("resms", "yes", ["resms", "switch"]),
    ],
)
def test_numeric_keys_out_of_range(tiny_study, key, value, words):
    """Numeric and enumerated keys out of range name the key and the value."""
    config = load(tiny_study) | {key: value}
    single(problems_of(config, tiny_study.parent), *words)


def test_bad_contrast_string(tiny_study):
    """An unparsable contrast string is reported with its number."""
    config = load(tiny_study)
    config["contrasts"][0]["c1"]["vector"] = "[0, 1, 0"
    single(problems_of(config, tiny_study.parent), "c1", "vector")


def test_misnumbered_list(tiny_study):
    """Z and contrasts entries must be f1.., c1.. in order."""
    config = load(tiny_study)
    config["contrasts"][1] = {"c7": config["contrasts"][1]["c2"]}
    single(problems_of(config, tiny_study.parent), "contrasts[1]", "'c2'")


def test_all_problems_at_once(tiny_study):
    """Problems of values and of data are reported together, in one error."""
    root = tiny_study.parent
    edit_csv(root / "data" / "X.csv", lambda a: a[:-1])
    (root / "data" / "images" / "sub-01_ses-2.nii").unlink()
    config = load(tiny_study) | {"tol": "-1", "Missingness": {"MinPercent": 2}}
    config["contrasts"].append({"c4": {"vector": [1, 0]}})
    with pytest.raises(ConfigError) as info:
        load_config(config, root)
    problems = info.value.problems
    assert len(problems) == 5, problems
    joined = "\n".join(problems)
    for word in ("tol", "MinPercent", "X:", "sub-01_ses-2", "c4"):
        assert word in joined
    assert str(info.value).startswith("The BLMM config has 5 problem(s)")
    assert not (root / "out").exists()


def test_grouped_statistics_need_one_random_intercept(tiny_study):
    """statistics: grouped with a random slope names the key and the model."""
    config = load(tiny_study) | {"statistics": "grouped"}
    root = tiny_study.parent
    assert problems_of(config, root) == []  # the tiny study: a random intercept
    design = root / config["Z"][0]["f1"]["design"]
    n = len(design.read_text().splitlines())
    design.write_text("".join(f"1,{i}\n" for i in range(n)))
    single(problems_of(config, root), "statistics", "intercept", "2 random effect")


def test_statistics_must_be_a_known_form(tiny_study):
    config = load(tiny_study) | {"statistics": "pooled"}
    single(problems_of(config, tiny_study.parent), "statistics", "'pooled'")
