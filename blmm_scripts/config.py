"""Read and check a BLMM configuration (``blmm_config.yml``).

Two steps, both collecting every problem before raising one :class:`ConfigError`:

1. :func:`parse_settings` turns the config mapping (already validated against
   ``config/config.schema.yaml``) into a frozen :class:`Settings`: values parsed
   (``MAXMEM: "2**32"``, ``tol: "1e-6"``, ``MinPercent: "10%"``, contrast strings such
   as ``"[1 0 0]"``), ranges checked, relative paths resolved against the working
   directory (where BLMM users run, i.e. Snakemake's working directory).
2. :func:`check_inputs` reads the lists, CSV files and image headers and checks the
   data: X has one row per image, no NaN and full column rank; every contrast has p
   columns and F contrasts full row rank; factor and design files have one row per
   image and numbers only; one data mask per image; every image and mask exists and
   has the shape and affine of the first image.

A formula analysis (keys ``data``, ``images``, ``masks``, ``model``) replaces
``Y_files``, ``X``, ``Z`` and ``data_mask_files``: step 1 parses the formula
(:func:`blmm_scripts.formula.parse_model`), step 2 reads the participants table,
builds X and the factors (:func:`blmm_scripts.formula.build_design`) and resolves
the contrasts written with coefficient names (``"age - time"``).

Every default is written once, in the schema (``config/config.schema.yaml``), and
read from there (:func:`schema_defaults`).  No value is ever passed to ``eval``: the
value grammar is in :mod:`blmm_scripts.values`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray

from blmm_scripts import grouped, io
from blmm_scripts.estimation import METHODS
from blmm_scripts.formula import (
    FormulaDesign,
    FormulaError,
    ModelFormula,
    build_design,
    parse_model,
)
from blmm_scripts.masks import analysis_voxels
from blmm_scripts.structure import Factor, RandomEffects
from blmm_scripts.values import (
    parse_combination,
    parse_float,
    parse_fraction,
    parse_int_expr,
    parse_vector,
)

logger = logging.getLogger(__name__)

#: Keys BLMM needed for its dask cluster; accepted and ignored here.
IGNORED_KEYS = ("clusterType", "numNodes", "voxelBatching")

#: Keys of a BLMM design that a formula analysis (key ``data``) replaces.
BLMM_DESIGN_KEYS = ("Y_files", "X", "Z", "data_mask_files")

#: Forms of the sufficient statistics (key ``statistics``; see
#: :mod:`blmm_scripts.grouped`).
STATISTICS = ("auto", "grouped", "levels")

#: The JSON Schema of a config: the keys, their types and their defaults.
SCHEMA = Path(__file__).resolve().parent.parent / "config" / "config.schema.yaml"


@cache
def schema() -> dict[str, Any]:
    """Return the config schema (read once per process)."""
    return yaml.safe_load(SCHEMA.read_text())


def schema_defaults(key: str | None = None) -> dict[str, Any]:
    """Return the schema's defaults of the top-level keys, or of one object key."""
    props = schema()["properties"]
    if key is not None:
        props = props[key]["properties"]
    return {k: v["default"] for k, v in props.items() if "default" in v}


