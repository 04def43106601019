"""Labelled clips for fine-tuning and testing, decoded and resized by the same code as pretraining.

Training clips follow the determinism contract: the video, the frames, the size, crop, flip and colour of
sample (seed, epoch, index) come from datagen's Philox streams keyed on it, so a clip does not depend on
the rank, the batch or the device that makes it. The pixel work is datagen's batched tensor code
(`rescale_crop_flip`, `shift_hue_saturation`) and decoding is datagen's `Decoder` (DALI/NVDEC or PyAV).
The colour jitter is the official fine-tuning one: one brightness, contrast and hue/saturation change per
clip (pretraining's colour curves vary over the clip). Test clips are fixed: `test_clips` clips per video
at the official classification positions or VCOP's retrieval positions, resized and centre-cropped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from datagen.ctp.plan import ClipPlan
from datagen.ctp.render import rescale_crop_flip, shift_hue_saturation
from datagen.ctp.rng import SampleKey, Stream, generator
from datagen.quarantine import QuarantinedVideos
from datagen.video.container import VideoDecodeError, VideoInfo
from datagen.video.decode.decoder import Decoder
from datagen.video.manifest import Rejected
from trainer.downstream.config import ClipsConfig, StaticColourConfig
from trainer.downstream.datasets import LabelledSet

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClipColour:
    """One clip's colour change, the same on every frame; neutral values where it was not drawn."""

    brightness: float = 0.0  # offset
    contrast: float = 1.0  # gain
    hue_shift: float = 0.0  # on the 0-180 scale
    saturation: float = 1.0  # factor

    @property
    def hue_saturation(self) -> bool:
        return self.hue_shift != 0.0 or self.saturation != 1.0


@dataclasses.dataclass(frozen=True)
class LabelledClipPlan:
    """The random choices of one training clip; `clip` is the part datagen's `rescale_crop_flip` reads."""

    key: SampleKey
    video: int  # position in the labelled set
    clip: ClipPlan
    colour: ClipColour


@dataclasses.dataclass
class ClipBatch:
    clips: torch.Tensor  # (N, T, S, S, 3) uint8 RGB
    labels: torch.Tensor  # (N,) int64 class indices
    videos: torch.Tensor  # (N,) int64 positions in the labelled set

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.clips, self.labels, self.videos


ClipIndices = Callable[[int, ClipsConfig], np.ndarray]  # (frames in the video, config) -> (clips, T) indices


def resized_shape(size: tuple[int, int], portrait: bool) -> tuple[int, int]:
    """(height, width) to resize to: `size` is (width, height) for a landscape frame; a portrait frame
    takes it transposed (the official GroupScale), so that it is not squeezed into landscape."""
    width, height = size
    return (width, height) if portrait else (height, width)


def is_portrait(video: VideoInfo) -> bool:
    return video.height > video.width


