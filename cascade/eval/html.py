"""Small helpers to write self-contained, safe HTML: escaping, embedded images, tables, pages.

Every piece of text (prompts, paths, metric names) goes through :func:`escape`, so a prompt
such as ``<script>alert(1)</script>`` is shown as text, never run. Images are embedded as
base64 ``data:`` URIs, so one HTML file is the whole report; no scripts are emitted.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence

from matplotlib.figure import Figure
from PIL import Image

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; }
figcaption { font-size: 0.9rem; color: #555; }
img { max-width: 100%; height: auto; }
pre { background: #f6f6f6; padding: 0.6rem; overflow-x: auto; font-size: 0.85rem; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 0.5rem 0.8rem; }
"""


def escape(text: object) -> str:
    """HTML-escape any value's text (quotes included, so it is safe in attributes too)."""
    return html.escape(str(text), quote=True)


def png_bytes(image: Image.Image | Figure, dpi: int = 110) -> bytes:
    """PNG encoding of a PIL image or a matplotlib figure."""
    buffer = io.BytesIO()
    if isinstance(image, Figure):
        image.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    else:
        image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, width: int | None = None) -> str:
    """An ``<img>`` with the PNG embedded."""
    size = f' width="{int(width)}"' if width else ""
    return f'<img src="{data_uri(png)}" alt="{escape(alt)}"{size}>'


def figure(png: bytes, caption: str, width: int | None = None) -> str:
    return f"<figure>{img(png, caption, width)}<figcaption>{escape(caption)}</figcaption></figure>"


def format_cell(value: object) -> str:
    """Numbers to 4 significant decimals, None to '-', anything else as text."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.4f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], caption: str | None = None) -> str:
    """An HTML table; every header and cell escaped, numbers right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for value in row:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f'<td class="num">{escape(format_cell(value))}</td>' if numeric
                         else f"<td>{escape(format_cell(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption_html = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{caption_html}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, body: str) -> str:
    """A complete HTML document (UTF-8, inline CSS, no scripts)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
