"""How numbers and tables look wherever resnetlab prints them: one place, one style."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence


def pct(value: float | None, digits: int = 2, std: float | None = None) -> str:
    """A fraction in [0, 1] as a percentage (``0.9126`` -> ``91.26%``); ``-`` when missing;
    ``± std`` after it when a spread is given."""
    if value is None:
        return "-"
    text = f"{value:.{digits}%}"
    return text + (f" ± {std:.{digits}%}" if std else "")


def width(text: str) -> int:
    """Columns a string takes in a terminal (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in str(text))


def ljust(text: str, columns: int) -> str:
    return str(text) + " " * max(0, columns - width(text))


def rjust(text: str, columns: int) -> str:
    return " " * max(0, columns - width(text)) + str(text)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int) -> str:
    """A plain-text table; columns from ``right_from`` on are right-aligned (numbers)."""
    widths = [max(width(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(
            rjust(c, w) if i >= right_from else ljust(c, w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])
