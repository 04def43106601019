"""Labelled clips for fine-tuning and testing, decoded and transformed by the same code as pretraining.

Training clips follow the determinism contract: the video, the frames, the size, crop, flip and colour of
sample (seed, epoch, index) come from datagen's Philox streams keyed on it, so a clip does not depend on
the rank, the batch or the device that makes it. The pixel work is datagen's batched tensor code
(`rescale_crop_flip`, `apply_colour`) and decoding is datagen's `Decoder` (DALI/NVDEC or PyAV).
Evaluation clips are fixed: `test_clips` clips evenly spaced over each video, resized and centre-cropped.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch

from datagen.config import TrajectoryConfig
from datagen.decode import Decoder, VideoDecodeError
from datagen.manifest import Rejected, VideoInfo
from datagen.plan import ClipPlan, ColourPlan, plan_colour
from datagen.quarantine import QuarantinedVideos
from datagen.render import apply_colour, rescale_crop_flip
from datagen.rng import SampleKey, Stream, generator
from trainer.downstream.config import ClipsConfig
from trainer.downstream.datasets import LabelledSet

log = logging.getLogger(__name__)

_COLOUR_EASINGS = TrajectoryConfig().interpolation_probs  # brightness/contrast curves ease like pretraining's


@dataclasses.dataclass(frozen=True)
class LabelledClipPlan:
    """The random choices of one training clip; has the `clip` and `colour` parts datagen's renderer reads."""

    key: SampleKey
    video: int  # position in the labelled set
    clip: ClipPlan
    colour: ColourPlan


@dataclasses.dataclass
class ClipBatch:
    clips: torch.Tensor  # (N, T, S, S, 3) uint8 RGB
    labels: torch.Tensor  # (N,) int64 class indices
    videos: torch.Tensor  # (N,) int64 positions in the labelled set


def plan_train_clip(key: SampleKey, video: int, num_frames: int, cfg: ClipsConfig, attempt: int = 0) -> LabelledClipPlan:
    """Frames at a fixed stride from a uniform start (clamped to the video), one of the train sizes, a random
    crop, a flip and the colour jitter, all drawn from the key's streams."""
    rng = generator(key, Stream.CLIP, attempt)
    span = (cfg.num_frames - 1) * cfg.frame_stride + 1
    start = int(rng.integers(0, max(num_frames - span, 0) + 1))
    indices = np.minimum(start + np.arange(cfg.num_frames, dtype=np.int64) * cfg.frame_stride, num_frames - 1)
    width, height = cfg.train_sizes[int(rng.integers(len(cfg.train_sizes)))]
    size = cfg.crop_size
    crop = (int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1)))
    flip = bool(rng.random() < cfg.flip_prob)
    colour = plan_colour(generator(key, Stream.COLOUR, attempt), cfg.colour, _COLOUR_EASINGS, cfg.num_frames)
    return LabelledClipPlan(key, video, ClipPlan(indices, (height, width), crop, flip), colour)


def eval_clip_indices(num_frames: int, cfg: ClipsConfig) -> np.ndarray:
    """(test_clips, T) frame indices: clip starts evenly spaced from the first to the last full clip."""
    span = (cfg.num_frames - 1) * cfg.frame_stride + 1
    starts = np.linspace(0, max(num_frames - span, 0), cfg.test_clips).round().astype(np.int64)
    return np.minimum(starts[:, None] + np.arange(cfg.num_frames) * cfg.frame_stride, num_frames - 1)


def eval_clip_plan(cfg: ClipsConfig) -> LabelledClipPlan:
    """Resize to `test_size`, centre crop, no flip, no colour change."""
    width, height = cfg.test_size
    crop = ((height - cfg.crop_size) // 2, (width - cfg.crop_size) // 2)
    neutral = ColourPlan(0.0, 1.0, np.zeros(cfg.num_frames), np.ones(cfg.num_frames))
    return LabelledClipPlan(SampleKey(0, 0, 0), -1, ClipPlan(np.empty(0, np.int64), (height, width), crop, False), neutral)


def _to_uint8(clips: torch.Tensor) -> torch.Tensor:
    return clips.clamp_(0, 255).round_().to(torch.uint8)


class TrainClips(QuarantinedVideos[LabelledClipPlan]):
    """Sample keys → augmented training clips. A video that fails to decode is quarantined and its samples
    drawn again from the key's next attempt (datagen's rule), so every process that knows the same bad
    videos agrees."""

    def __init__(self, data: LabelledSet, cfg: ClipsConfig, device: torch.device, decoder: Decoder | None = None) -> None:
        self.data = data
        self.cfg = cfg
        super().__init__(data.videos, decoder or Decoder(device, backend=cfg.decode_backend), self._plan)

    def _plan(self, key: SampleKey, position: int, video: VideoInfo, attempt: int) -> LabelledClipPlan:
        return plan_train_clip(key, position, video.num_frames, self.cfg, attempt)

    def generate(self, keys: Sequence[SampleKey]) -> ClipBatch:
        plans = [self.plan(SampleKey(*k)) for k in keys]
        frames = self.decode(plans)
        clips = torch.stack([rescale_crop_flip(f, p, self.cfg.crop_size) for f, p in zip(frames, plans)])
        clips = _to_uint8(apply_colour(clips, plans))
        self.stats["clips"] += len(plans)
        device = clips.device
        labels = torch.tensor([self.data.labels[p.video] for p in plans], dtype=torch.int64, device=device)
        return ClipBatch(clips, labels, torch.tensor([p.video for p in plans], dtype=torch.int64, device=device))


class EvalClips:
    """Video positions → their `test_clips` fixed clips each. Keys follow the sample-source protocol; only
    their index (the position in the labelled set) matters. Unreadable videos are left out and recorded."""

    def __init__(self, data: LabelledSet, cfg: ClipsConfig, device: torch.device, decoder: Decoder | None = None) -> None:
        self.data = data
        self.cfg = cfg
        self.decoder = decoder or Decoder(device, backend=cfg.decode_backend)
        self.plan = eval_clip_plan(cfg)
        self.skipped: list[Rejected] = []

    def generate(self, keys: Sequence[SampleKey]) -> ClipBatch:
        positions = [int(k[2]) for k in keys]
        videos = [self.data.videos[i] for i in positions]
        requests = [(v, eval_clip_indices(v.num_frames, self.cfg).reshape(-1)) for v in videos]
        clips, owners = [], []
        for position, video, result in zip(positions, videos, self.decoder.decode_many(requests)):
            if isinstance(result, VideoDecodeError):
                self.skipped.append(Rejected(video.path, result.reason))
                log.warning("skipping unreadable test video %s: %s", video.path, result.reason)
                continue
            frames = rescale_crop_flip(result, self.plan, self.cfg.crop_size)
            clips.append(_to_uint8(frames).reshape(self.cfg.test_clips, self.cfg.num_frames, *frames.shape[1:]))
            owners += [position] * self.cfg.test_clips
        size = (0, self.cfg.num_frames, self.cfg.crop_size, self.cfg.crop_size, 3)
        out = torch.cat(clips) if clips else torch.zeros(size, dtype=torch.uint8, device=self.decoder.device)
        owner = torch.tensor(owners, dtype=torch.int64, device=out.device)
        return ClipBatch(out, torch.tensor([self.data.labels[i] for i in owners], dtype=torch.int64, device=out.device), owner)
