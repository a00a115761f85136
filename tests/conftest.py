"""Shared fixtures: a seeded rng and a tiny NIfTI study written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_study import make_tiny_study


@pytest.fixture
def rng() -> np.random.Generator:
    """Return a seeded generator (BLMM's last commit date)."""
    return np.random.default_rng(20240131)


@pytest.fixture
def tiny_study(tmp_path: Path) -> Path:
    """Return the config path of a tiny study in tmp_path."""
    return make_tiny_study(tmp_path)
