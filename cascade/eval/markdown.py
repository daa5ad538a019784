"""Small helpers to write Markdown next to the HTML report: escaped text, tables, image links."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from .html import format_cell

# Characters that are Markdown syntax wherever they stand. Parentheses, `!`, `#`, `+` and braces
# are not: `(` only forms a link after `]`, and `[` / `]` are escaped.
_INLINE = re.compile(r"([\\`*_\[\]|~])")
# A heading or list marker at the start of a line ("# x", "- x", "+ x"), and a numbered item ("3. x").
_MARKER_START = re.compile(r"^(\s*)([#+-])")
_NUMBER_START = re.compile(r"^(\s*\d+)([.)])")


def escape(text: object) -> str:
    """Text safe in Markdown, on one line: ``&``, ``<``, ``>`` become entities (so no raw HTML
    gets through any renderer), the inline syntax characters are backslash-escaped, and a leading
    heading, list or numbered-item marker is escaped (a quote marker `>` is already `&gt;`); ordinary punctuation such as "(3)" stays as it is."""
    text = html.escape(str(text), quote=False).replace("\r", " ").replace("\n", " ")
    text = _INLINE.sub(r"\\\1", text)
    text = _MARKER_START.sub(r"\1\\\2", text)
    return _NUMBER_START.sub(r"\1\\\2", text)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(escape(format_cell(value)) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def image(alt: str, relative_path: str) -> str:
    return f"![{escape(alt)}]({relative_path})"