class ConfigError(ValueError):
    """Every problem found in a config, reported at once.

    Parameters
    ----------
    problems : list of str
        One line per problem, each naming the key or file and what is wrong.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"The BLMM config has {len(self.problems)} problem(s); nothing was run:"
            f"\n{lines}"
        )


# --------------------------------------------------------------------------------
# Settings: the parsed config, no file access beyond path resolution
# --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FactorSpec:
    """One random factor of the config (``Z: - f1: {name, factor, design}``)."""

    name: str
    factor: Path
    design: Path


@dataclass(frozen=True)
class Contrast:
    """One contrast: ``L`` of shape (p,) for a T contrast or (m, p) for an F one.

    A contrast written with coefficient names (``"age - time"``, or a list of such
    strings for an F contrast) keeps them in ``expression``; until the design is
    built (:func:`check_inputs`) its ``L`` has no columns.
    """

    name: str
    L: NDArray[np.float64]
    expression: str | tuple[str, ...] | None = None

    @property
    def is_f(self) -> bool:
        """True for an F contrast (a 2-D vector, even with one row)."""
        return self.L.ndim == 2

    def resolve(self, names: tuple[str, ...]) -> Contrast:
        """Return the contrast with ``L`` built from coefficient names.

        Raises
        ------
        ValueError
            For a name that is not a coefficient (listing them).
        """
        if self.expression is None:
            return self
        if isinstance(self.expression, str):
            L = parse_combination(self.expression, names)
        else:
            L = np.array([parse_combination(e, names) for e in self.expression])
        return Contrast(self.name, L, self.expression)


def _named_contrast(value: Any) -> str | tuple[str, ...] | None:
    """Return a contrast's coefficient-name expression, or None for numbers.

    A string is an expression unless it is BLMM's bracketed numbers
    (``"[1 0 0]"``) or a number; a list of strings is an F contrast.

    Raises
    ------
    ValueError
        For a list mixing names and numbers.
    """
    if isinstance(value, str):
        text = value.strip()
        return None if text.startswith("[") or _is_number(text) else text
    if isinstance(value, list) and any(isinstance(v, str) for v in value):
        if not all(isinstance(v, str) for v in value):
            raise ValueError(
                f"{value!r} mixes coefficient names and numbers (an F contrast by "
                "name is a list of strings such as ['age', 'time'])"
            )
        return tuple(v.strip() for v in value)
    return None


def _is_number(text: str) -> bool:
    """Return True when a string is a plain number."""
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Simulation:
    """The example's ``simulate`` key: a study simulated from a seed.

    See :func:`blmm_scripts.simulate.make_study`; ``folder`` is resolved against
    the working directory.
    """

    folder: Path
    seed: int
    n_subjects: int
    visits: int
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class Settings:
    """A parsed BLMM config; paths are absolute.

    Field names follow BLMM's keys where they exist; see ``config/config.yaml``.
    """

    Y_files: Path | None
    X: Path | None
    factors: tuple[FactorSpec, ...]
    outdir: Path
    contrasts: tuple[Contrast, ...]
    MAXMEM: int
    data_mask_files: Path | None
    data_mask_thresh: float | None
    min_percent: float | None
    min_n: float | None
    analysis_mask: Path | None
    output_cov_b: bool
    minlog: float
    method: str
    tol: float
    maxnvb: int
    maxnit: int
    resms: bool
    safe_mode: bool
    reml: bool
    two_sided: bool
    keep_intermediates: bool
    output_compression: bool
    statistics: str = "auto"
    fdr: bool = False
    report: bool = False
    compare_small: Path | None = None
    compare_large: Path | None = None
    compare_out: Path | None = None
    simulate: Simulation | None = None
    data: Path | None = None
    images: str | None = "image"
    masks: str | None = None
    model: ModelFormula | None = None
    Y_table: Path | None = None
    surface_mesh: tuple[Path, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the resolved config in BLMM's key layout (for ``inputs.yml``)."""
        out: dict[str, Any]
        if self.data is not None:
            out = {"data": str(self.data)}
            out |= (
                {"Y_table": str(self.Y_table)}
                if self.Y_table
                else {"images": self.images}
            )
            if self.masks is not None:
                out["masks"] = self.masks
            out["model"] = self.model.text if self.model else None
        else:
            out = {
                **(
                    {"Y_table": str(self.Y_table)}
                    if self.Y_table
                    else {"Y_files": str(self.Y_files)}
                ),
                "X": str(self.X),
                "Z": [
                    {
                        f"f{i + 1}": {
                            "name": f.name,
                            "factor": str(f.factor),
                            "design": str(f.design),
                        }
                    }
                    for i, f in enumerate(self.factors)
                ],
            }
        out["outdir"] = str(self.outdir)
        out["contrasts"] = [
            {
                f"c{i + 1}": {
                    "name": c.name,
                    "vector": c.L.tolist()
                    if c.expression is None
                    else c.expression
                    if isinstance(c.expression, str)
                    else list(c.expression),
                }
            }
            for i, c in enumerate(self.contrasts)
        ]
        out["MAXMEM"] = self.MAXMEM
        if self.data_mask_files is not None:
            out["data_mask_files"] = str(self.data_mask_files)
        if self.data_mask_thresh is not None:
            out["data_mask_thresh"] = self.data_mask_thresh
        miss = {}
        if self.min_percent is not None:
            miss["MinPercent"] = self.min_percent
        if self.min_n is not None:
            miss["MinN"] = self.min_n
        if miss:
            out["Missingness"] = miss
        if self.analysis_mask is not None:
            out["analysis_mask"] = str(self.analysis_mask)
        out.update(
            OutputCovB=self.output_cov_b,
            minlog=self.minlog,
            method=self.method,
            tol=self.tol,
            maxnvb=self.maxnvb,
            maxnit=self.maxnit,
            resms=int(self.resms),
            safeMode=int(self.safe_mode),
            estimation="REML" if self.reml else "ML",
            two_sided=self.two_sided,
            keep_intermediates=self.keep_intermediates,
            output_compression=self.output_compression,
        )
        if self.surface_mesh:
            out["surface_mesh"] = [str(p) for p in self.surface_mesh]
        return out


