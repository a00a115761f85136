r"""Likelihood-ratio comparison of two nested mixed models, voxel by voxel.

Given two analyses of the same images, a smaller model M0 and a larger model M1,

    Chi2_v = 2 (llh1_v - llh0_v)   (clipped at 0),

and its p-value.  Where the larger model adds variance parameters, the null value
of an added variance is 0, on the boundary of the parameter space, so the usual
chi-square reference does not hold (Self & Liang 1987, Stram & Lee 1994;
Verbeke & Molenberghs 2000, ch. 6.3).  :func:`check_nested` decides the reference
distribution, a mixture of chi-square distributions, sum_i w_i chi2_{d_i}:

====================================================  ============================
nesting                                               reference
====================================================  ============================
ML fits, only fixed effects added (f columns)         chi2_f (interior, standard)
one random effect added to one factor, with its       0.5 chi2_{f+q} +
covariances with the q effects the factor had         0.5 chi2_{f+q+1}
(q = 0: a new factor with one random effect, e.g.     (Stram & Lee 1994; exact
a random intercept; q = 1: a random slope next to a   for one boundary constraint,
random intercept: 0.5 chi2_1 + 0.5 chi2_2)            whatever the information)
anything else with added variance parameters          chi2_{f+d}, d the added
(several effects or factors added at once)            parameters: conservative,
                                                      logged as a warning
====================================================  ============================

f is the number of fixed effects added (ML only: REML log-likelihoods of models
with different fixed effects are not comparable).  The chi-bar-square weights of
several boundary constraints depend on the Fisher information at every voxel and
have no standard closed form; the plain chi2 with all added parameters as degrees
of freedom over-states p (never under-states it), so the test stays valid but loses
power.

-log10 p is computed in log space (log survival functions combined with
``logaddexp``), with an asymptotic series where scipy's ``chi2.logsf`` underflows,
so it is finite and accurate however large Chi2 is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from blmm_scripts.config import Inputs
from blmm_scripts.structure import Factor

logger = logging.getLogger(__name__)

LN10 = np.log(10.0)

#: Below this log survival value scipy's ``chi2.logsf`` is replaced by the series.
_SERIES_BELOW = -600.0


class NotNestedError(ValueError):
    """The two analyses are not nested models of the same data; the message says why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "the models cannot be compared:\n" + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class Model:
    """What a comparison needs to know about one fitted analysis.

    Parameters
    ----------
    images : tuple of str
        The input images, in order.
    data : dict
        Everything else that decides the data at a voxel: the data masks, their
        threshold (values compared with ``==``).
    X : ndarray of shape (n_images, p)
    factors : tuple of Factor
    reml : bool
    label : str
        How messages name the model (e.g. its output folder).
    formula : str or None
        The model formula of a formula analysis (key ``model``), for messages.
    coefficients : tuple of str or None
        The names of the columns of X of a formula analysis.
    """

    images: tuple[str, ...]
    data: dict
    X: NDArray[np.float64]
    factors: tuple[Factor, ...]
    reml: bool
    label: str = ""
    formula: str | None = None
    coefficients: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Reference:
    """The reference distribution of the likelihood-ratio statistic.

    Parameters
    ----------
    dfs : tuple of int
        Degrees of freedom of the mixture's components (0: a point mass at 0).
    weights : tuple of float
        Their weights, summing to 1.
    standard : bool
        False when no standard mixture applies and the plain chi-square (the last
        component) is used as a conservative approximation.
    description : str
        One line per added parameter group and the reference chosen, for logs.
    """

    dfs: tuple[int, ...]
    weights: tuple[float, ...]
    standard: bool
    description: str


def _rank(A: NDArray[np.float64]) -> int:
    """Return the numerical rank of a matrix (0 for an empty one)."""
    return int(np.linalg.matrix_rank(A)) if A.size else 0


def _contains(big: NDArray[np.float64], small: NDArray[np.float64]) -> bool:
    """Return True when the column space of ``small`` lies in that of ``big``."""
    return _rank(np.hstack([big, small])) == _rank(big)


def same_grouping(a: Factor, b: Factor) -> bool:
    """Return True when two factors put the images in the same groups.

    Level labels may differ; the partition of the images must be the same.
    """
    if a.codes.shape != b.codes.shape or a.n_levels != b.n_levels:
        return False
    pairs = np.unique(np.stack([a.codes, b.codes]), axis=1)
    return pairs.shape[1] == a.n_levels


def _name(f: Factor, k: int) -> str:
    """Return a factor's name for messages."""
    return f"f{k + 1}" + (f" ({f.name})" if f.name else "")


