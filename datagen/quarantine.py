"""Keyed sampling over a video list that survives unreadable videos (docs/datagen.md: the determinism contract).

A sample key chooses a video (its epoch's permutation, then keyed redraws); a video that fails to decode
is quarantined with its reason and every sample that chose it is planned again from the key's next
attempt. Any process that knows the same quarantine set makes the same replacement, so epoch sizes hold
and replicas agree. Pretraining samples (`Generator`) and fine-tuning clips share this rule.
"""

from __future__ import annotations

import abc
import collections
import logging
import threading
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar, cast

import numpy as np
import torch

from .ctp.plan import ClipPlan, choose_video
from .ctp.rng import SampleKey
from .video.container import VideoDecodeError, VideoInfo
from .video.decode.decoder import Decoder
from .video.decode.yuv import Window

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 64


class VideoPlan(Protocol):
    """What quarantining reads of a plan (read-only, so frozen dataclasses qualify)."""

    @property
    def key(self) -> SampleKey: ...

    @property
    def video(self) -> int:
        """Its position in the video list."""
        ...

    @property
    def clip(self) -> ClipPlan:
        """Its `frame_indices` are what gets decoded."""
        ...


P = TypeVar("P", bound=VideoPlan)


class QuarantinedVideos(abc.ABC, Generic[P]):
    """Plans keys onto the readable videos of `videos` with the subclass's `_plan` and decodes the planned
    frames, quarantining the videos that fail."""

    def __init__(self, videos: Sequence[VideoInfo], decoder: Decoder) -> None:
        if not videos:
            raise ValueError("no videos to generate from: check the paths or the manifest")
        self.videos = list(videos)
        self.decoder = decoder
        self.bad_videos: dict[str, str] = {}  # path → why it was quarantined
        self.stats: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def mark_bad(self, path: str, reason: str = "") -> bool:
        """Quarantine a video; True when it was not known yet."""
        with self._lock:
            if path in self.bad_videos:
                return False
            self.bad_videos[path] = reason or "unknown reason"
        log.warning("quarantined unreadable video %s: %s", path, reason or "unknown reason")
        return True

    @abc.abstractmethod
    def _plan(self, key: SampleKey, position: int, video: VideoInfo, attempt: int) -> P:
        """The plan of `key` on `video` (at `position` in the list), drawn from the key's `attempt`."""

    renders_rgbx = False  # whether rendering takes RGBX frames (4 channels) as well as RGB

    def _window(self, plan: P, video: VideoInfo) -> Window | None:
        """The part of the frames that rendering `plan` reads (only it is converted); None: whole frames."""
        return None

    def plan(self, key: SampleKey) -> P:
        """The plan of `key`, skipping quarantined videos through the key's own replacement attempts."""
        for attempt in range(MAX_ATTEMPTS):
            position = choose_video(key, len(self.videos), attempt)
            info = self.videos[position]
            if info.path not in self.bad_videos:
                return self._plan(key, position, info, attempt)
        raise RuntimeError(
            f"no readable video found for sample {tuple(key)} after {MAX_ATTEMPTS} attempts "
            f"({len(self.bad_videos)} of {len(self.videos)} videos are quarantined)"
        )

    def decode(self, plans: list[P], whole_frames: bool = False) -> list[torch.Tensor]:
        """Decode each plan's frames, re-planning (in place) the samples whose video turns out unreadable.
        Only the part of the frames that rendering reads is converted (`_window`), in the layout it takes
        (`renders_rgbx`), unless `whole_frames` (RGB)."""
        frames: list[torch.Tensor | None] = [None] * len(plans)
        pending = list(range(len(plans)))
        rgbx = self.renders_rgbx and not whole_frames
        while pending:
            requests = [(self.videos[plans[i].video], np.asarray(plans[i].clip.frame_indices)) for i in pending]
            windows = [None if whole_frames else self._window(plans[i], self.videos[plans[i].video]) for i in pending]
            retry = []
            for i, result in zip(pending, self.decoder.decode_many(requests, windows, rgbx)):
                if isinstance(result, VideoDecodeError):
                    self.stats["decode_failures"] += 1
                    self.mark_bad(result.path, result.reason)
                    plans[i] = self.plan(plans[i].key)
                    self.stats["replaced_samples"] += 1
                    retry.append(i)
                else:
                    frames[i] = result
            pending = retry
        return cast(list[torch.Tensor], frames)  # every slot filled: a failed one is re-planned until it decodes