def _resolve(value: str, workdir: Path) -> Path:
    """Resolve a config path against the working directory (as BLMM did)."""
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else workdir / path


def _numbered(items: Any, prefix: str, key: str, problems: list[str]) -> list[dict]:
    """Return the bodies of a BLMM list ``- f1: {...}``, ``- f2: {...}`` in order."""
    if not isinstance(items, list) or not items:
        problems.append(f"{key}: must be a non-empty list of {prefix}1, {prefix}2, ...")
        return []
    bodies = []
    for i, item in enumerate(items):
        want = f"{prefix}{i + 1}"
        if not isinstance(item, dict) or list(item) != [want]:
            got = list(item) if isinstance(item, dict) else item
            problems.append(f"{key}[{i}]: expected one key {want!r}, got {got!r}")
            bodies.append({})
        else:
            bodies.append(item[want] or {})
    return bodies


def _flag(value: Any) -> bool:
    """Return a BLMM 0/1/True/False switch as a bool."""
    return bool(int(value)) if not isinstance(value, bool) else value


def parse_settings(config: dict[str, Any], workdir: Path) -> Settings:
    """Parse a BLMM config mapping into :class:`Settings`.

    Parameters
    ----------
    config : dict
        The config as loaded from YAML (schema defaults may already be filled in).
    workdir : Path
        Directory that relative paths are resolved against.

    Raises
    ------
    ConfigError
        Listing every problem found.
    """
    problems: list[str] = []
    settings = _parse_settings(config, workdir, problems)
    if problems:
        raise ConfigError(problems)
    return settings


