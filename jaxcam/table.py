"""Tidy tables: one row per observation, one column per variable, held as equal-length NumPy columns.

Every evaluation in jaxcam (metrics, statistical tests, robustness grids) returns a :class:`Table`. It needs nothing
beyond NumPy; ``to_pandas()`` hands it to pandas when that is installed, ``to_csv``/``to_markdown`` write it out.

Cells can hold untrusted text (image file names, dataset ids), so both writers escape for their format: a CSV text
cell that a spreadsheet would run as a formula gets a leading ``'`` (:func:`csv_cell`), and markdown text cannot
break the table, inject HTML or turn into a link (:func:`escape_markdown`).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .errors import InvalidArgumentError

# OWASP's CSV injection list: a cell starting with one of these is a formula (or starts one) in Excel/LibreOffice
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_MARKDOWN_SPECIAL = {"\\": "\\\\", "|": "\\|", "`": "\\`", "]": "\\]", "<": "&lt;", ">": "&gt;", "&": "&amp;",
                     "\r\n": " ", "\n": " ", "\r": " "}
# a "]" opens a link or image only when "(" or "[" follows it: escaping those keeps "C [95% CI]" readable
_MARKDOWN_RE = re.compile(r"\r\n|[\\|`<>&\n\r]|\](?=[(\[])")


def csv_cell(value):
    """``value`` safe to open in a spreadsheet: text starting with ``= + - @``, a tab or a carriage return gets a
    leading ``'`` (OWASP's advice against CSV injection), so ``=1+2.png`` stays text instead of running as a
    formula. Numbers, and text that is a plain decimal number such as ``-0.5``, are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def escape_markdown(text) -> str:
    """``text`` as one inert markdown table cell or line: backslashes, pipes, backticks and a ``]`` that would close
    a link (``](`` or ``][``) escaped with a backslash, ``< > &`` as HTML entities (no raw HTML such as
    ``<img onerror=...>``, no autolink), line breaks as spaces."""
    return _MARKDOWN_RE.sub(lambda m: _MARKDOWN_SPECIAL[m.group(0)], str(text))


class Table:
    """Columns of equal length, in insertion order. ``table["col"]`` is a NumPy array; ``table.rows()`` dicts."""

    def __init__(self, columns: Mapping[str, Sequence] | None = None):
        cols = {str(k): _column(v) for k, v in (columns or {}).items()}
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidArgumentError(f"table columns differ in length: {lengths}")
        self._cols = cols

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping], columns: Sequence[str] | None = None) -> Table:
        """A table from row dicts; the columns are ``columns`` or the union of the rows' keys in first-seen order
        (a key missing from a row reads as None)."""
        rows = list(rows)
        names = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
        return cls({n: [r.get(n) for r in rows] for n in names})

    @classmethod
    def concat(cls, tables: Iterable[Table]) -> Table:
        return cls.from_rows([r for t in tables for r in t.rows()])

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def __len__(self) -> int:
        return len(next(iter(self._cols.values()))) if self._cols else 0

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._cols[name]
        except KeyError:
            raise KeyError(f"no column {name!r}; columns: {self.columns}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._cols

    def __eq__(self, other) -> bool:
        if not isinstance(other, Table) or self.columns != other.columns or len(self) != len(other):
            return False
        return all(_same(self[c], other[c]) for c in self.columns)

    def rows(self) -> list[dict]:
        cols = {k: v.tolist() for k, v in self._cols.items()}
        return [{k: cols[k][i] for k in cols} for i in range(len(self))]

    def where(self, **equals) -> Table:
        """The rows whose columns equal the given values, e.g. ``table.where(method="gradcam")``."""
        keep = np.ones(len(self), bool)
        for k, v in equals.items():
            keep &= self[k] == v
        return Table({k: c[keep] for k, c in self._cols.items()})

    def to_pandas(self):
        import pandas as pd  # optional: jaxcam never needs pandas itself

        return pd.DataFrame({k: v for k, v in self._cols.items()})

    def to_csv(self, path=None) -> str:
        """CSV text (written to ``path`` as well when one is given); text cells that a spreadsheet would read as a
        formula are escaped (:func:`csv_cell`)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([csv_cell(c) for c in self.columns])
        w.writerows([csv_cell(r[c]) for c in self.columns] for r in self.rows())
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", newline="") as f:
                f.write(text)
        return text

    def to_markdown(self, digits: int = 4) -> str:
        """A pipe table; floats with ``digits`` significant digits, text escaped (:func:`escape_markdown`)."""
        def fmt(v):
            if isinstance(v, float):
                return "nan" if math.isnan(v) else f"{v:.{digits}g}"
            return escape_markdown(v)

        lines = ["| " + " | ".join(map(escape_markdown, self.columns)) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(fmt(r[c]) for c in self.columns) + " |" for r in self.rows()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        head = Table({k: v[:10] for k, v in self._cols.items()}).to_markdown()
        more = f"\n... ({len(self)} rows)" if len(self) > 10 else ""
        return f"Table({len(self)} rows x {len(self._cols)} columns)\n{head}{more}"


def _column(values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        arr = np.empty(len(values), object)
        arr[:] = list(values)
    return arr


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))