def check_nested(small: Model, large: Model) -> Reference:
    """Check that ``small`` is nested in ``large`` and return the LRT's reference.

    Nested means: the same images and data masks; the same estimation; for REML
    the same X (column by column), for ML a column space of X containing the
    smaller one's; every random factor of the smaller model matched by a factor of
    the larger one with the same grouping of the images and random-effect
    covariates spanning at least the smaller one's (so its covariance matrix is a
    special case of the larger one's).  The larger model may add factors.

    Raises
    ------
    NotNestedError
        Listing every reason the models are not nested.
    """
    problems: list[str] = []
    s, lg = (
        (m.label or which) + (f" ({m.formula})" if m.formula else "")
        for m, which in ((small, "small model"), (large, "large model"))
    )
    if small.images != large.images:
        if len(small.images) != len(large.images):
            problems.append(
                f"different images: {s} has {len(small.images)}, {lg} "
                f"{len(large.images)}"
            )
        else:
            i = next(
                i
                for i, (a, b) in enumerate(zip(small.images, large.images, strict=True))
                if a != b
            )
            problems.append(
                f"different images: image {i + 1} is {small.images[i]} in {s} but "
                f"{large.images[i]} in {lg}"
            )
    for key in sorted(set(small.data) | set(large.data)):
        if small.data.get(key) != large.data.get(key):
            problems.append(
                f"different {key}: {small.data.get(key)!r} in {s}, "
                f"{large.data.get(key)!r} in {lg} (the data at a voxel would differ)"
            )
    if problems:  # the rest compares designs row by row
        raise NotNestedError(problems)
    if small.reml != large.reml:
        problems.append(
            f"different estimation: {s} is {'REML' if small.reml else 'ML'}, {lg} "
            f"{'REML' if large.reml else 'ML'} (fit both with the same one)"
        )
    X0, X1 = small.X, large.X
    if small.reml and large.reml:
        if X0.shape != X1.shape or not np.allclose(X0, X1, rtol=1e-12, atol=0):
            problems.append(
                "REML fits with different fixed effects: REML log-likelihoods "
                f"depend on X (p = {X0.shape[1]} in {s}, {X1.shape[1]} in {lg}); "
                "compare fixed effects with estimation: ML, or give both the same X"
            )
    elif not _contains(X1, X0):
        outside = [j for j in range(X0.shape[1]) if not _contains(X1, X0[:, [j]])]
        named = (
            f": {', '.join(small.coefficients[j] for j in outside)} not in the span "
            f"of {lg}'s"
            if small.coefficients
            else ""
        )
        problems.append(
            f"the fixed effects of {s} (X, p = {X0.shape[1]}) are not contained in "
            f"those of {lg} (p = {X1.shape[1]}){named}"
        )
    f_fixed = max(_rank(X1) - _rank(X0), 0) if not small.reml else 0

    matched: dict[int, int] = {}  # small factor -> large factor
    for k, fs in enumerate(small.factors):
        candidates = [
            m
            for m, fl in enumerate(large.factors)
            if m not in matched.values() and same_grouping(fs, fl)
        ]
        if not candidates:
            problems.append(
                f"random factor {_name(fs, k)} of {s} ({fs.n_levels} levels) has no "
                f"factor with the same grouping of the images in {lg}"
            )
            continue
        inside = [
            m for m in candidates if _contains(large.factors[m].design, fs.design)
        ]
        if not inside:
            m = candidates[0]
            problems.append(
                f"random factor {_name(fs, k)} of {s} groups the images as "
                f"{_name(large.factors[m], m)} of {lg}, but its random-effect "
                f"covariates ({fs.n_raneffs} columns) are not contained in those of "
                f"{lg} ({large.factors[m].n_raneffs} columns)"
            )
            continue
        matched[k] = inside[0]
    if problems:
        raise NotNestedError(problems)

    # Added variance parameters, per factor of the large model.
    inverse = {m: k for k, m in matched.items()}
    added: list[tuple[str, int, int]] = []  # (what, q before, q after)
    for m, fl in enumerate(large.factors):
        q1 = _rank(fl.design)
        q0 = _rank(small.factors[inverse[m]].design) if m in inverse else 0
        if q1 > q0:
            what = (
                f"factor {_name(fl, m)}: {q1 - q0} random effect(s) added to {q0}"
                if m in inverse
                else f"new factor {_name(fl, m)} with {q1} random effect(s)"
            )
            added.append((what, q0, q1))
    n_var = sum(q1 * (q1 + 1) // 2 - q0 * (q0 + 1) // 2 for _, q0, q1 in added)
    lines = [what for what, _, _ in added]
    if f_fixed:
        lines.append(f"{f_fixed} fixed effect(s) added")
    if not added and not f_fixed:
        raise NotNestedError([f"{s} and {lg} are the same model: nothing to test"])
    df = f_fixed + n_var
    if not added:
        return Reference((df,), (1.0,), True, "; ".join(lines) + f": chi2_{df}")
    if len(added) == 1 and added[0][2] - added[0][1] == 1:
        dfs = (df - 1, df)
        text = f"; 50:50 mixture of chi2_{df - 1} and chi2_{df}"
        return Reference(dfs, (0.5, 0.5), True, "; ".join(lines) + text)
    return Reference(
        (df,),
        (1.0,),
        False,
        "; ".join(lines)
        + "; no standard mixture when more than one variance is tested on the "
        f"boundary: plain chi2_{df}, conservative (p-values too large)",
    )


def lr_statistic(
    llh_small: NDArray[np.float64], llh_large: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Return Chi2 = 2 (llh_large - llh_small), clipped at 0.

    A negative difference (the larger model's optimiser stopped short of the
    smaller model's optimum, which the larger model contains) is set to 0, as in
    BLMM; it is counted in the log by :func:`compare_voxels`.
    """
    chi2 = 2.0 * (np.asarray(llh_large, float) - np.asarray(llh_small, float))
    return np.maximum(chi2, 0.0)


def chi2_logsf(x: NDArray[np.float64], df: int) -> NDArray[np.float64]:
    """Return log P(chi2_df > x), finite for every finite x.

    df = 0 is the point mass at 0 (log 1 = 0 at x <= 0, -inf above).  In the far
    tail, where scipy underflows, the asymptotic series of the upper incomplete
    gamma function (Abramowitz & Stegun 6.5.32) is used:
    log Q(a, z) = (a - 1) log z - z - log Gamma(a) + log sum_k (a-1)...(a-k) / z^k,
    with a = df/2, z = x/2.
    """
    # scipy.stats is imported here, not at the top: the Snakefile imports this
    # module to plan the compare rule, and scipy.stats costs 0.3 s of every run.
    from scipy import special, stats

    x = np.asarray(x, dtype=np.float64)
    if df == 0:
        return np.where(x > 0, -np.inf, 0.0)
    out = np.asarray(stats.chi2.logsf(x, df), dtype=np.float64)
    tail = ~(out > _SERIES_BELOW) & np.isfinite(x)
    if tail.any():
        a, z = df / 2.0, x[tail] / 2.0
        term = np.ones_like(z)
        total = np.ones_like(z)
        for k in range(1, 40):
            term = term * (a - k) / z
            total = total + term
            if np.all(np.abs(term) < 1e-17 * np.abs(total)):
                break
        out = out.copy()
        out[tail] = (a - 1.0) * np.log(z) - z - special.gammaln(a) + np.log(total)
    return out


def mixture_logsf(
    chi2: NDArray[np.float64], dfs: Sequence[int], weights: Sequence[float]
) -> NDArray[np.float64]:
    """Return log P(X > chi2) for X ~ sum_i weights[i] chi2_{dfs[i]}.

    At chi2 = 0 the p-value is 1 (log 0), point mass included.
    """
    chi2 = np.asarray(chi2, dtype=np.float64)
    out = np.full(chi2.shape, -np.inf)
    for df, w in zip(dfs, weights, strict=True):
        if w > 0:
            out = np.logaddexp(out, np.log(w) + chi2_logsf(chi2, df))
    return np.where(chi2 <= 0, 0.0, out)


def neg_log10_p(chi2: NDArray[np.float64], reference: Reference) -> NDArray[np.float64]:
    """Return -log10 p of Chi2 under a reference distribution (>= 0, finite)."""
    return -mixture_logsf(chi2, reference.dfs, reference.weights) / LN10 + 0.0


@dataclass(frozen=True)
class Comparison:
    """Voxelwise result of a comparison, on the image grid.

    Parameters
    ----------
    mask : ndarray of int32, grid shape
        1 where both analyses have a fit.
    Chi2 : ndarray of float64, grid shape
        Likelihood-ratio statistic, 0 outside the mask.
    Chi2lp : ndarray of float64, grid shape
        -log10 p, 0 outside the mask.
    n_negative : int
        Voxels where the larger model's log-likelihood was below the smaller's
        by more than 1e-6 (Chi2 set to 0 there).
    """

    mask: NDArray[np.int32]
    Chi2: NDArray[np.float64]
    Chi2lp: NDArray[np.float64]
    n_negative: int


def compare_voxels(
    mask_small: NDArray,
    llh_small: NDArray[np.float64],
    mask_large: NDArray,
    llh_large: NDArray[np.float64],
    reference: Reference,
) -> Comparison:
    """Return the mask, Chi2 and -log10 p maps of a comparison.

    Parameters
    ----------
    mask_small, mask_large : ndarray, grid shape
        Non-zero where the analysis has a fit (blmm_vox_mask).
    llh_small, llh_large : ndarray, grid shape
        Log-likelihoods (blmm_vox_llh), same estimation.
    reference : Reference
        From :func:`check_nested`.
    """
    if np.shape(mask_small) != np.shape(mask_large) or np.shape(llh_small) != np.shape(
        llh_large
    ):
        raise ValueError(
            f"maps of different shapes: mask {np.shape(mask_small)} vs "
            f"{np.shape(mask_large)}, llh {np.shape(llh_small)} vs "
            f"{np.shape(llh_large)}"
        )
    mask = (np.asarray(mask_small) != 0) & (np.asarray(mask_large) != 0)
    diff = np.where(
        mask, np.asarray(llh_large, float) - np.asarray(llh_small, float), 0
    )
    n_negative = int((diff < -1e-6).sum())
    chi2 = np.where(mask, lr_statistic(np.zeros_like(diff), diff), 0.0)
    lp = np.where(mask, neg_log10_p(chi2, reference), 0.0)
    logger.info(
        "%d voxels in both masks (%d only in the smaller model's, %d only in the "
        "larger's)",
        int(mask.sum()),
        int(((np.asarray(mask_small) != 0) & ~mask).sum()),
        int(((np.asarray(mask_large) != 0) & ~mask).sum()),
    )
    if n_negative:
        logger.warning(
            "%d voxels where the larger model's log-likelihood is below the "
            "smaller's by more than 1e-6 (not converged?): Chi2 set to 0 there",
            n_negative,
        )
    return Comparison(mask.astype(np.int32), chi2, lp, n_negative)


# --------------------------------------------------------------------------------
# Analyses as written by the workflow
# --------------------------------------------------------------------------------

#: Keys of inputs.yml that decide the data at a voxel: they must match.
DATA_KEYS = ("data_mask_files", "data_mask_thresh")
#: Keys that only select voxels: differences are logged, the masks intersected.
VOXEL_KEYS = ("Missingness", "analysis_mask", "safeMode")


#: Suffixes of output maps, the ones tried first first (``.nii`` last).
MAP_SUFFIXES = (".nii.gz", ".func.gii", ".dscalar.nii", ".tsv", ".nii")


def map_suffix_of(outdir: str) -> str:
    """Return the suffix of a finished analysis' maps: the one its llh map has.

    ``.nii`` when none exists yet (Snakemake then names the missing file).
    """
    root = Path(outdir)
    return next(
        (s for s in MAP_SUFFIXES if (root / f"blmm_vox_llh{s}").exists()), ".nii"
    )


def analysis_files(outdir: str) -> dict[str, str]:
    """Return the files of a finished analysis that a comparison reads.

    ``inputs.yml`` and ``blmm_vox_{llh,mask}`` with the suffix the analysis used
    (:func:`map_suffix_of`).
    """
    root = Path(outdir)
    suffix = map_suffix_of(outdir)
    return {
        "inputs": str(root / "inputs.yml"),
        "llh": str(root / f"blmm_vox_llh{suffix}"),
        "mask": str(root / f"blmm_vox_mask{suffix}"),
    }


def model_of(resolved: dict, inputs: Inputs, label: str) -> Model:
    """Return the :class:`Model` of an analysis from its inputs.yml and inputs.

    Parameters
    ----------
    resolved : dict
        The analysis' ``inputs.yml`` (its resolved config).
    inputs : Inputs
        Its checked inputs (images, X, factors), from
        :func:`blmm_scripts.config.check_inputs`.
    label : str
        How messages name the analysis.
    """
    data = {key: resolved.get(key) for key in DATA_KEYS}
    if inputs.data_masks is not None:  # the masks themselves, not the list file
        data["data_mask_files"] = tuple(str(p) for p in inputs.data_masks)
    images = (
        tuple(str(p) for p in inputs.images)
        if inputs.table is None
        else tuple(f"{inputs.table.path} row {r + 1}" for r in inputs.table.rows)
    )
    return Model(
        images,
        data,
        inputs.X,
        tuple(inputs.factors),
        str(resolved.get("estimation", "REML")).upper() == "REML",
        label,
        resolved.get("model"),
        inputs.formula.coefficients if inputs.formula is not None else None,
    )


def voxel_rule_differences(small: dict, large: dict) -> list[str]:
    """Return the voxel-selection settings that differ between two inputs.yml."""
    return [
        f"{key}: {small.get(key)!r} vs {large.get(key)!r}"
        for key in VOXEL_KEYS
        if small.get(key) != large.get(key)
    ]
