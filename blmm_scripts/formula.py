"""An lme4-style model formula on a participants table: X, the random factors, names.

The config keys ``data`` (a table with one row per image), ``images``, ``masks`` and
``model`` (``"~ age + sex + (1 + time | subject)"``) replace BLMM's hand-built
``Y_files``, ``X`` and ``Z`` files; :func:`build_design` returns exactly the arrays
such files would give (X, level codes in sorted label order, random-effect
covariates), so the rest of the workflow runs unchanged.

- **Fixed effects**: the formula without its bar terms, built by formulaic
  (treatment coding, interactions, ``C(site)``, ``center(age)``, ``np.log(age)``);
  coefficients are named as formulaic and statsmodels name them (``Intercept``,
  ``age``, ``sex[T.M]``, ``age:sex[T.M]``), in formulaic's order.
- **Random effects**, lme4's bar syntax: ``(1 | g)``, ``(1 + x | g)`` and ``(x | g)``
  (an intercept is implied, as in lme4), ``(0 + x | g)``, several bars (crossed
  factors), ``(1 | a:b)`` (levels are the combinations) and ``(1 | site/subject)``,
  expanded as lme4's ``findbars`` does into ``subject:site`` and ``site``.
  ``||`` is refused with a message saying so.
- **Safety**: formulaic evaluates the Python expressions inside a formula's terms;
  every one is checked first (:func:`_check_expression`) to name only columns of
  the table, numbers, strings and formulaic's own transforms (``C``, ``center``,
  ``scale``, ``poly``, ``np.log``, ...).  Nothing else reaches formulaic.

Rows with a missing value (an empty cell or ``n/a``) in a column the model uses,
or a missing image or mask path, are dropped with a warning naming them by the
table's first column.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from blmm_scripts.structure import Factor

if TYPE_CHECKING:  # pandas is imported where a table is read (0.3 s a job)
    import pandas as pd

logger = logging.getLogger(__name__)

#: Functions a term may call: formulaic's transforms and codings, and numpy's
#: elementwise functions through ``np.`` (``np.log(age)``).
TRANSFORMS = frozenset(
    {
        "C", "I", "Q", "center", "scale", "standardize", "poly", "bs", "cr", "cs",
        "cc", "log", "log2", "log10", "exp", "exp2", "exp10", "contr", "Treatment",
        "Sum", "Helmert", "Diff", "Poly",
    }
)  # fmt: skip
NUMPY_FUNCTIONS = frozenset(
    {"log", "log2", "log10", "log1p", "exp", "sqrt", "abs", "square", "power"}
)

#: Level labels of a factor listed in inputs.yml and the setup log (then a count).
SHOWN_LEVELS = 20

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class FormulaError(ValueError):
    """A model formula that cannot be used; the message says where and why."""


# --------------------------------------------------------------------------------
# Parsing the formula text (no data needed)
# --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomTerm:
    """One random factor of the model, after lme4's expansion of ``/``.

    Parameters
    ----------
    effects : str
        The formula of its random-effect covariates (``"1"``, ``"1 + time"``).
    group : tuple of str
        The table columns whose combinations are the levels (one for ``(1 | g)``).
    """

    effects: str
    group: tuple[str, ...]

    @property
    def name(self) -> str:
        """The factor's name as lme4 prints it (``subject:site``)."""
        return ":".join(self.group)

    def __str__(self) -> str:
        """Return the term as lme4 writes it."""
        return f"({self.effects} | {self.name})"


@dataclass(frozen=True)
class ModelFormula:
    """A parsed ``model``: the fixed-effects formula and the random factors."""

    text: str
    fixed: str
    random: tuple[RandomTerm, ...]


def _split_top(text: str, sep: str) -> list[tuple[int, str]]:
    """Split at ``sep`` outside brackets, quotes and backticks; (offset, part) pairs.

    Raises
    ------
    FormulaError
        For unbalanced brackets, naming the position.
    """
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[tuple[str, int]] = []
    quote = ""
    parts, start = [], 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "`'\"":
            quote = ch
        elif ch in "([{":
            stack.append((ch, i))
        elif ch in pairs:
            if not stack or stack[-1][0] != pairs[ch]:
                raise FormulaError(
                    f"unbalanced {ch!r} at position {i + 1} of {text.strip()!r}"
                )
            stack.pop()
        elif ch == sep and not stack:
            parts.append((start, text[start:i]))
            start = i + 1
    if stack:
        ch, i = stack[-1]
        raise FormulaError(f"unclosed {ch!r} at position {i + 1} of {text.strip()!r}")
    if quote:
        raise FormulaError(f"unclosed {quote} in {text.strip()!r}")
    parts.append((start, text[start:]))
    return parts


