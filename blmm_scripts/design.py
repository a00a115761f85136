"""The design of an analysis: X, the random factors and the analysis-mask voxels.

Written once by the setup rule (``setup/design.npz``, :meth:`Design.to_arrays`) and
read by every later job (:meth:`Design.from_arrays`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from blmm_scripts import io
from blmm_scripts.formula import build_design, parse_model
from blmm_scripts.masks import analysis_voxels
from blmm_scripts.structure import Factor, RandomEffects

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Design:
    """What every job needs to know about the analysis.

    Parameters
    ----------
    X : ndarray of shape (n_images, p)
    factors : tuple of Factor
    voxels : ndarray of shape (n_voxels,)
        Flat C-order indices of the analysis-mask voxels, in voxel-batch order.
    shape : tuple of int
        The image grid.
    """

    X: NDArray[np.float64]
    factors: tuple[Factor, ...]
    voxels: NDArray[np.intp]
    shape: tuple[int, ...]

    @property
    def random_effects(self) -> RandomEffects:
        """Sizes of the random-effects part."""
        return RandomEffects.of(list(self.factors))

    def summary(self) -> dict[str, Any]:
        """Return the design's sizes (for the setup log)."""
        re = self.random_effects
        return {
            "n_images": int(self.X.shape[0]),
            "p": int(self.X.shape[1]),
            "q": int(re.q),
            "factors": [
                {"name": f.name, "levels": int(f.n_levels), "raneffs": f.n_raneffs}
                for f in self.factors
            ],
            "shape": list(self.shape),
            "n_voxels": int(self.voxels.size),
        }

    def to_arrays(self) -> dict[str, NDArray]:
        """Return the design as named arrays (for ``.npz``)."""
        out = {"X": self.X, "voxels": self.voxels, "shape": np.asarray(self.shape)}
        for k, f in enumerate(self.factors):
            out[f"codes_{k}"] = f.codes
            out[f"design_{k}"] = f.design
            out[f"n_levels_{k}"] = np.asarray(f.n_levels)
            out[f"name_{k}"] = np.asarray(f.name)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, NDArray]) -> Design:
        """Inverse of :meth:`to_arrays`."""
        factors = []
        k = 0
        while f"codes_{k}" in arrays:
            factors.append(
                Factor(
                    arrays[f"codes_{k}"].astype(np.intp),
                    arrays[f"design_{k}"],
                    int(arrays[f"n_levels_{k}"]),
                    str(arrays[f"name_{k}"]),
                )
            )
            k += 1
        return cls(
            arrays["X"],
            tuple(factors),
            arrays["voxels"].astype(np.intp),
            tuple(int(s) for s in arrays["shape"]),
        )


def read_design(
    X_path: Path,
    factor_files: Sequence[tuple[Path, Path]],
    names: Sequence[str],
    analysis_mask: Path | None,
    first_image: Path | tuple[int, ...],
) -> Design:
    """Read X, the random factors and the analysis-mask voxels from their files."""
    X = io.read_numeric_table(X_path)
    factors = tuple(
        Factor.from_labels(io.read_numeric_table(f)[:, 0], io.read_numeric_table(d), n)
        for (f, d), n in zip(factor_files, names, strict=True)
    )
    return _with_voxels(X, factors, analysis_mask, first_image)


def read_formula_design(
    data: Path,
    model: str,
    images: str,
    masks: str | None,
    analysis_mask: Path | None,
    first_image: Path | tuple[int, ...],
) -> Design:
    """Build X and the random factors from a participants table and a formula.

    The same function as the config check (:func:`blmm_scripts.formula.build_design`),
    so the design equals what the check saw; its names go to the log.

    Raises
    ------
    ValueError
        If the table no longer gives a design (it changed since the check).
    """
    problems: list[str] = []
    built = build_design(
        io.read_table(data),
        parse_model(model),
        images,
        masks,
        Path(data).parent,
        problems,
        label=f"data {data}",
    )
    if built is None:
        raise ValueError("; ".join(problems))
    logger.info("formula %s: %s", model, built.describe())
    return _with_voxels(built.X, built.factors, analysis_mask, first_image)


def _with_voxels(
    X: NDArray[np.float64],
    factors: tuple[Factor, ...],
    analysis_mask: Path | None,
    first_image: Path | tuple[int, ...],
) -> Design:
    """Return the design with the analysis-mask voxels of the first image's grid.

    ``first_image`` may be the grid itself (a table study's parcels: ``(n,)``).
    """
    shape = (
        tuple(first_image)
        if isinstance(first_image, tuple | list)
        else io.image_grid(first_image)[0]
    )
    mask = io.load_volume(analysis_mask) if analysis_mask else None
    design = Design(X, factors, analysis_voxels(mask, shape), shape)
    logger.info("design: %s", design.summary())
    return design
