"""Downstream results: where their JSON goes (beside the weights they score), and percentages as printed."""

from __future__ import annotations

import re
from pathlib import Path


def slug(name: str) -> str:
    """'ucf101 test split 1' → 'ucf101-test-split-1': a split's name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def results_path(weights: Path, kind: str, *splits: str) -> Path:
    """`<weights stem>.<kind>.<split>[--<split>].json` beside the weights file."""
    return weights.with_name(f"{weights.stem}.{kind}.{'--'.join(slug(s) for s in splits)}.json")


def percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"