def _group_terms(text: str, term: str) -> list[tuple[str, ...]]:
    """Return the grouping factors of a bar's right side, ``/`` expanded as lme4."""
    names = []
    for part in text.split("/"):
        cols = tuple(c.strip().strip("`") for c in part.split(":"))
        if not all(cols) or any(re.search(r"[+*()|~]", c) for c in cols):
            raise FormulaError(
                f"the grouping of {term} must be a column, a:b or a/b, got "
                f"{text.strip()!r}"
            )
        names.append(cols)
    # lme4's findbars: a/b/c -> c:b:a, b:a, a (innermost first)
    expanded = []
    for k in range(len(names), 0, -1):
        expanded.append(tuple(c for part in reversed(names[:k]) for c in part))
    return expanded


def parse_model(text: str) -> ModelFormula:
    """Parse an lme4-style formula such as ``"~ age + sex + (1 + time | subject)"``.

    Raises
    ------
    FormulaError
        Saying what does not parse and where.
    """
    from formulaic import Formula
    from formulaic.errors import FormulaicError

    text = str(text)
    parts = _split_top(text, "~")
    if len(parts) != 2:
        raise FormulaError(
            f"{text!r} needs exactly one '~' (write '~ age + sex + ...')"
        )
    lhs, (offset, rhs) = parts[0][1], parts[1]
    if lhs.strip():
        raise FormulaError(
            f"{text!r} has a left-hand side {lhs.strip()!r}; the response is the "
            "images (key 'images'), so write the formula as '~ ...'"
        )
    if not rhs.strip():
        raise FormulaError(f"{text!r} has no terms after '~'")
    fixed, random = [], []
    for start, term in _split_top(rhs, "+"):
        where = f"at position {offset + start + 1 + len(term) - len(term.lstrip())}"
        body = term.strip()
        inner = body[1:-1] if body.startswith("(") and body.endswith(")") else None
        if inner is not None and any(p for _, p in _split_top(inner, "|")[1:]):
            bars = _split_top(inner, "|")
            if len(bars) != 2:
                raise FormulaError(
                    f"{body!r} {where}: '||' (uncorrelated random effects) and other "
                    "forms with several '|' are not supported; write the effects as "
                    "separate terms, e.g. (1 | g) + (0 + x | g)"
                )
            effects = bars[0][1].strip()
            if not effects:
                raise FormulaError(f"{body!r} {where}: nothing before '|'")
            random += [RandomTerm(effects, g) for g in _group_terms(bars[1][1], body)]
        elif "|" in body:
            raise FormulaError(
                f"{body!r} {where}: a random-effect term must be a whole term "
                "'(effects | group)' added with '+'"
            )
        else:
            fixed.append(body)
    fixed_text = " + ".join(fixed) if any(fixed) else "1"
    if not all(fixed):
        raise FormulaError(
            f"{text!r}: a '+' has no term on one side ({rhs.strip()!r} does not parse)"
        )
    for part in [fixed_text, *(t.effects for t in random)]:
        try:
            Formula(part)
        except (FormulaicError, SyntaxError, ValueError) as err:
            raise FormulaError(
                f"{part!r} does not parse: {_ANSI.sub('', str(err)).strip()}"
            ) from err
    return ModelFormula(text, fixed_text, tuple(random))


# --------------------------------------------------------------------------------
# The design from a table
# --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormulaDesign:
    """What a formula builds from a table: the arrays of a BLMM config, with names.

    Parameters
    ----------
    X : ndarray of shape (n_images, p)
    coefficients : tuple of str, length p
        The columns of X (formulaic's names).
    factors : tuple of Factor
        In the formula's order (lme4's expansion of ``/``).
    effects : tuple of tuple of str
        The random-effect names of each factor (columns of its design).
    levels : tuple of tuple of str
        The level labels of each factor, in code order (sorted labels).
    images, masks : tuple of Path
        Absolute paths, one per kept row (masks None without a ``masks`` column;
        images empty for values from a table, key ``Y_table``).
    rows : tuple of str
        The first column of the kept rows.
    dropped : tuple of str
        The first column of the rows dropped for missing values.
    """

    X: NDArray[np.float64]
    coefficients: tuple[str, ...]
    factors: tuple[Factor, ...]
    effects: tuple[tuple[str, ...], ...]
    levels: tuple[tuple[str, ...], ...]
    images: tuple[Path, ...]
    masks: tuple[Path, ...] | None
    rows: tuple[str, ...]
    dropped: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """Return the resolved design for the setup log and ``inputs.yml``."""
        return {
            "images": len(self.rows),
            "coefficients": list(self.coefficients),
            "factors": [
                {
                    "name": f.name,
                    "levels": int(f.n_levels),
                    "q": int(f.n_raneffs),
                    "effects": list(e),
                    "labels": list(labels[:SHOWN_LEVELS])
                    + (
                        [f"... ({len(labels) - SHOWN_LEVELS} more)"]
                        if len(labels) > SHOWN_LEVELS
                        else []
                    ),
                }
                for f, e, labels in zip(
                    self.factors, self.effects, self.levels, strict=True
                )
            ],
            "dropped_rows": list(self.dropped),
        }

    def volumes(self) -> dict[str, list[str]]:
        """Return the volume names of blmm_vox_beta and blmm_vox_D, in map order."""
        d_names = []
        for f, effects in zip(self.factors, self.effects, strict=True):
            for j in range(len(effects)):  # vech: column-wise lower triangle
                for i in range(j, len(effects)):
                    pair = effects[i] if i == j else f"{effects[i]},{effects[j]}"
                    d_names.append(f"{f.name}: {pair}")
        return {"beta": list(self.coefficients), "D": d_names}


