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
    """CPU decoding through FFmpeg: seek to the last key frame at or before the clip, decode forward only as
    far as its last frame. Keeps a bounded cache of each video's key frame positions."""

    def __init__(self, cache_size: int = 4096):
        self._seek_points: collections.OrderedDict[str, dict[int, int]] = collections.OrderedDict()
        self._cache_size = cache_size
        self.frames_decoded = 0  # pictures FFmpeg decoded, needed or not: the cost of seeking imprecisely

    def decode(self, video: VideoInfo, indices: np.ndarray) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 RGB; indices past the last decodable frame get that frame."""
        wanted = np.clip(np.asarray(indices, dtype=np.int64), 0, max(video.num_frames - 1, 0))
        if wanted.size == 0:
            return np.zeros((0, video.height, video.width, 3), np.uint8)
        needed = np.unique(wanted)
        try:
            frames = self._read(video, needed, self._seek_point(video.path, int(needed[0])))
            if frames is None:  # the seek landed elsewhere: from now on this video is decoded from its start
                self._seek_points[video.path] = {}
                frames = self._read(video, needed, None)
        except VideoError as exc:
            raise VideoDecodeError(exc.path, exc.reason) from None
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(video.path, f"corrupt {video.codec} stream ({exc.strerror or exc})") from exc
        if not frames:
            raise VideoDecodeError(video.path, f"no decodable frame at or after index {needed[0]}")
        last = max(frames)
        return np.stack([frames[min(int(i), last)] for i in wanted])

    def _read(self, video: VideoInfo, needed: np.ndarray, seek: tuple[int, int] | None) -> dict[int, np.ndarray] | None:
        """Frames at the `needed` (sorted, unique) indices, plus the last one decoded if the video ends early;
        None if seeking to `seek` = (key frame timestamp, its frame index) did not land on that key frame."""
        frames: dict[int, np.ndarray] = {}
        last: tuple[int, av.VideoFrame] | None = None
        targets = iter(needed.tolist())
        want = next(targets)
        with open_video(video.path) as container:
            stream = container.streams.video[0]
            position = 0
            if seek is not None:
                container.seek(seek[0], backward=True, any_frame=False, stream=stream)
                position = seek[1]
            leading = seek is not None  # an open GOP's leading pictures precede its key frame; skip them
            for count, packet in enumerate(container.demux(stream)):
                if seek is not None and count == 0 and _timestamp(packet) != seek[0]:
                    return None
                for frame in packet.decode():
                    self.frames_decoded += 1
                    if leading and not frame.key_frame:
                        continue
                    leading = False
                    if position == want:
                        frames[position] = _to_rgb(frame, video)
                        want = next(targets, None)
                    last = (position, frame)
                    position += 1
                if want is None:
                    return frames
        if leading:
            return None
        if last is not None and last[0] not in frames:  # the video ended early: keep its last frame for clamping
            frames[last[0]] = _to_rgb(last[1], video)
        return frames

    def _seek_point(self, path: str, first: int) -> tuple[int, int] | None:
        """The last key frame at or before frame `first` as (timestamp, frame index); None: from the start."""
        if path not in self._seek_points:
            self._seek_points[path] = _key_frames(path)
            while len(self._seek_points) > self._cache_size:
                self._seek_points.popitem(last=False)
        self._seek_points.move_to_end(path)
        before = [(index, ts) for ts, index in self._seek_points[path].items() if 0 < index <= first]
        return max(before)[::-1] if before else None


def _key_frames(path: str) -> dict[int, int]:
    """Key frame timestamp → frame index of that key frame, from one demux pass (no decoding).

    The frame index of a key frame is the number of pictures shown before it: those with a smaller
    presentation timestamp (an open GOP shows some pictures decoded after its key frame before it).
    """
    with open_video(path) as container:
        packets = [(p.pts, _timestamp(p), p.is_keyframe) for p in picture_packets(container)]
    pts = [p for p, _, _ in packets]
    if None in pts:  # no presentation order to go by: assume display order is decode order
        pts = list(range(len(packets)))
    shown_before = np.searchsorted(np.sort(pts), pts)
    return {ts: int(shown_before[i]) for i, (_, ts, key) in enumerate(packets) if key and i > 0 and ts is not None}


def _timestamp(packet: av.Packet) -> int | None:
    """What FFmpeg seeks by: the presentation timestamp (MP4, WebM; in AVI it equals the frame number)."""
    return packet.pts if packet.pts is not None else packet.dts


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
