"""DALI's video decoder, fed each clip's own packets: NVDEC on a GPU (`mixed`), its CPU decoder for VP8/VP9/MJPEG.

DALI builds no index: given a whole file it decodes from its first frame to the clip's last. So each clip is
fed a segment (`clip_segment`): the packets its frames need (`PacketIndex.span`), read from the file and
written as a small Matroska file (`matroska.py`) in the decoder's thread pool — no container opened, no
muxer run. DALI numbers a file's frames by sorting its packets' timestamps and, on NVDEC, takes one picture
per packet; so the segment's timestamps are the frames' display indices (which the index knows, where the
container's timestamps do not give them: HMDB-51's packed-B AVIs), and packed MPEG-4 B-frames are unpacked
(`bitstream.unpack_b_frames`; DALI unpacks them itself only in AVI files). Each distinct frame is asked for
once and repeats gathered after.

On CUDA the frames go from DALI's GPU buffers into torch tensors on the same GPU (a device-to-device copy on
the current stream). The pipeline is built once and reused; after an error DALI declares it invalid, so it
is rebuilt.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import av
import numpy as np
import torch

from datagen.video.bitstream import unmark_packed, unpack_b_frames
from datagen.video.clip_frames import clamp_indices
from datagen.video.container import VideoDecodeError, VideoError, VideoInfo
from datagen.video.matroska import Track, matroska
from datagen.video.packet_index import PacketIndex
from datagen.video.packet_index_cache import PacketIndexCache

FRAME_MS = 40  # a segment's frames are 40 ms apart: any spacing numbers them the same


@dataclasses.dataclass(frozen=True)
class Segment:
    """A clip's packets as DALI takes them: a Matroska file whose pictures DALI numbers 0, 1, ... in the order
    of `frames`, the video's frame indices of those pictures (ascending)."""

    data: np.ndarray  # uint8
    frames: np.ndarray  # int64


def clip_segment(path: str, index: PacketIndex, needed: np.ndarray, trim: bool = True) -> Segment:
    """The segment that decodes the frames `needed` (sorted, unique, within the index); VideoError where the
    index cannot make one. `trim`: leave out what `PacketIndex.span` may leave out."""
    stored = index.stored
    if stored is None:
        raise VideoError(path, "its packets are not where its container says they are: no segment for DALI")
    if index.traits.packed and not index.stamps:
        raise VideoError(path, "packed B-frames in a pattern the packet index does not parse")
    positions = index.span(needed, trim)
    frames = index.packet_frames[positions]
    if not np.isin(needed, frames).all():
        raise VideoError(path, f"frames {needed[~np.isin(needed, frames)].tolist()} are not in its packet index")
    data = [bytes(b) for b in stored.read_bytes(path, positions)]
    extradata = stored.setup.extradata
    if index.traits.packed:
        data = list(unpack_b_frames(zip(positions.tolist(), data), index.packed_packets))
        extradata = unmark_packed(extradata)
    track = Track(_canonical(stored.setup.codec), stored.setup.width, stored.setup.height, extradata)
    try:
        encoded = matroska(track, data, (frames * FRAME_MS).tolist(), index.key[positions].tolist())
    except ValueError as exc:
        raise VideoError(path, f"no segment for DALI ({exc})") from None
    return Segment(np.frombuffer(encoded, np.uint8), np.sort(frames))


