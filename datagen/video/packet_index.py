"""A video's packet index: which packet gives which frame, and what a clip must be fed to decode its frames.

Built once per video from one demux pass (no decoding) and kept in memory and on disk
(`datagen/video/packet_index_cache.py`): the decoders (`decode/pyav.py`, `decode/dali.py`) seek by it, feed only the packets a
clip needs (`PacketIndex.feed`, `PacketIndex.span`), read those packets straight from the file
(`StoredPackets`) and check every picture that comes out against it; its `StreamTraits` tell which decode
class a video belongs to (`verify.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import mmap
import os
from collections.abc import Iterator
from typing import cast

import av
import numpy as np

from datagen.video.bitstream import (
    MAX_NVOP_SIZE,
    avcc_length_size,
    display_order,
    h264_slices,
    is_packed,
    mpeg4_pictures,
    vop_types,
)
from datagen.video.container import VideoError, open_video, picture_packets


@dataclasses.dataclass(frozen=True)
class StreamTraits:
    """What of a stream, besides its codec, changes how a decoder treats it (the ingredients of its decode
    class, `verify.DecodeClass`), from the same demux pass."""

    container: str = ""  # FFmpeg's demuxer (the first of its names): avi, mov, matroska, ...
    pixel_format: str = ""  # FFmpeg's name: yuv420p, yuvj420p, yuv422p10le, ...
    packed: bool = False  # MPEG-4 packed B-frames (DivX): B-VOPs stored behind their reference VOP
    placeholders: bool = False  # MPEG-4 not-coded VOPs that stand for no packed B-frame (a repeated picture)
    reordered: bool = False  # pictures are decoded in another order than they are shown (B-frames)


@dataclasses.dataclass(frozen=True)
class PacketIndex:
    """A video's picture packets in decode order, from one demux pass (no decoding).

    `shown[p]` is the frame index packet p decodes to: the number of pictures shown before it, those with a
    smaller presentation timestamp (an open GOP shows some pictures decoded after its key frame before it).

    `droppable` maps the timestamp of each packet whose decoding gives a picture no other refers to (a
    B-frame) to that frame's index, so that a clip which does not show it can skip decoding it; `stamps[i]`
    is the timestamp FFmpeg gives frame i, by which the decoder's output is checked, and `frame_packet[i]`
    the decode position of the packet whose decoding gives frame i. `closed`: every GOP is closed (nothing
    decoded after a key frame refers to a picture before it), so the packets of a GOP after the last one a
    clip needs can go unfed (`feed`). All are empty (or False) where the bitstream is not parsed here or does
    not follow the expected pattern: then nothing is skipped. Parsed: MPEG-4 Part 2 (VOP types; packed
    B-frames make up half of HMDB-51's pictures) and H.264 stored as in MP4 (NAL reference flags and IDR
    pictures; 40 % of the Kinetics pictures are unreferenced).
    """

    timestamps: list[int | None]  # what FFmpeg seeks by
    shown: np.ndarray  # int64
    key: np.ndarray  # bool
    droppable: dict[int, int] = dataclasses.field(default_factory=dict)
    stamps: list[int | None] = dataclasses.field(default_factory=list)
    frame_packet: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    closed: bool = False
    stored: StoredPackets | None = None
    traits: StreamTraits = StreamTraits()
    packed: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # see packed_packets

    @classmethod
    def of(cls, path: str) -> PacketIndex:
        with open_video(path) as container, open(path, "rb") as file:
            context = container.streams.video[0].codec_context
            mpeg4, nal_length = context.name == "mpeg4", avcc_length_size(context)
            packets, places = [], []
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as raw:
                for p in picture_packets(container):
                    data = bytes(p)
                    packets.append(
                        (
                            p.pts,
                            packet_timestamp(p),
                            p.is_keyframe,
                            (vop_types(data), p.size) if mpeg4 else ("", 0),
                            h264_slices(data, nal_length) if nal_length is not None else (False, False),
                        )
                    )
                    at = _locate(raw, p.pos, data)
                    places.append((at, p.size, p.pts, p.dts if p.dts is not None else p.pts))
            setup = DecoderSetup.of(context)
            names = container.format.name.split(",")
            traits = StreamTraits(
                container=names[0], pixel_format=str(context.pix_fmt or ""), packed=False, reordered=False
            )
        if not packets:
            raise VideoError(path, "no picture packets")
        pts = [p[0] for p in packets]
        # No presentation order to go by: assume display order is decode order.
        order = cast(list[int], pts) if None not in pts else list(range(len(packets)))
        shown = np.searchsorted(np.sort(order), order).astype(np.int64)
        timestamps = [p[1] for p in packets]
        key = np.array([p[2] for p in packets], bool)
        vops = [p[3] for p in packets]
        packed = [is_packed(types) for types, _ in vops]
        traits = dataclasses.replace(
            traits,
            packed=any(packed),
            placeholders=any(
                len(types) == 1 and size <= MAX_NVOP_SIZE and not (i and packed[i - 1])
                for i, (types, size) in enumerate(vops)
            ),
            reordered=any(packed) or bool(np.any(shown != np.arange(len(shown)))),
        )
        stored = StoredPackets.of(places, setup) if setup is not None and all(None not in p for p in places) else None
        index = cls(timestamps, shown, key, stored=stored, traits=traits, packed=np.flatnonzero(packed))
        if None in timestamps or len(set(timestamps)) < len(timestamps):
            return index
        shows: list[tuple[str, int]] | None = None  # (kind, packet) of each frame; kind "B": unreferenced
        random_access = True  # every key frame a point where references start afresh (H.264: an IDR picture)
        if mpeg4 and (pictures := mpeg4_pictures(vops)) is not None:
            shows = display_order(pictures)
            # Packed B-frames: what FFmpeg outputs (and stamps) after a gap in the packets is not what the
            # index expects, so GOP tails are fed there.
            random_access = all(kind != "B" for kind, _ in pictures)
        elif nal_length is not None and None not in pts:  # H.264 in MP4/MKV: shown in presentation order
            shows = [("B" if packets[p][4][0] else "P", int(p)) for p in np.argsort(shown)]
            random_access = all(p[4][1] for p in packets if p[2])
        if shows is None:
            return index
        stamps = [timestamps[packet] for _, packet in shows]
        droppable = {cast(int, stamps[i]): i for i, (kind, _) in enumerate(shows) if kind == "B"}
        frame_packet = np.array([packet for _, packet in shows], np.int64)
        # Closed: each frame is decoded in the GOP it is shown in (no leading pictures of an open GOP).
        closed = random_access and bool(key[0]) and np.array_equal(_gops(key)[frame_packet], _gops(key[frame_packet]))
        return dataclasses.replace(index, droppable=droppable, stamps=stamps, frame_packet=frame_packet, closed=closed)

    def feed(self, needed: np.ndarray, first: int) -> Feed | None:
        """What to give the decoder for the frames `needed` (sorted, unique) when it starts at the key packet at
        decode position `first`; None where the index cannot say (display order not parsed, or frames past
        it), and then every packet is decoded.

        Fed: the packets from `first` to the last that gives a needed frame, less, in a closed GOP, those after
        the last packet of that GOP a needed frame depends on (references come before what refers to them in
        decode order, and nothing after the next key frame refers back); decoded without their picture: the
        unreferenced pictures (B-frames) not needed. `absent` lists the frames after `first`'s that do not
        come out, so that the others can be counted off as they do."""
        if not self.stamps or needed[-1] >= len(self.frame_packet):
            return None
        start = int(self.shown[first])
        needed_packets = np.sort(self.frame_packet[needed])
        last = int(needed_packets[-1])
        positions = np.arange(first, last + 1)
        fed = np.ones(len(positions), bool)
        if self.closed:  # fed up to the last needed packet of the same GOP (GOPs ascend with the positions)
            gops, needed_gops = self._packet_gop[positions], self._packet_gop[needed_packets]
            j = np.maximum(np.searchsorted(needed_gops, gops, side="right") - 1, 0)
            fed = (needed_gops[j] == gops) & (positions <= needed_packets[j])
        given = positions[fed]
        frames = self._packet_frame[given]
        wanted = np.zeros(len(self.frame_packet), bool)
        wanted[needed] = True
        skip = self._packet_unreferenced[given] & (frames > start) & ~wanted[frames]
        out = np.zeros(len(self.frame_packet), bool)
        out[frames[~skip]] = True
        return Feed(
            given=given.tolist(),
            unfed=set(self._packet_stamp[positions[~fed]].tolist()),
            skipped=set(self._packet_stamp[given[skip]].tolist()),
            absent=(np.flatnonzero(~out[start + 1 : needed[-1]]) + start + 1).tolist(),
            last=int(self._packet_stamp[last]),
        )

    @functools.cached_property
    def _packet_frame(self) -> np.ndarray:
        """The frame each packet's decoding gives (the inverse of `frame_packet`)."""
        frames = np.empty(len(self.frame_packet), np.int64)
        frames[self.frame_packet] = np.arange(len(self.frame_packet))
        return frames

    @functools.cached_property
    def _packet_unreferenced(self) -> np.ndarray:
        unreferenced = np.zeros(len(self.frame_packet), bool)
        unreferenced[self.frame_packet[list(self.droppable.values())]] = True
        return unreferenced

    @functools.cached_property
    def _packet_gop(self) -> np.ndarray:
        return _gops(self.key)

    @functools.cached_property
    def _packet_stamp(self) -> np.ndarray:
        return np.array(self.timestamps, np.int64)

    def key_packet(self, first: int) -> int:
        """Decode position of the last key frame shown at or before frame `first` (0: the stream's start)."""
        keys = np.flatnonzero(self.key & (self.shown <= first))
        return int(keys[np.argmax(self.shown[keys])]) if keys.size else 0

    @functools.cached_property
    def packet_frames(self) -> np.ndarray:
        """The frame each picture packet's decoding gives: from the parsed display order where there is one
        (packed MPEG-4 B-frames: the placeholder packet stands for its B-frame), else from the timestamps."""
        return self._packet_frame if self.stamps else self.shown

    @functools.cached_property
    def packed_packets(self) -> frozenset[int]:
        """Decode positions of the packets that hold a packed MPEG-4 B-frame behind their reference VOP."""
        return frozenset(self.packed.tolist())

    @property
    def timestamps_in_display_order(self) -> bool | None:
        """Whether ordering the packets by timestamp orders them as their frames are shown (which is how DALI
        numbers frames); None where the display order is not known here."""
        if not self.stamps:
            return None
        return bool(np.array_equal(np.argsort(self._packet_stamp, kind="stable"), self.frame_packet))

    def span(self, needed: np.ndarray, trim: bool = True) -> np.ndarray:
        """Decode positions, ascending, of the packets a decoder starting afresh needs for the frames `needed`
        (sorted, unique, all in the index): from the key frame shown last at or before the first of them to
        the last packet one of them is decoded from, less the pictures shown before that key frame (an open
        GOP's leading pictures, which refer to the GOP before). With `trim`, where the display order is known,
        also less what `feed` leaves unfed or undecoded: closed GOPs' tails after their last needed packet,
        and pictures nothing refers to that are not needed."""
        frames = self.packet_frames
        keys = np.flatnonzero(self.key & (frames <= needed[0]))
        start = int(keys[np.argmax(frames[keys])]) if keys.size else 0
        wanted = np.isin(frames, needed)
        positions = np.arange(start, int(np.flatnonzero(wanted).max(initial=start)) + 1)
        keep = frames[positions] >= frames[start]
        if trim and self.stamps:
            keep &= ~(self._packet_unreferenced[positions] & ~wanted[positions])
            if self.closed:  # up to the last needed packet of each GOP (GOPs ascend with the positions)
                needed_packets = positions[wanted[positions]]
                gops, needed_gops = self._packet_gop[positions], self._packet_gop[needed_packets]
                j = np.maximum(np.searchsorted(needed_gops, gops, side="right") - 1, 0)
                keep &= (needed_gops[j] == gops) & (positions <= needed_packets[j])
        return positions[keep]


