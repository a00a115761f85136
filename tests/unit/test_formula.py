"""The formula front end (issue 12): a participants table and an lme4-style model.

A formula analysis must give exactly the arrays of the equivalent BLMM config (X,
level codes, random-effect covariates, images, masks), so that the workflow runs
unchanged; names follow formulaic (checked against patsy, statsmodels' formula
engine), random terms lme4 (checked against ``lme4::findbars``); every bad input is
reported at once, naming the key, column or row, with outdir untouched.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import patsy
import pytest
import yaml
from tiny_study import make_formula_study

from blmm_scripts import io
from blmm_scripts.compare import NotNestedError, check_nested, model_of
from blmm_scripts.config import ConfigError, check_inputs, load, parse_settings
from blmm_scripts.design import read_design, read_formula_design
from blmm_scripts.formula import FormulaError, build_design, parse_model
from blmm_scripts.pipeline import run_pipeline
from blmm_scripts.report import contrast_volumes
from blmm_scripts.values import parse_combination


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Return the formula config of the tiny study (rows in table order)."""
    return make_formula_study(tmp_path)


def read(path: Path) -> dict:
    """Read a config file."""
    return yaml.safe_load(Path(path).read_text())


def problems_of(config: dict, root: Path) -> list[str]:
    """Return every problem load reports (empty if none); outdir stays untouched."""
    try:
        load(config, root)
    except ConfigError as err:
        assert not (root / config.get("outdir", "out_formula")).exists()
        return err.problems
    return []


def one(problems: list[str], *words: str) -> str:
    """Assert there is exactly one problem and it contains every word."""
    assert len(problems) == 1, problems
    for word in words:
        assert word in problems[0], (word, problems[0])
    return problems[0]


def table(**columns) -> pd.DataFrame:
    """Return a small participants table (an image column added)."""
    df = pd.DataFrame(columns)
    if "image" not in df:
        df["image"] = [f"img{i}.nii" for i in range(len(df))]
    return df


def built(df: pd.DataFrame, model: str, masks: str | None = None):
    """Return (design, problems) of a model on a table."""
    problems: list[str] = []
    design = build_design(df, parse_model(model), "image", masks, Path("/d"), problems)
    return design, problems


# ---- equal to the hand-built BLMM config ---------------------------------------


def test_same_arrays_as_the_blmm_config(study):
    """X, level codes, random design, images and masks equal the BLMM config's."""
    root = study.parent
    settings, inputs = load(read(study), root)
    _, blmm = load(read(root / "config.yaml"), root)
    np.testing.assert_allclose(inputs.X, blmm.X, rtol=1e-10, atol=0)
    assert len(inputs.factors) == len(blmm.factors) == 1
    np.testing.assert_array_equal(inputs.factors[0].codes, blmm.factors[0].codes)
    np.testing.assert_array_equal(inputs.factors[0].design, blmm.factors[0].design)
    assert inputs.images == blmm.images and inputs.data_masks == blmm.data_masks
    assert [c.L.tolist() for c in settings.contrasts] == [
        [0, 1, 0, 0],
        [0, 0, 0, 1],
        [[0, 1, 0, 0], [0, 0, 0, 1]],
    ]
    # What the setup job builds from the table, equal to the CSVs' design.
    formula = read_formula_design(
        settings.data, settings.model.text, "image", "mask", None, inputs.images[0]
    )
    b = read(root / "config.yaml")
    csv = read_design(
        root / b["X"],
        [(root / b["Z"][0]["f1"]["factor"], root / b["Z"][0]["f1"]["design"])],
        ["subject"],
        None,
        inputs.images[0],
    )
    for key, value in csv.to_arrays().items():
        if not key.startswith("name_"):
            np.testing.assert_array_equal(formula.to_arrays()[key], value, key)


