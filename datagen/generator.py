"""The generator: sample keys in, CtP batches out — plan, decode and render on one device.

A sample is a pure function of its key and of the set of videos known to be unreadable
(`quarantine.py`): when a video fails to decode it is quarantined and the sample is re-planned from the
key's next attempt, which every process that knows the same quarantine set computes identically.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .batch import Batch
from .config import GenerationConfig
from .decode import Decoder
from .manifest import VideoInfo
from .plan import SamplePlan, choose_video, plan_batch, plan_sample
from .quarantine import QuarantinedVideos
from .render import render
from .rng import SampleKey


class Generator(QuarantinedVideos[SamplePlan]):
    def __init__(
        self,
        videos: Sequence[VideoInfo],
        config: GenerationConfig = GenerationConfig(),
        device: str | torch.device = "cpu",
        decoder: Decoder | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device)
        super().__init__(videos, decoder or Decoder(self.device))

    def _plan(self, key: SampleKey, position: int, video: VideoInfo, attempt: int) -> SamplePlan:
        return plan_sample(key, position, video.num_frames, video.height, video.width, self.config, attempt)

    def plan_many(self, keys: Sequence[SampleKey]) -> list[SamplePlan]:
        """The plans of `keys`, planned in bulk; keys whose first-choice video is quarantined go through
        `plan` (their replacement attempts). Equal to `[self.plan(k) for k in keys]`."""
        positions = [choose_video(k, len(self.videos), 0) for k in keys]
        fresh = [i for i, p in enumerate(positions) if self.videos[p].path not in self.bad_videos]
        plans: list[SamplePlan | None] = [None] * len(keys)
        if fresh:
            infos = [self.videos[positions[i]] for i in fresh]
            batch = plan_batch(
                np.array([tuple(keys[i]) for i in fresh]),
                [positions[i] for i in fresh],
                np.zeros(len(fresh)),
                [v.num_frames for v in infos],
                [v.height for v in infos],
                [v.width for v in infos],
                self.config,
            )
            for j, i in enumerate(fresh):
                plans[i] = batch.sample(j)
        return [p if p is not None else self.plan(keys[i]) for i, p in enumerate(plans)]

    @property
    def epoch_length(self) -> int:
        """Sample indices per epoch: each video once."""
        return len(self.videos)

    def generate(self, keys: Iterable[Sequence[int]] | torch.Tensor) -> Batch:
        keys = [SampleKey(*(int(v) for v in k)) for k in keys]
        if not keys:
            raise ValueError("generate() needs at least one key")
        plans = self.plan_many(keys)
        frames = self.decode(plans)
        batch = render(plans, frames, self.config.clip.crop_size)
        self.stats["samples"] += len(keys)
        return batch
