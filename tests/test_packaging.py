"""What pyproject.toml promises: every imported module declared, every package shipped.

Read statically (pyproject.toml and the sources' imports), so these are cheap; the wheel
itself is built, installed and run by tests/test_wheel.py.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FIRST_PARTY = {"composeloop", "hydra_plugins"}
# Modules imported only when an optional feature is used -> (the extra, the distribution it names).
OPTIONAL = {"hypothesis": ("testing", "hypothesis"), "optuna": ("search", "optuna"), "mlflow": ("tracking", "mlflow")}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {normalise(re.match(r"[A-Za-z0-9._-]+", requirement)[0]) for requirement in requirements}


def imported_modules(*folders: str) -> dict[str, list[str]]:
    """Top-level third-party modules imported anywhere under `folders` -> the files importing them."""
    found: dict[str, list[str]] = {}
    local = {*folders, *(path.stem for folder in folders for path in (ROOT / folder).rglob("*.py"))}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top not in local:
                        found.setdefault(top, []).append(str(path.relative_to(ROOT)))
    return found


@functools.cache
def providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # reads every installed distribution: once


def distributions(module: str) -> set[str]:
    """The installed distributions providing a top-level module (``yaml`` -> ``pyyaml``)."""
    return {normalise(name) for name in providers().get(module, [])}


def declared(extra: str | None = None) -> set[str]:
    if extra is None:
        return requirement_names(PROJECT["project"]["dependencies"])
    return requirement_names(PROJECT["project"]["optional-dependencies"][extra])


def test_every_module_the_package_imports_is_declared():
    core = declared()
    for module, files in imported_modules("composeloop", "hydra_plugins").items():
        where = f"{module} (imported by {files[0]})"
        providers = distributions(module)
        assert providers, f"{where}: no installed distribution provides it"
        if module in OPTIONAL:
            extra, distribution = OPTIONAL[module]
            assert distribution in declared(extra), f"{where}: not in the [{extra}] extra"
            assert not (providers | {distribution}) & core, f"{where}: optional, so not a core dependency"
        else:
            assert providers & core, f"{where}: not in [project] dependencies"


def test_the_test_extra_covers_the_suite_and_the_examples():
    test = declared("test")
    included = re.search(r"composeloop\[([\w,]+)\]", " ".join(PROJECT["project"]["optional-dependencies"]["test"]))
    extras = included[1].split(",") if included else []
    available = declared() | test | {name for extra in extras for name in declared(extra)}
    for module, files in imported_modules("tests", "examples", "benchmarks").items():
        assert distributions(module) & available, f"{module} (imported by {files[0]}) is not installed by [test]"


def test_every_optional_feature_has_its_extra():
    extras = PROJECT["project"]["optional-dependencies"]
    assert {extra for extra, _ in OPTIONAL.values()} <= set(extras)
    assert {"test", "docs", "parallel"} <= set(extras)
    # composeloop.testing is for users' own test suites: Hypothesis alone, no pytest or ruff.
    assert declared("testing") == {"hypothesis"}


def package_directories() -> set[str]:
    folders = {path.parent for top in FIRST_PARTY for path in (ROOT / top).rglob("*.py")}
    return {".".join(folder.relative_to(ROOT).parts) for folder in folders} - {"hydra_plugins"}


def test_every_package_of_the_source_tree_ships():
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    assert package_directories() <= listed, f"not in [tool.setuptools] packages: {package_directories() - listed}"
    assert listed - package_directories() == {"composeloop.conf"}  # conf/, mapped into the package


@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_each_supported_python_is_declared(version):
    requires = PROJECT["project"]["requires-python"]
    assert f"Programming Language :: Python :: {version}" in PROJECT["project"]["classifiers"]
    low, high = re.fullmatch(r">=(3\.\d+),<(3\.\d+)", requires).groups()
    assert int(low.split(".")[1]) <= int(version.split(".")[1]) < int(high.split(".")[1])


def test_ci_tests_both_ends_of_requires_python():
    low, high = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", PROJECT["project"]["requires-python"]).groups()
    script = (ROOT / ".ci" / "run").read_text()
    assert f"LOWEST=3.{low} " in script and f"HIGHEST=3.{int(high) - 1}\n" in script
