"""`ctp-datagen prepare`: re-encode a dataset for random access, once, before training on it.

A clip of 16 frames costs a decoder every picture from the key frame before it: Kinetics' H.264 has one
key frame every 250 frames, so a clip decodes ~140 pictures to use 16. Re-encoded with a key frame every
`gop` frames and at the short side CtP's 112-144 px crops need, a clip costs at most gop - 1 extra
pictures, each a fraction of the size. Sources are only read; outputs are written next to nothing else
(DIR mirrors the sources' relative paths), each through a temporary file, so an interrupted run resumes
where it stopped: finished files are skipped.
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType
from tqdm import tqdm

from . import manifest

SHORT_SIDE = 144  # the largest CtP crop: frames are never upscaled to make a clip
GOP = 16  # one clip of 16 frames at stride 1 spans at most two GOPs
MANIFEST_NAME = "manifest.json"


def output_path(source: Path, root: Path, out: Path) -> Path:
    """Where `source` (found under `root`) goes: the same relative path under `out`, as .mp4."""
    relative = source.relative_to(root) if root.is_dir() else Path(source.name)
    return (out / relative).with_suffix(".mp4")


def reencode(source: Path, target: Path, short_side: int = SHORT_SIDE, gop: int = GOP) -> None:
    """H.264 (libx264, yuv420p) with a key frame every `gop` frames and the short side scaled down to
    `short_side` (even sizes, never up); every decoded picture is kept, so frame i stays frame i."""
    info = manifest.probe(source)
    scale = min(1.0, short_side / min(info.width, info.height))
    width, height = (max(2, int(round(v * scale / 2)) * 2) for v in (info.width, info.height))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    with manifest.open_video(source) as src, av.open(str(tmp), "w", format="mp4") as dst:
        rate = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
        stream = dst.add_stream("libx264", rate=rate, options={"preset": "veryfast", "crf": "20", "bf": "0",
                                                                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1  # parallel across files instead
        for index, frame in enumerate(src.decode(video=0)):
            picture = frame.reformat(width=width, height=height, format="yuv420p")
            picture.pts, picture.time_base = index, 1 / rate
            picture.pict_type = PictureType.NONE  # key frames every `gop`, not where the source had them
            dst.mux(stream.encode(picture))
        dst.mux(stream.encode(None))
    tmp.replace(target)


def prepare(sources: list[str], out: str | os.PathLike[str], short_side: int = SHORT_SIDE, gop: int = GOP,
            workers: int = 0, progress: bool = True) -> tuple[list[manifest.VideoInfo], list[manifest.Rejected], dict]:
    """Re-encode every video under `sources` into `out` (skipping finished ones) and write its manifest."""
    out = Path(out)
    jobs = []
    for root in map(Path, sources):
        if root.resolve() == out.resolve() or out.resolve() in root.resolve().parents:
            raise ValueError(f"{root}: a source inside the output folder {out} would be overwritten")
        jobs += [(f, output_path(f, root, out)) for f in manifest.find_videos(root)]
    targets = [t for _, t in jobs]
    clashes = sorted({str(t) for t in targets if targets.count(t) > 1})
    if clashes:
        raise ValueError(f"several sources would be written to {clashes[0]} (same name, other extension); rename one")
    todo = [(s, t) for s, t in jobs if not t.is_file()]
    failed: list[manifest.Rejected] = []

    def run(job: tuple[Path, Path]) -> None:
        try:
            reencode(*job, short_side=short_side, gop=gop)
        except (manifest.VideoError, av.error.FFmpegError) as exc:
            failed.append(manifest.Rejected(str(job[0]), getattr(exc, "reason", str(exc))))

    start = time.perf_counter()
    with ThreadPoolExecutor(workers or len(os.sched_getaffinity(0))) as pool:  # FFmpeg releases the GIL
        list(tqdm(pool.map(run, todo), total=len(todo), desc="re-encoding", unit="video", disable=not progress))
    seconds = time.perf_counter() - start
    done = [t for _, t in jobs if t.is_file()]
    videos, rejected = manifest.index_videos(done, min_frames=1)
    manifest.write_manifest(out / MANIFEST_NAME, videos, rejected + failed)
    sizes = {"source_bytes": sum(s.stat().st_size for s, _ in jobs), "output_bytes": sum(t.stat().st_size for t in done)}
    return videos, rejected + failed, sizes | {"seconds": seconds, "encoded": len(todo), "skipped": len(jobs) - len(todo)}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prepare", help="re-encode videos for random access (short GOP, CtP size) + manifest")
    p.add_argument("sources", nargs="+", metavar="SRC", help="video files or folders (only read)")
    p.add_argument("--out", required=True, metavar="DIR", help=f"output folder; its {MANIFEST_NAME} is what commands take")
    p.add_argument("--short-side", type=int, default=SHORT_SIDE, help="scale the short side down to this (px)")
    p.add_argument("--gop", type=int, default=GOP, help="frames between key frames")
    p.add_argument("--workers", type=int, default=0, help="files encoded at once (0: the usable cores)")
    p.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    videos, rejected, report = prepare(args.sources, args.out, args.short_side, args.gop, args.workers)
    print(manifest.summary(videos, rejected))
    print(f"encoded {report['encoded']}, skipped {report['skipped']} already done, in {report['seconds']:.1f} s; "
          f"{report['source_bytes'] / 2**20:.1f} MiB -> {report['output_bytes'] / 2**20:.1f} MiB")
    print(f"manifest: {Path(args.out) / MANIFEST_NAME}")
    return 0 if videos else 1
