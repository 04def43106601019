"""Downstream results for people (a printed table) and for programs (JSON next to the weights they score)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def slug(name: str) -> str:
    """'ucf101 test split 1' → 'ucf101-test-split-1': a split's name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def results_path(weights: Path, kind: str, *splits: str) -> Path:
    """`<weights stem>.<kind>.<split>[--<split>].json` beside the weights file."""
    return weights.with_name(f"{weights.stem}.{kind}.{'--'.join(slug(s) for s in splits)}.json")


def write_json(path: Path, results: dict[str, Any]) -> Path:
    """Write atomically, so a reader never sees half a result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)
    return path


def table(title: str, rows: Sequence[tuple[str, ...]], header: tuple[str, ...] | None = None) -> str:
    """A plain aligned table: the first column left-aligned, the others right-aligned."""
    lines = [header, *rows] if header else list(rows)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]

    def fmt(line: tuple[str, ...]) -> str:
        cells = [f"{line[0]!s:<{widths[0]}}"] + [f"{cell!s:>{w}}" for cell, w in zip(line[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    out = [title]
    if header:
        out += [fmt(header), "  ".join("-" * w for w in widths)]
    return "\n".join(out + [fmt(line) for line in rows])


def percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"
