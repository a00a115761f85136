"""Names and constants kept in one place agree with the places that must repeat them.

The schema (config/config.schema.yaml) is YAML and cannot import Python: where it
lists a value the engine also defines, these tests keep the two equal.
"""

from __future__ import annotations

import dataclasses

from blmm_scripts.config import schema, schema_defaults
from blmm_scripts.estimation import METHODS
from blmm_scripts.inference import MINLOG
from blmm_scripts.structure import F_STATISTICS, T_STATISTICS, Inference


def test_schema_methods_are_the_engine_methods():
    assert schema()["properties"]["method"]["enum"] == list(METHODS)
    assert schema_defaults()["method"] in METHODS


def test_schema_minlog_is_the_engine_minlog():
    assert schema_defaults()["minlog"] == MINLOG


def test_inference_fields_are_the_statistics():
    """Inference holds covB, resms and exactly the statistics the maps name."""
    fields = {f.name for f in dataclasses.fields(Inference)}
    assert fields == {"covB", "resms", *T_STATISTICS, *F_STATISTICS}
    assert len(set(T_STATISTICS) | set(F_STATISTICS)) == 9


def test_every_setting_with_a_default_has_it_in_the_schema():
    """parse_settings takes each default from the schema: none may be missing."""
    defaults = schema_defaults()
    for key in (
        "MAXMEM",
        "tol",
        "minlog",
        "maxnvb",
        "maxnit",
        "method",
        "estimation",
        "OutputCovB",
        "resms",
        "safeMode",
        "two_sided",
        "keep_intermediates",
        "output_compression",
        "fdr",
        "report",
        "compare_out",
    ):
        assert key in defaults, key
    assert set(schema_defaults("simulate")) == {"seed", "n_subjects", "visits", "shape"}