def test_maps_equal_the_blmm_config(study):
    """The whole analysis gives the BLMM config's maps (same sums, same order)."""
    root = study.parent
    maps, _, _ = run_pipeline(read(study), root)
    expected, _, _ = run_pipeline(read(root / "config.yaml"), root)
    assert sorted(maps) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(maps[name], value, rtol=1e-10, atol=0, err_msg=name)


def test_rows_in_any_order(tmp_path):
    """Shuffled table rows: the images follow the rows, the maps do not change."""
    shuffled = make_formula_study(tmp_path, shuffle=True)
    _, inputs = load(read(shuffled), tmp_path)
    _, blmm = load(read(tmp_path / "config.yaml"), tmp_path)
    order = [blmm.images.index(p) for p in inputs.images]
    assert order != sorted(order)
    np.testing.assert_allclose(inputs.X, blmm.X[order], rtol=1e-10, atol=0)
    maps, _, _ = run_pipeline(read(shuffled), tmp_path)
    expected, _, _ = run_pipeline(read(tmp_path / "config.yaml"), tmp_path)
    for name, value in expected.items():
        if name == "nit":  # iterations depend on rounding
            continue
        # Sums over the images in another order: float32 maps agree to rounding.
        np.testing.assert_allclose(maps[name], value, rtol=1e-5, atol=1e-6)


# ---- names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "fixed",
    [
        "age + sex",  # categorical
        "age * sex",  # interaction of a number and a category
        "C(site) + sex * group",  # a number as a category; two categories
        "center(age) + np.log(age) + I(age ** 2) + sex",  # transforms
    ],
)
def test_coefficient_names_as_statsmodels(fixed):
    """Names and columns equal patsy's (statsmodels' formulas), matched by name."""
    rng = np.random.default_rng(0)
    df = table(
        age=rng.uniform(20, 60, 24),
        sex=np.tile(["F", "M"], 12),
        group=np.repeat(["a", "b", "c"], 8),
        site=np.tile([1.0, 2.0, 3.0], 8),
        subject=[f"sub-{i // 2}" for i in range(24)],
    )
    design, problems = built(df, f"~ {fixed} + (1 | subject)")
    assert not problems
    expected = patsy.dmatrix(fixed, df, return_type="dataframe")
    assert sorted(design.coefficients) == sorted(expected.columns)
    for j, name in enumerate(design.coefficients):
        np.testing.assert_allclose(design.X[:, j], expected[name], rtol=1e-12)


def test_interaction_name():
    """age:sex[T.M] is the product of age and the indicator of M."""
    df = table(age=[30.0, 40, 50, 60, 35, 45], sex=list("FMFMMF"), g=[1, 1, 2, 2, 3, 3])
    design, _ = built(df, "~ age * sex + (1 | g)")
    assert design.coefficients == ("Intercept", "age", "sex[T.M]", "age:sex[T.M]")
    np.testing.assert_array_equal(design.X[:, 3], df["age"] * (df["sex"] == "M"))


# ---- random effects in lme4's syntax --------------------------------------------


def test_bars_parsed_as_lme4():
    """Bars leave the fixed part; (x | g) implies an intercept as in lme4."""
    m = parse_model("~ age + (1 | subject) + (time | site) + (0 + time | subject)")
    assert m.fixed == "age"
    assert [(t.effects, t.group) for t in m.random] == [
        ("1", ("subject",)),
        ("time", ("site",)),
        ("0 + time", ("subject",)),
    ]
    assert parse_model("~ (1 | g)").fixed == "1"


def test_nested_grouping_expanded_as_lme4():
    """a/b and a/b/c expand as lme4::findbars: b:a, a and c:b:a, b:a, a."""
    assert [t.name for t in parse_model("~ (1 | site/subject)").random] == [
        "subject:site",
        "site",
    ]
    assert [t.name for t in parse_model("~ x + (1 | a/b/c)").random] == [
        "c:b:a",
        "b:a",
        "a",
    ]


