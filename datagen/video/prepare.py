"""`ctp-datagen prepare`: re-encode a dataset once so that every clip starts near a key frame.

Kinetics footage has one key frame every ~250 frames, so a 16-frame clip costs ~140 decoded frames. The
prepared copy is H.264 (NVDEC and PyAV both decode it) in MP4, yuv420p, a closed GOP of `gop` frames without
B-frames, tuned for fast decoding (no CABAC, no deblocking filter: 2.2× faster to decode on a CPU core for
9 % more bytes, docs/performance.md), and a short side of `short_side` (never upscaled): CtP draws short
sides 112/128/144, so 144 keeps every draw a downscale. Every decoded picture is encoded once with its source timestamp, so frame i of the
copy is frame i of the source (datagen/video/manifest.py's definition). Audio is dropped. Frame sources (zips and
folders of JPEG frames) are random access already: they are kept where they are and listed as they are.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import cast

import av
from av.video.frame import PictureType
from tqdm import tqdm

from common.atomic import replacing, write_atomic

from .container import VideoError, VideoInfo, open_video, picture_packets
from .frames import is_frame_source
from .manifest import Rejected, find_videos, probe, write_manifest

log = logging.getLogger(__name__)

SHORT_SIDE = 144  # the largest short side CtP draws: every draw stays a downscale
GOP = 16  # a clip starts on average 8 frames after a key frame; see docs/datagen.md for the measurement
CRF = 18
SETTINGS_FILE = "prepare.json"
MANIFEST_FILE = "manifest.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    short_side: int = SHORT_SIDE
    gop: int = GOP
    crf: int = CRF
    tune: str = "fastdecode"  # x264's tune; "" for none (what folders prepared before it was set hold)


@dataclasses.dataclass(frozen=True)
class Job:
    source: Path
    output: Path


def output_path(source: Path, root: Path, out: Path) -> Path:
    """The mirrored path under `out`, with an .mp4 suffix (class folders keep their names)."""
    relative = source.relative_to(root) if source != root else Path(source.name)
    return out / relative.with_suffix(".mp4")


def plan_jobs(sources: list[str | os.PathLike[str]], out: Path) -> list[Job]:
    """One job per video under the sources; a folder's tree is mirrored under `out`, a file lands at its top."""
    jobs: dict[Path, Job] = {}
    for src in map(Path, sources):
        root = src if src.is_dir() else src.parent
        if root.resolve() == out.resolve():
            raise ValueError(
                f"--out {out} is the source folder {src}: choose a new folder (sources are never overwritten)"
            )
        for video in find_videos(src):
            if video.resolve().is_relative_to(out.resolve()):
                continue  # a DIR inside a source folder holds earlier outputs, not sources
            job = Job(video, output_path(video, root, out))
            if job.output in jobs and jobs[job.output].source != video:
                raise ValueError(f"{video} and {jobs[job.output].source} would both be written to {job.output}")
            jobs[job.output] = job
    return sorted(jobs.values(), key=lambda j: j.output)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at most `short_side`, both even (yuv420p needs that)."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def display_times(source: Path) -> Sequence[int | None]:
    """The pictures' timestamps in display order, from one demux pass: the i-th decoded picture gets the i-th.

    Decoders report some AVIs' (packed B-frame) pictures with swapped timestamps; sorting the packets'
    timestamps restores the source's timing without decoding twice."""
    with open_video(source) as container:
        stamps = [p.pts if p.pts is not None else p.dts for p in picture_packets(container)]
    return sorted(cast(list[int], stamps)) if None not in stamps else stamps


