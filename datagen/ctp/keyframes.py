"""Key frames and easing: the shared machinery behind trajectories, opacity and colour curves (docs/spec.md).

A curve is defined by values at a few key frames (always the first and last frame) and interpolated in
between, each segment uniformly, accelerating or decelerating. Everything works on whole batches: key
frames are an (..., M) array of M = len(inner_probs) + 1 slots, sorted, where unused inner slots repeat
the last frame; a repeated key frame is one key frame (its slots hold the same value, see `hold_repeats`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .rng import Draws, choose

UNIFORM, ACCELERATE, DECELERATE = 0, 1, 2


def num_slots(inner_probs: Sequence[float]) -> int:
    """Key-frame slots: the first and last frame and up to len(inner_probs) − 1 inner ones."""
    return len(inner_probs) + 1


def draw_keyframes(d: Draws, num_frames: int, inner_probs: Sequence[float], *shape: int) -> np.ndarray:
    """(N, *shape, M) sorted key frames: 0, T−1 and n inner ticks ⌊T/(n+1)·i⌋, each jittered by an integer
    from [−r, r) with r = ⌊T/(n+1)/3⌋ (half-open, as the official `sample_key_frames`)."""
    m = num_slots(inner_probs)
    n = choose(d.take(*shape), inner_probs)[..., None]  # inner key frames
    jitter_u = d.take(*shape, m - 2)
    gap = num_frames / (n + 1)
    reach = (gap / 3).astype(np.int64)
    slot = np.arange(1, m - 1)
    tick = (gap * slot).astype(np.int64) + (jitter_u * 2 * reach).astype(np.int64) - reach
    tick = np.where(slot <= n, np.clip(tick, 0, num_frames - 1), num_frames - 1)
    ends = np.broadcast_to(np.array([0, num_frames - 1]), (*tick.shape[:-1], 2))
    return np.sort(np.concatenate([ends[..., :1], tick, ends[..., 1:]], axis=-1), axis=-1)


def draw_easings(d: Draws, probs: Sequence[float], *shape: int) -> np.ndarray:
    """(N, *shape) easings (UNIFORM / ACCELERATE / DECELERATE), one per segment."""
    return choose(d.take(*shape), probs)


def hold_repeats(keyframes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Values (..., M, D) with every repeated key frame holding its first slot's value."""
    values = values.copy()
    for j in range(1, keyframes.shape[-1]):
        same = (keyframes[..., j] == keyframes[..., j - 1])[..., None]
        values[..., j, :] = np.where(same, values[..., j - 1, :], values[..., j, :])
    return values


def interpolate(keyframes: np.ndarray, values: np.ndarray, easings: np.ndarray, num_frames: int) -> np.ndarray:
    """Per-frame values (..., T, D) from key frames (..., M), their values (..., M, D) and segment easings
    (..., M−1). Each frame lies in the last segment that starts at or before it."""
    frame = np.arange(num_frames)
    seg = (keyframes[..., 1:-1, None] <= frame).sum(-2)  # (..., T)
    a = np.take_along_axis(keyframes, seg, -1)
    b = np.take_along_axis(keyframes, seg + 1, -1)
    u = np.where(b > a, (frame - a) / np.maximum(b - a, 1), 1.0)
    easing = np.take_along_axis(easings, seg, -1)
    u = np.where(easing == ACCELERATE, u * u, np.where(easing == DECELERATE, u * (2.0 - u), u))[..., None]
    start = np.take_along_axis(values, seg[..., None], -2)
    end = np.take_along_axis(values, seg[..., None] + 1, -2)
    return start + (end - start) * u