def _check_expression(expr: str, columns: set[str]) -> set[str]:
    """Return the names a term's Python expression uses, transforms left out.

    Raises
    ------
    FormulaError
        For any construct other than names, numbers, strings, arithmetic and
        calls of allowed functions.
    """
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as err:
        raise FormulaError(f"term {expr!r} does not parse") from err
    used: set[str] = set()
    allowed = (
        ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.BinOp,
        ast.UnaryOp, ast.keyword, ast.operator, ast.unaryop, ast.Attribute,
    )  # fmt: skip
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            raise FormulaError(
                f"term {expr!r}: {type(node).__name__} is not allowed in a formula "
                "(columns, numbers, arithmetic and transforms such as C(), "
                "center(), np.log() only)"
            )
        if isinstance(node, ast.Attribute) and not (
            isinstance(node.value, ast.Name)
            and (
                (node.value.id == "np" and node.attr in NUMPY_FUNCTIONS)
                or node.value.id == "contr"
            )
        ):
            raise FormulaError(
                f"term {expr!r}: {ast.unparse(node)} is not allowed (numpy functions "
                f"allowed: np.{', np.'.join(sorted(NUMPY_FUNCTIONS))})"
            )
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            raise FormulaError(f"term {expr!r}: the name {node.id!r} is not allowed")
        if (
            isinstance(node, ast.Name)
            and node.id not in ("np", "contr")
            and (node.id in columns or node.id not in TRANSFORMS)
        ):
            used.add(node.id)
        if isinstance(node, ast.Constant) and not isinstance(
            node.value, int | float | str
        ):
            raise FormulaError(f"term {expr!r}: {node.value!r} is not allowed")
    return used


def formula_variables(formula: str, columns: Sequence[str]) -> set[str]:
    """Return the names a formulaic formula uses as data, every term checked safe.

    Names that are not columns of the table are returned too (the caller reports
    them); formulaic's transforms are not.

    Raises
    ------
    FormulaError
        For an expression that is not allowed (see :func:`_check_expression`).
    """
    from formulaic import Formula
    from formulaic.parser.types.factor import Factor as Term

    cols = set(columns)
    used: set[str] = set()
    for term in Formula(formula):
        for factor in term.factors:
            if factor.eval_method == Term.EvalMethod.LOOKUP:
                used.add(factor.expr)
            elif factor.eval_method == Term.EvalMethod.PYTHON:
                used |= _check_expression(factor.expr, cols)
    return used


def _labels(values: pd.DataFrame) -> NDArray:
    """Return one level label per row: the column itself, or 'a:b' combinations."""
    if values.shape[1] == 1:
        col = values.iloc[:, 0]
        return col.to_numpy(dtype=np.float64 if col.dtype.kind in "iuf" else object)
    return values.astype(str).agg(":".join, axis=1).to_numpy(dtype=object)


def _aliased(X: NDArray[np.float64]) -> list[int]:
    """Return the columns of X that are linear combinations of the ones before."""
    kept: list[int] = []
    aliased = []
    for j in range(X.shape[1]):
        if np.linalg.matrix_rank(X[:, [*kept, j]]) > len(kept):
            kept.append(j)
        else:
            aliased.append(j)
    return aliased


def _mixed_columns(table: pd.DataFrame, columns: set[str]) -> dict[str, list[str]]:
    """Return {column: examples} for text columns that are mostly numbers."""
    import pandas as pd

    out = {}
    ids = table.iloc[:, 0].astype(str)
    for col in sorted(columns):
        values = table[col]
        if values.dtype.kind in "if":
            continue
        present = values.notna()
        numeric = pd.to_numeric(values, errors="coerce").notna()
        text = present & ~numeric
        if numeric.any() and text.any():
            out[col] = [
                f"row {ids[i]}: {values[i]!r}" for i in list(values.index[text])[:3]
            ]
    return out