def _parse_settings(
    config: dict[str, Any], workdir: Path, problems: list[str]
) -> Settings | None:
    """Parse a config, appending problems; None if a required key is missing.

    Values with a problem are replaced by their defaults (or left out, for a
    contrast), so that the data can still be checked for further problems.
    """
    workdir = Path(workdir).resolve()

    for key in IGNORED_KEYS:
        if key in config:
            logger.warning(
                "Config key %r is accepted for BLMM compatibility and ignored "
                "(Snakemake schedules the jobs; see README).",
                key,
            )

    def given(key: str) -> bool:
        """Return True when a key has a value."""
        return config.get(key) not in (None, "", [])

    formula = given("data")
    table = given("Y_table")
    required = ("data", "model") if formula else ("X", "Z")
    for key in (*required, "outdir", "contrasts"):
        if not given(key):
            problems.append(f"{key}: required key is missing or empty")
    if not formula and not table and not given("Y_files"):
        problems.append(
            "Y_files: required key is missing or empty (or give Y_table, a table of "
            "parcel values)"
        )
    if table:
        for key, what in (
            ("Y_files", "a list of images"),
            ("masks", "a column of data masks"),
            ("data_mask_files", "data masks"),
            ("analysis_mask", "an analysis mask"),
        ):
            if given(key):
                problems.append(
                    f"Y_table and {key}: give one or the other ({key} is {what}; in "
                    "Y_table a missing value is an empty or n/a cell, and a parcel "
                    "left out of the analysis is a column left out of the table)"
                )
    if formula:
        for key in BLMM_DESIGN_KEYS:
            if given(key):
                problems.append(
                    f"data and {key}: give one or the other (with data, the images, "
                    f"the design and the masks come from the table and the model; "
                    f"{key} belongs to a BLMM design)"
                )
    else:
        for key in ("model", "masks"):
            if given(key):
                problems.append(
                    f"{key}: needs data (a participants table, one row per image); "
                    f"a BLMM design (Y_files, X, Z) takes no {key}"
                )
    model = None
    if formula and given("model"):
        try:
            model = parse_model(config["model"])
        except FormulaError as err:
            problems.append(f"model: {err}")

    factors = []
    z_items = [] if formula else config.get("Z") or [None]
    for i, body in enumerate(_numbered(z_items, "f", "Z", problems) if z_items else []):
        if not body:
            continue
        for part in ("factor", "design"):
            if not body.get(part):
                problems.append(f"Z f{i + 1}: '{part}' (a CSV file) is missing")
        if body.get("factor") and body.get("design"):
            factors.append(
                FactorSpec(
                    str(body.get("name", f"f{i + 1}")),
                    _resolve(body["factor"], workdir),
                    _resolve(body["design"], workdir),
                )
            )

    contrasts = []
    cbodies = _numbered(config.get("contrasts") or [None], "c", "contrasts", problems)
    for i, body in enumerate(cbodies):
        if not body:
            continue
        name = str(body.get("name", f"c{i + 1}"))
        if "vector" not in body:
            problems.append(f"contrasts c{i + 1} ({name}): 'vector' is missing")
            continue
        try:
            expression = _named_contrast(body["vector"])
            if expression is None:
                contrasts.append(Contrast(name, parse_vector(body["vector"])))
            elif not formula:
                problems.append(
                    f"contrasts c{i + 1} ({name}): vector {body['vector']!r} names "
                    "coefficients, which needs a formula analysis (keys data and "
                    "model); with X give numbers"
                )
            else:
                rows = (0,) if isinstance(expression, str) else (len(expression), 0)
                contrasts.append(Contrast(name, np.zeros(rows), expression))
        except ValueError as err:
            problems.append(f"contrasts c{i + 1} ({name}): vector {err}")

    defaults = schema_defaults()

    def number(key: str, parser, check=None, what=""):
        """Parse one numeric key, recording a problem instead of raising."""
        default = defaults.get(key)
        value = config.get(key, default)
        if value is None:
            return None
        try:
            out = parser(value)
        except ValueError as err:
            problems.append(f"{key}: {err}")
            return None if default is None else parser(default)
        if check is not None and not check(out):
            problems.append(f"{key}: {value!r} is out of range ({what})")
        return out

    maxmem = number("MAXMEM", parse_int_expr, lambda v: v > 0, "must be > 0")
    thresh = number("data_mask_thresh", parse_float)
    tol = number("tol", parse_float, lambda v: v > 0, "must be > 0")
    minlog = number("minlog", parse_float, lambda v: v <= 0, "<= 0")
    maxnvb = number("maxnvb", parse_int_expr, lambda v: v >= 1, "must be >= 1")
    maxnit = number("maxnit", parse_int_expr, lambda v: v >= 1, "must be >= 1")

    miss = config.get("Missingness") or {}
    if not isinstance(miss, dict):
        problems.append("Missingness: must be a mapping with MinPercent and/or MinN")
        miss = {}
    min_percent = miss.get("MinPercent", miss.get("minpercent"))
    min_n = miss.get("MinN", miss.get("minn"))
    if min_percent is not None:
        try:
            min_percent = parse_fraction(min_percent)
            if not 0 <= min_percent <= 1:
                problems.append(
                    f"Missingness MinPercent: {min_percent} is out of range "
                    "(a fraction in [0, 1] or a percentage such as '10%')"
                )
        except ValueError as err:
            problems.append(f"Missingness MinPercent: {err}")
            min_percent = None
    if min_n is not None:
        try:
            min_n = parse_float(min_n)
            if min_n < 0:
                problems.append(f"Missingness MinN: {min_n} is out of range (>= 0)")
        except ValueError as err:
            problems.append(f"Missingness MinN: {err}")
            min_n = None

    method = str(config.get("method", defaults["method"]))
    if method not in METHODS:
        problems.append(f"method: {method!r} is not one of {', '.join(METHODS)}")
    estimation = str(config.get("estimation", defaults["estimation"]))
    if estimation.upper() not in ("REML", "ML"):
        problems.append(f"estimation: {estimation!r} is not REML or ML")
    statistics = str(config.get("statistics", defaults["statistics"]))
    if statistics not in STATISTICS:
        problems.append(
            f"statistics: {statistics!r} is not one of {', '.join(STATISTICS)}"
        )

    flags = {}
    for key, field_name in (
        ("OutputCovB", "output_cov_b"),
        ("resms", "resms"),
        ("safeMode", "safe_mode"),
        ("two_sided", "two_sided"),
        ("keep_intermediates", "keep_intermediates"),
        ("output_compression", "output_compression"),
        ("fdr", "fdr"),
        ("report", "report"),
    ):
        try:
            flags[field_name] = _flag(config.get(key, defaults[key]))
        except (TypeError, ValueError):
            problems.append(
                f"{key}: {config.get(key)!r} is not a switch (0/1, true/false)"
            )
            flags[field_name] = _flag(defaults[key])

    simulation = None
    if config.get("simulate"):
        sim = schema_defaults("simulate") | config["simulate"]
        simulation = Simulation(
            _resolve(sim["folder"], workdir),
            int(sim["seed"]),
            int(sim["n_subjects"]),
            int(sim["visits"]),
            tuple(int(s) for s in sim["shape"]),
        )

    if not given("outdir") or not (formula or table or given("Y_files")):
        return None
    if not formula and not given("X"):
        return None

    def opt_path(key: str) -> Path | None:
        """Resolve an optional path key."""
        value = config.get(key)
        return _resolve(value, workdir) if value else None

    meshes = config.get("surface_mesh") or []
    meshes = [meshes] if isinstance(meshes, str) else list(meshes)
    return Settings(
        Y_files=None if formula or table else _resolve(config["Y_files"], workdir),
        Y_table=opt_path("Y_table"),
        surface_mesh=tuple(_resolve(str(m), workdir) for m in meshes),
        X=None if formula else _resolve(config["X"], workdir),
        factors=tuple(factors),
        outdir=_resolve(config["outdir"], workdir),
        contrasts=tuple(contrasts),
        MAXMEM=maxmem,
        data_mask_files=opt_path("data_mask_files"),
        data_mask_thresh=thresh,
        min_percent=min_percent,
        min_n=min_n,
        analysis_mask=opt_path("analysis_mask"),
        compare_small=opt_path("compare_small"),
        compare_large=opt_path("compare_large"),
        compare_out=_resolve(
            config.get("compare_out", defaults["compare_out"]), workdir
        ),
        simulate=simulation,
        statistics=statistics,
        minlog=minlog,
        method=method,
        tol=tol,
        maxnvb=maxnvb,
        maxnit=maxnit,
        reml=estimation.upper() == "REML",
        data=opt_path("data"),
        images=None if table else str(config.get("images") or defaults["images"]),
        masks=str(config["masks"]) if given("masks") else None,
        model=model,
        **flags,
    )


