"""Decode exactly the frames a clip needs, as uint8 RGB tensors on the replica's device.

Backends: DALI (`mixed`/NVDEC on a GPU; its CPU decoder handles VP8/VP9/MJPEG only) and PyAV (CPU, any
codec FFmpeg decodes). Frame i is the i-th picture a full decode outputs (see datagen/manifest.py), which
PyAV reaches by seeking to the last key frame at or before the clip and decoding forward. PyAV's pictures
are converted to RGB the way DALI converts them (BT.601, bilinear chroma), so both backends give the same
pixels (within 1 level) and a sample does not depend on which replica decoded it.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import threading
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import av
import cv2
import numba
import numpy as np
import torch
from numba.extending import intrinsic

from datagen.manifest import VideoError, VideoInfo, open_video, picture_packets
from datagen.packet_index import PacketIndex, PacketIndexCache, packet_timestamp

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dali", "pyav")
Window = tuple[int, int, int, int]  # rows top..bottom, columns left..right (ends excluded) of a frame
# What DALI 2.4's decoder accepts per device (its docs; `mixed` is NVDEC): a forced "dali" backend tries these.
DALI_CODECS = {
    "cpu": frozenset({"vp8", "vp9", "mjpeg"}),
    "cuda": frozenset({"vp8", "vp9", "mjpeg", "av1", "mpeg4", "h264", "hevc"}),
}
# What `auto` sends to DALI: on CUDA not AV1 (Hopper's NVDEC has no AV1) nor MJPEG (DALI 2.4's `mixed`
# decoder rejects it, its docs notwithstanding); those go to PyAV on the CPU.
AUTO_DALI_CODECS = {"cpu": DALI_CODECS["cpu"], "cuda": DALI_CODECS["cuda"] - {"av1", "mjpeg"}}


def auto_backend(codec: str, device_type: str) -> str:
    """The backend `auto` decodes `codec` with on a `device_type` ("cpu" or "cuda") device."""
    return "dali" if codec in AUTO_DALI_CODECS.get(device_type, ()) else "pyav"


NVDEC_ENGINES = 7  # video decode engines of an H100 / H200: DALI threads on CUDA, so each has work


def default_decode_threads(device: torch.device) -> int:
    """Decoder threads sized to the hardware: NVDEC engines on CUDA, the cores this process may use on CPU."""
    return NVDEC_ENGINES if device.type == "cuda" else len(os.sched_getaffinity(0))


class VideoDecodeError(VideoError):
    """A video (or the requested frames of it) could not be decoded; carries `path` and `reason`."""


def clamp_indices(video: VideoInfo, indices: np.ndarray) -> np.ndarray:
    """Frame indices limited to the video's frames: a clip that runs past the end repeats the last one."""
    return np.clip(np.asarray(indices, dtype=np.int64), 0, max(video.num_frames - 1, 0))


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
        self, video: VideoInfo, indices: np.ndarray, window: Window | None = None, channels: int = 3
    ) -> np.ndarray:
        """(len(indices), H, W, 3) uint8 RGB (`channels=4`: RGBX); indices past the last decodable frame get
        that frame. With a `window`, only its pixels are converted to RGB: the others are left unset.

        Each distinct frame is converted straight into its first slot of the one output array, and repeats
        are copied after: no per-frame arrays to stack."""
        wanted = clamp_indices(video, indices)
        clip = np.empty((wanted.size, video.height, video.width, channels), np.uint8)
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


def remux(path: str, index: PacketIndex, positions: np.ndarray) -> np.ndarray:
    """The packets at `positions` (sorted decode positions of picture packets) copied into an in-memory
    Matroska file, timestamps kept: the bytes of a clip's frames for DALI, with nothing decoded here."""
    wanted = set(positions.tolist())
    first, last = int(positions[0]), int(positions[-1])
    out = io.BytesIO()
    with open_video(path) as src, av.open(out, "w", format="matroska") as dst:
        stream = src.streams.video[0]
        target = dst.add_stream_from_template(stream)
        position: int | None = 0
        if first > 0 and index.timestamps[first] is not None:
            src.seek(index.timestamps[first], backward=True, any_frame=False, stream=stream)
            position = None  # unknown until the first key frame's packet comes by
        for packet in picture_packets(src):
            if position is None:
                if not (packet.is_keyframe and packet_timestamp(packet) == index.timestamps[first]):
                    continue
                position = first
            if position in wanted:
                packet.stream = target
                dst.mux(packet)
            position += 1
            if position > last:
                break
        if position is None or position <= last:
            raise VideoError(path, f"packets {first}..{last} not found where the index put them")
    return np.frombuffer(out.getbuffer(), np.uint8)


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


