"""Plain-text tables as KumoMTA's kcli prints them (wezterm's ``tabout``).

Every column is as wide as its widest cell, header included, measured in terminal cells;
a left column is padded on the right, a right column on the left, and columns are
joined by one space. The last column is padded too, so a table whose last column has
an empty header (kcli's status column) ends every line with spaces.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from enum import Enum
from typing import Final

_EMOJI_PRESENTATION: Final = "\ufe0f"
"""VS16: the character before it is drawn as an emoji, two cells wide."""
_TEXT_PRESENTATION: Final = "\ufe0e"
"""VS15: the character before it is drawn as text, one cell wide."""


class Align(Enum):
    LEFT = "left"
    RIGHT = "right"


def display_width(text: str) -> int:
    """Terminal cells `text` occupies, as a terminal draws it: wide East Asian
    characters count 2, combining marks and format characters 0, and a character that
    a variation selector turns into an emoji (``🗑️``, U+1F5D1 U+FE0F) 2."""
    widths: list[int] = []
    for char in text:
        if char in (_EMOJI_PRESENTATION, _TEXT_PRESENTATION):
            if widths:
                widths[-1] = 2 if char == _EMOJI_PRESENTATION else 1
            continue
        if unicodedata.combining(char) or unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        widths.append(2 if unicodedata.east_asian_width(char) in ("W", "F") else 1)
    return sum(widths)


def format_table(columns: Sequence[tuple[str, Align]], rows: Sequence[Sequence[str]]) -> str:
    """Render a plain-text table, one line per row after the header line (the header
    is there even without rows); no newline after the last line.

    Every column, the last included, is padded to its widest cell and columns are
    separated by one space, as KumoMTA's kcli lays its tables out.
    """
    widths = [display_width(name) for name, _ in columns]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], display_width(cell))
    lines = []
    for cells in [[name for name, _ in columns], *rows]:
        parts = []
        for (_, align), width, cell in zip(columns, widths, cells, strict=True):
            padding = " " * (width - display_width(cell))
            parts.append(cell + padding if align is Align.LEFT else padding + cell)
        lines.append(" ".join(parts))
    return "\n".join(lines)


def format_count(count: int) -> str:
    """`1234567` as `1,234,567`."""
    return f"{count:,}"