def build_design(
    table: pd.DataFrame,
    model: ModelFormula,
    images: str | None,
    masks: str | None,
    folder: Path,
    problems: list[str],
    label: str = "data",
) -> FormulaDesign | None:
    """Build X, the random factors and the image list of a formula on a table.

    Parameters
    ----------
    table : DataFrame
        One row per image, as read by :func:`blmm_scripts.io.read_table` (missing
        cells NaN, all-number columns numeric).
    model : ModelFormula
    images, masks : str or None
        Columns of image and data-mask paths (masks optional; images None when the
        values come from a table, key ``Y_table``).
    folder : Path
        Relative image and mask paths are resolved against it (the table's folder).
    problems : list of str
        Every problem found is appended (naming the key, column and rows).
    label : str
        How messages name the table (``data: /path/participants.tsv``).

    Returns
    -------
    FormulaDesign or None
        None when a problem stops the design from being built.
    """
    from formulaic import model_matrix
    from formulaic.errors import FormulaicError

    columns = [str(c) for c in table.columns]
    listing = ", ".join(columns)
    n_before = len(problems)
    variables: set[str] = set()
    for where, formula in [
        ("model", model.fixed),
        *((f"model {t}", t.effects) for t in model.random),
    ]:
        try:
            names = formula_variables(formula, columns)
        except FormulaError as err:
            problems.append(f"{where}: {err}")
            continue
        for name in sorted(names - set(columns)):
            problems.append(
                f"{where}: column {name!r} is not a column of {label} (columns: "
                f"{listing})"
            )
        variables |= names & set(columns)
    groups: set[str] = set()
    for term in model.random:
        for col in term.group:
            if col not in columns:
                problems.append(
                    f"model {term}: grouping factor {col!r} is not a column of "
                    f"{label} (columns: {listing})"
                )
            groups.add(col)
    for key, col in (("images", images), ("masks", masks)):
        if col is not None and col not in columns:
            problems.append(
                f"{key}: column {col!r} is not in {label} (columns: {listing})"
            )
    for col, examples in _mixed_columns(table, variables - groups).items():
        problems.append(
            f"{label}: column {col!r}, used by the model, is numbers with text in "
            f"it ({'; '.join(examples)}); a number column holds numbers only (a "
            "missing value: empty or n/a), a category text only"
        )
    if len(problems) > n_before:
        return None

    paths_used = {c for c in (images, masks) if c}
    used = sorted(variables | groups | paths_used)
    ids = table.iloc[:, 0].astype(str)
    missing = table[used].isna().any(axis=1).to_numpy()
    dropped = tuple(ids[missing])
    if missing.any():
        by_col = {c: int(table[c].isna().sum()) for c in used if table[c].isna().any()}
        logger.warning(
            "%s: %d of %d rows dropped for a missing value (%s): %s",
            label,
            int(missing.sum()),
            len(table),
            ", ".join(f"{c}: {k}" for c, k in by_col.items()),
            ", ".join(dropped),
        )
    kept = table.loc[~missing].reset_index(drop=True)
    if kept.empty:
        problems.append(
            f"{label}: every row has a missing value in a column the model uses "
            f"({', '.join(used)})"
        )
        return None

    def matrix(formula: str, where: str) -> pd.DataFrame | None:
        """Return formulaic's model matrix, recording a problem on failure."""
        try:
            return model_matrix(formula, kept, na_action="raise")
        except (FormulaicError, ValueError, TypeError) as err:
            problems.append(f"{where}: {_ANSI.sub('', str(err)).strip()}")
            return None

    Xdf = matrix(model.fixed, "model")
    factors, effects, levels = [], [], []
    for term in model.random:
        Zdf = matrix(term.effects, f"model {term}")
        if Zdf is None:
            continue
        labels = _labels(kept[list(term.group)])
        factor = Factor.from_labels(labels, Zdf.to_numpy(np.float64), term.name)
        factors.append(factor)
        effects.append(tuple(str(c) for c in Zdf.columns))
        levels.append(tuple(str(v) for v in np.unique(labels)))
    if Xdf is None or len(factors) < len(model.random):
        return None
    X = Xdf.to_numpy(np.float64)
    names = tuple(str(c) for c in Xdf.columns)
    aliased = _aliased(X)
    if aliased:
        problems.append(
            f"model: X is rank deficient (rank {X.shape[1] - len(aliased)} < "
            f"{X.shape[1]} columns); aliased with the coefficients before them: "
            f"{', '.join(names[j] for j in aliased)}"
        )
        return None

    def paths(col: str) -> tuple[Path, ...]:
        """Return a path column resolved against the table's folder."""
        return tuple((folder / Path(str(v)).expanduser()).absolute() for v in kept[col])

    return FormulaDesign(
        X=X,
        coefficients=names,
        factors=tuple(factors),
        effects=tuple(effects),
        levels=tuple(levels),
        images=paths(images) if images else (),
        masks=paths(masks) if masks else None,
        rows=tuple(kept.iloc[:, 0].astype(str)),
        dropped=dropped,
    )
