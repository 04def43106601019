"""A video file as the project sees it: `VideoInfo` (its trustworthy facts), the errors that make it unusable, and
the container primitives every reader shares (opening it tolerantly, demuxing only packets that carry a picture).

A frame index means the same thing everywhere in the project: the i-th picture a full decode outputs.
Container metadata sometimes disagrees with that (HMDB-51 AVIs carry placeholder chunks and malformed
headers), so frame counts come from demuxing, which is cheap, counting only packets that carry a picture.
A video may also be a frame source, a zip or folder of numbered JPEG frames (`frames.py`): frame i is the
i-th picture of its numbering.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import av

# AVI files from DivX/Xvid hold 'dropped frame' placeholder chunks (one byte) that decode to nothing; a real
# MPEG-4 Part 2 picture, even a not-coded one that repeats the previous frame, starts with a VOP start code.
_PICTURE_START_CODES = {"mpeg4": b"\x00\x00\x01\xb6"}


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str  # FFmpeg's codec name: h264, hevc, mpeg4, vp8, vp9, mjpeg, av1, ...; "jpeg-frames" (frames.py)
    frame_fmt: str = ""  # a frame source's frame names, e.g. "img_{:05d}.jpg"; "" for a video file

    def fields(self) -> dict:
        """The manifest entry: a video file's has no `frame_fmt`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "frame_fmt" or v}


class VideoError(Exception):
    """A video that cannot be used; `reason` is what a user reads in reports and manifests."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class VideoDecodeError(VideoError):
    """A video (or the requested frames of it) could not be decoded; carries `path` and `reason`."""


def open_video(path: str | os.PathLike[str]) -> av.container.InputContainer:
    """Open a container tolerantly (malformed metadata is common in HMDB-51) or raise `VideoError`."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"not a readable video container ({exc.strerror or exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream")
    return container


def picture_packets(container: av.container.InputContainer) -> Iterator[av.Packet]:
    """Demux the first video stream, yielding only packets that decode to a picture (in decode order)."""
    stream = container.streams.video[0]
    start_code = _PICTURE_START_CODES.get(stream.codec_context.name)
    for packet in container.demux(stream):
        if packet.size and (start_code is None or start_code in bytes(packet)):
            yield packet
