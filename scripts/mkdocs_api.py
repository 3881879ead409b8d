"""A MkDocs hook: an API page lists its package's public names, read from ``__all__``.

A page holding the line ``::: public composeloop.step`` gets, in its place, one
mkdocstrings block per name in ``composeloop.step.__all__``, grouped under the module each
is imported from (in the order of the package's imports), so a name another change adds
to ``__all__`` is in the reference at the next build, with its docstring. The package is
read statically (`ast`): building the docs imports neither composeloop nor TensorFlow.
A public function named like a submodule (``composeloop.step.compose``, the function, and
``composeloop/step/compose.py``) is documented at its defining path, because griffe
keeps the submodule under the shared name.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.api")  # a warning fails the strict build
MARKER = re.compile(r"^::: public (?P<package>[\w.]+)[ \t]*$", re.MULTILINE)
ROOT = Path(__file__).resolve().parent.parent


def package_file(package: str) -> Path:
    return ROOT.joinpath(*package.split("."), "__init__.py")


def public_names(package: str) -> list[tuple[str, str]]:
    """(name, defining module) for each name of the package's ``__all__``, in import order.

    The defining module is where the package imports the name from (the package itself
    for a name it defines, the name's own path for a submodule it exports).
    """
    tree = ast.parse(package_file(package).read_text())
    exported: list[str] = []
    source: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            exported = list(ast.literal_eval(node.value))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                source.setdefault(alias.asname or alias.name, node.module)
    if not exported:
        raise ValueError(f"{package} has no literal __all__ to document")
    order = list(dict.fromkeys(source.values()))
    placed = [(name, source.get(name, package)) for name in exported]
    # ``from package import submodule``: the name is the submodule itself
    placed = [
        (name, f"{package}.{name}" if module == package and is_submodule(package, name) else module)
        for name, module in placed
    ]
    order = list(dict.fromkeys([*order, *(module for _, module in placed)]))
    return sorted(placed, key=lambda item: order.index(item[1]))


def is_submodule(module: str, name: str) -> bool:
    path = ROOT.joinpath(*module.split("."), name)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_file(module: str) -> Path:
    file = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    return file if file.is_file() else package_file(module)


def has_docstring(module: str, name: str) -> bool:
    """Whether `name`, defined at the top of `module`, has a docstring (an attribute's is
    the string right after its assignment)."""
    body = ast.parse(module_file(module).read_text()).body
    for index, node in enumerate(body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return bool(ast.get_docstring(node))
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(getattr(target, "id", None) == name for target in targets):
            following = body[index + 1] if index + 1 < len(body) else None
            return isinstance(following, ast.Expr) and isinstance(getattr(following, "value", None), ast.Constant)
    return False


def first_line(module: str) -> str:
    docstring = ast.get_docstring(ast.parse(module_file(module).read_text())) or ""
    return docstring.strip().splitlines()[0].strip().rstrip(".") if docstring.strip() else module


def expand(package: str) -> str:
    """The Markdown for every public name of `package`: a section per defining module."""
    lines: list[str] = []
    current = None
    for name, module in public_names(package):
        if module != current:
            current = module
            title = f"`{name}`" if module == f"{package}.{name}" else f"`{module}`"
            lines += ["", f"## {title}", "", first_line(module), ""]
        if module != f"{package}.{name}" and not has_docstring(module, name):
            log.warning("%s.%s (defined in %s) has no docstring for the API reference", package, name, module)
        if module == f"{package}.{name}":  # an exported submodule (composeloop.testing.strategies)
            lines += [f"::: {module}", "    options:", "      show_root_heading: false", "      heading_level: 3", ""]
        elif is_submodule(package, name):  # shadowed by a submodule of the same name
            lines += [f"::: {module}.{name}", ""]
        else:
            lines += [f"::: {package}.{name}", ""]
    return "\n".join(lines)


_expected: dict[str, list[str]] = {}  # page -> the anchors its public names must have


def anchor(package: str, name: str, module: str) -> str:
    """The heading id mkdocstrings gives a public name (its defining path when shadowed)."""
    if module == f"{package}.{name}" or not is_submodule(package, name):
        return f"{package}.{name}"
    return f"{module}.{name}"


def on_page_markdown(markdown: str, page: object, **kwargs: object) -> str:
    packages = [match["package"] for match in MARKER.finditer(markdown)]
    if packages:
        _expected[page.file.src_uri] = [  # type: ignore[attr-defined]
            anchor(package, name, module) for package in packages for name, module in public_names(package)
        ]
    return MARKER.sub(lambda match: expand(match["package"]), markdown)


def on_post_page(output: str, page: object, **kwargs: object) -> str:
    """Checks the rendered page: every public name has its section (a warning fails the build)."""
    for expected in _expected.get(page.file.src_uri, []):  # type: ignore[attr-defined]
        if f'id="{expected}"' not in output:
            log.warning("%s: %s has no section in the rendered page", page.file.src_uri, expected)  # type: ignore[attr-defined]
    return output
