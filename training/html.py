"""Jinja2 rendering for the training HTML pages (run report, contact sheet): autoescaped.

Templates live next to this module (shipped as package data); every value a page shows goes
through autoescaping, so a file name or error message holding `<script>` stays text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jinja2

__all__ = ["format_value", "render"]

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def format_value(value: Any) -> str:
    """A table cell: 'n/a' for None, four significant digits for floats."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


_ENVIRONMENT.filters["fmt"] = format_value


def render(template: str, **context: Any) -> str:
    """The named template (a file beside this module) rendered with `context`."""
    return _ENVIRONMENT.get_template(template).render(**context)
