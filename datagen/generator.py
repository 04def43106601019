"""The generator: sample keys in, CtP batches out — plan, decode and render on one device.

A sample is a pure function of its key and of the set of videos known to be unreadable
(`quarantine.py`): when a video fails to decode it is quarantined and the sample is re-planned from the
key's next attempt, which every process that knows the same quarantine set computes identically.

Generation has two stages, `decode_batch` (plan + decode) and `render_batch`, so that a replica can
decode batch n + 1 while it renders batch n (`pipelined`); on CUDA the decode runs on a stream of its own
and the render waits for it on the device, not on the host.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch

from .ctp.batch import Batch
from .ctp.plan import SamplePlan, choose_video, plan_batch, plan_sample
from .ctp.render import render, source_window
from .ctp.rng import SampleKey
from .ctp.spec import GenerationConfig
from .host_memory import retain_freed_memory
from .quarantine import QuarantinedVideos
from .verify import Report, startup_check
from .video.container import VideoInfo
from .video.decode.decoder import Decoder
from .video.decode.yuv import Window

T = TypeVar("T")
U = TypeVar("U")


@dataclasses.dataclass
class Decoded:
    """A batch between its two stages: the plans (replacements included) and their decoded frames."""

    plans: list[SamplePlan]
    frames: list[torch.Tensor]
    ready: torch.cuda.Event | None = None  # on CUDA: recorded on the decode stream after the frames


class Generator(QuarantinedVideos[SamplePlan]):
    def __init__(
        self,
        videos: Sequence[VideoInfo],
        config: GenerationConfig = GenerationConfig(),
        device: str | torch.device = "cpu",
        decoder: Decoder | None = None,
        self_check: bool | None = None,
        check_renderer: bool = True,
    ) -> None:
        """`self_check` (default: on CUDA): before it generates, the generator checks its device against the CPU
        path (`verify.startup_check`): decode classes probed against PyAV and routed, the renderer compared
        with the CPU kernels (`check_renderer=False` serves even if it differs); `self.checked` holds the
        report."""
        self.config = config
        self.device = torch.device(device)
        super().__init__(videos, decoder or Decoder(self.device))
        retain_freed_memory()  # each batch reuses the pages the last one freed
        self._decode_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.routes = self.decoder.routes
        self.checked: Report | None = None
        if self.device.type == "cuda" if self_check is None else self_check:
            if self.decoder.backend == "auto":
                self.decoder.verify = True
            self.checked = startup_check(self, check_renderer)

    def _plan(self, key: SampleKey, position: int, video: VideoInfo, attempt: int) -> SamplePlan:
        return plan_sample(key, position, video.num_frames, video.height, video.width, self.config, attempt)

    @property
    def renders_rgbx(self) -> bool:  # type: ignore[override]
        """On the CPU: torch's rescale there works on 4-byte pixels, so RGBX frames spare it a repacking."""
        return self.device.type == "cpu"

    def _window(self, plan: SamplePlan, video: VideoInfo) -> Window:
        return source_window(plan.clip, video.height, video.width, self.config.clip.crop_size)

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
    def ahead(self) -> int:
        """Batches to decode ahead of the render (`pipelined`): one where decode and render can overlap (a GPU
        renders, or there is a second core), none on a single core, where two threads only contend."""
        return 1 if self.device.type == "cuda" or len(os.sched_getaffinity(0)) > 1 else 0

    @property
    def epoch_length(self) -> int:
        """Sample indices per epoch: each video once."""
        return len(self.videos)

    def generate(self, keys: Iterable[Sequence[int]] | torch.Tensor) -> Batch:
        return self.render_batch(self.decode_batch(keys))

    def decode_batch(self, keys: Iterable[Sequence[int]] | torch.Tensor) -> Decoded:
        """The first stage: plan `keys` in bulk and decode their frames, replacing unreadable videos."""
        sample_keys = [SampleKey(*(int(v) for v in k)) for k in keys]
        if not sample_keys:
            raise ValueError("generate() needs at least one key")
        plans = self.plan_many(sample_keys)
        if self._decode_stream is None:
            return Decoded(plans, self.decode(plans))
        with torch.cuda.stream(self._decode_stream):
            frames = self.decode(plans)
            ready = torch.cuda.Event()
            ready.record(self._decode_stream)
        return Decoded(plans, frames, ready)

    def render_batch(self, decoded: Decoded | Exception) -> Batch:
        """The second stage, on the calling thread's current (CUDA) stream; raises the first stage's error."""
        if isinstance(decoded, Exception):
            raise decoded
        if decoded.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(decoded.ready)
            for f in decoded.frames:
                f.record_stream(stream)  # their memory is not reused before this stream is done with them
        batch = render(decoded.plans, decoded.frames, self.config.clip.crop_size)
        self.stats["samples"] += len(decoded.plans)
        return batch

    def replaced(self, decoded: Decoded) -> list[tuple[SampleKey, str]]:
        """The samples of a batch planned on a replacement attempt, each with the video its key chose first."""
        n = len(self.videos)
        return [(p.key, self.videos[choose_video(p.key, n, 0)].path) for p in decoded.plans if p.attempt > 0]


def pipelined(
    items: Iterable[T], first: Callable[[T], U], ahead: int = 1, name: str = "decode"
) -> Iterator[tuple[T, U | Exception]]:
    """(item, first(item)) in order, `first` running in a thread of its own up to `ahead` items before the
    consumer (its exception in place of the result): the consumer's second stage overlaps the next
    item's first. The thread ends with `items`, or when the consumer closes this iterator (checked twice a
    second); an error that is not an `Exception` (KeyboardInterrupt in the thread) ends it and is raised in
    the consumer. `ahead=0`: in the consumer's thread, one stage after the other (where nothing can
    overlap, as on one core, a second thread only costs)."""
    if ahead == 0:
        for item in items:
            yield item, _outcome(first, item)
        return
    handoff: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    end = object()

    def put(entry: object) -> None:
        while not stop.is_set():
            try:
                handoff.put(entry, timeout=0.5)
                return
            except queue.Full:
                continue

    def feed() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                put((item, _outcome(first, item)))
            put(end)
        except BaseException as exc:  # the thread's end, re-raised by the consumer
            put(exc)

    worker = threading.Thread(target=feed, name=name, daemon=True)
    worker.start()
    try:
        while (entry := handoff.get()) is not end:
            if isinstance(entry, BaseException):
                raise entry
            yield entry
    finally:
        stop.set()
        worker.join()


def _outcome(first: Callable[[T], U], item: T) -> U | Exception:
    """`first(item)`, or its exception: handed to the consumer with its item."""
    try:
        return first(item)
    except Exception as exc:
        return exc
