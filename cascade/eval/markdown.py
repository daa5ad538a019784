"""Small helpers to write Markdown next to the HTML report: escaped text, tables, image links; and
to read back what they write (`read_blocks`: headings, pipe tables and paragraphs)."""

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
_BACKSLASH_ESCAPE = re.compile(r"\\(.)")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
_SEPARATOR_CELL = re.compile(r"^\s*:?-+:?\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


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


def unescape(text: str) -> str:
    """What `escape` was given: backslash escapes dropped, entities (``&amp;``, ``&lt;``) decoded."""
    return html.unescape(_BACKSLASH_ESCAPE.sub(r"\1", text))


def table_cells(line: str) -> list[str]:
    """The unescaped cells of one pipe-table row (``| a | b\\|c |`` -> ``["a", "b|c"]``)."""
    inner = line.strip()
    inner = inner.removeprefix("|")
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [unescape(cell.strip()) for cell in _UNESCAPED_PIPE.split(inner)]


def _is_separator(line: str) -> bool:
    cells = _UNESCAPED_PIPE.split(line.strip().strip("|"))
    return all(_SEPARATOR_CELL.match(cell) for cell in cells)


def read_blocks(text: str) -> list[tuple[str, object]]:
    """A Markdown document as blocks, in order: ``("heading", (level, text))``, ``("table", (headers,
    rows))`` for each pipe table (a header row, a ``|---|`` row, then its rows), and ``("text", paragraph)``
    for the rest (lines joined by spaces); text unescaped. `table` followed by `read_blocks` gives back
    the headers and the cells as `html.format_cell` wrote them."""
    blocks: list[tuple[str, object]] = []
    lines = text.splitlines()
    paragraph: list[str] = []

    def end_paragraph() -> None:
        if paragraph:
            blocks.append(("text", unescape(" ".join(paragraph))))
            paragraph.clear()

    index = 0
    while index < len(lines):
        line = lines[index]
        heading = _HEADING.match(line)
        if line.lstrip().startswith("|") and index + 1 < len(lines) and _is_separator(lines[index + 1]):
            end_paragraph()
            headers, rows = table_cells(line), []
            index += 2
            while index < len(lines) and lines[index].lstrip().startswith("|"):
                rows.append(table_cells(lines[index]))
                index += 1
            blocks.append(("table", (headers, rows)))
            continue
        if heading:
            end_paragraph()
            blocks.append(("heading", (len(heading.group(1)), unescape(heading.group(2)))))
        elif line.strip():
            paragraph.append(line.strip())
        else:
            end_paragraph()
        index += 1
    end_paragraph()
    return blocks