@dataclasses.dataclass(frozen=True)
class Feed:
    """How to decode one clip's frames (`PacketIndex.feed`): packets by decode position or by timestamp."""

    given: list[int]  # decode positions of the packets given to the decoder, ascending
    unfed: set[int]  # not given to the decoder: GOP tails no needed frame depends on
    skipped: set[int]  # given with `skip_frame=NONREF`: their unreferenced picture is not needed
    absent: list[int]  # frames, ascending, that these leave out of the decoder's output
    last: int  # the last packet to give; then the decoder is drained


@dataclasses.dataclass(frozen=True)
class DecoderSetup:
    """What a decoder of a video's stream takes from its container besides the packets: enough to decode them
    with no container open (`StoredPackets`)."""

    codec: str
    extradata: bytes
    tag: str
    width: int
    height: int
    bits_per_coded_sample: int
    reorder_depth: int
    color_range: int

    @classmethod
    def of(cls, context: av.video.codeccontext.VideoCodecContext) -> DecoderSetup | None:
        try:
            tag = context.codec_tag
        except UnicodeDecodeError:  # a tag that is not four ASCII letters cannot be given back
            return None
        return cls(
            context.name,
            bytes(context.extradata or b""),
            tag,
            context.width,
            context.height,
            context.bits_per_coded_sample,
            context.reorder_depth,
            int(context.color_range),
        )

    def decoder(self) -> av.video.codeccontext.VideoCodecContext:
        context = cast(av.video.codeccontext.VideoCodecContext, av.CodecContext.create(self.codec, "r"))
        if self.extradata:
            context.extradata = self.extradata
        context.codec_tag = self.tag
        context.width, context.height = self.width, self.height
        context.bits_per_coded_sample = self.bits_per_coded_sample
        context.reorder_depth = self.reorder_depth
        context.color_range = self.color_range
        return context


