"""A sample's plan: every random choice of one CtP sample, drawn from its key (docs/spec.md; determinism: docs/datagen.md).

Planning is cheap host code (a few hundred scalars per sample); rendering the plan into pixels is the
batched device work in `render.py`. Splitting the two is what makes a sample independent of the batch,
the process and the device it is generated on.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .config import ClipConfig, ColourConfig, GenerationConfig, PatchConfig
from .keyframes import draw_easings, draw_keyframes, interpolate
from .rng import SampleKey, Stream, epoch_permutation, generator
from .trajectory import draw_trajectory

RECTANGLE, ELLIPSE, RHOMBUS = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    frame_indices: np.ndarray  # (T,) int64, clamped to the video
    resized: tuple[int, int]  # (height, width) after the short-side rescale
    crop: tuple[int, int]  # top, left of the crop in the resized frame
    flip: bool


@dataclasses.dataclass(frozen=True)
class PatchPlan:
    boxes: np.ndarray  # (K, T, 4) float64 whole pixels in the output frame
    visible: np.ndarray  # (K, T) bool
    source_frame: np.ndarray  # (K,) the frame each patch is cut from
    shape: np.ndarray  # (K,) RECTANGLE / ELLIPSE / RHOMBUS
    soft_start: np.ndarray  # (K,) d0 of the soft edge; 0.5 means a hard edge
    opacity: np.ndarray  # (K, T)
    order: np.ndarray  # (K,) paste order: larger mean area first


@dataclasses.dataclass(frozen=True)
class ColourPlan:
    hue_shift: float  # on the 0-180 scale; 0 when hue/saturation is off
    saturation: float  # factor; 1 when off
    brightness: np.ndarray  # (T,) offsets, 0 when off
    contrast: np.ndarray  # (T,) factors, 1 when off

    @property
    def hue_saturation(self) -> bool:
        return self.hue_shift != 0.0 or self.saturation != 1.0


@dataclasses.dataclass(frozen=True)
class SamplePlan:
    key: SampleKey
    video: int  # index into the generator's video list
    attempt: int  # > 0 when earlier choices were unreadable videos
    clip: ClipPlan
    patches: PatchPlan
    colour: ColourPlan


def choose_video(key: SampleKey, num_videos: int, attempt: int = 0) -> int:
    """The epoch visits every video once per `num_videos` indices; a replacement is a keyed random draw."""
    if attempt == 0:
        return int(epoch_permutation(key.seed, key.epoch, num_videos)[key.index % num_videos])
    return int(generator(key, Stream.VIDEO, attempt).integers(num_videos))


def plan_clip(rng: np.random.Generator, cfg: ClipConfig, num_frames: int, height: int, width: int) -> ClipPlan:
    t = cfg.num_frames
    stride = int(rng.choice(np.asarray(cfg.strides)))
    jitter = cfg.stride_jitter and stride > 1
    span = t * stride if jitter else (t - 1) * stride + 1
    start = int(rng.integers(0, max(num_frames - span, 0) + 1))
    offsets = np.arange(t, dtype=np.int64) * stride
    if jitter:
        offsets += rng.integers(0, stride, size=t)
    indices = np.minimum(start + offsets, num_frames - 1)

    short = int(rng.choice(np.asarray(cfg.short_sides)))
    scale = short / min(height, width)
    resized = (max(short, round(height * scale)), max(short, round(width * scale)))
    size = cfg.crop_size
    crop = (int(rng.integers(0, resized[0] - size + 1)), int(rng.integers(0, resized[1] - size + 1)))
    flip = bool(rng.random() < cfg.flip_prob)
    return ClipPlan(indices, resized, crop, flip)


def plan_patches(key: SampleKey, cfg: GenerationConfig, attempt: int) -> PatchPlan:
    t, size, pc = cfg.clip.num_frames, cfg.clip.crop_size, cfg.patch
    rng = generator(key, Stream.TRAJECTORY, attempt)
    boxes = np.stack([draw_trajectory(rng, cfg.trajectory, t, size, size).boxes for _ in range(cfg.trajectory.num_trajectories)])
    k = len(boxes)

    rng = generator(key, Stream.PATCH, attempt)
    source = rng.integers(0, t, size=k)
    shape = rng.choice(3, size=k, p=np.asarray(pc.shape_probs, dtype=np.float64))
    soft = rng.random(k) < pc.soft_edge_prob
    soft_start = np.where(soft, rng.uniform(*pc.soft_edge_start, size=k), 0.5)
    opacity = np.stack([_opacity_curve(rng, pc, cfg.trajectory.inner_keyframe_probs, t) for _ in range(k)])
    visible = rng.random((k, t)) >= pc.invisible_prob
    visible[:, 0] = True
    visible[np.arange(k), source] = True

    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).mean(axis=1)
    order = np.argsort(-area, kind="stable") if pc.large_first else np.arange(k)
    return PatchPlan(boxes, visible, source, shape, soft_start, opacity, order)


def _opacity_curve(rng: np.random.Generator, pc: PatchConfig, inner_probs: tuple[float, ...], t: int) -> np.ndarray:
    kf = draw_keyframes(rng, t, inner_probs)
    values = rng.uniform(*pc.opacity, size=len(kf))
    return interpolate(kf, values, np.zeros(len(kf) - 1, dtype=np.int64), t)


def plan_colour(rng: np.random.Generator, cfg: ColourConfig, traj_easing_probs: tuple[float, ...], t: int) -> ColourPlan:
    hue, sat = 0.0, 1.0
    if rng.random() < cfg.hue_sat_prob:
        hue = float(rng.uniform(-cfg.hue_shift, cfg.hue_shift))
        sat = float(np.exp(rng.uniform(-cfg.saturation_log, cfg.saturation_log)))

    def curve(prob: float, low: float, high: float, neutral: float, log: bool) -> np.ndarray:
        if rng.random() >= prob:
            return np.full(t, neutral)
        kf = draw_keyframes(rng, t, cfg.inner_keyframe_probs)
        values = rng.uniform(low, high, size=len(kf))
        values = interpolate(kf, values, draw_easings(rng, len(kf) - 1, traj_easing_probs), t)
        return np.exp(values) if log else values

    brightness = curve(cfg.brightness_prob, -cfg.brightness, cfg.brightness, 0.0, log=False)
    contrast = curve(cfg.contrast_prob, -cfg.contrast_log, cfg.contrast_log, 1.0, log=True)
    return ColourPlan(hue, sat, brightness, contrast)


def plan_sample(key: SampleKey, video: int, num_frames: int, height: int, width: int, cfg: GenerationConfig, attempt: int = 0) -> SamplePlan:
    """The full plan of sample `key` drawn from `video` (its frame count and size from the manifest)."""
    clip = plan_clip(generator(key, Stream.CLIP, attempt), cfg.clip, num_frames, height, width)
    patches = plan_patches(key, cfg, attempt)
    colour = plan_colour(generator(key, Stream.COLOUR, attempt), cfg.colour, cfg.trajectory.interpolation_probs, cfg.clip.num_frames)
    return SamplePlan(key, video, attempt, clip, patches, colour)
