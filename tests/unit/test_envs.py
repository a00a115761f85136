"""The rules' conda environment in step with pyproject.toml.

A `script:` job also sees the submitting host's site-packages (Snakemake appends
them to sys.path to unpickle its `snakemake` object), so a library missing from the
env can work on the machine that wrote the workflow and fail on a cluster. Hence
these checks on the files rather than on a run.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

# packaging comes with pytest.
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
ENVS = sorted((REPO / "envs").glob("*.yaml"))

#: pyproject dependencies deliberately not in the env, with the reason.
NOT_IN_ENV = {
    "snakemake": (
        "runs on the submitting host; a job unpickles its `snakemake` object with "
        "the host's Snakemake, which the script preamble appends to sys.path"
    ),
    "snakemake-executor-plugin-slurm": (
        "loaded by Snakemake on the host to submit jobs, never by a rule's script"
    ),
    "snakemake-executor-plugin-cluster-generic": (
        "loaded by Snakemake on the host to submit jobs, never by a rule's script"
    ),
}


def _name(name: str) -> str:
    """Return a package name normalised as in PEP 503 (PyYAML -> pyyaml)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _lower_bound(specifier: SpecifierSet) -> Version | None:
    """Return the version of the `>=` clause, or None without one."""
    bounds = [Version(s.version) for s in specifier if s.operator == ">="]
    return max(bounds, default=None)


def _pyproject() -> dict:
    """Return pyproject.toml's [project] table."""
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


def _runtime_dependencies() -> dict[str, SpecifierSet]:
    """Return pyproject's dependencies, name -> specifier."""
    reqs = [Requirement(line) for line in _pyproject()["dependencies"]]
    return {_name(r.name): r.specifier for r in reqs}


def _env_dependencies(path: Path) -> dict[str, SpecifierSet]:
    """Return an env file's conda (and pip) dependencies, name -> specifier.

    Entries must read `name >=x,<y`, the style of envs/; another conda spec
    (`name=1.2`) fails to parse, which is the point.
    """
    entries = []
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        entries += entry.get("pip", []) if isinstance(entry, dict) else [entry]
    reqs = []
    for entry in entries:
        try:
            reqs.append(Requirement(entry))
        except InvalidRequirement:
            pytest.fail(f"{path.name}: {entry!r} does not read `name >=x,<y`")
    return {_name(r.name): r.specifier for r in reqs}


def _package_imports() -> dict[str, str]:
    """Return the third-party modules blmm_scripts imports, module -> a file."""
    found = {}
    for path in sorted((REPO / "blmm_scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names | {"__future__", "blmm_scripts"}:
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_not_in_env_names_pyproject_dependencies():
    """Every package kept out of the env on purpose is a pyproject dependency."""
    stale = sorted(set(NOT_IN_ENV) - set(_runtime_dependencies()))
    assert not stale, f"NOT_IN_ENV names what pyproject.toml lacks: {stale}"


def test_package_imports_are_dependencies():
    """Every third-party module blmm_scripts imports is a pyproject dependency."""
    dists = packages_distributions()
    optional = _pyproject()["optional-dependencies"]["parquet"]
    declared = set(_runtime_dependencies()) | {
        _name(Requirement(line).name) for line in optional
    }
    missing = []
    for module, path in _package_imports().items():
        names = {_name(d) for d in dists.get(module, [module])}
        if not names & declared:
            missing.append(f"{module} (imported in {path}; installs as {names})")
    assert not missing, f"not in pyproject.toml dependencies: {missing}"


@pytest.mark.parametrize("env", ENVS, ids=[p.name for p in ENVS])
def test_env_has_every_runtime_dependency(env):
    """The env lists every runtime dependency, with pyproject's lower bound."""
    in_env = _env_dependencies(env)
    problems = []
    for name, spec in _runtime_dependencies().items():
        if name in NOT_IN_ENV:
            assert name not in in_env, f"{name} is in {env.name}: {NOT_IN_ENV[name]}"
            continue
        if name not in in_env:
            problems.append(f"{name}: missing")
        elif _lower_bound(in_env[name]) != _lower_bound(spec):
            problems.append(
                f"{name}: lower bound {_lower_bound(in_env[name])} in {env.name}, "
                f"{_lower_bound(spec)} in pyproject.toml"
            )
    assert not problems, f"{env.name} out of step with pyproject.toml: {problems}"


@pytest.mark.parametrize("env", ENVS, ids=[p.name for p in ENVS])
def test_env_python_matches_requires_python(env):
    """The env's python has the lower bound of requires-python."""
    python = _env_dependencies(env).get("python")
    assert python is not None, f"{env.name} does not pin python"
    wanted = _lower_bound(SpecifierSet(_pyproject()["requires-python"]))
    assert _lower_bound(python) == wanted, (
        f"python: lower bound {_lower_bound(python)} in {env.name}, "
        f"{wanted} in requires-python"
    )


def test_there_is_an_env():
    """envs/ holds the rules' env (the parametrized tests above run on it)."""
    assert ENVS, "no envs/*.yaml"
