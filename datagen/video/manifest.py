"""Video probing and the manifest: which videos a run may use, and the trustworthy facts about each
(`container.py`: what a frame index means, and how frames are counted)."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
from tqdm import tqdm

from common.atomic import write_atomic
from common.tables import format_table

from .container import VideoError, VideoInfo, open_video, picture_packets
from .frames import FRAME_CODEC, FrameSourceError, has_frames, is_frame_name, is_frame_source, probe_frames

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset(
    {".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv"}
)
MANIFEST_FORMAT = "ctp-video-manifest"
MANIFEST_VERSION = 1
# Shortest usable video, in frames, for every command alike (index, prepare, pretrain, serve): a clip's frame
# indices past a short video's end are clamped to its last frame, so any decodable video can be sampled.
MIN_FRAMES = 1
PROGRESS_EVERY_S = 10.0  # a probe's plain progress line, where stderr is no terminal


@dataclasses.dataclass(frozen=True)
class Rejected:
    path: str
    reason: str


def probe(path: str | os.PathLike[str], frame_fmt: str = "") -> VideoInfo:
    """Frame count, fps, size and codec of a video; raises `VideoError` with the reason it is unusable.

    One demux pass counts picture packets; only the first picture is decoded, to prove the codec works
    and to read the true frame size. A zip or a folder is a frame source (`frames.probe_frames`, named by
    `frame_fmt` or its files; no fps: 0).
    """
    if is_frame_source(path):
        try:
            listing, header = probe_frames(path, frame_fmt)
        except FrameSourceError as exc:
            raise VideoError(path, exc.reason) from None
        count = len(listing.names)
        return VideoInfo(str(path), count, 0.0, header.width, header.height, FRAME_CODEC, listing.naming.fmt)
    with open_video(path) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.codec.canonical_name  # "av1", not the decoder's name ("libdav1d")
        first = None
        count = 0
        try:
            for packet in picture_packets(container):
                count += 1
                if first is None:
                    frames = packet.decode()
                    first = frames[0] if frames else None
            if first is None and count:
                first = next(iter(stream.codec_context.decode(None)), None)  # flush a decoder that buffers
        except av.error.FFmpegError as exc:
            raise VideoError(path, f"corrupt {codec} stream ({exc.strerror or exc})") from exc
        if first is None:
            raise VideoError(path, f"no decodable frame ({count} {codec} packets)")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
    return VideoInfo(str(path), count, fps, first.width, first.height, codec)


def videos_digest(videos: Sequence[VideoInfo]) -> str:
    """A short stable hash of a video list (paths and frame counts): a replica and a trainer check with it
    that a sample index means the same video to both."""
    entries = [[v.path, int(v.num_frames)] + ([v.frame_fmt] if v.frame_fmt else []) for v in videos]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def first_difference(ours: Sequence[VideoInfo], theirs: Iterable[tuple[str, int]], whose: str = "the replica") -> str:
    """Where two video lists part, for a person: the position and both entries (path, frames). `theirs` is read
    only up to the difference (a replica's list comes a page at a time)."""
    mine = ((v.path, v.num_frames) for v in ours)
    for position, (a, b) in enumerate(itertools.zip_longest(mine, theirs)):
        if a != b:
            shown = [f"{p} ({n} frames)" if p else "nothing (its list ends)" for p, n in (b or ("", 0), a or ("", 0))]
            return f"first difference at position {position}: {whose} has {shown[0]}, this side {shown[1]}"
    return "the lists are equal"


def find_videos(root: str | os.PathLike[str]) -> list[Path]:
    """Video files under a folder (by extension) and frame sources (zips, folders holding frames), or the file
    or frame folder itself; sorted. Paths are absolute but kept as given, symbolic links unresolved: a folder of
    links (class folders of links into one pool, say) lists each link under its own name, and a folder and its
    manifest name the same videos."""
    root = Path(os.path.abspath(root))
    if not root.is_dir() or has_frames(root):
        return [root]
    found = set()
    for p in root.rglob("*"):
        suffix = p.suffix.lower()
        if suffix in VIDEO_EXTENSIONS or suffix == ".zip":
            if p.is_file():
                found.add(p)
        elif is_frame_name(p.name):
            found.add(p.parent)
    return sorted(found)


def index_videos(
    paths: Iterable[str | os.PathLike[str]],
    min_frames: int = MIN_FRAMES,
    progress: bool = False,
    workers: int = 4,
    frame_fmt: str = "",
) -> tuple[list[VideoInfo], list[Rejected]]:
    """Probe files and folders; every unusable video becomes a `Rejected` with its reason, never an error.
    `progress`: a bar on a terminal, a plain line every PROGRESS_EVERY_S seconds otherwise. `frame_fmt` names
    the frames of every frame source (default: found from its files)."""
    files = sorted({f for p in paths for f in find_videos(p)})

    def check(path: Path) -> VideoInfo | Rejected:
        try:
            info = probe(path, frame_fmt)
        except VideoError as exc:
            return Rejected(str(path), exc.reason)
        if info.num_frames < min_frames:
            return Rejected(str(path), f"too short: {info.num_frames} frames < {min_frames}")
        return info

    with ThreadPoolExecutor(max(1, workers)) as pool:  # FFmpeg releases the GIL while demuxing
        results = list(_reported(pool.map(check, files), len(files), progress))
    videos = [r for r in results if isinstance(r, VideoInfo)]
    rejected = [r for r in results if isinstance(r, Rejected)]
    return videos, rejected


def _reported(results: Iterator[VideoInfo | Rejected], total: int, enabled: bool) -> Iterator[VideoInfo | Rejected]:
    if not enabled:
        yield from results
    elif sys.stderr.isatty():
        yield from tqdm(results, total=total, desc="probing", unit="video")
    else:
        last = time.monotonic()
        for done, result in enumerate(results, 1):
            yield result
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                log.info("probed %d of %d videos", done, total)


def write_manifest(
    path: str | os.PathLike[str], videos: Sequence[VideoInfo], rejected: Sequence[Rejected] = ()
) -> None:
    """A versioned, human-readable JSON manifest, one video per line. Videos under the manifest's folder are stored relative to
    it, so a dataset folder can move (or be mounted elsewhere) together with its manifest. Symbolic links stay
    as they are, unresolved (`find_videos`)."""
    path = Path(path)
    base = Path(os.path.abspath(path)).parent

    def rel(p: str) -> str:
        absolute = Path(os.path.abspath(p))
        return absolute.relative_to(base).as_posix() if absolute.is_relative_to(base) else str(absolute)

    header = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    lists = {
        "videos": [v.fields() | {"path": rel(v.path)} for v in videos],
        "rejected": [dataclasses.asdict(r) | {"path": rel(r.path)} for r in rejected],
    }
    fields = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in header.items()]
    fields += [
        f" {json.dumps(k)}: [" + ",".join(f"\n  {json.dumps(e)}" for e in v) + ("\n ]" if v else "]")
        for k, v in lists.items()
    ]
    # One entry per line: easy to read, diff and grep; atomic: readers never see a half-written manifest.
    write_atomic(path, "{\n" + ",\n".join(fields) + "\n}\n")


