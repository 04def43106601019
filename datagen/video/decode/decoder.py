"""Decode exactly the frames a clip needs, as uint8 RGB tensors on the replica's device.

Backends: DALI (`mixed`/NVDEC on a GPU; its CPU decoder handles VP8/VP9/MJPEG only) and PyAV (CPU, any
codec FFmpeg decodes); frame sources (zips and folders of JPEG frames) are decoded by libjpeg-turbo on the
CPU or DALI's image decoder (`frame_decoder.py`). Frame i is the i-th picture a full decode outputs (see
datagen/video/manifest.py), which PyAV reaches by seeking to the last key frame at or before the clip and
decoding forward. PyAV's pictures
are converted to RGB the way DALI converts them (BT.601, bilinear chroma), so both backends give the same
pixels (within 1 level) and a sample does not depend on which replica decoded it.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import cast

import numpy as np
import torch

from datagen.video.container import VideoDecodeError, VideoError, VideoInfo
from datagen.video.decode.dali import DaliDecoder
from datagen.video.decode.frame_decoder import JPEG_BACKEND, FrameDecoder
from datagen.video.decode.pyav import PyAVDecoder
from datagen.video.decode.routes import (
    DecodeClass,
    DecodeRoutes,
    Route,
    compare_frames,
    probe_indices,
    reference_indices,
)
from datagen.video.decode.yuv import Window
from datagen.video.frames import FRAME_CODEC

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dali", "pyav")
# What DALI 2.4's decoder accepts per device (its docs; `mixed` is NVDEC): a forced "dali" backend tries these.
# Frame sources (FRAME_CODEC) go to its image decoder.
DALI_CODECS = {
    "cpu": frozenset({"vp8", "vp9", "mjpeg", FRAME_CODEC}),
    "cuda": frozenset({"vp8", "vp9", "mjpeg", "av1", "mpeg4", "h264", "hevc", FRAME_CODEC}),
}
# What `auto` sends to DALI: on CUDA not AV1 (Hopper's NVDEC has no AV1) nor MJPEG (DALI 2.4's `mixed`
# decoder rejects it, its docs notwithstanding); those go to PyAV on the CPU. On the CPU, JPEG frames go to
# libjpeg-turbo directly (the same bytes as DALI-CPU's, without a pipeline run: bench/jpeg_bench.py).
AUTO_DALI_CODECS = {"cpu": DALI_CODECS["cpu"] - {FRAME_CODEC}, "cuda": DALI_CODECS["cuda"] - {"av1", "mjpeg"}}


def auto_backend(codec: str, device_type: str, dali_codecs: Collection[str] | None = None) -> str:
    """The backend `auto` decodes `codec` with on a `device_type` ("cpu" or "cuda") device, before its decode
    class's route is known: DALI for `dali_codecs` (default AUTO_DALI_CODECS of the device), else the CPU's."""
    codecs = AUTO_DALI_CODECS.get(device_type, frozenset()) if dali_codecs is None else dali_codecs
    return "dali" if codec in codecs else cpu_backend(codec)


def cpu_backend(codec: str) -> str:
    """The CPU decoder of `codec`, the reference DALI is compared with: libjpeg-turbo for frames, else PyAV."""
    return JPEG_BACKEND if codec == FRAME_CODEC else "pyav"


NVDEC_ENGINES = 7  # video decode engines of an H100 / H200: DALI threads on CUDA, so each has work


def default_decode_threads(device: torch.device) -> int:
    """Decoder threads sized to the hardware: NVDEC engines on CUDA, the cores this process may use on CPU."""
    return NVDEC_ENGINES if device.type == "cuda" else len(os.sched_getaffinity(0))


class Decoder:
    """Decodes clips as uint8 RGB tensors (T, H, W, 3) on `device`, choosing a backend per video.

    backend="auto": DALI for the codecs in `dali_codecs` (default AUTO_DALI_CODECS of the device), PyAV
    otherwise (libjpeg-turbo for frame sources: what "PyAV" means below for them), and PyAV for decode
    classes DALI cannot be fed or did not decode as PyAV does (`routes.py`). With `verify` (default:
    on CUDA), the first clip of each decode class DALI would take is a probe: decoded by both and compared,
    the class routed by the verdict; a class that fails is logged with its numbers and decoded by PyAV from
    then on. A video DALI fails on is decoded again by PyAV
    before it counts as unreadable, since a video quarantined by one replica's decoder is lost to the whole
    fleet. backend="dali" or "pyav" forces one, without that second try or any probe; a video the forced
    backend cannot decode fails with a VideoDecodeError that says what to do.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        backend: str = "auto",
        batch_size: int | None = None,
        num_threads: int | None = None,
        dali_codecs: Collection[str] | None = None,
        verify: bool | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown decode backend {backend!r}; choose one of {BACKENDS}")
        self.device = torch.device(device)
        self.backend = backend
        gpu = self.device.type == "cuda"
        self.dali_codecs = frozenset(AUTO_DALI_CODECS.get(self.device.type, ()) if dali_codecs is None else dali_codecs)
        self.verify = (gpu if verify is None else verify) and backend == "auto"
        self.num_threads = num_threads or default_decode_threads(self.device)
        self.pyav = PyAVDecoder()
        self.dali = DaliDecoder(
            self.device, batch_size or (4 * NVDEC_ENGINES if gpu else 8), self.num_threads, self.pyav.index
        )
        self.frames = FrameDecoder(self.device, num_threads=self.num_threads)
        self.routes = DecodeRoutes()
        self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="decode") if self.num_threads > 1 else None
        self._probe_lock = threading.Lock()
        # dali_fallbacks: clips PyAV decoded after DALI failed; probes: decode classes compared with PyAV
        self.stats: collections.Counter[str] = collections.Counter()
        self._fell_back: set[str] = set()  # videos already warned about

    def decode_class(self, video: VideoInfo) -> DecodeClass:
        """The video's decode class (from its packet index); raises VideoError for a video that cannot be
        indexed."""
        if video.codec == FRAME_CODEC:
            return self.frames.decode_class(video)
        return DecodeClass.of(video, self.pyav.index.get(video.path))

    def backend_for(self, video: VideoInfo) -> str:
        """The backend that decodes `video` first; raises VideoDecodeError when the forced one cannot."""
        return self._route(video)[0]

    def _route(self, video: VideoInfo) -> tuple[str, bool]:
        """(backend, trim) for `video`: the forced backend, or `auto`'s codec rule and its decode class's route
        (a class met for the first time is probed here when `verify` is on)."""
        if self.backend == "pyav":
            return cpu_backend(video.codec), True
        if self.backend == "dali":
            codecs = DALI_CODECS.get(self.device.type, frozenset())
            if video.codec not in codecs:
                raise VideoDecodeError(
                    video.path,
                    f"DALI cannot decode {video.codec} on {self.device.type} (it decodes "
                    f"{', '.join(sorted(codecs))} there); use backend 'pyav' or 'auto'",
                )
            return "dali", True
        if (backend := auto_backend(video.codec, self.device.type, self.dali_codecs)) != "dali":
            return backend, True
        try:
            cls = self.decode_class(video)
        except VideoError:
            return cpu_backend(video.codec), True  # the CPU decoder says what is wrong with it
        route = self.routes.get(cls) or self._first_route(cls, video)
        return route.backend, route.trim

    def _first_route(self, cls: DecodeClass, video: VideoInfo) -> Route:
        """The route of a class met for the first time (`check_class` on this video)."""
        with self._probe_lock:
            route = self.routes.get(cls)  # another thread may have been first
            return route if route is not None else self.check_class(cls, [video])

    def check_class(self, cls: DecodeClass, videos: Sequence[VideoInfo]) -> Route:
        """Decide and record the route of `cls`: PyAV where DALI cannot be fed the class; else, with `verify`,
        what probes of `videos` (all of the class) find — each must pass, else the class goes to PyAV — ;
        else DALI unverified. A class sent to PyAV is logged with the reason and the numbers."""
        if (unfit := cls.unfit_for_dali()) is not None:
            route = Route("pyav", reason=unfit, video=videos[0].path)
        elif not self.verify:
            route = Route("dali", reason="not verified", video=videos[0].path)
        else:
            probes = [self.probe(video) for video in videos]
            failed = [p for p in probes if p.backend != "dali"]
            route = failed[0] if failed else dataclasses.replace(probes[0], trim=all(p.trim for p in probes))
        if route.backend != "dali":
            name = "PyAV" if route.backend == "pyav" else route.backend
            log.warning(
                "decode class %s goes to %s on %s: %s (%s)", cls.label, name, self.device, route.reason, route.video
            )
        self.routes.set(cls, route)
        return route

    def probe(self, video: VideoInfo) -> Route:
        """Decode a probe clip of `video` with DALI (trimmed segments, then whole ones) and with PyAV, and
        return the route the comparison gives (not recorded: `check_class` does that)."""
        self.stats["probes"] += 1
        if video.codec == FRAME_CODEC:
            route = self.frames.probe(video)
            self.stats["probe_failures"] += route.backend != "dali"
            return route
        indices = probe_indices(video.num_frames)
        around = reference_indices(indices, video.num_frames)
        try:
            reference = self.pyav.decode(video, around)
        except VideoDecodeError as exc:
            return Route("pyav", verified=True, reason=f"PyAV could not decode the probe ({exc.reason})")
        index = self.pyav.index.get(video.path)
        findings = []
        for trim in (True, False) if index.stamps else (True,):
            (result,) = self.dali.decode_batch([(video, indices)], [trim])
            if isinstance(result, VideoDecodeError):
                findings.append(f"DALI failed: {result.reason}")
                continue
            comparison = compare_frames(result.cpu().numpy(), indices, reference, around)
            if comparison.ok:
                return Route("dali", trim, True, comparison.summary(), video.path)
            findings.append(("trimmed: " if trim else "whole segments: ") + comparison.summary())
        self.stats["probe_failures"] += 1
        return Route("pyav", verified=True, reason="; ".join(findings), video=video.path)

    def decode(self, video: VideoInfo, indices: np.ndarray, window: Window | None = None) -> torch.Tensor:
        """(len(indices), H, W, 3) uint8 RGB on the decoder's device; raises VideoDecodeError.

        Indices may repeat and come in any order; those past the last decodable frame get that frame. A
        `window` is the part of the frames the caller reads (see `decode_many`)."""
        (result,) = self.decode_many([(video, indices)], [window])
        if isinstance(result, VideoDecodeError):
            raise result
        return result

    @property
    def frames_decoded(self) -> int:
        """Pictures decoded so far by both backends, the frames each clip needed and those on the way to them."""
        return self.pyav.frames_decoded + self.dali.frames_decoded + self.frames.frames_decoded

    def decode_many(
        self,
        requests: Sequence[tuple[VideoInfo, np.ndarray]],
        windows: Sequence[Window | None] | None = None,
        rgbx: bool = False,
    ) -> list[torch.Tensor | VideoDecodeError]:
        """Decode several clips; a bad video yields its VideoDecodeError, never raises.

        DALI's clips have their segments made in the thread pool, then run as batches while PyAV decodes its
        clips in the pool too (FFmpeg releasing the GIL). On CUDA, PyAV decodes into pinned host memory and
        each clip goes to the device with one copy on the caller's current stream, not blocking the host.

        `windows` (one per request, None for whole frames) are the parts of the frames the caller will read:
        PyAV converts only those to RGB, leaving the other pixels unset; DALI converts whole frames. `rgbx`:
        PyAV's clips come as RGBX (4 channels), which torch's CPU rescale reads without repacking; DALI's
        stay RGB."""
        results: list[torch.Tensor | VideoDecodeError | None] = [None] * len(requests)
        parts = windows or [None] * len(requests)
        batched: list[tuple[int, bool]] = []  # (request, trim)
        on_cpu: list[int] = []
        pictures: list[int] = []  # frame sources DALI decodes
        for i, (video, _) in enumerate(requests):
            try:
                backend, trim = self._route(video)
            except VideoDecodeError as exc:
                results[i] = exc
                continue
            if backend != "dali":
                on_cpu.append(i)
            else:
                (pictures.append(i) if video.codec == FRAME_CODEC else batched.append((i, trim)))
        prepared = [self._submit(self.dali.prepare, *requests[i], trim) for i, trim in batched]
        channels = 4 if rgbx else 3
        on_host = [self._submit(self._pyav_host, requests[i], parts[i], channels) for i in on_cpu]
        dali = self.dali.decode([p.result() for p in prepared])
        mapper = self._pool.map if self._pool is not None else map
        decoded = self.frames.decode_dali([requests[i] for i in pictures], mapper)
        for i, clip in zip(on_cpu, on_host):
            results[i] = self._to_device(clip.result())
        for (i, _), result in zip([(i, True) for i in pictures] + batched, decoded + dali):
            results[i] = (
                self._fall_back(*requests[i], result)
                if isinstance(result, VideoDecodeError) and self.backend == "auto"
                else result
            )
        self.stats["frames_decoded"] = self.frames_decoded
        return cast(list[torch.Tensor | VideoDecodeError], results)  # every slot filled above

    def _submit(self, fn, *args) -> Future:
        """`fn(*args)` in the pool, or at once where there is none."""
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        done: Future = Future()
        done.set_result(fn(*args))
        return done

    def _pyav_host(
        self, request: tuple[VideoInfo, np.ndarray], window: Window | None = None, channels: int = 3
    ) -> torch.Tensor | VideoDecodeError:
        """PyAV's clip on the host: in pinned memory where it goes on to a GPU, so that copy need not block."""
        video, indices = request
        decode = self.frames.decode if video.codec == FRAME_CODEC else self.pyav.decode
        try:
            if self.device.type != "cuda":
                return torch.from_numpy(decode(video, indices, window, channels))
            shape = (len(indices), video.height, video.width, channels)
            pinned = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            decode(video, indices, window, channels, out=pinned.numpy())
            return pinned
        except VideoDecodeError as exc:
            return exc

    def _to_device(self, clip: torch.Tensor | VideoDecodeError) -> torch.Tensor | VideoDecodeError:
        """A host clip on the decoder's device: one copy on the caller's current stream (pinned: asynchronous)."""
        if isinstance(clip, VideoDecodeError) or self.device.type != "cuda":
            return clip
        return clip.to(self.device, non_blocking=True)

    def _fall_back(
        self, video: VideoInfo, indices: np.ndarray, failure: VideoDecodeError
    ) -> torch.Tensor | VideoDecodeError:
        """PyAV's decode of a clip DALI failed on; the error names both reasons when PyAV fails too."""
        if video.path not in self._fell_back:
            self._fell_back.add(video.path)
            cpu = "PyAV" if video.codec != FRAME_CODEC else JPEG_BACKEND
            log.warning("DALI failed on %s (%s); decoding it with %s on the CPU", video.path, failure.reason, cpu)
        self.stats["dali_fallbacks"] += 1
        clip = self._to_device(self._pyav_host((video, indices)))
        if isinstance(clip, VideoDecodeError):
            return VideoDecodeError(video.path, f"{clip.reason}; DALI before it: {failure.reason}")
        return clip
