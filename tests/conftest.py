"""Shared fixtures: a seeded rng, a tiny NIfTI study in tmp_path, the browser."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def chromium() -> str:
    """Return the chromium executable (skip, or fail where it is required)."""
    path = shutil.which("chromium")
    if path is None:
        reason = "chromium not on PATH (Debian: apt-get install chromium)"
        if os.environ.get("BLMM_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path