def test_nested_and_crossed_levels():
    """subject:site has one level per (site, subject) pair; text labels allowed."""
    df = table(
        site=["A", "A", "A", "B", "B", "B", "A", "B"],
        subject=["s1", "s1", "s2", "s1", "s2", "s2", "s2", "s1"],
        time=[0.0, 1, 0, 1, 0, 1, 2, 2],
    )
    design, problems = built(df, "~ time + (1 | site/subject) + (0 + time | subject)")
    assert not problems
    inner, outer, slope = design.factors
    assert (inner.name, outer.name, slope.name) == ("subject:site", "site", "subject")
    pairs = df["site"] + ":" + df["subject"]
    assert inner.n_levels == pairs.nunique() == 4
    # same grouping as the pairs: equal labels <=> equal codes
    same = pairs.to_numpy()[:, None] == pairs.to_numpy()[None]
    np.testing.assert_array_equal(inner.codes[:, None] == inner.codes[None], same)
    assert outer.n_levels == 2 and slope.n_raneffs == 1
    np.testing.assert_array_equal(slope.design[:, 0], df["time"])
    assert design.effects == (("Intercept",), ("Intercept",), ("time",))


def test_random_slope_design():
    """(1 + time | g): covariates Intercept and time, in that order."""
    df = table(time=[0.0, 1, 2, 0, 1, 2], g=["b", "b", "b", "a", "a", "a"])
    design, _ = built(df, "~ time + (1 + time | g)")
    f = design.factors[0]
    np.testing.assert_array_equal(f.design, np.c_[np.ones(6), df["time"]])
    np.testing.assert_array_equal(f.codes, [1, 1, 1, 0, 0, 0])  # sorted labels
    assert design.levels == (("a", "b"),)
    assert design.volumes()["D"] == ["g: Intercept", "g: time,Intercept", "g: time"]


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("~ age + (1 + time || subject)", ["'||'", "not supported"]),
        ("~ age + (1 | a | b)", ["not supported"]),
        ("y ~ age + (1 | g)", ["left-hand side", "'y'"]),
        ("age + (1 | g)", ["'~'"]),
        ("~ ", ["no terms"]),
        ("~ age + (1 | g", ["unclosed '('", "position 9"]),
        ("~ age + sex)", ["unbalanced ')'", "position 12"]),
        ("~ age + + sex", ["'+' has no term"]),
        ("~ (age + (1 | g))", ["whole term"]),
        ("~ age + ( | g)", ["nothing before '|'"]),
        ("~ age + (1 | a + b)", ["grouping", "a:b or a/b"]),
        ("~ age ** + sex", ["does not parse"]),
    ],
)
def test_formula_that_does_not_parse(model, words):
    """Each unsupported or broken formula is a FormulaError saying what and where."""
    with pytest.raises(FormulaError) as info:
        parse_model(model)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# ---- contrasts by name -----------------------------------------------------------


NAMES = ("Intercept", "age", "sex[T.M]", "I(age - 50)", "age:sex[T.M]", "time")


@pytest.mark.parametrize(
    ("text", "weights"),
    [
        ("age - time", {"age": 1, "time": -1}),
        ("0.5*age + 0.5*time", {"age": 0.5, "time": 0.5}),
        ("-2 * sex[T.M]", {"sex[T.M]": -2}),
        ("I(age - 50) + age:sex[T.M]", {"I(age - 50)": 1, "age:sex[T.M]": 1}),
        ("1e-1*age + age", {"age": 1.1}),
    ],
)
def test_parse_combination(text, weights):
    """A linear combination of names gives its weights in coefficient order."""
    expected = [weights.get(n, 0) for n in NAMES]
    np.testing.assert_allclose(parse_combination(text, NAMES), expected)


