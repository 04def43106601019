"""The smallest Matroska file a demuxer takes: one video track, its packets as SimpleBlocks, a Cues index.

DALI's video decoder reads a container from memory (it builds no index of its own beyond one pass over the
packets), so a clip is handed to it as a small Matroska file of just the packets it needs. Writing that file
here from bytes already read (`StoredPackets`) opens no container and runs no muxer: it is a few
concatenations, cheap enough to run for every clip in the decoder's thread pool.

Layout: EBML header, then a Segment of known size holding a SeekHead (pointing at the Cues), Info, Tracks,
one Cluster per key frame (and a new one where a block's timestamp would not fit the cluster's 16-bit
offset), and Cues with one entry per key-frame cluster, as FFmpeg's own muxer writes them.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from collections.abc import Sequence

# What the Matroska specification calls each codec (`CodecID`), for the codecs a video decoder takes here.
CODEC_IDS = {
    "h264": "V_MPEG4/ISO/AVC",
    "hevc": "V_MPEGH/ISO/HEVC",
    "mpeg4": "V_MPEG4/ISO/ASP",
    "vp8": "V_VP8",
    "vp9": "V_VP9",
    "av1": "V_AV1",
    "mjpeg": "V_MJPEG",
}
TIMESTAMP_SCALE_NS = 1_000_000  # timestamps in milliseconds, as FFmpeg's muxer writes them
_MAX_OFFSET = 32767  # a block's timestamp relative to its cluster is a signed 16-bit number

# Element IDs (the Matroska specification), written with their length-marker bits as they appear in a file.
_EBML, _DOC_TYPE, _DOC_TYPE_VERSION, _DOC_TYPE_READ_VERSION = 0x1A45DFA3, 0x4282, 0x4287, 0x4285
_SEGMENT, _SEEK_HEAD, _SEEK, _SEEK_ID, _SEEK_POSITION = 0x18538067, 0x114D9B74, 0x4DBB, 0x53AB, 0x53AC
_INFO, _TIMESTAMP_SCALE, _MUXING_APP, _WRITING_APP = 0x1549A966, 0x2AD7B1, 0x4D80, 0x5741
_TRACKS, _TRACK_ENTRY, _TRACK_NUMBER, _TRACK_UID, _TRACK_TYPE = 0x1654AE6B, 0xAE, 0xD7, 0x73C5, 0x83
_FLAG_LACING, _CODEC_ID, _CODEC_PRIVATE, _VIDEO, _PIXEL_WIDTH, _PIXEL_HEIGHT = 0x9C, 0x86, 0x63A2, 0xE0, 0xB0, 0xBA
_CLUSTER, _CLUSTER_TIMESTAMP, _SIMPLE_BLOCK = 0x1F43B675, 0xE7, 0xA3
_CUES, _CUE_POINT, _CUE_TIME, _CUE_TRACK_POSITIONS, _CUE_TRACK, _CUE_CLUSTER_POSITION = (
    0x1C53BB6B,
    0xBB,
    0xB3,
    0xB7,
    0xF7,
    0xF1,
)
_KEY_FRAME = 0x80  # SimpleBlock flag
_BLOCK = struct.Struct(">BhB")  # a SimpleBlock's head: track 1 (a one-byte EBML number), 16-bit offset, flags


@dataclasses.dataclass(frozen=True)
class Track:
    """What a decoder needs to know of the stream besides its packets."""

    codec: str  # FFmpeg's codec name, a key of CODEC_IDS
    width: int
    height: int
    codec_private: bytes = b""  # FFmpeg's extradata: avcC, hvcC, av1C or MPEG-4's VOL headers


def matroska(track: Track, packets: Sequence[bytes], timestamps: Sequence[int], keys: Sequence[bool]) -> bytes:
    """A Matroska file of `packets` (decode order) with presentation `timestamps` (milliseconds, ≥ 0) and
    key-frame flags. Raises ValueError for a codec Matroska has no name for here.

    Written as a list of parts joined once: each packet's bytes are copied once, into the file."""
    if not packets or not len(packets) == len(timestamps) == len(keys):
        raise ValueError("a segment needs packets, each with a timestamp and a key-frame flag")
    head = _head(track)
    at = len(head) + _SEEK_HEAD_SIZE  # where the first cluster starts in the segment's data
    parts: list[bytes] = []
    cues = []
    for start, stop in _cluster_bounds(timestamps, keys):
        base = min(timestamps[start:stop])
        cluster = [_uint(_CLUSTER_TIMESTAMP, base)]
        for i in range(start, stop):
            data = packets[i]
            flags = _KEY_FRAME if keys[i] else 0
            cluster += (_SIMPLE_BLOCK_ID, _size(len(data) + 4), _BLOCK.pack(0x81, timestamps[i] - base, flags), data)
        size = sum(map(len, cluster))
        if keys[start]:
            cues.append(_cue_point(timestamps[start], at))
        parts += (_CLUSTER_ID, _size(size), *cluster)
        at += len(_CLUSTER_ID) + len(_size(size)) + size
    tail = _element(_CUES, b"".join(cues))
    body_size = at + len(tail)
    return b"".join([_EBML_HEADER, _SEGMENT_ID, _size(body_size), _seek_head(at), head, *parts, tail])


