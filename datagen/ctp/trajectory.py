"""Patch trajectories: first boxes from the anchor set, then key-frame motion and scaling (docs/spec.md).

Planned for a whole batch at once in float64 NumPy from each sample's own uniforms (`rng.Draws`), so boxes
are bit-identical on every device and in every batch; the pixel work that follows is batched on the device.
As the official `rectangle_movement`, the K trajectories of a clip share one centre key-frame set, one
size key-frame set and each segment's easing (`shared_keyframes`); only the amounts differ.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .keyframes import draw_easings, draw_keyframes, interpolate, num_slots
from .rng import Draws, between, pick
from .spec import TrajectoryConfig


@dataclasses.dataclass(frozen=True)
class Trajectories:
    """N clips × K trajectories × T frames."""

    boxes: np.ndarray  # (N, K, T, 4) float64 whole-pixel x1, y1, x2, y2, inside the frame
    centres: np.ndarray  # (N, K, T, 2) before rounding
    sizes: np.ndarray  # (N, K, T, 2) w, h before rounding
    first_size: np.ndarray  # (N, K, 2) the jittered anchor (w, h) before clamping to the frame
    centre_keyframes: np.ndarray  # (N, K, M)
    size_keyframes: np.ndarray  # (N, K, M)


def draw_first_boxes(d: Draws, cfg: TrajectoryConfig, k: int, width: int, height: int) -> np.ndarray:
    """(N, K, 6) cx, cy, w, h, anchor w, anchor h of frame 0: anchor scale × ratio, jittered, clamped, placed to fit."""
    u = d.take(k, 6)
    scale = pick(u[..., 0], np.asarray(cfg.anchor_scales, dtype=np.float64))
    ratio = np.sqrt(pick(u[..., 1], np.asarray(cfg.aspect_ratios, dtype=np.float64)))
    jitter = np.exp(between(u[..., 2:4], -cfg.size_jitter, cfg.size_jitter))
    aw, ah = scale * ratio * jitter[..., 0], scale / ratio * jitter[..., 1]
    w, h = np.clip(aw, 1.0, width - 1.0), np.clip(ah, 1.0, height - 1.0)
    x1, y1 = u[..., 4] * (width - w), u[..., 5] * (height - h)
    return np.stack([x1 + w / 2, y1 + h / 2, w, h, aw, ah], -1)


def draw_trajectories(d: Draws, cfg: TrajectoryConfig, num_frames: int, width: int, height: int) -> Trajectories:
    k, t = cfg.num_trajectories, num_frames
    sets = 1 if cfg.shared_keyframes else k
    segments = num_slots(cfg.inner_keyframe_probs) - 1
    first = draw_first_boxes(d, cfg, k, width, height)
    frame = np.array([width, height], dtype=np.float64)

    def keyframes() -> tuple[np.ndarray, np.ndarray]:
        kf = draw_keyframes(d, t, cfg.inner_keyframe_probs, sets)
        easing = draw_easings(d, cfg.interpolation_probs, sets, segments)
        n = len(kf)
        return np.broadcast_to(kf, (n, k, segments + 1)), np.broadcast_to(easing, (n, k, segments))

    # Size: log-space random walk between key frames, |Δ log size| ≤ rate·Δ per axis.
    size_kf, size_easing = keyframes()
    steps = d.take(k, segments, 2)
    top = np.log(frame - 1.0)
    log_size = [np.log(first[..., 2:4])]
    for j in range(segments):
        gap = (size_kf[..., j + 1] - size_kf[..., j])[..., None] * cfg.max_scale_rate
        log_size.append(np.clip(log_size[-1] + between(steps[:, :, j], -gap, gap), 0.0, top))
    sizes = np.exp(interpolate(size_kf, np.stack(log_size, -2), size_easing, t))  # N, K, T, 2
    half = sizes / 2

    # Centre: ±max_speed·Δ px per axis between key frames, kept where the box fits the frame.
    centre_kf, centre_easing = keyframes()
    steps = d.take(k, segments, 2)
    centres = [first[..., 0:2]]
    for j in range(segments):
        gap = (centre_kf[..., j + 1] - centre_kf[..., j])[..., None] * cfg.max_speed
        at = np.take_along_axis(half, centre_kf[..., j + 1, None, None], 2)[:, :, 0]  # half size at the key frame
        centres.append(np.clip(centres[-1] + between(steps[:, :, j], -gap, gap), at, frame - at))
    centre = np.clip(interpolate(centre_kf, np.stack(centres, -2), centre_easing, t), half, frame - half)

    boxes = np.round(np.concatenate([centre - half, centre + half], axis=-1))
    boxes = np.clip(boxes, 0.0, np.array([width, height, width, height], dtype=np.float64))
    # Rounding may leave a 1-px box empty; give it one pixel, still inside the frame.
    for lo, hi, edge in ((0, 2, width), (1, 3, height)):
        empty = boxes[..., hi] <= boxes[..., lo]
        boxes[..., hi] = np.where(empty, np.minimum(boxes[..., lo] + 1, edge), boxes[..., hi])
        boxes[..., lo] = np.where(empty, boxes[..., hi] - 1, boxes[..., lo])
    return Trajectories(
        boxes, centre, sizes, first[..., 4:6], np.ascontiguousarray(centre_kf), np.ascontiguousarray(size_kf)
    )
