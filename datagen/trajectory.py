"""Patch trajectories: a first box from the anchor set, then key-frame motion and scaling (docs/spec.md).

Computed per sample in float64 NumPy from the sample's own Philox stream, so boxes are bit-identical on
every device and in every batch; the pixel work that follows is batched on the device.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .config import TrajectoryConfig
from .keyframes import draw_easings, draw_keyframes, interpolate


@dataclasses.dataclass(frozen=True)
class Trajectory:
    boxes: np.ndarray  # (T, 4) float64 whole-pixel x1, y1, x2, y2, inside the frame
    centres: np.ndarray  # (T, 2) before rounding
    sizes: np.ndarray  # (T, 2) w, h before rounding
    first_size: tuple[float, float]  # the jittered anchor (w, h) before clamping to the frame
    centre_keyframes: np.ndarray
    size_keyframes: np.ndarray


def draw_first_box(rng: np.random.Generator, cfg: TrajectoryConfig, width: int, height: int) -> np.ndarray:
    """(cx, cy, w, h, anchor_w, anchor_h) of frame 0: anchor scale × ratio, jittered, clamped, placed to fit."""
    scale = float(rng.choice(np.asarray(cfg.anchor_scales, dtype=np.float64)))
    ratio = float(rng.choice(np.asarray(cfg.aspect_ratios, dtype=np.float64)))
    jitter = np.exp(rng.uniform(-cfg.size_jitter, cfg.size_jitter, size=2))
    aw, ah = scale * np.sqrt(ratio) * jitter[0], scale / np.sqrt(ratio) * jitter[1]
    w, h = min(max(aw, 1.0), width - 1.0), min(max(ah, 1.0), height - 1.0)
    x1, y1 = rng.uniform(0.0, width - w), rng.uniform(0.0, height - h)
    return np.array([x1 + w / 2, y1 + h / 2, w, h, aw, ah])


def draw_trajectory(rng: np.random.Generator, cfg: TrajectoryConfig, num_frames: int, width: int, height: int) -> Trajectory:
    cx, cy, w, h, aw, ah = draw_first_box(rng, cfg, width, height)
    limits = np.array([width - 1.0, height - 1.0])

    # Size: log-space random walk between key frames, |Δ log size| ≤ rate·Δ per axis.
    size_kf = draw_keyframes(rng, num_frames, cfg.inner_keyframe_probs)
    log_size = [np.log([w, h])]
    for gap in np.diff(size_kf):
        step = rng.uniform(-cfg.max_scale_rate * gap, cfg.max_scale_rate * gap, size=2)
        log_size.append(np.clip(log_size[-1] + step, 0.0, np.log(limits)))
    sizes = np.exp(interpolate(size_kf, np.array(log_size), draw_easings(rng, len(size_kf) - 1, cfg.interpolation_probs), num_frames))

    # Centre: ±max_speed·Δ px per axis between key frames, kept where the box fits the frame.
    centre_kf = draw_keyframes(rng, num_frames, cfg.inner_keyframe_probs)
    half = sizes / 2
    centres = [np.array([cx, cy])]
    for k, gap in zip(centre_kf[1:], np.diff(centre_kf)):
        step = rng.uniform(-cfg.max_speed * gap, cfg.max_speed * gap, size=2)
        centres.append(np.clip(centres[-1] + step, half[k], np.array([width, height]) - half[k]))
    centre = interpolate(centre_kf, np.array(centres), draw_easings(rng, len(centre_kf) - 1, cfg.interpolation_probs), num_frames)
    centre = np.clip(centre, half, np.array([width, height]) - half)

    boxes = np.round(np.concatenate([centre - half, centre + half], axis=1))
    boxes = np.clip(boxes, 0.0, np.array([width, height, width, height], dtype=np.float64))
    # Rounding may leave a 1-px box empty; give it one pixel, still inside the frame.
    for lo, hi, edge in ((0, 2, width), (1, 3, height)):
        empty = boxes[:, hi] <= boxes[:, lo]
        boxes[empty, hi] = np.minimum(boxes[empty, lo] + 1, edge)
        boxes[empty, lo] = boxes[empty, hi] - 1
    return Trajectory(boxes, centre, sizes, (float(aw), float(ah)), centre_kf, size_kf)