def yuv_to_rgb(
    y: np.ndarray,
    cb: np.ndarray,
    cr: np.ndarray,
    full_range: bool = False,
    out: np.ndarray | None = None,
    window: Window | None = None,
) -> np.ndarray:
    """8-bit planar YCbCr (chroma at any subsampling) → (H, W, 3) uint8 RGB (into `out` if given), the way
    DALI's decoder converts: chroma upsampled bilinearly (pixel centres aligned), BT.601, rounded to nearest.
    With a `window` only its pixels are converted (the same values as in the whole frame); the others of
    `out` are left as they were: a clip's crop often reads half of the frame or less. An `out` of 4
    channels gets RGBX pixels (X = 255), the layout torch's CPU rescale works in.

    The bytes are those of the OpenCV chain this replaced (planes ×16 into uint16, `cv2.resize` of the
    chroma, `cv2.transform`, saturation), so what a key produces did not change: one compiled pass computes
    its arithmetic (`_ycbcr_to_rgb`), and `cv2.merge` interleaves the planes, which compiled loops do not
    vectorise (RGBX words they do). Chroma that is not exactly half (or all) of the picture in each direction, as at odd sizes, is
    upsampled by `cv2.resize` first, as before, since its weights are then not multiples of 1/4."""
    height, width = y.shape
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    elif (
        out.shape not in ((height, width, 3), (height, width, 4)) or out.dtype != np.uint8 or not out.flags.c_contiguous
    ):
        raise ValueError(
            f"out must be a C-contiguous ({height}, {width}, 3 or 4) uint8 array, not {out.dtype} {out.shape}"
        )
    top, bottom, left, right = window or (0, height, 0, width)
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"window {window} is not a non-empty part of a {height}x{width} frame")
    gain = 1.0
    if not all(size in (half, 2 * half) for size, half in zip(y.shape, cb.shape)):
        cb, cr = (
            cv2.resize(np.left_shift(c, 4, dtype=np.uint16), (width, height), interpolation=cv2.INTER_LINEAR)
            for c in (cb, cr)
        )
        gain = 1 / 16
    shape = (bottom - top, right - left)
    if out.shape[2] == 4:  # RGBX: one little-endian word per pixel, written by the compiled pass itself
        words = out.view(np.uint32).reshape(height, width)
        _ycbcr_to_rgb(y, cb, cr, _LANES[full_range], np.float32(gain), top, left, *shape, _NO_PLANES, words)
        return out
    planes = np.empty((3, *shape), np.uint8)
    _ycbcr_to_rgb(y, cb, cr, _LANES[full_range], np.float32(gain), top, left, *shape, planes, _NO_WORDS)
    cv2.merge(tuple(planes), dst=out[top:bottom, left:right])
    return out


_NO_PLANES, _NO_WORDS = np.empty((3, 0, 0), np.uint8), np.empty((0, 0), np.uint32)


def _bt601_x16(full_range: bool) -> np.ndarray:
    """3×4 affine map from 16·(Y, Cb, Cr) to RGB: BT.601 for limited (MPEG) or full (JPEG) range."""
    if full_range:
        matrix, offsets = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], [0.0, 128.0, 128.0]
    else:
        matrix, offsets = (
            [[1.164383, 0.0, 1.596027], [1.164383, -0.391762, -0.812968], [1.164383, 2.017232, 0.0]],
            [16.0, 128.0, 128.0],
        )
    m = np.array(matrix)
    return np.concatenate([m / 16, -(m @ np.array(offsets))[:, None]], axis=1)


def _int16_lanes(affine: np.ndarray) -> np.ndarray:
    """The affine map as `cv2.transform` applies it to uint16 pixels: in float32, with −32768 added to the
    offsets so that results fit int16 lanes (which sets where its rounding falls)."""
    lanes = affine.astype(np.float32)
    lanes[:, 3] -= np.float32(32768)
    return lanes


_BT601_X16 = {False: _bt601_x16(False), True: _bt601_x16(True)}
_LANES = {full: _int16_lanes(affine) for full, affine in _BT601_X16.items()}


@intrinsic
def _fma(typingctx, a, b, c):
    """a·b + c rounded once, in float32: what `cv2.transform`'s vector loop computes (`v_muladd`)."""

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return numba.types.float32(numba.types.float32, numba.types.float32, numba.types.float32), codegen


