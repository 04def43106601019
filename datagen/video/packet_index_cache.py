"""Packet indexes kept in memory and on disk, so that a video is indexed once per machine.

One file per version of a video (its path, size and modification time), written under a temporary name and
renamed: a reader never sees half of one. A file of another format (an older release's) is indexed anew.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from common.env import CACHE_DIR
from datagen.video.packet_index import DecoderSetup, PacketIndex, StoredPackets, StreamTraits

log = logging.getLogger(__name__)

_FAMILY = b"ctp-packet-index "  # the first bytes of a stored index of any release
_FORMAT = _FAMILY + b"2\n"  # those of this release's; another format is indexed anew
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
        "packed": index.packed,
    }
    if stored is not None:
        arrays |= {"offset": stored.offset, "size": stored.size, "pts": stored.pts, "dts": stored.dts}
    blobs = [np.asarray(a, "<i8").tobytes() for a in arrays.values()]
    setup = None if stored is None else dataclasses.asdict(stored.setup) | {"extradata": stored.setup.extradata.hex()}
    header = {
        "arrays": {name: len(blob) // 8 for name, blob in zip(arrays, blobs)},
        "closed": index.closed,
        "setup": setup,
        "traits": dataclasses.asdict(index.traits),
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
        traits=StreamTraits(**header["traits"]),
        packed=arrays["packed"],
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
        """The index stored in `file`; None where there is none, or one of another release's format (made again
        without a word: after an upgrade every video is)."""
        try:
            data = file.read_bytes()
            if data.startswith(_FAMILY) and not data.startswith(_FORMAT):
                return None
            return _from_bytes(data)
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
