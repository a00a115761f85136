"""The formula front end agrees with lme4/lmerTest fitted with the same formula.

``formula_data.tsv`` (``make_formula_data.py``) is fitted in R by
``formula_reference.R`` with the formula in ``model.txt``,
``~ age * sex + group + time + (1 + time | participant_id)``: a categorical
covariate with three levels, an interaction of a number with a category, a random
intercept and slope on text subject ids, and two rows with age ``n/a``.  Here the
same table and text go through the config's front end (``blmm_scripts.formula``),
the engine fits each voxel, and every coefficient is matched to lme4's by name
(formulaic's ``sex[T.M]``, ``age:sex[T.M]`` are lme4's ``sexM``, ``age:sexM``), so
the test checks the names, the coding of the categories, the rows dropped and the
contrasts written by name, not only the numbers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from blmm_scripts import io
from blmm_scripts.config import Contrast
from blmm_scripts.estimation import fit
from blmm_scripts.formula import build_design, parse_model
from blmm_scripts.inference import infer
from blmm_scripts.products import design_products
from blmm_scripts.structure import Products, RandomEffects, Status, build_Z

HERE = Path(__file__).resolve().parent
MODEL = (HERE / "model.txt").read_text().strip()
# The same contrasts as formula_reference.R, written with formulaic's names.
T_CONTRASTS = {"age_by_sex": "age:sex[T.M]", "b_minus_c": "group[T.b] - group[T.c]"}
F_CONTRASTS = {"group": ("group[T.b]", "group[T.c]")}
# Engine convergence far tighter than the default 1e-6 (see tests/reference/README.md:
# stopping at a change of tol leaves the parameters ~sqrt(2 tol) SE off the optimum).
TOL = 1e-10
# Tolerances: those of the other references (tests/reference/README.md), for the
# same reasons.  lme4 runs with their tight BOBYQA settings but without their Newton
# polish (every fit here is regular and well determined), which leaves its theta
# near 1e-7 relative from the optimum the engine's polish reaches.  Measured
# (REML / ML): logLik 1.1e-12 / 3.8e-12 absolute; beta 5.6e-7 / 2.5e-8, SEs 2.8e-8 /
# 1.9e-8, sigma2 5.5e-8 / 3.2e-8, D 3.8e-7 / 9.6e-8, T and F 6e-8, Satterthwaite df
# 7.6e-8 / 6.3e-8 relative.  So estimates and SEs get the issue-3 bound of 1e-5
# relative (beta with atol 1e-5 SE, for coefficients near 0), the log-likelihood
# 1e-6 absolute, the df 0.5% (lmerTest's numerical Hessian, as elsewhere).
RTOL = 1e-5
LLH_ATOL = 1e-6
DF_RTOL = 5e-3


def lme4_name(name: str) -> str:
    """Return lme4's name of a formulaic coefficient: sex[T.M] -> sexM."""
    return (
        "(Intercept)" if name == "Intercept" else re.sub(r"\[T\.(.*?)\]", r"\1", name)
    )


@cache
def design():
    """Return the front end's design of the reference table."""
    table = io.read_table(HERE / "formula_data.tsv")
    table["image"] = "unused.nii"  # the front end needs an image column
    problems: list[str] = []
    built = build_design(table, parse_model(MODEL), "image", None, HERE, problems)
    assert not problems, problems
    kept = table[table["participant_id"].notna() & table["age"].notna()]
    return built, kept


@cache
def engine(estimation: str):
    """Fit every voxel y0..y5 with the engine; return fits and inferences."""
    built, kept = design()
    X, factors = built.X, list(built.factors)
    re_ = RandomEffects.of(factors)
    XtX, ZtX, ZtZ = design_products(X, factors)
    Z = build_Z(factors)
    Ls = [Contrast(k, np.zeros(0), e).resolve(built.coefficients).L
          for k, e in T_CONTRASTS.items()]  # fmt: skip
    Ls += [Contrast(k, np.zeros((2, 0)), e).resolve(built.coefficients).L
           for k, e in F_CONTRASTS.items()]  # fmt: skip
    out = []
    for col in [c for c in kept if re.fullmatch(r"y\d+", c)]:
        y = kept[col].to_numpy(float)
        products = Products(
            XtX, ZtX, ZtZ, (X.T @ y)[None], (Z.T @ y)[None], np.array([y @ y]),
            np.array([y.size], float),
        )  # fmt: skip
        fr = fit(products, re_, reml=estimation == "REML", tol=TOL)
        out.append((fr, infer(products, re_, fr, Ls)))
    return out


