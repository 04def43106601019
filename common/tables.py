"""Plain-text tables for terminals and logs, written once for every command, report and benchmark."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(
    rows: Sequence[Sequence[object]],
    header: Sequence[str] | None = None,
    title: str | None = None,
    align: str | None = None,
) -> str:
    """Columns as wide as their widest cell, two spaces apart; a header is underlined with dashes.

    `align` has one character per column, "<" (left) or ">" (right); by default the first column is left-
    and the others right-aligned, the way a name followed by numbers reads best. Cells are printed with str()."""
    lines = [[str(cell) for cell in row] for row in ([header, *rows] if header else rows)]
    widths = [max(len(cell) for cell in column) for column in zip(*lines)]
    align = align or "<" + ">" * (len(widths) - 1)

    def fmt(line: list[str]) -> str:
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(line, align, widths)).rstrip()

    out = [title] if title else []
    if header:
        out += [fmt(lines[0]), "  ".join("-" * w for w in widths)]
        lines = lines[1:]
    return "\n".join(out + [fmt(line) for line in lines])
