"""Decode exactly the frames a clip needs, as uint8 RGB tensors on the replica's device.

Backends: DALI (`mixed`/NVDEC on a GPU; its CPU decoder handles VP8/VP9/MJPEG only) and PyAV (CPU, any
codec FFmpeg decodes). Frame i is the i-th picture a full decode outputs (see datagen/manifest.py), which
PyAV reaches by seeking to the last key frame at or before the clip and decoding forward. PyAV's pictures
are converted to RGB the way DALI converts them (BT.601, bilinear chroma), so both backends give the same
pixels (within 1 level) and a sample does not depend on which replica decoded it.
"""
from __future__ import annotations

import collections
import logging
from collections.abc import Collection, Sequence

import av
import cv2
import numpy as np
import torch

from datagen.manifest import VideoError, VideoInfo, open_video, picture_packets

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dali", "pyav")
# What DALI 2.4's decoder accepts per device (its docs; `mixed` is NVDEC): a forced "dali" backend tries these.
DALI_CODECS = {"cpu": frozenset({"vp8", "vp9", "mjpeg"}),
               "cuda": frozenset({"vp8", "vp9", "mjpeg", "av1", "mpeg4", "h264", "hevc"})}
# What `auto` sends to DALI: on CUDA not AV1 (Hopper's NVDEC has no AV1) nor MJPEG (DALI 2.4's `mixed`
# decoder rejects it, its docs notwithstanding); those go to PyAV on the CPU.
AUTO_DALI_CODECS = {"cpu": DALI_CODECS["cpu"], "cuda": DALI_CODECS["cuda"] - {"av1", "mjpeg"}}


def auto_backend(codec: str, device_type: str) -> str:
    """The backend `auto` decodes `codec` with on a `device_type` ("cpu" or "cuda") device."""
    return "dali" if codec in AUTO_DALI_CODECS.get(device_type, ()) else "pyav"


class VideoDecodeError(VideoError):
    """A video (or the requested frames of it) could not be decoded; carries `path` and `reason`."""


def clamp_indices(video: VideoInfo, indices: np.ndarray) -> np.ndarray:
    """Frame indices limited to the video's frames: a clip that runs past the end repeats the last one."""
    return np.clip(np.asarray(indices, dtype=np.int64), 0, max(video.num_frames - 1, 0))


class PyAVDecoder:
    """CPU decoding through FFmpeg: seek to the last key frame at or before the clip, decode forward only as
    far as its last frame. Keeps a bounded cache of each video's key frame positions."""

    def __init__(self, cache_size: int = 4096):
        self._seek_points: collections.OrderedDict[str, dict[int, int]] = collections.OrderedDict()
        self._cache_size = cache_size
        self.frames_decoded = 0  # pictures FFmpeg decoded, needed or not: the cost of seeking imprecisely

    def decode(self, video: VideoInfo, indices: np.ndarray) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 RGB; indices past the last decodable frame get that frame."""
        wanted = clamp_indices(video, indices)
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
                        frames[position] = frame_to_rgb(frame, video)
                        want = next(targets, None)
                    last = (position, frame)
                    position += 1
                if want is None:
                    return frames
        if leading:
            return None
        if last is not None and last[0] not in frames:  # the video ended early: keep its last frame for clamping
            frames[last[0]] = frame_to_rgb(last[1], video)
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


def frame_to_rgb(frame: av.VideoFrame, video: VideoInfo) -> np.ndarray:
    """(H, W, 3) uint8 RGB at the probed size. Pixel formats other than 8-bit planar YCbCr, and a stream
    that changes resolution mid-way, go through FFmpeg's scaler to 4:2:0 at that size first."""
    if frame.format.name not in _YUV_8BIT or (frame.width, frame.height) != (video.width, video.height):
        layout = frame.format.name if frame.format.name in _YUV_8BIT else "yuv420p"
        frame = frame.reformat(width=video.width, height=video.height, format=layout)
    y, cb, cr = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes)
    return yuv_to_rgb(y, cb, cr, full_range=int(frame.color_range) == 2)


_YUV_8BIT = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})


