"""A video's packet index: which packet gives which frame, and what a clip must be fed to decode its frames.

Built once per video from one demux pass (no decoding) and kept in memory and on disk (`PacketIndexCache`):
the decoders (`decode.py`) seek by it, feed only the packets a clip needs (`PacketIndex.feed`), read those
packets straight from the file (`StoredPackets`) and check every picture that comes out against it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import av
import numpy as np

from datagen.env import CACHE_DIR
from datagen.manifest import VideoError, open_video, picture_packets

log = logging.getLogger(__name__)


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

    @classmethod
    def of(cls, path: str) -> PacketIndex:
        with open_video(path) as container, open(path, "rb") as file:
            context = container.streams.video[0].codec_context
            mpeg4, nal_length = context.name == "mpeg4", _avcc_length_size(context)
            parsed = mpeg4 or nal_length is not None
            packets, places = [], []
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as raw:
                for p in picture_packets(container):
                    data = bytes(p) if parsed else b""
                    packets.append(
                        (
                            p.pts,
                            packet_timestamp(p),
                            p.is_keyframe,
                            (_vop_types(data), p.size) if mpeg4 else ("", 0),
                            _h264_slices(data, nal_length) if nal_length is not None else (False, False),
                        )
                    )
                    # Where the packet's bytes lie in the file, if they are there as they are.
                    at = p.pos if parsed and p.pos is not None and raw[p.pos : p.pos + p.size] == data else None
                    places.append((at, p.size, p.pts, p.dts))
            setup = DecoderSetup.of(context)
        if not packets:
            raise VideoError(path, "no picture packets")
        pts = [p[0] for p in packets]
        # No presentation order to go by: assume display order is decode order.
        order = cast(list[int], pts) if None not in pts else list(range(len(packets)))
        shown = np.searchsorted(np.sort(order), order).astype(np.int64)
        timestamps = [p[1] for p in packets]
        key = np.array([p[2] for p in packets], bool)
        index = cls(timestamps, shown, key)
        if None in timestamps or len(set(timestamps)) < len(timestamps):
            return index
        shows: list[tuple[str, int]] | None = None  # (kind, packet) of each frame; kind "B": unreferenced
        random_access = True  # every key frame a point where references start afresh (H.264: an IDR picture)
        if mpeg4 and (pictures := _mpeg4_pictures([p[3] for p in packets])) is not None:
            shows = _display_order(pictures)
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
        stored = StoredPackets.of(places, setup) if setup is not None and all(None not in p for p in places) else None
        return dataclasses.replace(
            index, droppable=droppable, stamps=stamps, frame_packet=frame_packet, closed=closed, stored=stored
        )

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

    def segment(self, first: int, last: int) -> np.ndarray:
        """Decode positions of the packets that frames `first`..`last` need: from the key frame at or before
        `first` to the last packet shown at or before `last`, less the leading pictures of an open GOP (shown
        before its key frame, so not wanted). Shown in order, they are frames shown[start] onwards."""
        start = self.key_packet(first)
        before = np.flatnonzero(self.shown <= last)
        # one packet more: a decoder with reorder delay (packed MPEG-4 B-frames) outputs a picture one packet late
        stop = min(max(int(before[-1]) if before.size else start, start) + 1, len(self.shown) - 1)
        positions = np.arange(start, stop + 1)
        return positions[self.shown[positions] >= self.shown[start]]


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
        offsets, sizes = self.offset[positions], self.size[positions]
        begin, end = int(offsets.min()), int((offsets + sizes).max())
        with open(path, "rb") as file:
            data = memoryview(os.pread(file.fileno(), end - begin, begin))
        if len(data) < end - begin:
            raise VideoError(path, f"shorter than its index: {len(data)} of bytes {begin}..{end} read")
        for at, size, pts, dts in zip(
            (offsets - begin).tolist(), sizes.tolist(), self.pts[positions].tolist(), self.dts[positions].tolist()
        ):
            packet = av.Packet(size)
            memoryview(packet)[:] = data[at : at + size]
            packet.pts, packet.dts = pts, dts
            yield packet


def _gops(key: np.ndarray) -> np.ndarray:
    """The GOP of each of a sequence of pictures: the number of key pictures up to it, less one."""
    return np.cumsum(key) - 1


_VOP_START = b"\x00\x00\x01\xb6"
_MAX_NVOP_SIZE = 19  # FFmpeg's bound on a placeholder (not-coded VOP) packet


def _vop_types(data: bytes) -> str:
    """The coding types of the MPEG-4 Part 2 VOPs in a packet ("I", "P", "B" or "S", in bitstream order)."""
    types, at = [], data.find(_VOP_START)
    while 0 <= at < len(data) - 4:
        types.append("IPBS"[data[at + 4] >> 6])
        at = data.find(_VOP_START, at + 4)
    return "".join(types)


def _avcc_length_size(context: av.codec.context.CodecContext) -> int | None:
    """The NAL length field's size of H.264 stored as in MP4 (`avcC` extradata); None for other codecs and
    for Annex B streams, which are not parsed here."""
    extradata = bytes(context.extradata or b"")
    if context.name != "h264" or len(extradata) < 7 or extradata[0] != 1:
        return None
    return (extradata[4] & 3) + 1


def _h264_slices(data: bytes, length_size: int) -> tuple[bool, bool]:
    """Of an H.264 packet (length-prefixed NAL units): whether it holds slices and all have nal_ref_idc 0 (no
    picture refers to it; FFmpeg's `skip_frame=NONREF` skips exactly those), and whether it holds an IDR
    slice (nothing after it refers to a picture before it)."""
    at, slices, referenced, idr = 0, 0, False, False
    while at + length_size < len(data):
        size = int.from_bytes(data[at : at + length_size], "big")
        header = data[at + length_size]
        if header & 0x1F in (1, 5):  # coded slice (non-IDR, IDR)
            referenced |= bool(header & 0x60)
            idr |= header & 0x1F == 5
            slices += 1
        at += length_size + size
    return slices > 0 and not referenced, idr


def _mpeg4_pictures(packets: list[tuple[str, int]]) -> list[tuple[str, int]] | None:
    """The pictures FFmpeg decodes, in decode order, as (coding type, position of the packet whose decoding
    gives it), from each packet's VOP types and size; None for a pattern not recognised here.

    DivX/Xvid in AVI "pack" a B-frame behind the reference VOP decoded before it, followed by a placeholder
    packet (a not-coded VOP) in whose place FFmpeg decodes the packed B-frame."""
    pictures: list[tuple[str, int]] = []
    packed = False
    for position, (types, size) in enumerate(packets):
        if packed:  # this packet should be the placeholder: the packed B-frame is decoded in its place
            if len(types) != 1 or size > _MAX_NVOP_SIZE:
                return None
            pictures.append(("B", position))
            packed = False
        elif len(types) == 2 and types[0] != "B" and types[1] == "B":
            pictures.append((types[0], position))
            packed = True
        elif len(types) == 1:
            pictures.append((types, position))
        else:
            return None
    return pictures


def _display_order(pictures: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Pictures in the order they are shown: a B-frame at once, a reference when the next one is decoded."""
    shown: list[tuple[str, int]] = []
    pending: tuple[str, int] | None = None
    for picture in pictures:
        if picture[0] == "B":
            shown.append(picture)
        else:
            if pending is not None:
                shown.append(pending)
            pending = picture
    return shown + ([pending] if pending is not None else [])


def packet_timestamp(packet: av.Packet) -> int | None:
    """What FFmpeg seeks by: the presentation timestamp (MP4, WebM; in AVI it equals the frame number)."""
    return packet.pts if packet.pts is not None else packet.dts


_FORMAT = b"ctp-packet-index 1\n"  # the first bytes of a stored index; another format is indexed anew
_NONE = np.iinfo(np.int64).min  # a missing timestamp, stored


def _to_bytes(index: PacketIndex) -> bytes:
    """The index as bytes: a header line, a JSON header, then its arrays as little-endian int64."""
    stored = index.stored
    arrays: dict[str, Any] = {
        "timestamps": [_NONE if t is None else t for t in index.timestamps],
        "shown": index.shown,
        "key": index.key,
        "droppable_stamps": list(index.droppable),
        "droppable_frames": list(index.droppable.values()),
        "stamps": [_NONE if t is None else t for t in index.stamps],
        "frame_packet": index.frame_packet,
    }
    if stored is not None:
        arrays |= {"offset": stored.offset, "size": stored.size, "pts": stored.pts, "dts": stored.dts}
    blobs = [np.asarray(a, "<i8").tobytes() for a in arrays.values()]
    setup = None if stored is None else dataclasses.asdict(stored.setup) | {"extradata": stored.setup.extradata.hex()}
    header = {
        "arrays": {name: len(blob) // 8 for name, blob in zip(arrays, blobs)},
        "closed": index.closed,
        "setup": setup,
    }
    encoded = json.dumps(header).encode()
    return _FORMAT + len(encoded).to_bytes(4, "little") + encoded + b"".join(blobs)


def _from_bytes(data: bytes) -> PacketIndex:
    """The index `_to_bytes` wrote; ValueError (or KeyError) for anything else."""
    if not data.startswith(_FORMAT):
        raise ValueError("not a packet index of this format")
    at = len(_FORMAT) + 4
    end = at + int.from_bytes(data[at - 4 : at], "little")
    header = json.loads(data[at:end])
    arrays, at = {}, end
    for name, length in header["arrays"].items():
        arrays[name] = np.frombuffer(data, "<i8", length, at)
        at += 8 * length
    if at != len(data):
        raise ValueError(f"{len(data) - at} bytes more than the header accounts for")

    def optional(values: np.ndarray) -> list[int | None]:
        return [None if v == _NONE else v for v in values.tolist()]

    setup = header["setup"]
    stored = None
    if setup is not None:
        setup = DecoderSetup(**(setup | {"extradata": bytes.fromhex(setup["extradata"])}))
        stored = StoredPackets(arrays["offset"], arrays["size"], arrays["pts"], arrays["dts"], setup)
    return PacketIndex(
        timestamps=optional(arrays["timestamps"]),
        shown=arrays["shown"],
        key=arrays["key"].astype(bool),
        droppable=dict(zip(arrays["droppable_stamps"].tolist(), arrays["droppable_frames"].tolist())),
        stamps=optional(arrays["stamps"]),
        frame_packet=arrays["frame_packet"],
        closed=bool(header["closed"]),
        stored=stored,
    )


def default_directory() -> Path:
    """Where packet indexes are kept: $CTP_CACHE_DIR/packet-indexes, else the user's cache folder."""
    base = CACHE_DIR.get() or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctp-video"
    return Path(base) / "packet-indexes"


class PacketIndexCache:
    """The packet indexes of recently decoded videos (bounded, least recently used out; thread-safe), kept on
    disk too, one file per version of a video (its path, size and modification time), so that a video is
    indexed once per machine, not once per process and per eviction. An index pass costs about 2 ms (a clip
    about 8): a dataset larger than the memory bound (UCF-101: 13,320 videos) would otherwise pay it for
    most clips of every epoch, as would every replica and every restart. Reading one back takes 0.08–0.10 ms.

    `directory=None`: `default_directory()`; `persist=False`: memory only. A folder that cannot be written
    is warned about once and then left alone (the indexes stay in memory)."""

    def __init__(self, size: int = 4096, directory: str | os.PathLike[str] | None = None, persist: bool = True):
        self._indexes: collections.OrderedDict[str, PacketIndex] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()
        self.directory = (Path(directory) if directory is not None else default_directory()) if persist else None

    def get(self, path: str) -> PacketIndex:
        with self._lock:
            if path in self._indexes:
                self._indexes.move_to_end(path)
                return self._indexes[path]
        stored = self._file(path)
        index = self._load(stored) if stored is not None else None
        if index is None:
            index = PacketIndex.of(path)
            if stored is not None:
                self._save(stored, index)
        with self._lock:
            self._indexes[path] = index
            while len(self._indexes) > self._size:
                self._indexes.popitem(last=False)
        return index

    def _file(self, path: str) -> Path | None:
        if self.directory is None:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None  # PacketIndex.of says what is wrong with it
        version = f"{os.path.realpath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        return self.directory / f"{hashlib.sha1(version).hexdigest()}.idx"

    @staticmethod
    def _load(file: Path) -> PacketIndex | None:
        try:
            return _from_bytes(file.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: not a readable packet index (%s); indexing the video again", file, exc)
            return None

    def _save(self, file: Path, index: PacketIndex) -> None:
        """Written to a temporary name and renamed: a reader never sees half of one."""
        temporary = file.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary.write_bytes(_to_bytes(index))
            os.replace(temporary, file)
        except OSError as exc:
            log.warning(
                "packet indexes are not kept in %s (%s): each process indexes every video again; set "
                "CTP_CACHE_DIR to a writable folder",
                file.parent,
                exc.strerror or exc,
            )
            self.directory = None
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
