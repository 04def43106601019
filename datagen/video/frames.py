"""Frame sources: a video stored as numbered JPEG pictures, in a zip of its own or in a folder.

Layouts read: the official CtP code's one zip per video (`ucf101/zips/{name}.zip` holding `img_00001.jpg`, …;
Something-Something V1 as `{id}/RGB_frames.zip` holding `00001.jpg`, …), and rawframe folders as MMAction2
and the 20BN release of Something-Something V1 store them (`{video}/img_00001.jpg`, `{id}/00001.jpg`).

Frame i of a source is the i-th picture of its numbering, so a numbering from 1 (the official one) and one
from 0 mean the same; the numbering must start at 0 or 1 and have no gap, since a missing picture would
shift every later index and so change what a sample key means. The naming is a Python format as the official
code's `frame_fmt` (`img_{:05d}.jpg`); when none is given it is found from the names: the largest group of
`<prefix><number>.jpg` names, `img_` first (MMAction2 keeps optical flow as `x_`/`y_` beside it). Other files
are ignored, unless one stands where a frame is missing (`img_00005.png`), which the error then names.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import re
import string
import threading
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from datagen.video.jpeg import JpegError, JpegHeader, decode_into, is_complete, read_header

FRAME_CODEC = "jpeg-frames"  # VideoInfo.codec of a frame source
OFFICIAL_FMT = "img_{:05d}.jpg"  # the official CtP zips' (and MMAction2's) frame names, numbered from 1
_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<suffix>\.jpe?g)$", re.IGNORECASE)
_PROBLEMS_SHOWN = 3
_LOCAL_HEADER = 30  # bytes of a zip member's local header before its name and extra field


class FrameSourceError(Exception):
    """A frame source that cannot be used; `reason` is what a user reads in reports and manifests."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Naming:
    """How frames are named: `prefix`, the number (`digits` wide with leading zeros; 0: as is), `suffix`."""

    prefix: str
    digits: int
    suffix: str

    @classmethod
    def parse(cls, fmt: str) -> Naming:
        """The naming of a format with one integer field, as the official `frame_fmt`: `img_{:05d}.jpg`."""
        try:
            parts = list(string.Formatter().parse(fmt))
        except ValueError as exc:
            raise ValueError(f"frame format {fmt!r} is not a Python format ({exc})") from None
        fields = [(literal, spec) for literal, field, spec, _ in parts if field is not None]
        spec = fields[0][1] if len(fields) == 1 else None
        match = re.fullmatch(r"(?:0(\d+))?d?", spec or "") if spec is not None else None
        suffix = "".join(literal for literal, field, _, _ in parts[1:])
        if match is None or parts[0][1] not in ("", "0") or not suffix.lower().endswith((".jpg", ".jpeg")):
            raise ValueError(
                f"frame format {fmt!r} must name JPEG files with one integer field, e.g. {OFFICIAL_FMT!r} or '{{:05d}}.jpg'"
            )
        return cls(parts[0][0], int(match.group(1) or 0), suffix)

    @property
    def fmt(self) -> str:
        return self.prefix + ("{:d}" if self.digits == 0 else f"{{:0{self.digits}d}}") + self.suffix

    def name(self, number: int) -> str:
        return self.fmt.format(number)

    def number(self, name: str) -> int | None:
        """The frame number of a file `name`, or None when it is not a frame of this naming."""
        if not (name.startswith(self.prefix) and name.endswith(self.suffix)):
            return None
        digits = name[len(self.prefix) : len(name) - len(self.suffix)]
        if not digits.isdigit() or not digits.isascii():
            return None
        if (self.digits and len(digits) != self.digits) or (not self.digits and digits != str(int(digits))):
            return None
        return int(digits)


def detect_naming(names: Iterable[str]) -> Naming | None:
    """The naming most of `names` follow (those with an `img_` file name first), or None if none is a frame."""
    groups: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for name in names:
        if (m := _NUMBERED.match(name)) is not None:
            groups[(m["prefix"], m["suffix"])].append(m["number"])
    if not groups:
        return None

    def rank(item: tuple[tuple[str, str], list[str]]) -> tuple[bool, int, str]:
        (prefix, _), numbers = item
        return (prefix.rsplit("/", 1)[-1] == "img_", len(numbers), prefix)

    (prefix, suffix), numbers = max(groups.items(), key=rank)
    widths = {len(n) for n in numbers}
    return Naming(prefix, widths.pop() if len(widths) == 1 else 0, suffix)