_OPAQUE = np.uint32(255 << 24)  # the spare byte of an RGBX word (little-endian: R is the first byte)


@numba.njit(cache=True, nogil=True, inline="always")
def _to_byte(luma, cb, cr, m0, m1, m2, m3):
    """One channel: OpenCV's int16-lane arithmetic (round to nearest even, +32768), saturated to 0…255."""
    value = np.rint(_fma(luma, m0, _fma(cb, m1, _fma(cr, m2, m3)))) + np.float32(32768)
    return np.uint8(min(max(value, np.float32(0)), np.float32(255)))


@numba.njit(cache=True, nogil=True, inline="always")
def _blend(near, far, weight, rest, gain):
    """16·(upsampled chroma) of one pixel: its widened chroma rows `near` and `far` weighted `weight` : `rest`."""
    return gain * (weight * near + rest * far)


@numba.njit(cache=True, nogil=True)
def _double_columns(chroma, out):
    """4·(each chroma row's columns doubled: ¾ near, ¼ far, edges repeated), or 4·chroma where `out` is as wide.
    Done once per chroma row, not once per picture row that blends it: all values are small integers, exact
    in float32, so doing this before the vertical blend gives the same sums as after it."""
    columns = chroma.shape[1]
    for m in range(chroma.shape[0]):
        c, row = chroma[m], out[m]
        if columns == row.shape[0]:
            for k in range(columns):
                row[k] = 4 * np.float32(c[k])
            continue
        last = columns - 1
        row[0] = 4 * np.float32(c[0])
        row[2 * last + 1] = 4 * np.float32(c[last])
        for k in range(1, columns):
            near, before = np.float32(c[k]), np.float32(c[k - 1])
            row[2 * k] = 3 * near + before
            row[2 * k - 1] = 3 * before + near