def short_side_shape(short: int, frame_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a (height, width) frame rescaled to the short side `short`, the aspect kept and each
    side rounded (the official GroupScale given an int)."""
    height, width = frame_size
    if min(height, width) <= 0:
        raise ValueError(f"a frame of {width}x{height} cannot be rescaled to a short side")
    factor = short / min(height, width)
    return round(height * factor), round(width * factor)


def plan_static_colour(rng: np.random.Generator, cfg: StaticColourConfig) -> ClipColour:
    """Brightness, contrast and hue/saturation, each drawn with its own probability."""
    brightness = float(rng.uniform(-cfg.brightness, cfg.brightness)) if rng.random() < cfg.brightness_prob else 0.0
    contrast = (
        float(np.exp(rng.uniform(-cfg.contrast_log, cfg.contrast_log))) if rng.random() < cfg.contrast_prob else 1.0
    )
    hue, saturation = 0.0, 1.0
    if rng.random() < cfg.hue_sat_prob:
        hue = float(rng.uniform(-cfg.hue_shift, cfg.hue_shift))
        saturation = float(np.exp(rng.uniform(-cfg.saturation_log, cfg.saturation_log)))
    return ClipColour(brightness, contrast, hue, saturation)


def apply_static_colour(clips: torch.Tensor, colours: Sequence[ClipColour]) -> torch.Tensor:
    """(N, T, H, W, 3) float 0-255, in place: add the brightness, multiply by the contrast gain, then shift
    hue and scale saturation (the official order), clipping to [0, 255] after each step."""

    def per_clip(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=clips.device).view(-1, 1, 1, 1, 1)

    clips.add_(per_clip([c.brightness for c in colours])).clamp_(0, 255)
    clips.mul_(per_clip([c.contrast for c in colours])).clamp_(0, 255)
    chosen = [i for i, c in enumerate(colours) if c.hue_saturation]
    if chosen:
        idx = torch.tensor(chosen, device=clips.device)
        hue = per_clip([colours[i].hue_shift for i in chosen]).flatten()
        sat = per_clip([colours[i].saturation for i in chosen]).flatten()
        clips[idx] = shift_hue_saturation(clips[idx], hue, sat).clamp_(0, 255)
    return clips


def plan_train_clip(
    key: SampleKey,
    video: int,
    num_frames: int,
    cfg: ClipsConfig,
    attempt: int = 0,
    portrait: bool = False,
    frame_size: tuple[int, int] = (0, 0),
) -> LabelledClipPlan:
    """Frames at a fixed stride from a uniform start (clamped to the video), one of the train sizes (or short
    sides, of a frame of `frame_size` (height, width)), a random crop, a flip and the colour jitter, all drawn
    from the key's streams (official RandomFrameSampler, GroupScale, GroupRandomCrop, GroupFlip and colour
    transforms)."""
    rng = generator(key, Stream.CLIP, attempt)
    span = (cfg.num_frames - 1) * cfg.frame_stride + 1
    start = int(rng.integers(0, max(num_frames - span, 0) + 1))
    indices = np.minimum(start + np.arange(cfg.num_frames, dtype=np.int64) * cfg.frame_stride, num_frames - 1)
    shortest = cfg.train_short_sides
    choice = int(rng.integers(len(shortest) or len(cfg.train_sizes)))
    if shortest:
        height, width = short_side_shape(shortest[choice], frame_size)
    else:
        height, width = resized_shape(cfg.train_sizes[choice], portrait)
    size = cfg.crop_size
    crop = (int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1)))
    flip = bool(rng.random() < cfg.flip_prob)
    colour = plan_static_colour(generator(key, Stream.COLOUR, attempt), cfg.colour)
    return LabelledClipPlan(key, video, ClipPlan(indices, (height, width), crop, flip), colour)


def eval_clip_indices(num_frames: int, cfg: ClipsConfig) -> np.ndarray:
    """(test_clips, T) frame indices of the classification test (official UniformFrameSampler): the
    `num_frames − T·stride + 1` possible starts are cut into `test_clips` equal segments and each clip
    starts at the middle of one (truncated); a video too short for a clip gives clips from frame 0."""
    n, stride, k = cfg.num_frames, cfg.frame_stride, cfg.test_clips
    starts_range = num_frames - n * stride + 1
    tick = starts_range / k
    starts = (tick / 2.0 + tick * np.arange(k)).astype(np.int64) if starts_range > 0 else np.zeros(k, np.int64)
    return np.minimum(starts[:, None] + np.arange(n) * stride, num_frames - 1)


def retrieval_clip_indices(num_frames: int, cfg: ClipsConfig) -> np.ndarray:
    """(test_clips, T) frame indices of VCOP's retrieval clips: windows of T frames at `retrieval_stride`
    (1: consecutive) whose centres are evenly spaced from span/2 to num_frames − span/2, each starting at
    int(centre − span/2); clamped to the video (VCOP does not handle videos shorter than a clip)."""
    span = (cfg.num_frames - 1) * cfg.retrieval_stride + 1
    centres = np.linspace(span / 2, num_frames - span / 2, cfg.test_clips)
    starts = np.maximum(np.trunc(centres - span / 2), 0).astype(np.int64)
    return np.minimum(starts[:, None] + np.arange(cfg.num_frames) * cfg.retrieval_stride, num_frames - 1)


def eval_clip_plan(cfg: ClipsConfig, portrait: bool = False, frame_size: tuple[int, int] = (0, 0)) -> ClipPlan:
    """Resize to `test_size` (transposed for a portrait frame), or to `test_short_side` (of a frame of
    `frame_size`), centre crop, no flip."""
    if cfg.test_short_side:
        height, width = short_side_shape(cfg.test_short_side, frame_size)
    else:
        height, width = resized_shape(cfg.test_size, portrait)
    return ClipPlan(
        np.empty(0, np.int64), (height, width), ((height - cfg.crop_size) // 2, (width - cfg.crop_size) // 2), False
    )


def _to_uint8(clips: torch.Tensor) -> torch.Tensor:
    return clips.clamp_(0, 255).round_().to(torch.uint8)


class TrainClips(QuarantinedVideos[LabelledClipPlan]):
    """Sample keys → augmented training clips. A video that fails to decode is quarantined and its samples
    drawn again from the key's next attempt (datagen's rule), so every process that knows the same bad
    videos agrees."""

    def __init__(
        self, data: LabelledSet, cfg: ClipsConfig, device: torch.device, decoder: Decoder | None = None
    ) -> None:
        self.data = data
        self.cfg = cfg
        super().__init__(data.videos, decoder or Decoder(device, backend=cfg.decode_backend))

    def _plan(self, key: SampleKey, position: int, video: VideoInfo, attempt: int) -> LabelledClipPlan:
        size = (video.height, video.width)
        return plan_train_clip(key, position, video.num_frames, self.cfg, attempt, is_portrait(video), size)

    def generate(self, keys: Sequence[SampleKey]) -> ClipBatch:
        plans = [self.plan(SampleKey(*k)) for k in keys]
        frames = self.decode(plans)
        clips = torch.stack([rescale_crop_flip(f, p, self.cfg.crop_size) for f, p in zip(frames, plans)])
        clips = _to_uint8(apply_static_colour(clips, [p.colour for p in plans]))
        self.stats["clips"] += len(plans)
        device = clips.device
        labels = torch.tensor([self.data.labels[p.video] for p in plans], dtype=torch.int64, device=device)
        return ClipBatch(clips, labels, torch.tensor([p.video for p in plans], dtype=torch.int64, device=device))


@dataclasses.dataclass(frozen=True)
class _Framing:
    """What datagen's `rescale_crop_flip` reads of a plan: a test clip's is all there is to it."""

    clip: ClipPlan


class EvalClips:
    """Video positions → their `test_clips` fixed clips each, at the frames `indices` gives (the
    classification test's by default). Nothing is random, so nothing is keyed. Unreadable videos are left
    out and recorded."""

    def __init__(
        self,
        data: LabelledSet,
        cfg: ClipsConfig,
        device: torch.device,
        decoder: Decoder | None = None,
        indices: ClipIndices = eval_clip_indices,
    ) -> None:
        self.data = data
        self.cfg = cfg
        self.decoder = decoder or Decoder(device, backend=cfg.decode_backend)
        self.indices = indices
        self.skipped: list[Rejected] = []

    def for_videos(self, positions: Sequence[int]) -> ClipBatch:
        """The clips of the videos at `positions` in the labelled set, in order (`videos` names each's)."""
        videos = [self.data.videos[i] for i in positions]
        requests = [(v, self.indices(v.num_frames, self.cfg).reshape(-1)) for v in videos]
        clips, owners = [], []
        for position, video, result in zip(positions, videos, self.decoder.decode_many(requests)):
            if isinstance(result, VideoDecodeError):
                self.skipped.append(Rejected(video.path, result.reason))
                log.warning("skipping unreadable test video %s: %s", video.path, result.reason)
                continue
            framing = _Framing(eval_clip_plan(self.cfg, is_portrait(video), (video.height, video.width)))
            frames = rescale_crop_flip(result, framing, self.cfg.crop_size)
            clips.append(_to_uint8(frames).reshape(self.cfg.test_clips, self.cfg.num_frames, *frames.shape[1:]))
            owners += [position] * self.cfg.test_clips
        size = (0, self.cfg.num_frames, self.cfg.crop_size, self.cfg.crop_size, 3)
        out = torch.cat(clips) if clips else torch.zeros(size, dtype=torch.uint8, device=self.decoder.device)
        owner = torch.tensor(owners, dtype=torch.int64, device=out.device)
        return ClipBatch(
            out, torch.tensor([self.data.labels[i] for i in owners], dtype=torch.int64, device=out.device), owner
        )
