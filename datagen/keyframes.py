"""Key frames and easing: the shared machinery behind trajectories, opacity and colour curves (docs/spec.md).

A curve is defined by values at a few key frames (always the first and last frame) and interpolated in
between, each segment uniformly, accelerating or decelerating.
"""
from __future__ import annotations

import numpy as np

UNIFORM, ACCELERATE, DECELERATE = 0, 1, 2


def draw_keyframes(rng: np.random.Generator, num_frames: int, inner_probs: tuple[float, ...]) -> np.ndarray:
    """Sorted unique key frames: 0, T-1 and n inner ticks ⌊i·T/(n+1)⌋ with a jitter of ±⌊T/(n+1)/3⌋."""
    n = int(rng.choice(len(inner_probs), p=np.asarray(inner_probs, dtype=np.float64)))
    last = num_frames - 1
    ticks = [0, last]
    if n:
        gap = num_frames / (n + 1)
        reach = int(gap / 3)
        for i in range(1, n + 1):
            tick = int(i * num_frames / (n + 1)) + int(rng.integers(-reach, reach + 1))
            ticks.append(min(max(tick, 0), last))
    return np.unique(np.asarray(ticks, dtype=np.int64))


def draw_easings(rng: np.random.Generator, num_segments: int, probs: tuple[float, ...]) -> np.ndarray:
    return rng.choice(3, size=num_segments, p=np.asarray(probs, dtype=np.float64))


def interpolate(keyframes: np.ndarray, values: np.ndarray, easings: np.ndarray, num_frames: int) -> np.ndarray:
    """Per-frame values (T, ...) from key-frame values (len(keyframes), ...) with per-segment easing."""
    out = np.empty((num_frames,) + values.shape[1:], dtype=np.float64)
    for s, (a, b) in enumerate(zip(keyframes[:-1], keyframes[1:])):
        u = (np.arange(a, b + 1) - a) / (b - a)
        if easings[s] == ACCELERATE:
            u = u * u
        elif easings[s] == DECELERATE:
            u = u * (2.0 - u)
        u = u.reshape((-1,) + (1,) * (values.ndim - 1))
        out[a : b + 1] = values[s] + (values[s + 1] - values[s]) * u
    if len(keyframes) == 1:  # a one-frame clip
        out[:] = values[0]
    return out
