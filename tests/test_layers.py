"""Layers run one way: core <- store <- {api, worker} <- coscope.

Two checks: importing each layer in a fresh interpreter loads none of the layers it must not know (the
modules a process really ends up with), and no module names such a layer in any import statement, a lazy
one inside a function included (a lazy import that hides a cycle is still a cycle).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the packages it must never import
FORBIDDEN = {
    "core": {"store", "api", "worker", "coscope"},
    "store": {"api", "worker", "coscope"},
    "api": {"worker", "coscope"},
    "worker": {"api", "coscope"},
}


def loaded_after(code: str, tmp_path: Path) -> set[str]:
    """Top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport sys\nprint(' '.join(sorted({name.split('.')[0] for name in sys.modules})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "COSCOPE_HOME": str(tmp_path),
                                               "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_the_api_loads_no_worker_module(tmp_path):
    loaded = loaded_after("import api.main\napi.main.create_app()", tmp_path)
    assert {"api", "store"} <= loaded
    assert not loaded & {"worker", "coscope", "torch", "mlflow", "matplotlib"}


@pytest.mark.parametrize("module", ["worker.tasks", "worker.runner", "worker.dry_run", "worker.mlflow_run"])
def test_the_worker_loads_no_api_module(tmp_path, module):
    loaded = loaded_after(f"import {module}", tmp_path)
    assert "worker" in loaded
    assert not loaded & {"api", "coscope", "torch", "mlflow"}  # mlflow: only once a tracked job starts


def test_the_store_loads_neither_api_nor_worker(tmp_path):
    modules = ", ".join(f"store.{path.stem}" for path in sorted((ROOT / "store").glob("[!_]*.py")))
    loaded = loaded_after(f"import store, {modules}", tmp_path)
    assert not loaded & {"api", "worker", "coscope", "torch", "mlflow"}


def test_the_spec_and_the_cost_load_no_service_layer(tmp_path):
    loaded = loaded_after("import core.spec, core.cost", tmp_path)
    assert not loaded & {"store", "api", "worker", "coscope", "torch"}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages of every import statement in the file, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_or_beside_its_own(package):
    wrong = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
             for path in sorted((ROOT / package).rglob("*.py"))}
    assert not {path: names for path, names in wrong.items() if names}


def extra_only_modules() -> set[str]:
    """Import names of what only the ``[worker]`` and ``[mlflow]`` extras install (torch, matplotlib, mlflow,
    ...): the API image and a plain ``pip install coscope`` have none of them."""
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def name(requirement: str) -> str:
        return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    extras = {name(requirement) for extra in ("worker", "mlflow") for requirement in optional[extra]}
    installed = importlib.metadata.packages_distributions()
    return {module for module, dists in installed.items() if {name(dist) for dist in dists} & extras}


def test_no_api_module_imports_what_only_the_extras_install():
    """Issue 23: a lazy ``from matplotlib.figure import Figure`` in api/ failed every heatmap request on the
    API image. An import anywhere in api/, at any depth, counts."""
    forbidden = extra_only_modules() | {"matplotlib", "torch", "mlflow"}  # named too, in case not installed
    wrong = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & forbidden)
             for path in sorted((ROOT / "api").rglob("*.py"))}
    assert not {path: names for path, names in wrong.items() if names}


def test_benchmarks_import_no_test_module_and_leave_sys_path_alone():
    """bench/ runs as ``python bench/X.py`` on an installed coscope: what it shares with the tests lives in the
    package (coscope.harness, coscope.images), never in tests/."""
    wrong = {str(path.relative_to(ROOT)): ("tests" in imported_packages(path), "sys.path" in path.read_text())
             for path in sorted((ROOT / "bench").glob("*.py"))}
    assert not {path: found for path, found in wrong.items() if any(found)}
