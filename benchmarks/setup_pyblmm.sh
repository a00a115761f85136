#!/usr/bin/env bash
# Create benchmarks/.venv-pyblmm with pyblmm 0.1.1, the original BLMM, for the side-by-side runs.
# pyblmm needs numpy<2 and pandas<3; its console script `blmm <config>` starts a dask
# LocalCluster (clusterType: local), so dask, distributed and dask-jobqueue must import.
# Usage: bash benchmarks/setup_pyblmm.sh [python]   (idempotent; rerun to repair)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-pyblmm"
python="${1:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet 'pyblmm==0.1.1' 'numpy<2' 'pandas<3'
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import blmm  # noqa: F401  (the package pyblmm installs)
for name in ("pyblmm", "numpy", "pandas", "scipy", "nibabel", "dask", "distributed"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} missing")
PY
echo "pyblmm ready: $venv/bin/blmm"
