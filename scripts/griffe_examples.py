"""A griffe extension for the API reference: composeloop's ``Example:`` sections render as examples.

composeloop's docstrings head their examples ``Example:`` (sometimes with a note:
``Example (conf/config.yaml):``), as the Google style guide and napoleon allow; griffe
reads only ``Examples:`` as an examples section and would show the others as an
admonition of plain text, with ``>>>`` lines turned into quotes. This rewrites the heading
before griffe parses the docstring; the note becomes the section's first line. It changes
nothing but the rendering: the examples themselves run as doctests in the test suite
(tests/test_docstring_examples.py).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

HEADING = re.compile(r"^(?P<indent>[ \t]*)Example(?:s)?(?:[ \t]*\((?P<note>[^\n]*)\))?:[ \t]*$", re.MULTILINE)


def examples_heading(text: str) -> str:
    """`text` with every ``Example:`` / ``Example (note):`` heading spelled ``Examples:``."""

    def heading(match: re.Match) -> str:
        indent, note = match["indent"], match["note"]
        return f"{indent}Examples:" + (f"\n{indent}  {note}:" if note else "")

    return HEADING.sub(heading, text)


class ExampleSections(griffe.Extension):
    """Spells every ``Example`` heading the way griffe's Google parser reads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = examples_heading(obj.docstring.value)
