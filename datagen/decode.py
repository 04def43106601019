"""Decode exactly the frames a clip needs, as uint8 RGB tensors on the replica's device.

Backends: DALI (`mixed`/NVDEC on a GPU; its CPU decoder handles VP8/VP9/MJPEG only) and PyAV (CPU, any
codec FFmpeg decodes). Frame i is the i-th picture a full decode outputs (see datagen/manifest.py), which
PyAV reaches by seeking to the last key frame at or before the clip and decoding forward.
"""
from __future__ import annotations

import collections
from collections.abc import Sequence

import av
import numpy as np
import torch

from datagen.manifest import VideoError, VideoInfo, open_video, picture_packets

BACKENDS = ("auto", "dali", "pyav")


class VideoDecodeError(VideoError):
    """A video (or the requested frames of it) could not be decoded; carries `path` and `reason`."""


class PyAVDecoder:
    """CPU decoding through FFmpeg. Keeps a bounded cache of each video's key frame positions."""

    def __init__(self, cache_size: int = 4096):
        self._keyframes: collections.OrderedDict[str, dict[int, int]] = collections.OrderedDict()
        self._cache_size = cache_size

    def decode(self, video: VideoInfo, indices: np.ndarray) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 RGB; indices past the last decodable frame get that frame."""
        wanted = np.clip(np.asarray(indices, dtype=np.int64), 0, max(video.num_frames - 1, 0))
        if wanted.size == 0:
            return np.zeros((0, video.height, video.width, 3), np.uint8)
        needed = np.unique(wanted)
        try:
            with open_video(video.path) as container:
                frames = self._read(container, video, needed)
        except VideoError as exc:
            raise VideoDecodeError(exc.path, exc.reason) from None
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(video.path, f"corrupt {video.codec} stream ({exc.strerror or exc})") from exc
        if not frames:
            raise VideoDecodeError(video.path, f"no decodable frame at or after index {needed[0]}")
        last = max(frames)
        return np.stack([frames[min(int(i), last)] for i in wanted])

    def _read(self, container: av.container.InputContainer, video: VideoInfo, needed: np.ndarray) -> dict[int, np.ndarray]:
        """Frames at the `needed` (sorted, unique) indices, plus the last one decoded if the video ends early."""
        stream = container.streams.video[0]
        keyframes = self._keyframe_index(video.path, container)
        start_ts, position = max(((ts, f) for ts, f in keyframes.items() if f <= needed[0]), key=lambda kf: kf[1])
        if position > 0:
            container.seek(start_ts, backward=True, any_frame=False, stream=stream)
        frames: dict[int, np.ndarray] = {}
        last: tuple[int, av.VideoFrame] | None = None
        target = iter(needed.tolist())
        want = next(target)
        started = position == 0
        for packet in container.demux(stream):
            if not started:  # the seek may land on another key frame: find out which one
                position = keyframes.get(_timestamp(packet), -1)
                if position < 0 or position > needed[0]:
                    return self._read_from_start(container, video, needed)
                started = True
            for frame in packet.decode():
                if want == position:
                    frames[position] = _to_rgb(frame, video)
                    want = next(target, None)
                last = (position, frame)
                position += 1
            if want is None:
                return frames
        if last is not None and last[0] not in frames:  # the video ended early: keep its last frame for clamping
            frames[last[0]] = _to_rgb(last[1], video)
        return frames

    def _read_from_start(self, container: av.container.InputContainer, video: VideoInfo, needed: np.ndarray) -> dict[int, np.ndarray]:
        container.seek(0, backward=True, any_frame=False, stream=container.streams.video[0])
        self._keyframes[video.path] = {_NO_SEEK: 0}  # this video's seeks are unreliable: always start over
        return self._read(container, video, needed)

    def _keyframe_index(self, path: str, container: av.container.InputContainer) -> dict[int, int]:
        """Key frame timestamp → frame index of that key frame, from one demux pass (no decoding)."""
        if path in self._keyframes:
            self._keyframes.move_to_end(path)
            return self._keyframes[path]
        index = {_NO_SEEK: 0}
        for position, packet in enumerate(picture_packets(container)):
            if packet.is_keyframe and position > 0:
                index.setdefault(_timestamp(packet), position)
        container.seek(0, backward=True, any_frame=False, stream=container.streams.video[0])
        self._keyframes[path] = index
        while len(self._keyframes) > self._cache_size:
            self._keyframes.popitem(last=False)
        return index


_NO_SEEK = -(2**62)  # key of frame 0 in a key frame index: decode from the start, no seek


def _timestamp(packet: av.Packet) -> int:
    return packet.dts if packet.dts is not None else packet.pts if packet.pts is not None else _NO_SEEK + 1


def _to_rgb(frame: av.VideoFrame, video: VideoInfo) -> np.ndarray:
    """RGB at the probed size (a stream that changes resolution mid-way is scaled back to it)."""
    return frame.reformat(width=video.width, height=video.height, format="rgb24").to_ndarray()


class Decoder:
    """Chooses a backend per video and returns frames as torch tensors on `device`.

    backend="auto": DALI on CUDA; on CPU DALI for VP8/VP9/MJPEG, PyAV for everything else.
    """

    def __init__(self, device: str | torch.device = "cpu", backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown decode backend {backend!r}; choose one of {BACKENDS}")
        self.device = torch.device(device)
        self.backend = backend
        self._pyav = PyAVDecoder()

    def backend_for(self, video: VideoInfo) -> str:
        """The backend that decodes `video` (raises VideoDecodeError when a forced backend cannot)."""
        if self.backend == "dali":
            raise VideoDecodeError(video.path, "the DALI backend is not available yet; use backend='pyav'")
        return "pyav"

    def decode(self, video: VideoInfo, indices: np.ndarray) -> torch.Tensor:
        """(len(indices), H, W, 3) uint8 RGB on the decoder's device; raises VideoDecodeError."""
        self.backend_for(video)
        return torch.from_numpy(self._pyav.decode(video, indices)).to(self.device)

    def decode_many(self, requests: Sequence[tuple[VideoInfo, np.ndarray]]) -> list[torch.Tensor | VideoDecodeError]:
        """Decode several clips; a bad video yields its VideoDecodeError in place of a tensor, never raises."""
        results: list[torch.Tensor | VideoDecodeError] = []
        for video, indices in requests:
            try:
                results.append(self.decode(video, indices))
            except VideoDecodeError as exc:
                results.append(exc)
        return results