def yuv_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, full_range: bool = False) -> np.ndarray:
    """8-bit planar YCbCr (chroma at any subsampling) → (H, W, 3) uint8 RGB, the way DALI's decoder converts:
    chroma upsampled bilinearly (pixel centres aligned), BT.601, rounded to nearest.

    The planes are scaled by 16 into uint16 first: 2× bilinear weights are multiples of 1/16, so the
    upsampled chroma stays exact without a float copy of the picture (3× faster than float32)."""
    height, width = y.shape
    planes = [np.left_shift(y, 4, dtype=np.uint16)]
    planes += [cv2.resize(np.left_shift(c, 4, dtype=np.uint16), (width, height), interpolation=cv2.INTER_LINEAR) for c in (cb, cr)]
    rgb = cv2.transform(cv2.merge(planes), _BT601_X16[full_range])  # uint16: negatives saturate to 0
    return cv2.convertScaleAbs(rgb)  # saturates at 255


def _bt601_x16(full_range: bool) -> np.ndarray:
    """3×4 affine map from 16·(Y, Cb, Cr) to RGB: BT.601 for limited (MPEG) or full (JPEG) range."""
    if full_range:
        matrix, offsets = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], [0.0, 128.0, 128.0]
    else:
        matrix, offsets = [[1.164383, 0.0, 1.596027], [1.164383, -0.391762, -0.812968], [1.164383, 2.017232, 0.0]], [16.0, 128.0, 128.0]
    matrix = np.array(matrix)
    return np.concatenate([matrix / 16, -(matrix @ np.array(offsets))[:, None]], axis=1)


_BT601_X16 = {False: _bt601_x16(False), True: _bt601_x16(True)}


class DaliDecoder:
    """DALI's video decoder, fed the encoded files and each clip's frame indices, a batch at a time.

    On CUDA the `mixed` backend decodes with NVDEC and the frames go from DALI's GPU buffers into torch
    tensors on the same GPU (a device-to-device copy, no host round trip); on CPU its FFmpeg-based decoder
    takes VP8/VP9/MJPEG only. The pipeline is built once and reused; after an error DALI declares it
    invalid, so it is rebuilt.
    """

    def __init__(self, device: torch.device, batch_size: int = 8, num_threads: int = 2):
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._pipeline = None

    def decode_batch(self, requests: Sequence[tuple[VideoInfo, np.ndarray]]) -> list[torch.Tensor | VideoDecodeError]:
        results: list[torch.Tensor | VideoDecodeError] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            try:
                results += self._run(chunk)
            except VideoDecodeError:  # one bad video fails DALI's whole batch: find it by decoding one at a time
                for request in chunk:
                    try:
                        results += self._run([request])
                    except VideoDecodeError as exc:
                        results.append(exc)
        return results

    def _run(self, requests: Sequence[tuple[VideoInfo, np.ndarray]]) -> list[torch.Tensor]:
        encoded, frames = [], []
        for video, indices in requests:
            try:
                encoded.append(np.fromfile(video.path, dtype=np.uint8))
            except OSError as exc:
                raise VideoDecodeError(video.path, f"cannot read file ({exc.strerror})") from exc
            frames.append(clamp_indices(video, indices).astype(np.int32))
        pipeline = self._pipeline or self._build()
        pipeline.feed_input("encoded", encoded)
        pipeline.feed_input("frames", frames)
        try:
            (output,) = pipeline.run()
        except RuntimeError as exc:
            self._pipeline = None
            raise VideoDecodeError(requests[0][0].path, f"DALI could not decode it ({_dali_reason(exc)})") from None
        return [self._to_torch(output[i]) for i in range(len(requests))]

    def _to_torch(self, tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return torch.from_numpy(np.array(tensor))  # a copy: DALI reuses its output buffers
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(tensor.shape(), dtype=torch.uint8, device=self.device)
        return feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(self.device))

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, prefetch_queue_depth=1, exec_dynamic=True,
                      device_id=(self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else None)
        def clips():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            # pad_mode="edge": an index past the frame count in the container header (which DALI goes by,
            # and which may be lower than the manifest's) repeats the last frame instead of a black one.
            return fn.decoders.video(encoded, frames=frames, device="mixed" if gpu else "cpu", pad_mode="edge")

        self._pipeline = clips()
        self._pipeline.build()
        return self._pipeline


