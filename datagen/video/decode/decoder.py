"""Decode exactly the frames a clip needs, as uint8 RGB tensors on the replica's device.

Backends: DALI (`mixed`/NVDEC on a GPU; its CPU decoder handles VP8/VP9/MJPEG only) and PyAV (CPU, any
codec FFmpeg decodes); frame sources (zips and folders of JPEG frames) are decoded by libjpeg-turbo on the
CPU or DALI's image decoder (`frame_decoder.py`). Frame i is the i-th picture a full decode outputs (see
datagen/manifest.py), which PyAV reaches by seeking to the last key frame at or before the clip and
decoding forward. PyAV's pictures
are converted to RGB the way DALI converts them (BT.601, bilinear chroma), so both backends give the same
pixels (within 1 level) and a sample does not depend on which replica decoded it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import cast

import av
import cv2
import numba
import numpy as np
import torch
from numba.extending import intrinsic

from datagen.clip_frames import clip_array
from datagen.dali import DaliDecoder
from datagen.decode_routes import (
    DecodeClass,
    DecodeRoutes,
    Route,
    compare_frames,
    probe_indices,
    reference_indices,
)
from datagen.frame_decoder import JPEG_BACKEND, FrameDecoder
from datagen.frames import FRAME_CODEC
from datagen.manifest import VideoDecodeError, VideoError, VideoInfo, open_video
from datagen.packet_index import PacketIndex, packet_timestamp
from datagen.packet_index_cache import PacketIndexCache

log = logging.getLogger(__name__)

BACKENDS = ("auto", "dali", "pyav")
Window = tuple[int, int, int, int]  # rows top..bottom, columns left..right (ends excluded) of a frame
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


def auto_backend(codec: str, device_type: str) -> str:
    """The backend `auto` decodes `codec` with on a `device_type` ("cpu" or "cuda") device."""
    return "dali" if codec in AUTO_DALI_CODECS.get(device_type, ()) else cpu_backend(codec)


def cpu_backend(codec: str) -> str:
    """The CPU decoder of `codec`, the reference DALI is compared with: libjpeg-turbo for frames, else PyAV."""
    return JPEG_BACKEND if codec == FRAME_CODEC else "pyav"


NVDEC_ENGINES = 7  # video decode engines of an H100 / H200: DALI threads on CUDA, so each has work


def default_decode_threads(device: torch.device) -> int:
    """Decoder threads sized to the hardware: NVDEC engines on CUDA, the cores this process may use on CPU."""
    return NVDEC_ENGINES if device.type == "cuda" else len(os.sched_getaffinity(0))


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


class Decoder:
    """Decodes clips as uint8 RGB tensors (T, H, W, 3) on `device`, choosing a backend per video.

    backend="auto": DALI for the codecs in `dali_codecs` (default AUTO_DALI_CODECS of the device), PyAV
    otherwise (libjpeg-turbo for frame sources: what "PyAV" means below for them), and PyAV for decode
    classes DALI cannot be fed or did not decode as PyAV does (`decode_routes.py`). With `verify` (default:
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
        if video.codec not in self.dali_codecs:
            return cpu_backend(video.codec), True
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