@numba.njit(cache=True, nogil=True)
def _ycbcr_to_rgb(y, cb, cr, m, gain, top, left, rows, columns, planes, words):
    """RGB planes (3, `rows`, `columns`) of that window at (`top`, `left`) of 8-bit Y and Cb, Cr at full, half
    width or half size (scaled by `gain`); or, where `words` is a whole frame's (H, W) uint32 array, the
    window's pixels as RGBX words in it (X = 255), which vectorise as planes do.

    Chroma rows are widened once (`_double_columns`) and blended vertically (`weight` : 4 − `weight`) in the
    pixel loop, over the window's chroma columns and one more on each side: the upsampled columns at the
    ends, computed as if at the frame's edges, fall outside the window unless they are at them."""
    height, width = y.shape
    half_height, half_width = cb.shape[0] < height, cb.shape[1] < width
    weight = np.float32(3 if half_height else 4)
    rest = np.float32(4) - weight
    r0, r1, r2, r3 = m[0, 0], m[0, 1], m[0, 2], m[0, 3]
    g0, g1, g2, g3 = m[1, 0], m[1, 1], m[1, 2], m[1, 3]
    b0, b1, b2, b3 = m[2, 0], m[2, 1], m[2, 2], m[2, 3]
    if half_width:
        first, stop = max(left // 2 - 1, 0), min((left + columns) // 2 + 2, cb.shape[1])
        start = 2 * first
    else:
        first, stop = left, left + columns
        start = left
    if half_height:
        low, high = max(top // 2 - 1, 0), min((top + rows - 1) // 2 + 2, cb.shape[0])
    else:
        low, high = top, top + rows
    span = 2 * (stop - first) if half_width else stop - first
    blue, red = np.empty((high - low, span), np.float32), np.empty((high - low, span), np.float32)
    _double_columns(cb[low:high, first:stop], blue)
    _double_columns(cr[low:high, first:stop], red)
    offset = left - start  # of the window's first column in `blue` and `red`
    for i in range(top, top + rows):
        near = i // 2 if half_height else i
        far = min(max(near + (1 if i % 2 else -1), 0), cb.shape[0] - 1) if half_height else i
        luma = y[i, left : left + columns]
        u_near, u_far = blue[near - low, offset : offset + columns], blue[far - low, offset : offset + columns]
        v_near, v_far = red[near - low, offset : offset + columns], red[far - low, offset : offset + columns]
        if words.size:
            word = words[i, left : left + columns]
            for j in range(columns):
                value = np.float32(16 * luma[j])
                u = _blend(u_near[j], u_far[j], weight, rest, gain)
                v = _blend(v_near[j], v_far[j], weight, rest, gain)
                red_byte = np.uint32(_to_byte(value, u, v, r0, r1, r2, r3))
                green_byte = np.uint32(_to_byte(value, u, v, g0, g1, g2, g3))
                blue_byte = np.uint32(_to_byte(value, u, v, b0, b1, b2, b3))
                word[j] = red_byte | (green_byte << np.uint32(8)) | (blue_byte << np.uint32(16)) | _OPAQUE
            continue
        r, g, b = planes[0, i - top], planes[1, i - top], planes[2, i - top]
        for j in range(columns):
            value = np.float32(16 * luma[j])
            u = _blend(u_near[j], u_far[j], weight, rest, gain)
            v = _blend(v_near[j], v_far[j], weight, rest, gain)
            r[j] = _to_byte(value, u, v, r0, r1, r2, r3)
            g[j] = _to_byte(value, u, v, g0, g1, g2, g3)
            b[j] = _to_byte(value, u, v, b0, b1, b2, b3)


class DaliDecoder:
    """DALI's video decoder, fed each clip's packets and frame indices, a batch at a time.

    DALI builds no index: given a whole file it decodes from its first frame to the clip's last. So each
    clip is fed only its segment (`PacketIndex.segment`, remuxed in memory), with indices offset to it,
    each distinct frame asked for once and repeats gathered after.

    On CUDA the `mixed` backend decodes with NVDEC and the frames go from DALI's GPU buffers into torch
    tensors on the same GPU (a device-to-device copy, no host round trip); on CPU its FFmpeg-based decoder
    takes VP8/VP9/MJPEG only. The pipeline is built once and reused; after an error DALI declares it
    invalid, so it is rebuilt.
    """

    def __init__(
        self, device: torch.device, batch_size: int = 8, num_threads: int = 2, index: PacketIndexCache | None = None
    ):
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.index = index or PacketIndexCache()
        self.frames_decoded = 0  # pictures in the segments DALI decoded, up to each clip's last frame
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
        encoded, frames, repeats, decoded = [], [], [], 0
        for video, indices in requests:
            distinct, inverse = np.unique(clamp_indices(video, indices), return_inverse=True)
            if distinct.size == 0:
                distinct = np.zeros(1, np.int64)  # DALI needs a frame to decode; none is kept
            try:
                index = self.index.get(video.path)
                positions = index.segment(int(distinct[0]), int(distinct[-1]))
                encoded.append(remux(video.path, index, positions))
            except VideoError as exc:
                raise VideoDecodeError(exc.path, exc.reason) from None
            except av.error.FFmpegError as exc:
                raise VideoDecodeError(video.path, f"corrupt {video.codec} stream ({exc.strerror or exc})") from exc
            frames.append((distinct - index.shown[positions[0]]).astype(np.int32))
            repeats.append(torch.from_numpy(inverse.reshape(-1)))
            decoded += len(positions)
        pipeline = self._pipeline or self._build()
        pipeline.feed_input("encoded", encoded)
        pipeline.feed_input("frames", frames)
        try:
            (output,) = pipeline.run()
        except RuntimeError as exc:
            self._pipeline = None
            raise VideoDecodeError(requests[0][0].path, f"DALI could not decode it ({_dali_reason(exc)})") from None
        self.frames_decoded += decoded
        return [self._to_torch(output[i], repeats[i]) for i in range(len(requests))]

    def _to_torch(self, tensor, repeats: torch.Tensor) -> torch.Tensor:
        """The clip in request order from its distinct frames: a copy, since DALI reuses its output buffers."""
        if self.device.type == "cpu":
            return torch.from_numpy(np.asarray(tensor))[repeats]
        from nvidia.dali.plugin.pytorch import feed_ndarray

        distinct = torch.empty(tensor.shape(), dtype=torch.uint8, device=self.device)
        feed_ndarray(tensor, distinct, cuda_stream=torch.cuda.current_stream(self.device))
        return distinct[repeats.to(self.device, non_blocking=True)]

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        gpu = self.device.type == "cuda"

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            prefetch_queue_depth=1,
            exec_dynamic=True,
            device_id=(self.device.index if self.device.index is not None else torch.cuda.current_device())
            if gpu
            else None,
        )
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

    def __init__(
        self,
        device: str | torch.device = "cpu",
        backend: str = "auto",
        batch_size: int | None = None,
        num_threads: int | None = None,
        dali_codecs: Collection[str] | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"unknown decode backend {backend!r}; choose one of {BACKENDS}")
        self.device = torch.device(device)
        self.backend = backend
        gpu = self.device.type == "cuda"
        self.dali_codecs = frozenset(AUTO_DALI_CODECS.get(self.device.type, ()) if dali_codecs is None else dali_codecs)
        self.num_threads = num_threads or default_decode_threads(self.device)
        self.pyav = PyAVDecoder()
        self.dali = DaliDecoder(
            self.device, batch_size or (4 * NVDEC_ENGINES if gpu else 8), self.num_threads, self.pyav.index
        )
        self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="pyav") if self.num_threads > 1 else None
        self.stats: collections.Counter[str] = (
            collections.Counter()
        )  # dali_fallbacks: clips PyAV decoded after DALI failed
        self._fell_back: set[str] = set()  # videos already warned about

    def backend_for(self, video: VideoInfo) -> str:
        """The backend that decodes `video` first; raises VideoDecodeError when the forced one cannot."""
        if self.backend == "pyav":
            return "pyav"
        if self.backend == "auto":
            return "dali" if video.codec in self.dali_codecs else "pyav"
        codecs = DALI_CODECS.get(self.device.type, frozenset())
        if video.codec not in codecs:
            raise VideoDecodeError(
                video.path,
                f"DALI cannot decode {video.codec} on {self.device.type} (it decodes "
                f"{', '.join(sorted(codecs))} there); use backend 'pyav' or 'auto'",
            )
        return "dali"

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
        return self.pyav.frames_decoded + self.dali.frames_decoded

    def decode_many(
        self,
        requests: Sequence[tuple[VideoInfo, np.ndarray]],
        windows: Sequence[Window | None] | None = None,
        rgbx: bool = False,
    ) -> list[torch.Tensor | VideoDecodeError]:
        """Decode several clips (DALI ones batched; PyAV ones in `num_threads` threads, FFmpeg releasing the GIL);
        a bad video yields its VideoDecodeError, never raises.

        `windows` (one per request, None for whole frames) are the parts of the frames the caller will read:
        PyAV converts only those to RGB, leaving the other pixels unset; DALI converts whole frames. `rgbx`:
        PyAV's clips come as RGBX (4 channels), which torch's CPU rescale reads without repacking; DALI's
        stay RGB."""
        results: list[torch.Tensor | VideoDecodeError | None] = [None] * len(requests)
        batched: list[int] = []
        on_cpu: list[int] = []
        for i, (video, _) in enumerate(requests):
            try:
                (batched if self.backend_for(video) == "dali" else on_cpu).append(i)
            except VideoDecodeError as exc:
                results[i] = exc
        mapper = self._pool.map if self._pool is not None and len(on_cpu) > 1 else map
        parts = windows or [None] * len(requests)
        channels = [4 if rgbx else 3] * len(on_cpu)
        for i, result in zip(
            on_cpu, mapper(self._pyav_or_error, [requests[i] for i in on_cpu], [parts[i] for i in on_cpu], channels)
        ):
            results[i] = result
        for i, result in zip(batched, self.dali.decode_batch([requests[i] for i in batched])):
            results[i] = (
                self._fall_back(*requests[i], result)
                if isinstance(result, VideoDecodeError) and self.backend == "auto"
                else result
            )
        self.stats["frames_decoded"] = self.frames_decoded
        return cast(list[torch.Tensor | VideoDecodeError], results)  # every slot filled above

    def _pyav(
        self, video: VideoInfo, indices: np.ndarray, window: Window | None = None, channels: int = 3
    ) -> torch.Tensor:
        return torch.from_numpy(self.pyav.decode(video, indices, window, channels)).to(self.device)

    def _pyav_or_error(
        self, request: tuple[VideoInfo, np.ndarray], window: Window | None, channels: int
    ) -> torch.Tensor | VideoDecodeError:
        try:
            return self._pyav(*request, window, channels)
        except VideoDecodeError as exc:
            return exc

    def _fall_back(
        self, video: VideoInfo, indices: np.ndarray, failure: VideoDecodeError
    ) -> torch.Tensor | VideoDecodeError:
        """PyAV's decode of a clip DALI failed on; the error names both reasons when PyAV fails too."""
        if video.path not in self._fell_back:
            self._fell_back.add(video.path)
            log.warning("DALI failed on %s (%s); decoding it with PyAV on the CPU", video.path, failure.reason)
        self.stats["dali_fallbacks"] += 1
        try:
            return self._pyav(video, indices)
        except VideoDecodeError as exc:
            return VideoDecodeError(video.path, f"{exc.reason}; DALI before it: {failure.reason}")
