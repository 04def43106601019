"""Timing for the benchmarks that compare implementations in one run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def interleaved_best(fns: dict[str, Callable[[], T]], repeats: int) -> tuple[dict[str, float], dict[str, T]]:
    """Seconds of each call, best of `repeats` after a warm-up, and each one's last result. The calls are
    interleaved, so that a change of the machine's load during the run slows every implementation alike
    instead of whichever ran at the busy moment."""
    results = {name: fn() for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results