@pytest.mark.parametrize("text", ["agee - time", "age time", "2*", "__import__('os')"])
def test_unknown_name_lists_the_coefficients(text):
    """An unknown name (or anything else) is refused, listing the coefficients."""
    with pytest.raises(ValueError, match="not a coefficient") as info:
        parse_combination(text, NAMES)
    assert ", ".join(NAMES) in str(info.value)


def test_contrasts_by_name_in_a_config(study):
    """Strings are T contrasts, lists of strings F ones; numbers still work."""
    config = read(study)
    config["contrasts"] = [
        {"c1": {"name": "a", "vector": "age - time"}},
        {"c2": {"name": "b", "vector": "0.5*time + 0.5*age"}},
        {"c3": {"name": "c", "vector": ["age", "group[T.pat]"]}},
        {"c4": {"name": "d", "vector": [0, 0, 1, 0]}},
        {"c5": {"name": "e", "vector": "[0 0 0 1]"}},
    ]
    settings, _ = load(config, study.parent)
    L = [c.L.tolist() for c in settings.contrasts]
    assert L == [
        [0, -1, 1, 0],
        [0, 0.5, 0.5, 0],
        [[0, 0, 1, 0], [0, 0, 0, 1]],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
    ]
    assert [c.is_f for c in settings.contrasts] == [False, False, True, False, False]
    titles = [v["title"] for v in contrast_volumes(settings.contrasts).values()]
    assert titles[0] == "c1 (a: age - time), T contrast"
    assert titles[2] == "c3 (c: age; group[T.pat]), F contrast"
    assert titles[3] == "c4 (d), T contrast"


@pytest.mark.parametrize(
    ("fixture", "vector", "words"),
    [
        (
            "study",
            "age - tiem",
            ["'tiem' is not a coefficient", "Intercept, time, age"],
        ),
        ("tiny_study", "age - time", ["needs a formula"]),  # X has no names
        ("study", ["age", 1], ["mixes coefficient names"]),
    ],
)
def test_bad_contrast_by_name(request, fixture, vector, words):
    """An unknown name (listing the coefficients), names without a formula, a mix."""
    path = request.getfixturevalue(fixture)
    config = read(path)
    config["contrasts"][0]["c1"]["vector"] = vector
    one(problems_of(config, path.parent), "contrasts c1 (time)", *words)


# ---- the table -------------------------------------------------------------------


def test_missing_rows_dropped_with_a_notice(study, caplog):
    """Rows with n/a or empty cells in a used column are dropped, named by row."""
    root = study.parent
    path = root / "data" / "participants.tsv"
    df = pd.read_csv(path, sep="\t", dtype=str)
    df.loc[2, "age"] = "n/a"
    df.loc[5, "image"] = ""
    df.loc[7, "unused"] = ""  # a column the model does not use: no effect
    df.to_csv(path, sep="\t", index=False)
    with caplog.at_level(logging.WARNING, logger="blmm_scripts.formula"):
        _, inputs = load(read(study), root)
    assert inputs.n_images == 10
    assert inputs.formula.dropped == ("sub-02", "sub-03")
    message = caplog.text
    assert "2 of 12 rows dropped" in message and "sub-02, sub-03" in message
    assert "age: 1" in message and "image: 1" in message


def test_paths_relative_to_the_table(study):
    """Image and mask paths are resolved against the table's folder."""
    _, inputs = load(read(study), study.parent)
    assert inputs.images[0] == study.parent / "data" / "images" / "sub-01_ses-1.nii"
    assert inputs.data_masks[0].parent == study.parent / "data" / "masks"


def test_csv_table(study):
    """A .csv table works as a .tsv one."""
    root = study.parent
    df = io.read_table(root / "data" / "participants.tsv")
    df.to_csv(root / "data" / "participants.csv", index=False)
    config = read(study) | {"data": "data/participants.csv"}
    _, inputs = load(config, root)
    _, expected = load(read(study), root)
    np.testing.assert_array_equal(inputs.X, expected.X)


