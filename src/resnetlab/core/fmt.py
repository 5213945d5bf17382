"""How numbers and tables look wherever resnetlab prints them: one place, one style."""

from __future__ import annotations

import os
import shlex
import unicodedata
from collections.abc import Sequence

# Unicode categories that take no column: combining and enclosing marks (the accent of a
# decomposed "é", variation selectors), format characters (zero-width joiner, BOM).
_NO_COLUMN = frozenset({"Mn", "Me", "Cf"})


def pct(value: float | None, digits: int = 2, std: float | None = None) -> str:
    """A fraction in [0, 1] as a percentage (``0.9126`` -> ``91.26%``); ``-`` when missing;
    ``± std`` after it when a spread is given."""
    if value is None:
        return "-"
    text = f"{value:.{digits}%}"
    return text + (f" ± {std:.{digits}%}" if std else "")


def shell_command(*words: object) -> str:
    """A command line as the user pastes it into a shell: every word quoted where it needs it
    (``shlex``), so a path with spaces, quotes or Chinese stays one argument. Placeholders in
    capitals (``IMAGES``, ``DATA``) need no quotes and print as they are."""
    return shlex.join(os.fspath(w) if isinstance(w, os.PathLike) else str(w) for w in words)


def width(text: str) -> int:
    """Columns a string takes in a terminal: wide (CJK, most emoji) characters take two;
    combining marks (the accent of a decomposed ``é``) and zero-width characters none; an
    emoji variation selector (U+FE0F) makes the character before it take two."""
    columns, last = 0, 0
    for ch in str(text):
        if ch == "\ufe0f":
            columns += 1 if last == 1 else 0
            last = 2
            continue
        if unicodedata.category(ch) in _NO_COLUMN:
            continue
        last = 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        columns += last
    return columns


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
