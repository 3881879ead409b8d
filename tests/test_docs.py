"""The documentation's promises that need no build: every page in the nav, every public name
in the API reference with a docstring.

The site itself is built strictly by scripts/build-docs (in .ci/run); these read the same
sources statically, with the hook the build uses (scripts/mkdocs_api.py), so a missing
docstring fails the suite even where the docs extra is not installed.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = ("composeloop.step", "composeloop.engine", "composeloop.testing", "composeloop.app")


def hook():
    spec = importlib.util.spec_from_file_location("mkdocs_api", ROOT / "scripts" / "mkdocs_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = set(nav_pages(config["nav"]))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages == listed, f"not in the nav: {pages - listed}; missing files: {listed - pages}"


@pytest.mark.parametrize("package", PUBLIC)
def test_the_api_reference_lists_every_public_name_with_a_docstring(package):
    page = (ROOT / "docs" / "api" / f"{package.split('.')[-1]}.md").read_text()
    assert re.search(rf"^::: public {re.escape(package)}$", page, re.MULTILINE), "the page lists __all__"
    api = hook()
    names = api.public_names(package)
    assert names, package
    undocumented = [
        f"{package}.{name} ({module})"
        for name, module in names
        if module != f"{package}.{name}" and not api.has_docstring(module, name)
    ]
    assert not undocumented, f"public names without a docstring: {undocumented}"
    expanded = api.expand(package)
    for name, _ in names:
        assert re.search(rf"^::: [\w.]*\b{name}$", expanded, re.MULTILINE), f"{name} is not in the reference"