@functools.cache
def _canonical(decoder: str) -> str:
    """The codec a decoder decodes ("libdav1d" → "av1"), as Matroska names codecs."""
    return av.codec.Codec(decoder, "r").canonical_name


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One clip made ready for DALI: its segment, the segment's frame numbers to decode, and how the clip's
    indices (repeats and all) gather from them."""

    video: VideoInfo
    segment: Segment
    frames: np.ndarray  # int32: DALI's numbers of the clip's distinct frames
    gather: torch.Tensor  # int64: for each requested index, its distinct frame


class DaliDecoder:
    """`fn.decoders.video` fed `Prepared` clips, a batch at a time (`batch_size` clips per pipeline run)."""

    def __init__(
        self, device: torch.device, batch_size: int = 8, num_threads: int = 2, index: PacketIndexCache | None = None
    ):
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.index = index or PacketIndexCache()
        self.frames_decoded = 0  # pictures in the segments DALI decoded
        self._pipeline = None

    def prepare(self, video: VideoInfo, indices: np.ndarray, trim: bool = True) -> Prepared | VideoDecodeError:
        """The segment of a clip (thread-safe: the decoder's pool prepares clips while others decode)."""
        distinct, inverse = np.unique(clamp_indices(video, indices), return_inverse=True)
        if distinct.size == 0:
            distinct = np.zeros(1, np.int64)  # DALI needs a frame to decode; none is kept
        try:
            index = self.index.get(video.path)
            distinct = np.minimum(distinct, len(index.packet_frames) - 1)  # past the last picture: the last
            segment = clip_segment(video.path, index, np.unique(distinct), trim)
        except VideoError as exc:
            return VideoDecodeError(exc.path, exc.reason)
        except (av.error.FFmpegError, OSError) as exc:
            return VideoDecodeError(video.path, f"cannot read its packets ({exc})")
        frames = np.searchsorted(segment.frames, distinct).astype(np.int32)
        return Prepared(video, segment, frames, torch.from_numpy(inverse.reshape(-1)))

    def decode_batch(
        self,
        requests: Sequence[tuple[VideoInfo, np.ndarray]],
        trim: Sequence[bool] | None = None,
        mapper: Callable = map,
    ) -> list[torch.Tensor | VideoDecodeError]:
        """Decode clips (each a video and its frame indices); `mapper` (an executor's `map`) prepares them."""
        trims = trim if trim is not None else [True] * len(requests)
        return self.decode(list(mapper(self.prepare, *zip(*requests), trims)) if requests else [])

    def decode(self, prepared: Sequence[Prepared | VideoDecodeError]) -> list[torch.Tensor | VideoDecodeError]:
        """Run the prepared clips through the pipeline; a clip that could not be prepared or decoded yields
        its VideoDecodeError (one bad clip fails DALI's whole batch, so a failed batch is run again one clip
        at a time to find it)."""
        results: list[torch.Tensor | VideoDecodeError] = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            ready = [p for p in chunk if isinstance(p, Prepared)]
            outcomes: list[torch.Tensor | VideoDecodeError]
            try:
                outcomes = list(self._run(ready)) if ready else []
            except VideoDecodeError:
                outcomes = [self._run_one(p) for p in ready]
            decoded = iter(outcomes)
            results += [next(decoded) if isinstance(p, Prepared) else p for p in chunk]
        return results

    def _run_one(self, prepared: Prepared) -> torch.Tensor | VideoDecodeError:
        try:
            return self._run([prepared])[0]
        except VideoDecodeError as exc:
            return exc

    def _run(self, prepared: Sequence[Prepared]) -> list[torch.Tensor]:
        pipeline = self._pipeline or self._build()
        pipeline.feed_input("encoded", [p.segment.data for p in prepared])
        pipeline.feed_input("frames", [p.frames for p in prepared])
        try:
            (output,) = pipeline.run()
        except RuntimeError as exc:
            self._pipeline = None
            raise VideoDecodeError(prepared[0].video.path, f"DALI could not decode it ({dali_reason(exc)})") from None
        self.frames_decoded += sum(len(p.segment.frames) for p in prepared)
        return [self._to_torch(output[i], p.gather) for i, p in enumerate(prepared)]

    def _to_torch(self, tensor, gather: torch.Tensor) -> torch.Tensor:
        """The clip in request order from its distinct frames: a copy, since DALI reuses its output buffers."""
        if self.device.type == "cpu":
            return torch.from_numpy(np.asarray(tensor))[gather]
        from nvidia.dali.plugin.pytorch import feed_ndarray

        distinct = torch.empty(tensor.shape(), dtype=torch.uint8, device=self.device)
        feed_ndarray(tensor, distinct, cuda_stream=torch.cuda.current_stream(self.device))
        return distinct[gather.to(self.device, non_blocking=True)]

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"

        @pipeline_def(**pipeline_options(self.device, self.batch_size, self.num_threads))
        def clips():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            # pad_mode="edge": an index past the frames DALI finds repeats the last frame, not a black one.
            return fn.decoders.video(encoded, frames=frames, device="mixed" if gpu else "cpu", pad_mode="edge")

        self._pipeline = clips()
        self._pipeline.build()
        return self._pipeline


def pipeline_options(device: torch.device, batch_size: int, num_threads: int) -> dict:
    """`pipeline_def`'s arguments for a pipeline fed with `feed_input` and run one batch at a time on `device`."""
    gpu = device.type == "cuda"
    return dict(
        batch_size=batch_size,
        num_threads=num_threads,
        prefetch_queue_depth=1,
        exec_dynamic=True,
        device_id=(device.index if device.index is not None else torch.cuda.current_device()) if gpu else None,
    )


def dali_reason(exc: RuntimeError) -> str:
    """The operator's own complaint, without DALI's pipeline traceback."""
    text = str(exc)
    detail = text.split("encountered:", 1)[-1].strip().splitlines()
    line = detail[0] if detail else text
    return line.split("failed: ", 1)[-1].strip()
