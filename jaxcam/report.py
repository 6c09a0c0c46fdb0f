"""Self-contained HTML reports: one file with its styles inline and its pictures as ``data:`` URIs.

A report opens from disk, from an e-mail attachment or from a CI artifact exactly as it was written: it fetches
nothing (no external stylesheet, script, font or image; a Content-Security-Policy forbids any), and every piece of
text is HTML-escaped. Build one with::

    r = Report("Noise robustness")
    r.section("Configuration")
    r.table(Table({"setting": ["model"], "value": ["resnet50"]}))
    r.text("RM = Consistency x Responsiveness.")
    r.image(png, "RM per method and noise")
    r.write("runs/robustness/report.html")

A tiny inline script counts script errors (``window.onerror``) and, once the page has loaded, records
``data-images="<loaded>/<total>"`` and ``data-errors="<count>"`` on ``<body>``, so a headless browser's
``--dump-dom`` shows whether every picture decoded.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import os
import string

import numpy as np

from .errors import JaxcamError
from .files import atomic_write
from .table import Table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 1.8em; }
h3 { margin-top: 1.4em; }
.meta { color: #666; font-size: .9em; }
.scroll { overflow-x: auto; margin: .6em 0 1em; }
table { border-collapse: collapse; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: .9em; margin-top: .3em; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: .6em; overflow-x: auto; font-size: .85em; }
"""

# Counts script errors; on load, records how many pictures decoded and how many errors occurred.
_SCRIPT = """
(function () {
  var errors = 0;
  window.onerror = function () { errors += 1; };
  window.addEventListener("load", function () {
    var imgs = document.images, loaded = 0;
    for (var i = 0; i < imgs.length; i++) {
      if (imgs[i].complete && imgs[i].naturalWidth > 0) { loaded += 1; }
    }
    document.body.dataset.images = loaded + "/" + imgs.length;
    document.body.dataset.errors = String(errors);
  });
})();
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


class ReportError(JaxcamError, ValueError):
    """Content a report cannot hold: a picture that is not PNG data, or a table that cannot be read."""


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _cell(value, digits: int) -> tuple[str, bool]:
    """(text, is_number) of one table cell; floats with ``digits`` significant digits, like Table.to_markdown."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)), False
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return ("nan" if math.isnan(v) else f"{v:.{digits}g}"), True
    if isinstance(value, (int, np.integer)):
        return str(int(value)), True
    return ("" if value is None else str(value)), False


def parse_markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of a pipe table (``| a | b |`` lines, the ``|---|`` rule after the header), its cells
    unescaped as :meth:`Table.to_markdown` escapes them (``\\|`` is a pipe inside a cell, ``&lt;`` a ``<``), so a
    name that holds a pipe or HTML reads back as written and is escaped once, for HTML, in the page."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) < 2 or not all(ln.startswith("|") for ln in lines):
        raise ReportError("a markdown table needs a header line and a '|---|' rule, every line starting with '|'")

    def cells(line: str) -> list[str]:
        out, cell, chars = [], [], iter(line.strip()[1:])
        for ch in chars:
            if ch == "\\":  # markdown escapes punctuation only (\\| is a pipe inside the cell; C:\\x stays)
                nxt = next(chars, "")
                cell.append(nxt if nxt in string.punctuation else ch + nxt)
            elif ch == "|":
                out.append(cell)
                cell = []
            else:
                cell.append(ch)
        if "".join(cell).strip():  # a row without its closing pipe
            out.append(cell)
        return [html.unescape("".join(c)).strip() for c in out]

    header, rule = cells(lines[0]), cells(lines[1])
    if not all(set(c) <= set("-: ") and "-" in c for c in rule):
        raise ReportError(f"the second line of a markdown table must be its '|---|' rule, got {lines[1]!r}")
    rows = [cells(ln) for ln in lines[2:]]
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise ReportError(f"markdown table row {i + 1} has {len(r)} cells, the header {len(header)}")
    return header, rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Report:
    """An HTML report assembled from sections, paragraphs, tables and PNG pictures (see the module docstring)."""

    def __init__(self, title: str, subtitle: str | None = None):
        self.title = str(title)
        self.subtitle = subtitle
        self._blocks: list[str] = []
        self._images = 0

    def section(self, heading: str, level: int = 2) -> Report:
        """Start a section (``level`` 2) or a subsection (3, 4)."""
        if level not in (2, 3, 4):
            raise ReportError(f"section level must be 2, 3 or 4, got {level!r}")
        self._blocks.append(f"<h{level}>{_esc(heading)}</h{level}>")
        return self

    def text(self, text: str) -> Report:
        """A paragraph (escaped; blank lines separate paragraphs)."""
        for para in str(text).split("\n\n"):
            if para.strip():
                self._blocks.append(f"<p>{_esc(para.strip())}</p>")
        return self

    def code(self, text: str) -> Report:
        """Preformatted text (a command line, a configuration file), escaped."""
        self._blocks.append(f"<pre>{_esc(text)}</pre>")
        return self

    def table(self, table: Table | str, caption: str | None = None, digits: int = 4) -> Report:
        """A :class:`~jaxcam.table.Table` or a markdown pipe table; numbers are right-aligned."""
        if isinstance(table, Table):
            header = table.columns
            rows = [[_cell(r[c], digits) for c in header] for r in table.rows()]
        elif isinstance(table, str):
            header, text_rows = parse_markdown_table(table)
            rows = [[(c, _is_number(c)) for c in r] for r in text_rows]
        else:
            raise ReportError(f"table must be a jaxcam Table or a markdown string, got {type(table).__name__}")
        head = "".join(f"<th>{_esc(h)}</th>" for h in header)
        body = "\n".join("<tr>" + "".join(f'<td class="num">{_esc(t)}</td>' if num else f"<td>{_esc(t)}</td>"
                                          for t, num in r) + "</tr>" for r in rows)
        cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
        self._blocks.append(f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>\n'
                            f"<tbody>\n{body}\n</tbody></table></div>")
        return self

    def image(self, png: bytes, caption: str = "") -> Report:
        """A PNG picture (its bytes, as :func:`jaxcam.viz.png_bytes` or matplotlib's ``savefig`` give them),
        embedded as a ``data:image/png;base64`` URI, with a caption."""
        if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(PNG_SIGNATURE):
            raise ReportError(f"report images must be PNG file contents (bytes starting with the PNG signature); "
                              f"got {type(png).__name__}{' not PNG' if isinstance(png, (bytes, bytearray)) else ''}")
        uri = "data:image/png;base64," + base64.b64encode(bytes(png)).decode("ascii")
        cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
        self._blocks.append(f'<figure><img src="{uri}" alt="{_esc(caption or "figure")}">{cap}</figure>')
        self._images += 1
        return self

    @property
    def n_images(self) -> int:
        return self._images

    def html(self) -> str:
        """The whole document."""
        created = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
        sub = f"<p class=\"meta\">{_esc(self.subtitle)}</p>" if self.subtitle else ""
        return "\n".join([
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(self.title)}</title>",
            f"<style>{_CSS}</style>",
            f"<script>{_SCRIPT}</script>",
            "</head>",
            "<body>",
            f"<h1>{_esc(self.title)}</h1>",
            sub,
            f'<p class="meta">written {_esc(created)} by jaxcam</p>',
            *self._blocks,
            "</body>",
            "</html>",
            "",
        ])

    def write(self, path: str | os.PathLike) -> str:
        """Write the document to ``path`` (through a temporary file and a rename) and return the path."""
        return atomic_write(path, self.html())


__all__ = ["Report", "ReportError", "parse_markdown_table"]
