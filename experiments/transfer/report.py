"""The transfer experiment's report: mean and sd per arm and label fraction, the verdict against scratch, the
plot, the Markdown table, and the machine and commit it ran on."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.transfer.dataset import CLASSES


def summarise(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm and fraction: mean and sample sd of top-1 over the seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, by_fraction in results.items():
        for fraction, by_seed in by_fraction.items():
            values = np.asarray(list(by_seed.values()), dtype=np.float64)
            sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out.setdefault(arm, {})[fraction] = {"mean": float(values.mean()), "sd": sd, "n": len(values)}
    return out


def verdict(summary: dict[str, dict[str, dict[str, float]]], fraction: str) -> dict[str, Any]:
    """Each pretrained arm against scratch at `fraction`: the gap in means and whether it exceeds 2 pooled sd."""
    base = summary["scratch"][fraction]
    out = {}
    for arm in summary:
        if arm == "scratch":
            continue
        mine = summary[arm][fraction]
        pooled = math.sqrt((base["sd"] ** 2 + mine["sd"] ** 2) / 2)
        gap = mine["mean"] - base["mean"]
        out[arm] = {"gap": gap, "pooled_sd": pooled, "above_two_sd": bool(gap > 2 * pooled)}
    return out


def plot(summary: dict[str, dict[str, dict[str, float]]], path: Path, title: str) -> None:
    """Accuracy vs label fraction (log axis), mean ± sd per arm, drawn with PIL (no matplotlib in the venv)."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 720, 440, 70, 170, 40, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    fractions = sorted({float(f) for arm in summary.values() for f in arm})
    lo, hi = math.log(min(fractions)) - 0.2, math.log(max(fractions)) + 0.2

    def xy(fraction: float, accuracy: float) -> tuple[float, float]:
        x = left + (math.log(fraction) - lo) / (hi - lo) * (width - left - right)
        return x, top + (1 - accuracy) * (height - top - bottom)

    for a in np.linspace(0, 1, 6):
        y = xy(fractions[0], a)[1]
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 40, y - 6), f"{100 * a:.0f}%", fill="black")
    for f in fractions:
        x = xy(f, 0)[0]
        draw.text((x - 14, height - bottom + 8), f"{100 * f:g}%", fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 12), title, fill="black")
    draw.text((width // 2 - 80, height - 24), "label fraction (log scale)", fill="black")
    chance = 1 / len(CLASSES)
    chance_y = xy(fractions[0], chance)[1]
    draw.line([(left, chance_y), (width - right, chance_y)], fill=(150, 150, 150))
    draw.text((width - right + 6, chance_y - 6), "chance", fill=(120, 120, 120))
    colours = {"scratch": (200, 40, 40), "ctp_full": (30, 90, 200), "ctp_simple": (30, 150, 60)}
    for n, (arm, by_fraction) in enumerate(summary.items()):
        colour = colours.get(arm, (0, 0, 0))
        points = []
        for f in fractions:
            if f"{f:g}" not in by_fraction:  # a run stopped early: the points it has
                continue
            s = by_fraction[f"{f:g}"]
            x, y = xy(f, s["mean"])
            x += (n - 1) * 4  # side by side, so the bars stay readable
            _, y0 = xy(f, s["mean"] - s["sd"])
            _, y1 = xy(f, s["mean"] + s["sd"])
            draw.line([(x, y0), (x, y1)], fill=colour, width=2)
            draw.line([(x - 4, y0), (x + 4, y0)], fill=colour, width=2)
            draw.line([(x - 4, y1), (x + 4, y1)], fill=colour, width=2)
            points.append((x, y))
        draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        draw.text((width - right + 6, top + 10 + 18 * n), f"- {arm}", fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def table(summary: dict[str, dict[str, dict[str, float]]], results: dict[str, dict[str, dict[str, float]]]) -> str:
    fractions = list(next(iter(summary.values())))
    lines = [
        "| arm | " + " | ".join(f"{100 * float(f):g} % labels" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for arm, by_fraction in summary.items():
        cells = []
        for f in fractions:
            if f not in by_fraction:
                cells.append("not run")
                continue
            s = by_fraction[f]
            seeds = ", ".join(f"{100 * v:.1f}" for v in results[arm][f].values())
            cells.append(f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f} ({seeds})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
