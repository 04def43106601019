"""A sample's plan: every random choice of one CtP sample, drawn from its key (docs/spec.md; determinism: docs/datagen.md).

Planning is host code that runs for a whole batch of keys at once, in NumPy array code over each key's own
Philox uniforms (`rng.uniforms`): every choice has a fixed place in its stream, so a sample is a pure
function of its key whatever batch it is planned in. Rendering the plans into pixels is the batched
device work in `render.py`. Splitting the two is what makes a sample independent of the batch, the
process and the device it is generated on.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from .keyframes import UNIFORM, draw_easings, draw_keyframes, hold_repeats, interpolate, num_slots
from .rng import Draws, SampleKey, Stream, below, between, choose, epoch_permutation, generator, pick, uniforms
from .spec import ClipConfig, ColourConfig, GenerationConfig, PatchConfig
from .trajectory import draw_trajectories

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


@dataclasses.dataclass(frozen=True)
class PlanBatch:
    """The plans of N samples as arrays with a leading sample axis: what bulk planning produces and
    rendering consumes (the fields of `SamplePlan`, flattened)."""

    keys: np.ndarray  # (N, 3) int64
    video: np.ndarray  # (N,)
    attempt: np.ndarray  # (N,)
    frame_indices: np.ndarray  # (N, T)
    resized: np.ndarray  # (N, 2) height, width
    crop: np.ndarray  # (N, 2) top, left
    flip: np.ndarray  # (N,) bool
    boxes: np.ndarray  # (N, K, T, 4)
    visible: np.ndarray  # (N, K, T)
    source_frame: np.ndarray  # (N, K)
    shape: np.ndarray  # (N, K)
    soft_start: np.ndarray  # (N, K)
    opacity: np.ndarray  # (N, K, T)
    order: np.ndarray  # (N, K)
    hue_shift: np.ndarray  # (N,)
    saturation: np.ndarray  # (N,)
    brightness: np.ndarray  # (N, T)
    contrast: np.ndarray  # (N, T)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, rows: slice) -> PlanBatch:
        return PlanBatch(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))

    def sample(self, i: int) -> SamplePlan:
        clip = ClipPlan(
            self.frame_indices[i],
            (int(self.resized[i, 0]), int(self.resized[i, 1])),
            (int(self.crop[i, 0]), int(self.crop[i, 1])),
            bool(self.flip[i]),
        )
        patches = PatchPlan(
            self.boxes[i],
            self.visible[i],
            self.source_frame[i],
            self.shape[i],
            self.soft_start[i],
            self.opacity[i],
            self.order[i],
        )
        colour = ColourPlan(float(self.hue_shift[i]), float(self.saturation[i]), self.brightness[i], self.contrast[i])
        return SamplePlan(
            SampleKey(*(int(v) for v in self.keys[i])), int(self.video[i]), int(self.attempt[i]), clip, patches, colour
        )

    def samples(self) -> list[SamplePlan]:
        return [self.sample(i) for i in range(len(self))]

    @staticmethod
    def stack(plans: Sequence[SamplePlan]) -> PlanBatch:
        def stacked(get: Callable[[SamplePlan], object], dtype: type | None = None) -> np.ndarray:
            return np.array([get(p) for p in plans], dtype=dtype)

        return PlanBatch(
            stacked(lambda p: tuple(p.key), np.int64),
            stacked(lambda p: p.video, np.int64),
            stacked(lambda p: p.attempt, np.int64),
            stacked(lambda p: p.clip.frame_indices, np.int64),
            stacked(lambda p: p.clip.resized, np.int64),
            stacked(lambda p: p.clip.crop, np.int64),
            stacked(lambda p: p.clip.flip, bool),
            stacked(lambda p: p.patches.boxes),
            stacked(lambda p: p.patches.visible, bool),
            stacked(lambda p: p.patches.source_frame, np.int64),
            stacked(lambda p: p.patches.shape, np.int64),
            stacked(lambda p: p.patches.soft_start),
            stacked(lambda p: p.patches.opacity),
            stacked(lambda p: p.patches.order, np.int64),
            stacked(lambda p: p.colour.hue_shift),
            stacked(lambda p: p.colour.saturation),
            stacked(lambda p: p.colour.brightness),
            stacked(lambda p: p.colour.contrast),
        )


def choose_video(key: SampleKey, num_videos: int, attempt: int = 0) -> int:
    """The epoch visits every video once per `num_videos` indices; a replacement is a keyed random draw."""
    if attempt == 0:
        return int(epoch_permutation(key.seed, key.epoch, num_videos)[key.index % num_videos])
    return int(generator(key, Stream.VIDEO, attempt).integers(num_videos))


def draw_clip(
    d: Draws, cfg: ClipConfig, num_frames: np.ndarray, height: np.ndarray, width: np.ndarray
) -> dict[str, np.ndarray]:
    """Frame indices, rescaled size, crop and flip of N clips from videos of the given frame counts and sizes."""
    t = cfg.num_frames
    u = d.take(6)
    jitter_u = d.take(t)
    stride = pick(u[:, 0], np.asarray(cfg.strides, dtype=np.int64))
    jitter = (stride > 1) & cfg.stride_jitter
    span = np.where(jitter, t * stride, (t - 1) * stride + 1)
    start = below(u[:, 1], np.maximum(num_frames - span, 0) + 1)
    offsets = np.arange(t) * stride[:, None] + np.where(jitter[:, None], below(jitter_u, stride[:, None]), 0)
    indices = np.minimum(start[:, None] + offsets, (num_frames - 1)[:, None])

    short = pick(u[:, 2], np.asarray(cfg.short_sides, dtype=np.int64))
    scale = short / np.minimum(height, width)
    resized = np.stack(
        [np.maximum(short, np.round(height * scale)), np.maximum(short, np.round(width * scale))], 1
    ).astype(np.int64)
    crop = below(u[:, 3:5], resized - cfg.crop_size + 1)
    return dict(frame_indices=indices, resized=resized, crop=crop, flip=u[:, 5] < cfg.flip_prob)


def draw_patches(d: Draws, pc: PatchConfig, inner_probs: Sequence[float], boxes: np.ndarray) -> dict[str, np.ndarray]:
    """Source frame, shape, soft edge, opacity curve, MRM visibility and paste order of (N, K) patches."""
    n, k, t, _ = boxes.shape
    u = d.take(k, 4)
    source = below(u[..., 0], t)
    shape = choose(u[..., 1], pc.shape_probs)
    soft_start = np.where(u[..., 2] < pc.soft_edge_prob, between(u[..., 3], *pc.soft_edge_start), 0.5)
    kf = draw_keyframes(d, t, inner_probs, k)  # opacity: its own key frames per patch, linear
    values = hold_repeats(kf, between(d.take(k, kf.shape[-1], 1), *pc.opacity))
    opacity = interpolate(kf, values, np.full((*kf.shape[:-1], kf.shape[-1] - 1), UNIFORM), t)[..., 0]
    visible = d.take(k, t) >= pc.invisible_prob
    visible[..., 0] = True
    np.put_along_axis(visible, source[..., None], True, axis=-1)
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).mean(-1)
    order = np.argsort(-area, axis=-1, kind="stable") if pc.large_first else np.broadcast_to(np.arange(k), (n, k))
    return dict(visible=visible, source_frame=source, shape=shape, soft_start=soft_start, opacity=opacity, order=order)


def draw_colour(d: Draws, cfg: ColourConfig, t: int) -> dict[str, np.ndarray]:
    """Hue/saturation of N clips and their per-frame brightness offsets and contrast gains."""
    u = d.take(3)
    hue_sat = u[:, 0] < cfg.hue_sat_prob
    hue = np.where(hue_sat, between(u[:, 1], -cfg.hue_shift, cfg.hue_shift), 0.0)
    sat = np.where(hue_sat, np.exp(between(u[:, 2], -cfg.saturation_log, cfg.saturation_log)), 1.0)
    m = num_slots(cfg.inner_keyframe_probs)

    def curve(prob: float, low: float, high: float, neutral: float, log: bool) -> np.ndarray:
        drawn = d.take(1) < prob
        kf = draw_keyframes(d, t, cfg.inner_keyframe_probs)
        values = hold_repeats(kf, between(d.take(m, 1), low, high))
        values = interpolate(kf, values, draw_easings(d, cfg.interpolation_probs, m - 1), t)[..., 0]
        return np.where(drawn, np.exp(values) if log else values, neutral)

    brightness = curve(cfg.brightness_prob, -cfg.brightness, cfg.brightness, 0.0, log=False)
    contrast = curve(cfg.contrast_prob, -cfg.contrast_log, cfg.contrast_log, 1.0, log=True)
    return dict(hue_shift=hue, saturation=sat, brightness=brightness, contrast=contrast)


_STREAMS = (Stream.CLIP, Stream.TRAJECTORY, Stream.PATCH, Stream.COLOUR)


@functools.lru_cache(maxsize=32)
def stream_lengths(cfg: GenerationConfig) -> dict[Stream, int]:
    """How many uniforms each stream of a sample takes under `cfg` (the planners run once on zeros)."""
    draws = {s: Draws.counting() for s in _STREAMS}
    _plan(draws, cfg, np.array([10_000]), np.array([240]), np.array([320]))
    return {s: draws[s].used for s in _STREAMS}


def _plan(
    draws: dict[Stream, Draws], cfg: GenerationConfig, num_frames: np.ndarray, height: np.ndarray, width: np.ndarray
) -> dict[str, np.ndarray]:
    t, size = cfg.clip.num_frames, cfg.clip.crop_size
    fields = draw_clip(draws[Stream.CLIP], cfg.clip, num_frames, height, width)
    boxes = draw_trajectories(draws[Stream.TRAJECTORY], cfg.trajectory, t, size, size).boxes
    fields |= draw_patches(draws[Stream.PATCH], cfg.patch, cfg.trajectory.inner_keyframe_probs, boxes)
    fields |= draw_colour(draws[Stream.COLOUR], cfg.colour, t)
    fields["boxes"] = boxes
    return fields


def plan_batch(
    keys: npt.ArrayLike,
    videos: npt.ArrayLike,
    attempts: npt.ArrayLike,
    num_frames: npt.ArrayLike,
    heights: npt.ArrayLike,
    widths: npt.ArrayLike,
    cfg: GenerationConfig,
) -> PlanBatch:
    """The plans of N keys (N, 3) drawn from the given videos (positions, frame counts and sizes from the
    manifest) at the given attempts, in one pass of array code."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1, 3)
    attempts = np.asarray(attempts, dtype=np.int64)
    u = uniforms(keys, attempts, stream_lengths(cfg))
    fields = _plan(
        {s: Draws(u[s]) for s in _STREAMS},
        cfg,
        np.asarray(num_frames, dtype=np.int64),
        np.asarray(heights, dtype=np.int64),
        np.asarray(widths, dtype=np.int64),
    )
    return PlanBatch(keys=keys, video=np.asarray(videos, dtype=np.int64), attempt=attempts, **fields)


def plan_sample(
    key: SampleKey, video: int, num_frames: int, height: int, width: int, cfg: GenerationConfig, attempt: int = 0
) -> SamplePlan:
    """The full plan of sample `key` drawn from `video` (its frame count and size from the manifest)."""
    return plan_batch(np.array([tuple(key)]), [video], [attempt], [num_frames], [height], [width], cfg).sample(0)


def plan_patches(key: SampleKey, cfg: GenerationConfig, attempt: int) -> PatchPlan:
    """The trajectories and patches of `key` (they do not depend on the video)."""
    return plan_sample(key, 0, cfg.clip.num_frames, cfg.clip.crop_size, cfg.clip.crop_size, cfg, attempt).patches
