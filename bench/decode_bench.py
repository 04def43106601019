"""Decode throughput for CtP clips (16 frames, stride 1-5 with jitter), per backend and codec.

    python -m bench.decode_bench [--clips 48] [--batch-size 8] [--seconds 10] [--conversion-only]
                                 [--against OLD/datagen/decode.py]

Prints two tables. First PyAV's YCbCr->RGB conversion per frame: the OpenCV chain it replaced (reference/yuv.py:
the baseline and the tests' oracle) against `yuv_to_rgb` writing into a preallocated frame, on random
planes of the footage's sizes, the bytes checked equal (`--conversion-only` stops there). Then clips/s,
frames/s and pictures decoded per clip of PyAV and of DALI's CPU decoder on synthetic 10-second VP9 files
(written to a temporary folder), and of PyAV on the shared MPEG-4 AVIs and H.264 MP4s. Ratios are against
PyAV on the same VP9 files, measured in the same run. The clips are the same for every backend; "from 0"
is what decoding each clip from the first frame would cost (DALI fed a whole file).

`--against` a decode.py of another checkout (e.g. `git worktree add /tmp/old COMMIT`) prints instead one
table: PyAV's ms per clip of that module and of this one on the shared footage, in one process, rounds
interleaved, the clips checked byte-equal.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common.tables import format_table
from datagen.video.container import VideoInfo
from datagen.video.decode.decoder import Decoder
from datagen.video.decode.pyav import PyAVDecoder
from datagen.video.decode.yuv import yuv_to_rgb
from datagen.video.manifest import resolve_videos
from datagen.video.synthetic import synthesize_demo
from reference.yuv import opencv_yuv_to_rgb

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"
FRAMES = 16
# (label, luma height, width, chroma subsampling down, across) of the conversion table
PICTURES = [
    ("UCF-101 / HMDB-51, 4:2:0", 240, 320, 2, 2),
    ("prepared Kinetics, 4:2:0", 144, 256, 2, 2),
    ("Kinetics original, 4:2:0", 360, 640, 2, 2),
    ("4:2:2", 240, 320, 1, 2),
    ("4:4:4", 240, 320, 1, 1),
]


def per_frame_ms(repeats: int, convert, *args, **kwargs) -> float:
    """Best of 5 rounds of `repeats` calls of convert(*args, **kwargs), in ms per call."""
    convert(*args, **kwargs)
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            convert(*args, **kwargs)
        rounds.append((time.perf_counter() - start) / repeats * 1e3)
    return min(rounds)


def conversion_table(repeats: int = 200) -> str:
    rng = np.random.default_rng(0)
    cells = []
    for label, height, width, down, across in PICTURES:
        y = rng.integers(0, 256, (height, width), dtype=np.uint8)
        cb, cr = (rng.integers(0, 256, (height // down, width // across), dtype=np.uint8) for _ in range(2))
        frame = np.empty((height, width, 3), np.uint8)
        assert np.array_equal(yuv_to_rgb(y, cb, cr, out=frame), opencv_yuv_to_rgb(y, cb, cr))
        before = per_frame_ms(repeats, opencv_yuv_to_rgb, y, cb, cr)
        after = per_frame_ms(repeats, yuv_to_rgb, y, cb, cr, out=frame)
        cells.append((label, f"{width}×{height}", f"{before:.3f}", f"{after:.3f}", f"{before / after:.2f}x"))
    header = ("picture", "size", "OpenCV chain ms", "yuv_to_rgb ms", "speed-up")
    return format_table(cells, header, align="<<>>>")


def clips(videos: list[VideoInfo], count: int, seed: int = 0) -> list[tuple[VideoInfo, np.ndarray]]:
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(count):
        video = videos[i % len(videos)]
        stride = int(rng.integers(1, 6))
        start = int(rng.integers(0, max(video.num_frames - FRAMES * stride, 0) + 1))
        requests.append((video, start + np.arange(FRAMES) * stride + rng.integers(0, stride, FRAMES)))
    return requests


def against_table(old_module: str, count: int) -> str:
    """PyAV ms per clip of the decode module at `old_module` and of this one: best of interleaved rounds."""
    spec = importlib.util.spec_from_file_location("old_decode", old_module)
    assert spec is not None and spec.loader is not None, old_module
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_decode"] = old  # its dataclasses look their module up
    spec.loader.exec_module(old)
    shared = resolve_videos([str(SHARED)], min_frames=1)
    cells = []
    for codec, label, rounds in (("mpeg4", "MPEG-4 AVI (UCF/HMDB)", 5), ("h264", "H.264 MP4 (Kinetics, misc)", 3)):
        requests = clips([v for v in shared if v.codec == codec], count)
        decoders = {"old": old.PyAVDecoder(), "this": PyAVDecoder()}
        for request in requests[: min(count, 24)]:  # warm-up (files, compiled kernels) and the bytes
            assert np.array_equal(decoders["old"].decode(*request), decoders["this"].decode(*request)), request
        best = dict.fromkeys(decoders, float("inf"))
        decoded = {name: decoder.frames_decoded for name, decoder in decoders.items()}
        for _ in range(rounds):
            for name, decoder in decoders.items():
                start = time.perf_counter()
                for request in requests:
                    decoder.decode(*request)
                best[name] = min(best[name], (time.perf_counter() - start) / len(requests) * 1e3)
        per_clip = {n: (d.frames_decoded - decoded[n]) / rounds / len(requests) for n, d in decoders.items()}
        before, after = best["old"], best["this"]
        pictures = f"{per_clip['old']:.1f} / {per_clip['this']:.1f}"
        cells.append((label, len(requests), pictures, f"{before:.2f}", f"{after:.2f}", f"{before / after:.2f}x"))
    header = ("videos", "clips", "decoded/clip old / this", "old ms/clip", "this ms/clip", "speed-up")
    return format_table(cells, header, align="<>>>>>")


def measure(decoder: Decoder, requests: list[tuple[VideoInfo, np.ndarray]], batch_size: int) -> tuple[float, float]:
    """(clips/s, pictures decoded per clip)."""
    decoder.decode_many(requests[:batch_size])  # warm-up: DALI builds its pipeline, files enter the page cache
    decoded = decoder.frames_decoded
    start = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        for result in decoder.decode_many(requests[i : i + batch_size]):
            if isinstance(result, Exception):
                raise result
    seconds = time.perf_counter() - start
    return len(requests) / seconds, (decoder.frames_decoded - decoded) / len(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=48, help="clips per row")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per decode_many call (and DALI batch)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the synthetic VP9 videos")
    parser.add_argument("--conversion-only", action="store_true", help="print the conversion table only")
    parser.add_argument("--against", metavar="DECODE_PY", help="PyAV per clip: that decode module against this")
    args = parser.parse_args()

    if args.against:
        print(f"PyAV, {FRAMES}-frame clips, ms per clip (best of interleaved rounds), same bytes")
        print(against_table(args.against, args.clips))
        return

    print("YCbCr->RGB per frame, BT.601 limited range, same bytes, best of 5 rounds")
    print(conversion_table())
    if args.conversion_only:
        return

    with tempfile.TemporaryDirectory() as tmp:
        vp9 = resolve_videos(
            [str(p) for p in synthesize_demo(tmp, num_videos=2, seconds=args.seconds, codecs=("vp9",))]
        )
        rows = [
            ("VP9 (synthetic)", "pyav", 1, vp9),
            ("VP9 (synthetic)", "dali", 1, vp9),
            ("VP9 (synthetic)", "dali", 2, vp9),
        ]
        if SHARED.is_dir():
            shared = resolve_videos([str(SHARED)], min_frames=1)
            for codec, label in (("mpeg4", "MPEG-4 AVI (UCF/HMDB)"), ("h264", "H.264 MP4 (Kinetics, misc)")):
                rows.append((label, "pyav", 1, [v for v in shared if v.codec == codec]))
        else:
            print(f"(shared footage not found at {SHARED}: its rows are left out)")

        results = []
        for label, backend, threads, videos in rows:
            decoder = Decoder("cpu", backend, batch_size=args.batch_size, num_threads=threads)
            requests = clips(videos, args.clips)
            from_start = np.mean([min(int(i.max()), v.num_frames - 1) + 1 for v, i in requests])
            results.append(
                (label, backend, threads, len(videos), *measure(decoder, requests, args.batch_size), from_start)
            )

    baseline = results[0][4]
    print(f"{FRAMES}-frame clips, {args.clips} per row, decode_many batches of {args.batch_size}, CPU")
    cells = [
        (
            *(label, backend, threads, files),
            *(f"{rate:.1f}", f"{rate * FRAMES:.0f}", f"{rate / baseline:.2f}x", f"{decoded:.1f}", f"{from_start:.1f}"),
        )
        for label, backend, threads, files, rate, decoded, from_start in results
    ]
    header = ("videos", "backend", "threads", "files", "clips/s", "frames/s", "vs pyav VP9", "decoded/clip", "from 0")
    print(format_table(cells, header, align="<<>>>>>>>"))


if __name__ == "__main__":
    main()