def reference(estimation: str, folder: Path = HERE) -> pd.DataFrame:
    """Return lme4's values, one row per voxel."""
    return pd.read_csv(folder / f"formula_{estimation}.csv")


@pytest.mark.parametrize("estimation", ["REML", "ML"])
def test_same_rows_and_coefficients_as_lme4(estimation):
    """The n/a rows are dropped as lme4's na.omit does; names map to lme4's."""
    built, _ = design()
    ref = reference(estimation)
    assert set(ref["n"]) == {len(built.images)}
    assert built.dropped == ("sub-02", "sub-14")
    lme4_names = [c.removeprefix("beta:") for c in ref if c.startswith("beta:")]
    assert sorted(lme4_name(c) for c in built.coefficients) == sorted(lme4_names)
    assert built.factors[0].n_levels == 30 and built.effects == (("Intercept", "time"),)


@pytest.mark.parametrize("estimation", ["REML", "ML"])
def test_estimates_agree_with_lme4(estimation):
    """logLik, beta and their SEs, sigma2 and D agree, coefficient by name."""
    built, _ = design()
    ref = reference(estimation)
    assert not ref["singular"].any()
    for v, (fr, inf) in enumerate(engine(estimation)):
        r = ref.iloc[v]
        assert fr.status[0] == Status.OK
        np.testing.assert_allclose(fr.llh[0], r["logLik"], rtol=0, atol=LLH_ATOL)
        np.testing.assert_allclose(fr.sigma2[0], r["sigma2"], rtol=RTOL)
        np.testing.assert_allclose(
            fr.D_vech[0], r[["D_0", "D_1", "D_2"]].to_numpy(float), rtol=RTOL
        )
        for j, name in enumerate(built.coefficients):
            se = r[f"se:{lme4_name(name)}"]
            np.testing.assert_allclose(
                fr.beta[0, j], r[f"beta:{lme4_name(name)}"], rtol=RTOL, atol=RTOL * se
            )
            np.testing.assert_allclose(
                np.sqrt(inf.covB[0, j, j]), se, rtol=RTOL, err_msg=name
            )


@pytest.mark.parametrize("estimation", ["REML", "ML"])
def test_named_contrasts_agree_with_lmertest(estimation):
    """T and F contrasts written by name equal lmerTest's, Satterthwaite df too."""
    ref = reference(estimation)
    for v, (_, inf) in enumerate(engine(estimation)):
        r = ref.iloc[v]
        for k, name in enumerate(T_CONTRASTS):
            se = r[f"{name}_se"]
            np.testing.assert_allclose(
                inf.con[0, k], r[f"{name}_est"], rtol=RTOL, atol=RTOL * se
            )
            np.testing.assert_allclose(inf.conSE[0, k], se, rtol=RTOL)
            np.testing.assert_allclose(inf.conT[0, k], r[f"{name}_t"], atol=RTOL)
            np.testing.assert_allclose(
                inf.conT_swedf[0, k], r[f"{name}_df"], rtol=DF_RTOL
            )
        for k, name in enumerate(F_CONTRASTS):
            np.testing.assert_allclose(inf.conF[0, k], r[f"{name}_F"], rtol=RTOL)
            np.testing.assert_allclose(
                inf.conF_swedf[0, k], r[f"{name}_ddf"], rtol=DF_RTOL
            )


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("Rscript") is None, reason="needs R with lmerTest")
def test_r_script_reproduces_committed_values(tmp_path):
    """Rerunning formula_reference.R gives the committed numbers."""
    script = HERE / "formula_reference.R"
    repo = HERE.parents[2]
    subprocess.run(["Rscript", str(script), str(tmp_path)], check=True, cwd=repo)
    for estimation in ("REML", "ML"):
        fresh, committed = reference(estimation, tmp_path), reference(estimation)
        numbers = committed.select_dtypes("number").columns
        np.testing.assert_allclose(
            fresh[numbers].to_numpy(float), committed[numbers].to_numpy(float),
            rtol=1e-8,
        )  # fmt: skip