def encode(source: Path, output: Path, settings: Settings, threads: int = 1) -> int:
    """Decode every picture of `source` and encode it to `output`; returns the number of frames written.

    Written atomically (common.atomic), so a killed run never leaves a file that looks finished."""
    written = 0
    try:
        with replacing(output) as tmp:
            with open_video(source) as src, av.open(str(tmp), "w", format="mp4") as dst:
                stream = src.streams.video[0]
                stream.thread_type = "AUTO"
                out = dst.add_stream("libx264", rate=stream.average_rate or stream.guessed_rate or 30)
                out.pix_fmt, out.time_base = "yuv420p", stream.time_base
                out.codec_context.time_base = stream.time_base
                g = settings.gop
                out.options = {
                    "crf": str(settings.crf),
                    "preset": "veryfast",
                    "g": str(g),
                    "bf": "0",
                    "threads": str(threads),
                    "x264-params": f"keyint={g}:min-keyint={g}:scenecut=0:open-gop=0",
                } | ({"tune": settings.tune} if settings.tune else {})
                times = display_times(source)
                last_pts = -1
                for frame in src.decode(stream):
                    if not written:  # the first picture's size, not the header's (HMDB-51 headers can be wrong)
                        width, height = scaled_size(frame.width, frame.height, settings.short_side)
                        out.width, out.height = width, height
                    pts = times[written] if written < len(times) else frame.pts
                    pts = max(pts if pts is not None else last_pts + 1, last_pts + 1)  # MP4 needs increasing times
                    last_pts = pts
                    picture = frame.reformat(width, height, "yuv420p", interpolation="AREA")
                    picture.pts, picture.time_base = pts, stream.time_base
                    picture.pict_type = PictureType.NONE  # the source's I frames would force key frames off the grid
                    dst.mux(out.encode(picture))
                    written += 1
                dst.mux(out.encode(None))
            if written == 0:
                raise VideoError(source, "no decodable frame")
    except av.error.FFmpegError as exc:
        raise VideoError(source, f"cannot be re-encoded ({exc.strerror or exc})") from exc
    return written


def prepare_one(job: Job, settings: Settings, threads: int) -> tuple[str, VideoInfo | Rejected, float]:
    """('done' | 'skipped' | 'kept' | 'rejected', the output's probe (a frame source's own) or the source's
    rejection, seconds)."""
    start = time.perf_counter()
    try:
        if is_frame_source(job.source):  # every JPEG frame is a key frame: nothing to re-encode
            return "kept", probe(job.source), time.perf_counter() - start
        if job.output.is_file():
            return "skipped", probe(job.output), 0.0
        expected = probe(job.source).num_frames  # a corrupt source is rejected here with its reason
        written = encode(job.source, job.output, settings, threads)
        info = probe(job.output)
        if info.num_frames != written or written != expected:
            log.warning(
                "%s: %d frames in the manifest, %d decoded and written, %d in the copy",
                job.source,
                expected,
                written,
                info.num_frames,
            )
        return "done", info, time.perf_counter() - start
    except VideoError as exc:
        return "rejected", Rejected(str(job.source), exc.reason), time.perf_counter() - start


def check_settings(out: Path, settings: Settings) -> None:
    """A resumed run must use the settings of the first one, else the folder would mix two encodings."""
    path = out / SETTINGS_FILE
    if path.is_file():
        previous = Settings(**{"tune": "", **json.loads(path.read_text())})  # older folders: no tune
        if previous != settings:
            raise ValueError(
                f"{out} was prepared with {previous}; resume with the same options or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(dataclasses.asdict(settings)) + "\n")


def prepare(
    sources: list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    settings: Settings = Settings(),
    workers: int = 0,
    progress: bool = False,
    log_file: str | os.PathLike[str] | None = None,
) -> dict:
    """Re-encode every video under `sources` into `out`, write `out/manifest.json`; returns the report."""
    out = Path(out)
    started = time.perf_counter()
    jobs = plan_jobs(sources, out)
    check_settings(out, settings)
    workers = workers or max(1, os.cpu_count() or 1)
    threads = max(1, (os.cpu_count() or 1) // workers)
    videos: list[VideoInfo] = []
    rejected: list[Rejected] = []
    counts = {"done": 0, "skipped": 0, "kept": 0, "rejected": 0}
    with open(log_file or out / "prepare.log", "a") as logf, ProcessPoolExecutor(workers) as pool:
        results = pool.map(prepare_one, jobs, [settings] * len(jobs), [threads] * len(jobs))
        for job, (status, result, seconds) in tqdm(
            zip(jobs, results), total=len(jobs), desc="preparing", unit="video", disable=not progress
        ):
            counts[status] += 1
            if isinstance(result, Rejected):
                rejected.append(result)
            else:
                videos.append(result)
            detail = result.reason if isinstance(result, Rejected) else f"{result.num_frames} frames {seconds:.1f}s"
            logf.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {status} {job.source} -> {job.output}: {detail}\n")
            logf.flush()
    write_manifest(out / MANIFEST_FILE, videos, rejected)
    ok = {Path(v.path).resolve() for v in videos}
    before = sum(j.source.stat().st_size for j in jobs if j.output.resolve() in ok)
    after = sum(j.output.stat().st_size for j in jobs if j.output.resolve() in ok)
    return {
        "counts": counts,
        "videos": videos,
        "rejected": rejected,
        "bytes_before": before,
        "bytes_after": after,
        "seconds": time.perf_counter() - started,
        "manifest": str(out / MANIFEST_FILE),
    }
