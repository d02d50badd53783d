"""Griffe extension for the API pages: read stabkit's ``Example:`` sections as Google-style examples.

stabkit's docstrings title their doctest sections ``Example:``; griffe's Google parser knows only the plural as an
examples section (the singular becomes an admonition, whose ``>>>`` lines would render as prose).
"""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)


class ExamplesSection(griffe.Extension):
    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
