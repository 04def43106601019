"""Frame sources behind the decoder façade (`datagen.video.decode.decoder.Decoder`): clips of JPEG frames decoded on the CPU
(libjpeg-turbo) or by DALI (nvJPEG on a GPU), the decode classes of frame sources and their probes.

Random access is free here: a clip reads only its distinct frames from the zip or folder (`frames.py`) and
decodes each once, straight into its slot of the clip. DALI decodes the frames of every clip of a request
in one batch. Like a video decoder, DALI's JPEG decoder is trusted only after a probe: on first contact with
a decode class (container, chroma subsampling, baseline or progressive coding: what changes nvJPEG's path,
the hardware engines decoding baseline only) one clip is decoded by both and compared (`compare_frames`,
the tolerance of `routes.py`), and a class that differs is decoded on the CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np
import torch

from datagen.video.clip_frames import clamp_indices, clip_array
from datagen.video.container import VideoDecodeError, VideoInfo
from datagen.video.decode.dali_images import DaliJpegDecoder
from datagen.video.decode.routes import DecodeClass, Route, compare_frames, probe_indices, reference_indices
from datagen.video.frames import FRAME_CODEC, FrameSource, FrameSourceError, FrameSources
from datagen.video.jpeg import JpegError, decode_into

JPEG_BACKEND = "libjpeg-turbo"  # the CPU decoder of frame sources: their reference, as PyAV is of video files


class FrameDecoder:
    """Decodes clips of frame sources: `decode` on the CPU, `decode_dali` with DALI on `device`."""

    def __init__(self, device: torch.device, batch_size: int = 128, num_threads: int = 2):
        self.device = device
        self.sources = FrameSources()
        self.dali = DaliJpegDecoder(device, batch_size, num_threads)
        self.frames_decoded = 0  # pictures decoded, by either decoder
        self._count_lock = threading.Lock()

    def source(self, video: VideoInfo) -> FrameSource:
        """The opened source of `video`; VideoDecodeError when it cannot be listed or no longer holds the frames
        its manifest counted."""
        try:
            source = self.sources.get(video.path, video.frame_fmt)
        except FrameSourceError as exc:
            raise VideoDecodeError(video.path, exc.reason) from None
        if len(source.listing.names) != video.num_frames:
            raise VideoDecodeError(
                video.path,
                f"holds {len(source.listing.names)} frames where its manifest says {video.num_frames}: "
                "index it again (ctp-datagen index)",
            )
        return source

    def decode_class(self, video: VideoInfo) -> DecodeClass:
        """The class of `video`'s frames, from its first frame's header; VideoDecodeError if it has none."""
        source = self.source(video)
        try:
            header = source.header()
        except FrameSourceError as exc:
            raise VideoDecodeError(video.path, exc.reason) from None
        return DecodeClass(FRAME_CODEC, source.listing.kind, header.sampling, header.coding, "")

    def _read(self, source: FrameSource, video: VideoInfo, index: int) -> bytes:
        try:
            return source.read(index)
        except FrameSourceError as exc:
            raise VideoDecodeError(video.path, exc.reason) from None

    def _count(self, frames: int) -> None:
        with self._count_lock:
            self.frames_decoded += frames

    def decode(
        self,
        video: VideoInfo,
        indices: np.ndarray,
        window: object = None,
        channels: int = 3,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 RGB (`channels=4`: RGBX) on the CPU, into `out` if given: each distinct
        frame decoded into its first slot, repeats copied after. Whole frames are decoded (no library wrapping
        libjpeg-turbo exposes its cropped decoding), so a `window` is accepted and makes no difference. Raises
        VideoDecodeError naming the frame."""
        wanted, clip = clip_array(video, indices, channels, out)
        if wanted.size == 0:
            return clip
        needed, first, inverse = np.unique(wanted, return_index=True, return_inverse=True)
        source = self.source(video)
        for frame, slot in zip(needed.tolist(), first.tolist()):
            data = self._read(source, video, frame)
            try:
                decode_into(data, clip[slot])
            except JpegError as exc:
                raise VideoDecodeError(video.path, f"{source.listing.names[frame]}: {exc}") from None
        self._count(len(needed))
        source_slot = first[inverse.reshape(-1)]
        repeats = np.flatnonzero(source_slot != np.arange(wanted.size))
        if repeats.size:
            clip[repeats] = clip[source_slot[repeats]]
        return clip

    def decode_dali(
        self, requests: Sequence[tuple[VideoInfo, np.ndarray]], mapper: Callable = map
    ) -> list[torch.Tensor | VideoDecodeError]:
        """Decode clips with DALI, the distinct frames of all of them in one batch (read by `mapper`, an
        executor's `map`); each clip is (T, H, W, 3) uint8 RGB on the device, or its VideoDecodeError."""
        read = list(mapper(self._read_clip, requests))
        pictures: list[np.ndarray] = []
        targets: list[torch.Tensor] = []
        owners: list[tuple[int, str]] = []  # (request, frame name) of each picture
        distinct: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # request: (its frames, its gather)
        for r, ((video, _), outcome) in enumerate(zip(requests, read)):
            if isinstance(outcome, VideoDecodeError):
                continue
            names, data, gather = outcome
            frames = torch.empty((len(data), video.height, video.width, 3), dtype=torch.uint8, device=self.device)
            distinct[r] = (frames, gather)
            pictures += [np.frombuffer(d, np.uint8) for d in data]
            targets += list(frames)
            owners += [(r, name) for name in names]
        failed: dict[int, VideoDecodeError] = {}
        for (r, name), error in zip(owners, self.dali.decode(pictures, targets)):
            if error is not None and r not in failed:
                failed[r] = VideoDecodeError(requests[r][0].path, f"{name}: {error}")
        self._count(len(pictures))
        clips: list[torch.Tensor | VideoDecodeError] = []
        for r, outcome in enumerate(read):
            if isinstance(outcome, VideoDecodeError) or r in failed:
                clips.append(failed.get(r, outcome))
            else:
                frames, gather = distinct[r]
                clips.append(frames[gather.to(self.device, non_blocking=True)])
        return clips

    def _read_clip(
        self, request: tuple[VideoInfo, np.ndarray]
    ) -> tuple[list[str], list[bytes], torch.Tensor] | VideoDecodeError:
        """The names and bytes of a clip's distinct frames, and how its indices gather from them."""
        video, indices = request
        try:
            distinct, inverse = np.unique(clamp_indices(video, indices), return_inverse=True)
            source = self.source(video)
            data = [self._read(source, video, i) for i in distinct.tolist()]
        except VideoDecodeError as exc:
            return exc
        names = [source.listing.names[i] for i in distinct.tolist()]
        return names, data, torch.from_numpy(inverse.reshape(-1))

    def probe(self, video: VideoInfo) -> Route:
        """Decode a probe clip of `video` with DALI and on the CPU and return the route the comparison gives."""
        indices = probe_indices(video.num_frames)
        around = reference_indices(indices, video.num_frames)
        try:
            reference = self.decode(video, around)
        except VideoDecodeError as exc:
            return Route(JPEG_BACKEND, verified=True, reason=f"the CPU could not decode the probe ({exc.reason})")
        (result,) = self.decode_dali([(video, indices)])
        if isinstance(result, VideoDecodeError):
            return Route(JPEG_BACKEND, verified=True, reason=f"DALI failed: {result.reason}", video=video.path)
        comparison = compare_frames(result.cpu().numpy(), indices, reference, around)
        backend = "dali" if comparison.ok else JPEG_BACKEND
        return Route(backend, True, True, comparison.summary(), video.path)
