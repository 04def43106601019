"""PyAV (FFmpeg on the CPU): seek to the last key frame at or before a clip, decode forward only as far as its
last frame, and convert just the pictures it needs (`yuv.py`). The reference every other decoder is compared with."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from typing import cast

import av
import numpy as np

from datagen.video.clip_frames import clip_array
from datagen.video.container import VideoDecodeError, VideoError, VideoInfo, open_video
from datagen.video.decode.yuv import Window, yuv_to_rgb
from datagen.video.packet_index import PacketIndex, packet_timestamp
from datagen.video.packet_index_cache import PacketIndexCache

log = logging.getLogger(__name__)


class PyAVDecoder:
    """CPU decoding through FFmpeg: seek to the last key frame at or before the clip, decode forward only as
    far as its last frame. Keeps a bounded cache of each video's key frame positions."""

    def __init__(self, index: PacketIndexCache | None = None):
        self.index = index or PacketIndexCache()
        self._no_seek: set[str] = set()  # videos whose seeks land elsewhere: decoded from their start
        self._no_skip: set[str] = set()  # videos whose pictures came out other than their index said
        self.frames_decoded = 0  # pictures FFmpeg decoded, needed or not: the cost of seeking imprecisely
        self._count_lock = threading.Lock()  # decode() runs in several threads at once

    def decode(
        self,
        video: VideoInfo,
        indices: np.ndarray,
        window: Window | None = None,
        channels: int = 3,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 RGB (`channels=4`: RGBX), into `out` if given; indices past the last
        decodable frame get that frame. With a `window`, only its pixels are converted to RGB: the others
        are left unset.

        Each distinct frame is converted straight into its first slot of the one output array, and repeats
        are copied after: no per-frame arrays to stack."""
        wanted, clip = clip_array(video, indices, channels, out)
        if wanted.size == 0:
            return clip
        needed, first, inverse = np.unique(wanted, return_index=True, return_inverse=True)
        slots = [clip[i] for i in first.tolist()]  # views into `clip`, one per needed frame
        try:
            index = self.index.get(video.path)
            skip = bool(index.stamps) and video.path not in self._no_skip
            try:
                filled = self._read_any(video, needed, slots, window, index, skip)
            except _Misplaced as exc:  # from now on this video's every picture is decoded
                log.warning("%s: %s; decoding its every picture from now on", video.path, exc)
                self._no_skip.add(video.path)
                filled = self._read_any(video, needed, slots, window, index, False)
        except VideoError as exc:
            raise VideoDecodeError(exc.path, exc.reason) from None
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(video.path, f"corrupt {video.codec} stream ({exc.strerror or exc})") from exc
        if not filled:
            raise VideoDecodeError(video.path, f"no decodable frame at or after index {needed[0]}")
        source = first[np.minimum(inverse.reshape(-1), filled - 1)]  # past the last decoded: its frame
        repeats = np.flatnonzero(source != np.arange(wanted.size))
        if repeats.size:
            clip[repeats] = clip[source[repeats]]
        return clip

    def _read_any(
        self,
        video: VideoInfo,
        needed: np.ndarray,
        slots: list[np.ndarray],
        window: Window | None,
        index: PacketIndex,
        skip: bool,
    ) -> int:
        """`_read` from the key frame before the clip or, if the seek lands elsewhere, from the video's start
        (and from its start from now on)."""
        filled = self._read(video, needed, self._seek_point(video.path, int(needed[0])), slots, window, index, skip)
        if filled is None:
            self._no_seek.add(video.path)
            filled = cast(int, self._read(video, needed, None, slots, window, index, skip))
        return filled

    def _read(
        self,
        video: VideoInfo,
        needed: np.ndarray,
        seek: tuple[int, int] | None,
        slots: list[np.ndarray],
        window: Window | None,
        index: PacketIndex,
        skip: bool,
    ) -> int | None:
        """Convert the frames at the `needed` (sorted, unique) indices into `slots`, in order; returns how many
        slots it filled, the last one with the video's last frame if the video ends before `needed` does.
        None if seeking to `seek` = (key frame timestamp, its frame index) did not land on that key frame.

        With `skip`, only what the clip needs is decoded (`PacketIndex.feed`): GOP tails after its frames are
        not fed, the B-frames it does not show are not decoded (FFmpeg's `skip_frame`: nothing refers to them),
        and after the last packet it needs the decoder is drained instead of fed one more to push its last
        picture out; every picture is checked to come out where the index puts it (else `_Misplaced`). Where
        the index knows where the packets lie in the file (`StoredPackets`), they are read from it and given
        to a decoder of their own, with no container opened."""
        first = 0 if seek is None else index.key_packet(int(needed[0]))
        feed = index.feed(needed, first) if skip else None
        absent = feed.absent if feed is not None else []
        filled = decoded = gap = 0  # gap: the next of the `absent` frames
        last: tuple[int, av.VideoFrame] | None = None
        targets = iter(needed.tolist())
        want = next(targets)
        position = 0 if seek is None else seek[1]
        leading = seek is not None  # an open GOP's leading pictures precede its key frame; skip them
        try:
            with contextlib.ExitStack() as stack:
                landing = None  # the timestamp the first packet must have: where a seek should land
                if feed is not None and index.stored is not None:
                    context = index.stored.setup.decoder()
                    packets: Iterable[av.Packet] = index.stored.read(video.path, feed.given)
                else:
                    container = stack.enter_context(open_video(video.path))
                    stream = container.streams.video[0]
                    context = stream.codec_context
                    if seek is not None:
                        container.seek(seek[0], backward=True, any_frame=False, stream=stream)
                        landing = seek[0]
                    packets = container.demux(stream)
                skipping = False
                for packet in packets:
                    stamp = packet_timestamp(packet)
                    if landing is not None:
                        if stamp != landing:
                            return None
                        landing = None
                    if feed is None:
                        frames = context.decode(packet)
                    elif stamp in feed.unfed:
                        continue
                    else:
                        if (stamp in feed.skipped) != skipping:
                            skipping = not skipping
                            context.skip_frame = "NONREF" if skipping else "DEFAULT"
                        frames = context.decode(packet)
                        if stamp == feed.last:
                            frames += context.decode(None)  # drained: what it holds back comes out
                    decoded += len(frames)
                    for frame in frames:
                        if leading and not frame.key_frame:
                            continue
                        leading = False
                        while gap < len(absent) and absent[gap] <= position:
                            position += absent[gap] == position
                            gap += 1
                        if feed is not None and (position >= len(index.stamps) or frame.pts != index.stamps[position]):
                            raise _Misplaced(f"a picture stamped {frame.pts} came out as frame {position}")
                        if position == want:
                            frame_to_rgb(frame, video, slots[filled], window)
                            filled += 1
                            want = next(targets, None)
                            if want is None:
                                return filled
                        last = (position, frame)
                        position += 1
                    if feed is not None and stamp == feed.last:
                        raise _Misplaced(f"frame {want} did not come out by the last packet the index gives it")
        finally:
            with self._count_lock:
                self.frames_decoded += decoded
        if leading:
            return None
        if last is not None and (filled == 0 or needed[filled - 1] != last[0]):  # the video ended early: its
            frame_to_rgb(last[1], video, slots[filled], window)  # last frame stands for the needed ones past it
            filled += 1
        return filled

    def _seek_point(self, path: str, first: int) -> tuple[int, int] | None:
        """The last key frame at or before frame `first` as (timestamp, frame index); None: from the start."""
        if path in self._no_seek:
            return None
        index = self.index.get(path)
        position = index.key_packet(first)
        timestamp = index.timestamps[position]
        if position == 0 or timestamp is None:
            return None
        return timestamp, int(index.shown[position])


class _Misplaced(Exception):
    """Decoding only what a clip needs put a picture where the packet index does not: skip nothing."""


def frame_to_rgb(
    frame: av.VideoFrame, video: VideoInfo, out: np.ndarray | None = None, window: Window | None = None
) -> np.ndarray:
    """(H, W, 3) uint8 RGB at the probed size, written into `out` if given (only its `window`, if given).
    Pixel formats other than 8-bit planar YCbCr, and a stream that changes resolution mid-way, go through
    FFmpeg's scaler to 4:2:0 at that size first."""
    if frame.format.name not in _YUV_8BIT or (frame.width, frame.height) != (video.width, video.height):
        layout = frame.format.name if frame.format.name in _YUV_8BIT else "yuv420p"
        frame = frame.reformat(width=video.width, height=video.height, format=layout)
    y, cb, cr = (
        np.frombuffer(memoryview(p), np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes
    )
    return yuv_to_rgb(y, cb, cr, full_range=int(frame.color_range) == 2, out=out, window=window)


_YUV_8BIT = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})
