"""The wheel, as a user gets it: built, installed (not editable) into a fresh venv, run elsewhere.

An editable install reads conf/ and the plugins from the checkout; a wheel has only what
pyproject.toml ships. So this builds the wheel (``pip wheel``: the build backend in
isolation, as any installer builds it, from a copy of the sources), checks it holds every module, config and data file
of the source tree, installs it into a new virtual environment, and runs the two commands
a user runs first, from a directory outside the checkout.

The new environment borrows this one's installed packages (a ``.pth`` file naming its
site-packages) so that pip finds the dependencies already satisfied instead of
downloading and unpacking TensorFlow again (minutes); pip still resolves the wheel's
declared requirements against them, and composeloop itself comes from the wheel only (the
editable install's import hook is not active there; the test checks where it imports from).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def run(*command: str | Path, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


# What the build reads; built from a copy, since setuptools leaves build/ in the tree it builds
# (and would ship a module deleted since from a stale build/lib).
SOURCES = ("pyproject.toml", "README.md", "composeloop", "conf", "hydra_plugins")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", out, source, cwd=out)
    (built,) = out.glob("composeloop-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel) -> Path:
    home = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", home / "env", cwd=home)
    python = home / "env" / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=home).stdout.strip()
    borrowed = [path for path in site.getsitepackages() if Path(path).is_dir()]
    (Path(purelib) / "borrowed-dependencies.pth").write_text("\n".join(borrowed) + "\n")
    run(python, "-m", "pip", "install", "--quiet", wheel, cwd=home)
    return python


def test_the_wheel_holds_the_source_tree(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(ROOT)) for top in ("composeloop", "hydra_plugins") for p in (ROOT / top).rglob("*.py")}
    assert not sources - names, f"modules missing from the wheel: {sorted(sources - names)}"
    configs = {f"composeloop/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert not configs - names, f"configs missing from the wheel: {sorted(configs - names)}"
    assert "composeloop/parts/data/digits.npz" in names
    assert {"hydra_plugins/composeloop_searchpath/__init__.py", "hydra_plugins/composeloop_optuna/__init__.py"} <= names


def test_the_installed_wheel_trains_and_helps_outside_the_checkout(venv, tmp_path):
    imports = "import composeloop, hydra_plugins.composeloop_optuna; print(composeloop.__file__)"
    where = run(venv, "-c", imports, cwd=tmp_path)
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout, where.stdout
    helped = run(venv, "-m", "composeloop", "--help", cwd=tmp_path)
    assert "== Configuration groups ==" in helped.stdout and "experiment: classifier, gan" in helped.stdout
    trained = run(venv, "-m", "composeloop", "train.epochs=1", "hydra.run.dir=run", cwd=tmp_path)
    assert "composeloop: classifier finished" in trained.stdout, trained.stdout
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "model.keras").is_file()