def read_manifest(path: str | os.PathLike[str]) -> tuple[list[VideoInfo], list[Rejected]]:
    """Load a manifest written by `write_manifest`; paths come back absolute."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable manifest ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path}: not a {MANIFEST_FORMAT} file; create one with `ctp-datagen index ROOT --out {path}`")
    if doc.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"{path}: manifest version {doc.get('version')} is not supported (expected {MANIFEST_VERSION}); re-run `ctp-datagen index`"
        )
    base = Path(os.path.abspath(path)).parent
    try:
        videos = [VideoInfo(**(v | {"path": str(base / v["path"])})) for v in doc["videos"]]
        rejected = [Rejected(**(r | {"path": str(base / r["path"])})) for r in doc.get("rejected", [])]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: malformed manifest entry ({exc})") from exc
    return videos, rejected


def resolve_videos(paths: Sequence[str | os.PathLike[str]], min_frames: int = MIN_FRAMES) -> list[VideoInfo]:
    """Video files, folders and manifests → the usable videos, sorted by path so every process agrees on the
    order. Rejected videos are logged, not fatal; an empty result is an error since nothing could run."""
    found: dict[str, VideoInfo] = {}
    to_probe: list[str | os.PathLike[str]] = []
    for p in paths:
        if Path(p).suffix.lower() == ".json":
            videos, _ = read_manifest(p)
            found.update((v.path, v) for v in videos if v.num_frames >= min_frames)
        else:
            to_probe.append(p)
    videos, rejected = index_videos(to_probe, min_frames=min_frames)
    found.update((v.path, v) for v in videos)
    for r in rejected:
        log.warning("skipping %s: %s", r.path, r.reason)
    if not found:
        raise ValueError(f"no usable videos in {[str(p) for p in paths]} ({len(rejected)} rejected)")
    return [found[p] for p in sorted(found)]


def rejected_list(rejected: Sequence[Rejected], manifest: str, limit: int = 20) -> str:
    """Each rejected file with its reason, so a user can fix or remove it; long lists end with a pointer to the manifest."""
    lines = [f"rejected {len(rejected)} file(s):"] + [f"  {r.path}: {r.reason}" for r in rejected[:limit]]
    if len(rejected) > limit:
        lines.append(f'  ... and {len(rejected) - limit} more, see the manifest {manifest} ("rejected")')
    return "\n".join(lines)


def summary(videos: Sequence[VideoInfo], rejected: Sequence[Rejected]) -> str:
    """A small table: accepted videos per codec, rejected videos per reason."""
    kinds = Counter(f"{v.codec} ({v.frame_fmt})" if v.frame_fmt else v.codec for v in videos)
    rows = [("accepted", codec, n) for codec, n in sorted(kinds.items())]
    rows += [("rejected", reason, n) for reason, n in sorted(Counter(_reason_kind(r.reason) for r in rejected).items())]
    rows.append(("total", "", len(videos) + len(rejected)))
    return format_table(rows, ("status", "codec / reason", "videos"), align="<<>")


def _reason_kind(reason: str) -> str:
    """Group reasons by their leading words ('too short: 12 frames < 16' → 'too short')."""
    return reason.split(":")[0].split(" (")[0]