@dataclasses.dataclass(frozen=True)
class StoredPackets:
    """Where each picture packet's bytes lie in the file, and its timestamps: a clip's packets are read with one
    `pread` and given to a decoder of their own (`DecoderSetup`), with no container to open, probe and seek
    (about 0.35 ms of a clip on a CPU core, more for MP4s)."""

    offset: np.ndarray  # int64 per packet, in decode order
    size: np.ndarray
    pts: np.ndarray
    dts: np.ndarray
    setup: DecoderSetup

    @classmethod
    def of(cls, places: list[tuple[int | None, int, int | None, int | None]], setup: DecoderSetup) -> StoredPackets:
        offset, size, pts, dts = (np.array(column, np.int64) for column in zip(*places))
        return cls(offset, size, pts, dts, setup)

    def read(self, path: str, positions: list[int]) -> Iterator[av.Packet]:
        """The packets at `positions` (decode order), from the file's bytes, each in a buffer of its own (FFmpeg
        reads a little past a packet's end: its buffers are padded with zeros)."""
        for data, pts, dts in zip(
            self.read_bytes(path, positions), self.pts[positions].tolist(), self.dts[positions].tolist()
        ):
            packet = av.Packet(len(data))
            memoryview(packet)[:] = data
            packet.pts, packet.dts = pts, dts
            yield packet

    def read_bytes(self, path: str, positions: list[int] | np.ndarray) -> list[memoryview]:
        """The bytes of the packets at `positions` (decode order), views of one `pread` of the file."""
        offsets, sizes = self.offset[positions], self.size[positions]
        begin, end = int(offsets.min()), int((offsets + sizes).max())
        with open(path, "rb") as file:
            data = memoryview(os.pread(file.fileno(), end - begin, begin))
        if len(data) < end - begin:
            raise VideoError(path, f"shorter than its index: {len(data)} of bytes {begin}..{end} read")
        return [data[at : at + size] for at, size in zip((offsets - begin).tolist(), sizes.tolist())]


def _locate(raw: mmap.mmap, pos: int | None, data: bytes) -> int | None:
    """Where a packet's bytes lie in the file, if they are there as they are: at the position the demuxer
    gives, or a few bytes after it (Matroska's gives its block header's)."""
    if pos is None or not data:
        return None
    at = raw.find(data[:16], pos, pos + _HEADER_SLACK + 16)
    return at if at >= 0 and raw[at : at + len(data)] == data else None


_HEADER_SLACK = 32  # bytes a demuxer's packet position may lie before the packet's data


def _gops(key: np.ndarray) -> np.ndarray:
    """The GOP of each of a sequence of pictures: the number of key pictures up to it, less one."""
    return np.cumsum(key) - 1


def packet_timestamp(packet: av.Packet) -> int | None:
    """What FFmpeg seeks by: the presentation timestamp (MP4, WebM; in AVI it equals the frame number)."""
    return packet.pts if packet.pts is not None else packet.dts