def _dali_reason(exc: RuntimeError) -> str:
    """The operator's own complaint, without DALI's pipeline traceback."""
    text = str(exc)
    detail = text.split("encountered:", 1)[-1].strip().splitlines()
    line = detail[0] if detail else text
    return line.split("failed: ", 1)[-1].strip()


class Decoder:
    """Decodes clips as uint8 RGB tensors (T, H, W, 3) on `device`, choosing a backend per video.

    backend="auto": DALI for the codecs in `dali_codecs` (default AUTO_DALI_CODECS of the device), PyAV
    otherwise; a video DALI fails on is decoded again by PyAV before it counts as unreadable, since a
    video quarantined by one replica's decoder is lost to the whole fleet. backend="dali" or "pyav"
    forces one, without that second try; a video the forced backend cannot decode fails with a
    VideoDecodeError that says what to do.
    """

    def __init__(self, device: str | torch.device = "cpu", backend: str = "auto", batch_size: int = 8, num_threads: int = 2,
                 dali_codecs: Collection[str] | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown decode backend {backend!r}; choose one of {BACKENDS}")
        self.device = torch.device(device)
        self.backend = backend
        self.dali_codecs = frozenset(AUTO_DALI_CODECS.get(self.device.type, ()) if dali_codecs is None else dali_codecs)
        self.pyav = PyAVDecoder()
        self.dali = DaliDecoder(self.device, batch_size, num_threads)
        self.stats: collections.Counter[str] = collections.Counter()  # dali_fallbacks: clips PyAV decoded after DALI failed
        self._fell_back: set[str] = set()  # videos already warned about

    def backend_for(self, video: VideoInfo) -> str:
        """The backend that decodes `video` first; raises VideoDecodeError when the forced one cannot."""
        if self.backend == "pyav":
            return "pyav"
        if self.backend == "auto":
            return "dali" if video.codec in self.dali_codecs else "pyav"
        codecs = DALI_CODECS.get(self.device.type, frozenset())
        if video.codec not in codecs:
            raise VideoDecodeError(video.path, f"DALI cannot decode {video.codec} on {self.device.type} (it decodes "
                                               f"{', '.join(sorted(codecs))} there); use backend 'pyav' or 'auto'")
        return "dali"

    def decode(self, video: VideoInfo, indices: np.ndarray) -> torch.Tensor:
        """(len(indices), H, W, 3) uint8 RGB on the decoder's device; raises VideoDecodeError.

        Indices may repeat and come in any order; those past the last decodable frame get that frame."""
        (result,) = self.decode_many([(video, indices)])
        if isinstance(result, VideoDecodeError):
            raise result
        return result

    def decode_many(self, requests: Sequence[tuple[VideoInfo, np.ndarray]]) -> list[torch.Tensor | VideoDecodeError]:
        """Decode several clips (DALI ones batched); a bad video yields its VideoDecodeError, never raises."""
        results: list[torch.Tensor | VideoDecodeError | None] = [None] * len(requests)
        batched = []
        for i, (video, indices) in enumerate(requests):
            try:
                if self.backend_for(video) == "dali":
                    batched.append(i)
                else:
                    results[i] = self._pyav(video, indices)
            except VideoDecodeError as exc:
                results[i] = exc
        for i, result in zip(batched, self.dali.decode_batch([requests[i] for i in batched])):
            results[i] = self._fall_back(*requests[i], result) if isinstance(result, VideoDecodeError) and self.backend == "auto" else result
        return results

    def _pyav(self, video: VideoInfo, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.pyav.decode(video, indices)).to(self.device)

    def _fall_back(self, video: VideoInfo, indices: np.ndarray, failure: VideoDecodeError) -> torch.Tensor | VideoDecodeError:
        """PyAV's decode of a clip DALI failed on; the error names both reasons when PyAV fails too."""
        if video.path not in self._fell_back:
            self._fell_back.add(video.path)
            log.warning("DALI failed on %s (%s); decoding it with PyAV on the CPU", video.path, failure.reason)
        self.stats["dali_fallbacks"] += 1
        try:
            return self._pyav(video, indices)
        except VideoDecodeError as exc:
            return VideoDecodeError(video.path, f"{exc.reason}; DALI before it: {failure.reason}")