@functools.lru_cache(maxsize=4096)
def _head(track: Track) -> bytes:
    """The segment's Info and Tracks, the same for every segment of a video."""
    if track.codec not in CODEC_IDS:
        raise ValueError(f"no Matroska codec ID for {track.codec}")
    info = _element(_INFO, _uint(_TIMESTAMP_SCALE, TIMESTAMP_SCALE_NS) + _text(_MUXING_APP) + _text(_WRITING_APP))
    video = _uint(_PIXEL_WIDTH, track.width) + _uint(_PIXEL_HEIGHT, track.height)
    entry = (
        _uint(_TRACK_NUMBER, 1)
        + _uint(_TRACK_UID, 1)
        + _uint(_TRACK_TYPE, 1)  # video
        + _uint(_FLAG_LACING, 0)
        + _element(_CODEC_ID, CODEC_IDS[track.codec].encode())
        + (_element(_CODEC_PRIVATE, track.codec_private) if track.codec_private else b"")
        + _element(_VIDEO, video)
    )
    return info + _element(_TRACKS, _element(_TRACK_ENTRY, entry))


def _cluster_bounds(timestamps: Sequence[int], keys: Sequence[bool]) -> list[tuple[int, int]]:
    """Block ranges of the clusters: a new one at every key frame, and where a timestamp would leave the range
    of the cluster's 16-bit offsets."""
    bounds, start, low, high = [], 0, timestamps[0], timestamps[0]
    for i in range(1, len(timestamps)):
        low, high = min(low, timestamps[i]), max(high, timestamps[i])
        if keys[i] or high - low > _MAX_OFFSET:
            bounds.append((start, i))
            start, low, high = i, timestamps[i], timestamps[i]
    return [*bounds, (start, len(timestamps))]


def _seek_head(cues_at: int) -> bytes:
    """Where the Cues are, as an 8-byte position: the SeekHead's size does not depend on it."""
    seek = _element(_SEEK_ID, _id(_CUES)) + _id(_SEEK_POSITION) + _size(8) + cues_at.to_bytes(8, "big")
    return _element(_SEEK_HEAD, _element(_SEEK, seek))


def _cue_point(timestamp: int, cluster_at: int) -> bytes:
    positions = _uint(_CUE_TRACK, 1) + _uint(_CUE_CLUSTER_POSITION, cluster_at)
    return _element(_CUE_POINT, _uint(_CUE_TIME, timestamp) + _element(_CUE_TRACK_POSITIONS, positions))


def _element(element_id: int, data: bytes) -> bytes:
    return _id(element_id) + _size(len(data)) + data


def _uint(element_id: int, value: int) -> bytes:
    return _element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _text(element_id: int) -> bytes:
    return _element(element_id, b"ctp-video")


def _id(element_id: int) -> bytes:
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")


def _size(size: int) -> bytes:
    """An EBML variable-size integer: the length marker bit, then the value, in as few bytes as it fits."""
    if size < 0x3FFF:  # most blocks: two bytes
        return (size | 0x4000).to_bytes(2, "big") if size >= 0x7F else (size | 0x80).to_bytes(1, "big")
    for length in range(3, 9):
        if size < (1 << (7 * length)) - 1:  # all ones is reserved for "unknown size"
            return (size | (1 << (7 * length))).to_bytes(length, "big")
    raise ValueError(f"an element of {size} bytes is too large")


_SIMPLE_BLOCK_ID, _CLUSTER_ID, _SEGMENT_ID = _id(_SIMPLE_BLOCK), _id(_CLUSTER), _id(_SEGMENT)
_SEEK_HEAD_SIZE = len(_seek_head(0))
_EBML_HEADER = _element(
    _EBML, _element(_DOC_TYPE, b"matroska") + _uint(_DOC_TYPE_VERSION, 4) + _uint(_DOC_TYPE_READ_VERSION, 2)
)