# --------------------------------------------------------------------------------
# Inputs: what the data say (checked once, before any job)
# --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """The checked inputs of an analysis.

    Parameters
    ----------
    images : tuple of Path, length n_images
    data_masks : tuple of Path (length n_images) or None
    shape : tuple of int
        Spatial shape of the first image; (vertices,), (grayordinates,) or
        (parcels,) for surface data and tables.
    affine : ndarray of shape (4, 4)
    X : ndarray of shape (n_images, p)
    factors : tuple of Factor
    n_voxels : int
        Voxels in the analysis mask (all voxels of the grid without one).
    contrasts : tuple of Contrast
        The config's contrasts, those written with coefficient names resolved.
    formula : FormulaDesign or None
        What the formula built (names, levels, kept and dropped rows), for a
        formula analysis (key ``data``).
    kind : str
        The images' kind (:data:`blmm_scripts.io.KINDS`): "nifti", "gifti",
        "cifti", or "table" for a Y_table (``images`` is then empty).
    table : TableInput or None
        The Y_table and each image's row in it.
    """

    images: tuple[Path, ...]
    data_masks: tuple[Path, ...] | None
    shape: tuple[int, ...]
    affine: NDArray[np.float64]
    X: NDArray[np.float64]
    factors: tuple[Factor, ...]
    n_voxels: int
    contrasts: tuple[Contrast, ...] = ()
    formula: FormulaDesign | None = None
    kind: str = "nifti"
    table: TableInput | None = None

    @property
    def n_images(self) -> int:
        """Number of images (rows of X)."""
        return len(self.images) if self.table is None else len(self.table.rows)

    @property
    def p(self) -> int:
        """Number of fixed effects (columns of X)."""
        return self.X.shape[1]

    @property
    def random_effects(self) -> RandomEffects:
        """Sizes of the random-effects part."""
        return RandomEffects.of(list(self.factors))


@dataclass(frozen=True)
class TableInput:
    """The values of a table study (key ``Y_table``).

    Parameters
    ----------
    path : Path
    id_column : str
        Its first column: one id per row.
    parcels : tuple of str
        Its other columns, in order: the grid.
    rows : tuple of int, length n_images
        The table's row of each image (row i of X).
    """

    path: Path
    id_column: str
    parcels: tuple[str, ...]
    rows: tuple[int, ...]


@dataclass(frozen=True)
class _Grid:
    """What every image must share with the first: kind, shape, affine, models."""

    kind: str
    shape: tuple[int, ...]
    affine: NDArray[np.float64]
    models: tuple | None


_KIND_NAMES = {"nifti": "NIfTI", "gifti": "GIFTI", "cifti": "CIFTI-2", "table": "TSV"}


def _check_image(path: Path, label: str, grid: _Grid, problems: list[str]) -> None:
    """Record a problem if an image is missing or off the first image's grid."""
    if not path.is_file():
        problems.append(f"{label}: file {path} does not exist")
        return
    kind = io.kind_of(path)
    if kind != grid.kind:
        problems.append(
            f"{label}: {path} is a {_KIND_NAMES[kind]} file, the first image is "
            f"{_KIND_NAMES[grid.kind]} (give every image and mask of one kind)"
        )
        return
    try:
        s, a = io.image_grid(path)
        models = io.brain_models(path)
    except Exception as err:
        problems.append(f"{label}: {path} cannot be read as an image ({err})")
        return
    what = {"gifti": "vertices", "cifti": "grayordinates"}.get(kind)
    if s != grid.shape:
        problems.append(
            f"{label}: {path} has {s[0]} {what}, the first image has {grid.shape[0]}"
            if what
            else f"{label}: {path} has shape {s}, the first image has shape "
            f"{grid.shape}"
        )
    elif not np.allclose(a, grid.affine, rtol=1e-5, atol=1e-4):
        problems.append(f"{label}: {path} has a different affine than the first image")
    elif models != grid.models:
        problems.append(
            f"{label}: {path} has other CIFTI brain models than the first image "
            "(structures, vertices or voxels differ)"
        )


