"""`ctp-datagen bench`: throughput of decode alone, generation alone and end to end on one device."""
from __future__ import annotations

import time
from typing import Callable

import torch

from .generator import Generator
from .render import render
from .rng import SampleKey


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats


def run_bench(generator: Generator, batch_size: int = 32, repeats: int = 3, seed: int = 0) -> list[tuple[str, float, float]]:
    """Rows of (stage, clips/s, frames/s) for the generator's device and decoder."""
    keys = [SampleKey(seed, 0, i) for i in range(batch_size)]
    plans = generator.plan_many(keys)
    frames = generator.decode(plans)
    crop, t = generator.config.clip.crop_size, generator.config.clip.num_frames
    stages = {
        "decode": lambda: generator.decode(list(plans)),
        "generate (plan + render)": lambda: render(generator.plan_many(keys), frames, crop),
        "end to end": lambda: generator.generate(keys),
    }
    rows = []
    for name, fn in stages.items():
        seconds = timed(fn, generator.device, repeats)
        rows.append((name, batch_size / seconds, batch_size * t / seconds))
    return rows


def format_table(rows: list[tuple[str, float, float]], title: str) -> str:
    lines = [title, f"{'stage':<26}{'clips/s':>10}{'frames/s':>12}"]
    lines += [f"{name:<26}{clips:>10.1f}{frames:>12.0f}" for name, clips, frames in rows]
    return "\n".join(lines)
