"""The example study: reproducible from its seed, and planned before it exists."""

from __future__ import annotations

import numpy as np
import yaml

from blmm_scripts.config import check_inputs, parse_settings
from blmm_scripts.simulate import make_study, planned_inputs, simulate_study

SMALL = {"n_subjects": 5, "visits": 2, "shape": (6, 5, 4)}


def test_same_seed_same_study():
    """A seed fixes every number; another seed changes them."""
    a, b = make_study(seed=3, **SMALL), make_study(seed=3, **SMALL)
    np.testing.assert_array_equal(a.Y, b.Y)
    np.testing.assert_array_equal(a.data_masks, b.data_masks)
    assert not np.array_equal(a.Y, make_study(seed=4, **SMALL).Y)


def test_planned_inputs_equal_written_inputs(tmp_path, monkeypatch):
    """The parse-time plan of the example equals the checked inputs once written.

    Otherwise `snakemake -n` before the simulation would list other jobs than
    the run after it.
    """
    monkeypatch.chdir(tmp_path)
    config_path = simulate_study("ex", seed=3, **SMALL)
    config = yaml.safe_load(config_path.read_text())
    config["simulate"] = {"folder": "ex", "seed": 3, **SMALL}
    settings = parse_settings(config, tmp_path)
    written = check_inputs(settings)
    planned = planned_inputs(settings)
    assert planned.images == written.images
    assert planned.data_masks == written.data_masks
    assert (planned.shape, planned.n_voxels) == (written.shape, written.n_voxels)
    np.testing.assert_allclose(planned.affine, written.affine)
    np.testing.assert_allclose(planned.X, written.X, rtol=1e-15)
    f_planned, f_written = planned.factors[0], written.factors[0]
    np.testing.assert_array_equal(f_planned.codes, f_written.codes)
    np.testing.assert_allclose(f_planned.design, f_written.design, rtol=1e-15)