def _check_meshes(
    meshes: tuple[Path, ...], kind: str, images: list[Path], problems: list[str]
) -> None:
    """Record a problem for each surface mesh that does not fit the images."""
    from blmm_scripts import surface_io

    if kind not in ("gifti", "cifti"):
        problems.append(
            f"surface_mesh: {', '.join(map(str, meshes))} given, but the images are "
            f"{_KIND_NAMES[kind]}, not surface data (GIFTI or CIFTI)"
        )
        return
    try:
        sizes = surface_io.mesh_sizes(images[0], kind)
    except Exception:  # the first image's own problem is recorded already
        return
    if len(meshes) > len(sizes):
        problems.append(
            f"surface_mesh: {len(meshes)} meshes for {len(sizes)} surface(s) of the "
            f"images ({', '.join(name for name, _ in sizes) or 'none'})"
        )
    for mesh, (name, n) in zip(meshes, sizes, strict=False):
        if not mesh.is_file():
            problems.append(f"surface_mesh: file {mesh} does not exist")
            continue
        try:
            m = surface_io.mesh_vertices(mesh)
        except Exception as err:
            problems.append(f"surface_mesh: {mesh} {err}")
            continue
        if m != n:
            problems.append(f"surface_mesh: {mesh} has {m} vertices, {name} has {n}")


def _check_table(
    settings: Settings,
    formula: FormulaDesign | None,
    problems: list[str],
    check_values: bool,
) -> TableInput | None:
    """Check a Y_table (every cell, when check_values) and match its rows to X's."""
    from blmm_scripts import table_io

    path = settings.Y_table
    if not path.is_file():
        problems.append(f"Y_table: file {path} does not exist")
        return None
    if path.suffix.lower() not in table_io.TABLE_SUFFIXES:
        problems.append(
            f"Y_table: {path} is not a table (.tsv, .csv, .txt or .parquet); images "
            "are listed in Y_files"
        )
        return None
    try:
        header = table_io.read_header(path)
        ids = (
            table_io.scan(path, settings.MAXMEM)
            if check_values
            else table_io.read_ids(path)
        )
    except (ValueError, OSError) as err:
        problems.append(f"Y_table: {path} {err}")
        return None
    except Exception as err:  # a reader's own error (pyarrow on a bad Parquet file)
        problems.append(f"Y_table: {path} cannot be read as a table ({err})")
        return None
    if formula is None:
        rows = tuple(range(len(ids)))
        return TableInput(path, header.id_column, header.parcels, rows)
    try:
        table_io.check_ids(list(formula.rows))
    except ValueError as err:
        problems.append(
            f"data {settings.data}: {err}; Y_table's rows are matched to data's "
            "rows on data's first column, which must name each image once"
        )
        return None
    where = {v: i for i, v in enumerate(ids)}
    absent = [r for r in formula.rows if r not in where]
    if absent:
        problems.append(
            f"Y_table: {path} has no row for {len(absent)} of the "
            f"{len(formula.rows)} images of data (its first column "
            f"{header.id_column!r} is matched to data's first column): "
            f"{', '.join(absent[:10])}" + (" ..." if len(absent) > 10 else "")
        )
        return None
    extra = len(ids) - len(formula.rows)
    if extra and check_values:
        logger.info(
            "Y_table %s: %d of its %d rows are not images of the model (not in data, "
            "or dropped for a missing value)",
            path,
            extra,
            len(ids),
        )
    rows = tuple(where[r] for r in formula.rows)
    return TableInput(path, header.id_column, header.parcels, rows)


def check_inputs(settings: Settings, check_images: bool = True) -> Inputs:
    """Read the lists, tables and image headers of a config and check the data.

    Parameters
    ----------
    settings : Settings
    check_images : bool
        Read the header of every image and mask (not only the first image's).
        Jobs that Snakemake spawns re-parse the workflow; they skip this, since the
        main process has checked it already.

    Raises
    ------
    ConfigError
        Listing every problem found.
    """
    problems: list[str] = []
    inputs = _check_inputs(settings, problems, check_images)
    if problems:
        raise ConfigError(problems)
    return inputs