def test_inputs_yml_holds_the_design(study):
    """to_dict gives the formula keys; the design names every volume."""
    settings, inputs = load(read(study), study.parent)
    resolved = settings.to_dict()
    assert resolved["model"] == "~ time + age + group + (1 | participant_id)"
    assert "X" not in resolved and "Y_files" not in resolved
    assert resolved["contrasts"][2]["c3"]["vector"] == ["time", "group[T.pat]"]
    described = inputs.formula.describe()
    assert described["coefficients"] == ["Intercept", "time", "age", "group[T.pat]"]
    assert described["factors"][0]["levels"] == 6
    assert described["factors"][0]["labels"][0] == "sub-01"
    # inputs.yml is read back (compare does): the same design
    _, again = load(resolved, study.parent)
    np.testing.assert_array_equal(again.X, inputs.X)


# ---- bad inputs, every problem at once -------------------------------------------


def test_column_the_formula_names_is_missing(study):
    """A fixed-effects column not in the table: named, with the columns listed."""
    config = read(study) | {"model": "~ time + agee + (1 | participant_id)"}
    one(
        problems_of(config, study.parent),
        "model: column 'agee' is not a column of data",
        "columns: participant_id, time, age",
    )


def test_random_effect_column_missing(study):
    """A random-effect covariate not in the table."""
    config = read(study) | {"model": "~ time + (1 + tim | participant_id)"}
    one(problems_of(config, study.parent), "(1 + tim | participant_id)", "'tim'")


def test_grouping_factor_absent(study):
    """A grouping factor that is not a column."""
    config = read(study) | {"model": "~ time + (1 | subject)"}
    one(
        problems_of(config, study.parent),
        "grouping factor 'subject' is not a column",
    )


def test_numeric_term_with_text(study):
    """Text in a column used as a number: the column and the rows are named."""
    path = study.parent / "data" / "participants.tsv"
    df = pd.read_csv(path, sep="\t", dtype=str)
    df.loc[3, "age"] = "unknown"
    df.to_csv(path, sep="\t", index=False)
    one(
        problems_of(read(study), study.parent),
        "column 'age'",
        "numbers with text in it",
        "row sub-02: 'unknown'",
    )


def test_formula_does_not_parse(study):
    """A broken formula is reported with where it breaks."""
    config = read(study) | {"model": "~ time + (1 | participant_id"}
    one(problems_of(config, study.parent), "model:", "unclosed '('", "position 10")


def test_rank_deficient_names_the_aliased(study):
    """A coefficient that copies others is named."""
    path = study.parent / "data" / "participants.tsv"
    df = pd.read_csv(path, sep="\t")
    df["time2"] = 2 * df["time"]
    df.to_csv(path, sep="\t", index=False)
    config = read(study) | {"model": "~ time + age + time2 + (1 | participant_id)"}
    one(problems_of(config, study.parent), "rank deficient", "coefficients", "time2")


@pytest.mark.parametrize("key", ["X", "Z", "Y_files", "data_mask_files"])
def test_data_with_a_blmm_design(study, key):
    """A table together with X, Z, Y_files or data_mask_files: both named."""
    blmm = read(study.parent / "config.yaml")
    config = read(study) | {key: blmm[key]}
    one(problems_of(config, study.parent), f"data and {key}", "one or the other")


def test_model_without_data(tiny_study):
    """A model (or masks) given to a BLMM config is refused."""
    config = read(tiny_study) | {"model": "~ x"}
    one(problems_of(config, tiny_study.parent), "model: needs data")


def test_images_column_missing(study):
    """The images column must exist."""
    config = read(study) | {"images": "img"}
    one(problems_of(config, study.parent), "images: column 'img' is not in data")


def test_image_file_missing_names_the_row(study):
    """A missing image file is named with its row."""
    (study.parent / "data" / "images" / "sub-03_ses-2.nii").unlink()
    one(
        problems_of(read(study), study.parent),
        "data image 6 (row sub-03)",
        "does not exist",
    )


