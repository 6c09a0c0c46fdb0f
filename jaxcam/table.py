"""Tidy tables: one row per observation, one column per variable, held as equal-length NumPy columns.

Every evaluation in jaxcam (metrics, statistical tests, robustness grids) returns a :class:`Table`. It needs nothing
beyond NumPy; ``to_pandas()`` hands it to pandas when that is installed, ``to_csv``/``to_markdown`` write it out.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


class Table:
    """Columns of equal length, in insertion order. ``table["col"]`` is a NumPy array; ``table.rows()`` dicts."""

    def __init__(self, columns: Mapping[str, Sequence] | None = None):
        cols = {str(k): _column(v) for k, v in (columns or {}).items()}
        lengths = {k: len(v) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"table columns differ in length: {lengths}")
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
        """CSV text (written to ``path`` as well when one is given)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows([r[c] for c in self.columns] for r in self.rows())
        text = buf.getvalue()
        if path is not None:
            with open(path, "w", newline="") as f:
                f.write(text)
        return text

    def to_markdown(self, digits: int = 4) -> str:
        def fmt(v):
            if isinstance(v, float):
                return "nan" if math.isnan(v) else f"{v:.{digits}g}"
            return str(v)

        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
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