def _check_inputs(
    settings: Settings, problems: list[str], check_images: bool = True
) -> Inputs:
    """Check the data of a config, appending problems (see :func:`check_inputs`)."""

    def table(path: Path, label: str) -> NDArray[np.float64] | None:
        """Read a numeric CSV, recording a problem on failure."""
        if not path.is_file():
            problems.append(f"{label}: file {path} does not exist")
            return None
        try:
            return io.read_numeric_table(path)
        except ValueError as err:
            problems.append(f"{label}: {path}: {err}")
            return None

    images: list[Path] = []
    formula = None
    if settings.data is not None:
        formula = _formula_design(settings, problems)
        if formula is not None:
            images = list(formula.images)
    elif settings.Y_table is not None:
        pass
    elif settings.Y_files.is_file():
        images = [Path(p) for p in io.read_path_list(settings.Y_files)]
        if not images:
            problems.append(f"Y_files: {settings.Y_files} lists no images")
    else:
        problems.append(f"Y_files: file {settings.Y_files} does not exist")
    values = None
    if settings.Y_table is not None and (formula is not None or settings.data is None):
        values = _check_table(settings, formula, problems, check_images)
    n = len(images) if values is None else len(values.rows)
    listed = f"Y_table has {n} rows" if values else f"Y_files lists {n} images"

    def image_label(i: int, kind: str = "image") -> str:
        """Return how messages name image (or a table's mask) i, counted from 1."""
        if formula is None:
            return f"Y_files image {i}"
        return f"data {kind} {i} (row {formula.rows[i - 1]})"

    shape, affine, models = (), np.eye(4), None
    kind = "table" if settings.Y_table else "nifti"
    if values is not None:
        shape = (len(values.parcels),)
    if images:
        first = images[0]
        kind = io.kind_of(first)
        if first.is_file():
            try:
                shape, affine = io.image_grid(first)
                models = io.brain_models(first)
            except Exception as err:
                problems.append(f"Y_files: first image {first} cannot be read ({err})")
        else:
            problems.append(f"Y_files: first image {first} does not exist")
        if formula is not None and problems and problems[-1].startswith("Y_files:"):
            problems[-1] = problems[-1].replace("Y_files: first", image_label(1) + ":")
        if kind == "table":
            problems.append(
                f"{image_label(1)}: {first} is a table; a table of parcel values is "
                "given as Y_table (one row per image), not as an image"
            )
            shape = ()
    grid = _Grid(kind, shape, affine, models) if shape and images else None
    if grid is not None and check_images:
        for i, path in enumerate(images[1:], start=2):
            _check_image(path, image_label(i), grid, problems)

    masks = None
    if formula is not None and formula.masks is not None:
        masks = list(formula.masks)
        if grid is not None and check_images:
            for i, path in enumerate(masks, start=1):
                _check_image(path, image_label(i, "mask"), grid, problems)
    elif settings.data_mask_files is not None:
        if settings.data_mask_files.is_file():
            masks = [Path(p) for p in io.read_path_list(settings.data_mask_files)]
            if len(masks) != n:
                problems.append(
                    f"data_mask_files: {settings.data_mask_files} lists {len(masks)} "
                    f"masks but {listed} (one mask per image)"
                )
            elif grid is not None and check_images:
                for i, path in enumerate(masks, start=1):
                    _check_image(path, f"data_mask_files mask {i}", grid, problems)
        else:
            problems.append(
                f"data_mask_files: file {settings.data_mask_files} does not exist"
            )

    n_voxels = int(np.prod(shape)) if shape else 0
    if settings.analysis_mask is not None and grid is not None:
        _check_image(settings.analysis_mask, "analysis_mask", grid, problems)
        if settings.analysis_mask.is_file() and not problems:
            n_voxels = int(analysis_voxels(io.load_volume(settings.analysis_mask)).size)
            if n_voxels == 0:
                problems.append(f"analysis_mask: {settings.analysis_mask} is all zero")
    if settings.surface_mesh:
        _check_meshes(settings.surface_mesh, kind, images, problems)

    X = formula.X if formula else None if settings.data else table(settings.X, "X")
    p = X.shape[1] if formula else None
    if X is not None and not formula:
        p = X.shape[1]
        if n and X.shape[0] != n:
            problems.append(f"X: {settings.X} has {X.shape[0]} rows but {listed}")
        if np.isnan(X).any():
            problems.append(f"X: {settings.X} contains NaN")
        elif np.linalg.matrix_rank(X) < p:
            problems.append(
                f"X: {settings.X} is rank deficient (rank {np.linalg.matrix_rank(X)} "
                f"< {p} columns)"
            )

    factors = list(formula.factors) if formula else []
    for k, spec in enumerate(settings.factors, start=1):
        labels = table(spec.factor, f"Z f{k} factor")
        design = table(spec.design, f"Z f{k} design")
        ok = True
        for arr, part, path in (
            (labels, "factor", spec.factor),
            (design, "design", spec.design),
        ):
            if arr is None:
                ok = False
            elif n and arr.shape[0] != n:
                problems.append(
                    f"Z f{k} {part}: {path} has {arr.shape[0]} rows but {listed}"
                )
                ok = False
            elif np.isnan(arr).any():
                problems.append(f"Z f{k} {part}: {path} contains NaN or empty cells")
                ok = False
        if labels is not None and labels.shape[1] != 1:
            problems.append(
                f"Z f{k} factor: {spec.factor} has {labels.shape[1]} columns "
                "(expected 1)"
            )
            ok = False
        if ok:
            factors.append(Factor.from_labels(labels[:, 0], design, spec.name))

    if settings.statistics == "grouped" and factors and not grouped.applies(factors):
        problems.append(
            "statistics: 'grouped' needs one random factor whose random effect is "
            f"an intercept (a design file of one constant column); this model has "
            f"{len(factors)} factor(s) with "
            f"{', '.join(str(f.n_raneffs) for f in factors)} random effect(s) each"
        )

    contrasts = []
    for i, c in enumerate(settings.contrasts, start=1):
        if formula is not None:
            try:
                c = c.resolve(formula.coefficients)
            except ValueError as err:
                problems.append(f"contrasts c{i} ({c.name}): vector {err}")
        contrasts.append(c)
    if p is not None:
        for i, c in enumerate(contrasts, start=1):
            if c.expression is not None and c.L.shape[-1] == 0:
                continue  # not resolved: reported above
            if c.L.shape[-1] != p:
                problems.append(
                    f"contrasts c{i} ({c.name}): has {c.L.shape[-1]} columns but X "
                    f"has p = {p}"
                )
            elif c.is_f and np.linalg.matrix_rank(c.L) < c.L.shape[0]:
                problems.append(
                    f"contrasts c{i} ({c.name}): F contrast is rank deficient "
                    f"(rank {np.linalg.matrix_rank(c.L)} < {c.L.shape[0]} rows)"
                )

    return Inputs(
        images=tuple(images),
        data_masks=tuple(masks) if masks is not None else None,
        shape=shape,
        affine=affine,
        kind=kind,
        table=values,
        X=X,
        factors=tuple(factors),
        n_voxels=n_voxels,
        contrasts=tuple(contrasts),
        formula=formula,
    )