@dataclasses.dataclass(frozen=True)
class Listing:
    """What a frame source holds: frame i is the file `names[i]` of the zip or the folder at `path`."""

    path: str
    kind: str  # "zip" | "folder"
    naming: Naming
    names: tuple[str, ...]


def is_frame_source(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is read as a frame source: a zip, or a folder (`has_frames` tells a folder of frames)."""
    path = Path(path)
    return path.suffix.lower() == ".zip" or path.is_dir()


def is_frame_name(name: str) -> bool:
    """Whether a file name looks like a frame's (`<prefix><number>.jpg`)."""
    return _NUMBERED.match(name) is not None


def has_frames(folder: str | os.PathLike[str]) -> bool:
    """Whether a folder directly holds files named like frames."""
    try:
        with os.scandir(folder) as entries:
            return any(is_frame_name(e.name) and e.is_file() for e in entries)
    except OSError:
        return False


def list_frames(path: str | os.PathLike[str], frame_fmt: str = "") -> Listing:
    """The frames of a zip or a folder in numbering order; FrameSourceError when it holds none, or its
    numbering does not start at 0 or 1 or has gaps."""
    path = Path(path)
    kind = "folder" if path.is_dir() else "zip"
    try:
        if kind == "folder":
            with os.scandir(path) as entries:
                names = [e.name for e in entries if e.is_file()]
        else:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
    except FileNotFoundError:
        raise FrameSourceError(path, "file not found") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise FrameSourceError(path, f"not a readable {kind} ({exc})") from None
    if not names:
        raise FrameSourceError(path, f"empty {kind}: no frames")
    naming = Naming.parse(frame_fmt) if frame_fmt else detect_naming(names)
    if naming is None:
        raise FrameSourceError(
            path,
            f"no JPEG frames (names like img_00001.jpg or 00001.jpg) among its {len(names)} file(s), e.g. {sorted(names)[0]}",
        )
    numbered = sorted((n, name) for name in names if (n := naming.number(name)) is not None)
    if not numbered:
        raise FrameSourceError(
            path, f"no frames of its naming: none of its {len(names)} file(s) is named like {naming.fmt}"
        )
    numbers = [n for n, _ in numbered]
    if len(set(numbers)) != len(numbers):
        twice = next(a for a, b in itertools.pairwise(numbered) if a[0] == b[0])
        raise FrameSourceError(path, f"a frame twice in its numbering: {twice[1]} and another of number {twice[0]}")
    if numbers[0] > 1 or numbers[-1] - numbers[0] + 1 != len(numbers):
        missing = sorted(set(range(min(numbers[0], 1), numbers[-1] + 1)) - set(numbers))
        raise FrameSourceError(path, _gaps(missing, naming, names, numbers[-1] + 1 - min(numbers[0], 1)))
    return Listing(str(path), kind, naming, tuple(name for _, name in numbered))


def _gaps(missing: list[int], naming: Naming, names: list[str], span: int) -> str:
    """Which frames are missing from a numbering, and what stands in their place if anything does."""
    runs: list[list[int]] = []
    for n in missing:
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    shown = ", ".join(naming.name(a) if a == b else f"{naming.name(a)}–{naming.name(b)}" for a, b in runs[:3])
    text = f"frames missing from its numbering: {len(missing)} of {span}, {shown}{', …' if len(runs) > 3 else ''}"
    stems = {os.path.splitext(naming.name(n))[0]: n for n in missing}
    standing = sorted(name for name in names if os.path.splitext(name)[0] in stems)
    if standing:
        text += f" ({standing[0]} is there: not a JPEG frame)"
    return text


class FrameSource:
    """An opened frame source: the bytes of frame i (thread-safe). A zip's stored (uncompressed) frames, as
    extraction tools mostly write them, are read with one `pread` each at the offset its directory gives
    (the index checked their CRCs); compressed ones through `zipfile`, under a lock. One file descriptor."""

    def __init__(self, listing: Listing):
        self.listing = listing
        self._zip = zipfile.ZipFile(listing.path) if listing.kind == "zip" else None
        self._fd = self._zip.fp.fileno() if self._zip is not None and self._zip.fp is not None else -1
        self._lock = threading.Lock()
        self._header: JpegHeader | None = None

    def read(self, index: int, check: bool = False) -> bytes:
        """Frame `index`'s file; FrameSourceError naming the frame when it cannot be read (with `check`, or
        when compressed, also when its CRC does not match)."""
        name = self.listing.names[index]
        try:
            if self._zip is None:
                return (Path(self.listing.path) / name).read_bytes()
            info = self._zip.getinfo(name)
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
                data = self._read_stored(info)
                if check and zlib.crc32(data) != info.CRC:
                    raise zipfile.BadZipFile(f"Bad CRC-32 for file {name!r}")
                return data
            with self._lock:
                return self._zip.read(name)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise FrameSourceError(self.listing.path, f"{name} cannot be read ({exc})") from None

    def header(self) -> JpegHeader:
        """The JPEG header of frame 0 (read once): what every frame's is, as the index checked."""
        if self._header is None:
            try:
                self._header = read_header(self.read(0))
            except JpegError as exc:
                raise FrameSourceError(self.listing.path, f"{self.listing.names[0]}: {exc}") from None
        return self._header

    def _read_stored(self, info: zipfile.ZipInfo) -> bytes:
        """A stored member's bytes: its local header and data in one read (a second if its header is longer
        than its directory entry suggests)."""
        size = info.compress_size
        head = os.pread(
            self._fd, _LOCAL_HEADER + len(info.filename.encode()) + len(info.extra) + 64 + size, info.header_offset
        )
        if head[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"no local header at offset {info.header_offset}")
        start = _LOCAL_HEADER + int.from_bytes(head[26:28], "little") + int.from_bytes(head[28:30], "little")
        data = head[start : start + size]
        if len(data) < size:
            data = os.pread(self._fd, size, info.header_offset + start)
        if len(data) != size:
            raise zipfile.BadZipFile(f"{info.filename} is cut short ({len(data)} of {size} bytes)")
        return data

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()  # and its file descriptor: reads fail from now on

    def __del__(self) -> None:
        self.close()


class FrameSources:
    """Opened frame sources, the `capacity` most recently used kept open (zips hold a file descriptor)."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._open: collections.OrderedDict[tuple[str, str], FrameSource] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, frame_fmt: str = "") -> FrameSource:
        """The source at `path` (listed with `frame_fmt`), opened on first use; FrameSourceError."""
        key = (path, frame_fmt)
        with self._lock:
            if key in self._open:
                self._open.move_to_end(key)
                return self._open[key]
        source = FrameSource(list_frames(path, frame_fmt))  # outside the lock: other sources stay readable
        with self._lock:
            self._open[key] = source
            while len(self._open) > self.capacity:
                self._open.popitem(last=False)  # closed when the last reader lets go of it
        return source


def probe_frames(path: str | os.PathLike[str], frame_fmt: str = "") -> tuple[Listing, JpegHeader]:
    """A frame source's frames and the header of its first: every frame is read (a zip's checked against its CRC) and
    must be a complete JPEG of the first one's size; the first is decoded. FrameSourceError naming the
    frames that are not."""
    listing = list_frames(path, frame_fmt)
    source = FrameSource(listing)
    first: JpegHeader | None = None
    problems: list[str] = []
    try:
        for i, name in enumerate(listing.names):
            try:
                data = source.read(i, check=True)
                header = read_header(data)
                if not is_complete(data):
                    raise JpegError("truncated JPEG (no end-of-image marker)")
                if first is None:
                    decode_into(data, np.empty((header.height, header.width, 3), np.uint8))
                    first = header
                elif (header.width, header.height) != (first.width, first.height):
                    raise JpegError(f"a {header.size} picture where {listing.names[0]} is {first.size}")
            except FrameSourceError as exc:
                problems.append(exc.reason)
            except JpegError as exc:
                problems.append(f"{name}: {exc}")
    finally:
        source.close()
    if problems:
        more = f"; … and {len(problems) - _PROBLEMS_SHOWN} more" if len(problems) > _PROBLEMS_SHOWN else ""
        shown = "; ".join(problems[:_PROBLEMS_SHOWN]) + more
        raise FrameSourceError(path, f"unreadable frames: {len(problems)} of {len(listing.names)} ({shown})")
    assert first is not None  # a listing has at least one frame
    return listing, first
