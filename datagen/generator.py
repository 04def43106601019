"""The generator: sample keys in, CtP batches out — decode, plan and render on one device.

A sample is a pure function of its key and of the set of videos known to be unreadable: when a video
fails to decode it is quarantined and the sample is re-planned from the key's next attempt, which every
process that knows the same quarantine set computes identically.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Iterable, Sequence

import torch

from .batch import Batch
from .config import GenerationConfig
from .decode import Decoder, VideoDecodeError
from .manifest import VideoInfo
from .plan import SamplePlan, choose_video, plan_sample
from .render import render
from .rng import SampleKey

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 64


class Generator:
    def __init__(
        self,
        videos: Sequence[VideoInfo],
        config: GenerationConfig = GenerationConfig(),
        device: str | torch.device = "cpu",
        decoder: Decoder | None = None,
    ) -> None:
        if not videos:
            raise ValueError("no videos to generate from: check the paths or the manifest")
        self.videos = list(videos)
        self.config = config
        self.device = torch.device(device)
        self.decoder = decoder or Decoder(self.device)
        self.bad_videos: dict[str, str] = {}  # path → why it was quarantined
        self.stats: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    @property
    def epoch_length(self) -> int:
        """Sample indices per epoch: each video once."""
        return len(self.videos)

    def mark_bad(self, path: str, reason: str = "") -> bool:
        """Quarantine a video; True when it was not known yet."""
        with self._lock:
            if path in self.bad_videos:
                return False
            self.bad_videos[path] = reason or "unknown reason"
        log.warning("quarantined unreadable video %s: %s", path, reason or "unknown reason")
        return True

    def plan(self, key: SampleKey) -> SamplePlan:
        """The plan of `key`, skipping quarantined videos through the key's own replacement attempts."""
        for attempt in range(MAX_ATTEMPTS):
            video = choose_video(key, len(self.videos), attempt)
            info = self.videos[video]
            if info.path not in self.bad_videos:
                return plan_sample(key, video, info.num_frames, info.height, info.width, self.config, attempt)
        raise RuntimeError(f"no readable video found for sample {tuple(key)} after {MAX_ATTEMPTS} attempts "
                           f"({len(self.bad_videos)} of {len(self.videos)} videos are quarantined)")

    def decode(self, plans: list[SamplePlan]) -> list[torch.Tensor]:
        """Decode each plan's frames, re-planning (in place) the samples whose video turns out unreadable."""
        frames: list[torch.Tensor | None] = [None] * len(plans)
        pending = list(range(len(plans)))
        while pending:
            requests = [(self.videos[plans[i].video], plans[i].clip.frame_indices) for i in pending]
            retry = []
            for i, result in zip(pending, self.decoder.decode_many(requests)):
                if isinstance(result, VideoDecodeError):
                    self.stats["decode_failures"] += 1
                    self.mark_bad(self.videos[plans[i].video].path, str(result))
                    plans[i] = self.plan(plans[i].key)
                    self.stats["replaced_samples"] += 1
                    retry.append(i)
                else:
                    frames[i] = result
            pending = retry
        return frames  # type: ignore[return-value]

    def generate(self, keys: Iterable[Sequence[int]] | torch.Tensor) -> Batch:
        keys = [SampleKey(*(int(v) for v in k)) for k in keys]
        if not keys:
            raise ValueError("generate() needs at least one key")
        plans = [self.plan(k) for k in keys]
        frames = self.decode(plans)
        batch = render(plans, frames, self.config.clip.crop_size)
        self.stats["samples"] += len(keys)
        return batch