def _formula_design(settings: Settings, problems: list[str]) -> FormulaDesign | None:
    """Read the participants table and build the formula's design, noting problems."""
    path = settings.data
    if not path.is_file():
        problems.append(f"data: file {path} does not exist")
        return None
    try:
        table = io.read_table(path)
    except ValueError as err:
        problems.append(f"data: {path} {err}")
        return None
    if settings.model is None:  # its problem is already recorded
        return None
    return build_design(
        table,
        settings.model,
        settings.images,
        settings.masks,
        path.parent,
        problems,
        label=f"data {path}",
    )


def load(
    config: dict[str, Any],
    workdir: Path,
    check_images: bool = True,
    planned: Callable[[Settings], Inputs] | None = None,
) -> tuple[Settings, Inputs]:
    """Parse and check a config in one go, reporting every problem of both steps.

    Parameters
    ----------
    config : dict
    workdir : Path
    check_images : bool
        See :func:`check_inputs`.
    planned : callable, optional
        Returns the inputs of a study that a rule has yet to write, from the
        settings alone; used when the config has a ``simulate`` key and its
        ``Y_files`` does not exist yet (the example before it is simulated:
        :func:`blmm_scripts.simulate.planned_inputs`).

    Raises
    ------
    ConfigError
        Listing every problem found, in the values and in the data.
    """
    problems: list[str] = []
    settings = _parse_settings(config, workdir, problems)
    if settings is None:
        raise ConfigError(problems)
    if (
        planned is not None
        and settings.simulate
        and settings.Y_files is not None
        and not settings.Y_files.exists()
    ):
        if problems:
            raise ConfigError(problems)
        return settings, planned(settings)
    inputs = _check_inputs(settings, problems, check_images)
    if problems:
        raise ConfigError(problems)
    return replace(settings, contrasts=inputs.contrasts), inputs