def test_code_in_a_formula_is_refused(study):
    """A Python expression that is not a transform never reaches formulaic."""
    for model in (
        '~ {__import__("pathlib").Path("pwned").touch()} + (1 | participant_id)',
        "~ time + age.__class__ + (1 | participant_id)",
        "~ time + np.random.seed(1) + (1 | participant_id)",
    ):
        problem = one(problems_of(read(study) | {"model": model}, study.parent))
        assert "not allowed" in problem or "not a column" in problem, problem
    assert not (study.parent / "pwned").exists()


def test_all_problems_at_once(study):
    """Formula, table and contrast problems come together in one error."""
    (study.parent / "data" / "images" / "sub-01_ses-2.nii").unlink()
    config = read(study) | {"tol": "-1", "X": "data/X.csv"}
    config["contrasts"][0]["c1"]["vector"] = "tiem"
    problems = problems_of(config, study.parent)
    joined = "\n".join(problems)
    assert len(problems) == 4, problems
    for word in ("tol", "data and X", "sub-01_ses-2.nii", "'tiem'"):
        assert word in joined


# ---- compare between two formula analyses ----------------------------------------


def nesting(study: Path, small: str, large: str, **overrides):
    """Return check_nested of two formula analyses, read as from their inputs.yml."""
    models = []
    contrasts = [{"c1": {"vector": "time"}}]
    for model in (small, large):
        config = read(study) | {"model": model, "contrasts": contrasts} | overrides
        settings, _ = load(config, study.parent)
        resolved = settings.to_dict()  # what inputs.yml holds
        inputs = check_inputs(parse_settings(resolved, study.parent))
        models.append(model_of(resolved, inputs, model))
    return check_nested(*models)


def test_compare_random_slope_added(study):
    """A random slope added to a random intercept: 50:50 chi2_1 : chi2_2."""
    ref = nesting(
        study,
        "~ time + age + group + (1 | participant_id)",
        "~ time + age + group + (1 + time | participant_id)",
    )
    assert ref.dfs == (1, 2) and ref.weights == (0.5, 0.5)


def test_compare_fixed_effect_by_name(study):
    """ML: a fixed effect added is chi2_1; one not contained is named."""
    small = "~ time + age + (1 | participant_id)"
    large = "~ time + age + group + (1 | participant_id)"
    assert nesting(study, small, large, estimation="ML").dfs == (1,)
    with pytest.raises(NotNestedError, match=r"age not in the span"):
        nesting(
            study,
            small,
            "~ time + group + (1 | participant_id)",
            estimation="ML",
        )


def test_table_problems_reported_together(study):
    """A grouping factor absent and text in a number column: both reported."""
    path = study.parent / "data" / "participants.tsv"
    df = pd.read_csv(path, sep="\t", dtype=str)
    df.loc[3, "age"] = "unknown"
    df.to_csv(path, sep="\t", index=False)
    config = read(study) | {"model": "~ time + age + (1 | subject)"}
    problems = problems_of(config, study.parent)
    assert len(problems) == 2, problems
    assert "grouping factor 'subject'" in problems[0]
    assert "column 'age'" in problems[1]


def test_run_summary_names_the_model(study):
    """The report's run summary lists the model and its coefficients."""
    from blmm_scripts.report import RunMaps, run_summary

    settings, inputs = load(read(study), study.parent)
    resolved = settings.to_dict() | {"design": inputs.formula.describe()}
    ones = np.ones((2, 2, 2), int)
    maps = RunMaps(ones, ones * 12, ones, ones, ones.astype(bool))
    rows = run_summary(maps, 12, resolved, None).set_index("item")["value"]
    assert rows["model"] == "~ time + age + group + (1 | participant_id)"
    assert rows["coefficients"] == "Intercept, time, age, group[T.pat]"
