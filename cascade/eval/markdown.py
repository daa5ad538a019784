"""Small helpers to write Markdown next to the HTML report: escaped text, tables, image links."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from .html import format_cell

_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|])")


def escape(text: object) -> str:
    """Text safe in Markdown, on one line: ``&``, ``<``, ``>`` become entities (so no raw HTML
    gets through any renderer) and Markdown syntax characters are backslash-escaped."""
    text = html.escape(str(text), quote=False)
    return _SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(escape(format_cell(value)) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def image(alt: str, relative_path: str) -> str:
    return f"![{escape(alt)}]({relative_path})"
