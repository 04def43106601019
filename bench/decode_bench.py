"""Decode throughput for CtP clips (16 frames, stride 1-5 with jitter), per backend and codec.

    python -m bench.decode_bench [--clips 48] [--batch-size 8] [--seconds 10]

Prints one table: clips/s, frames/s and pictures decoded per clip of PyAV and of DALI's CPU decoder on
synthetic 10-second VP9 files (written to a temporary folder), and of PyAV on the shared MPEG-4 AVIs and
H.264 MP4s. Ratios are against PyAV on the same VP9 files, measured in the same run. The clips are the same
for every backend; "from 0" is what decoding each clip from the first frame would cost (DALI fed a whole file).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from datagen.decode import Decoder
from datagen.demo import synthesize_demo
from datagen.manifest import VideoInfo, resolve_videos

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"
FRAMES = 16


def clips(videos: list[VideoInfo], count: int, seed: int = 0) -> list[tuple[VideoInfo, np.ndarray]]:
    rng = np.random.default_rng(seed)
    requests = []
    for i in range(count):
        video = videos[i % len(videos)]
        stride = int(rng.integers(1, 6))
        start = int(rng.integers(0, max(video.num_frames - FRAMES * stride, 0) + 1))
        requests.append((video, start + np.arange(FRAMES) * stride + rng.integers(0, stride, FRAMES)))
    return requests


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
    args = parser.parse_args()

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
    print(
        f"{'videos':<27} {'backend':<8} {'threads':>7} {'files':>5} {'clips/s':>8} {'frames/s':>9} {'vs pyav VP9':>11}"
        f" {'decoded/clip':>12} {'from 0':>7}"
    )
    for label, backend, threads, files, rate, decoded, from_start in results:
        print(
            f"{label:<27} {backend:<8} {threads:>7} {files:>5} {rate:>8.1f} {rate * FRAMES:>9.0f} {rate / baseline:>10.2f}x"
            f" {decoded:>12.1f} {from_start:>7.1f}"
        )


if __name__ == "__main__":
    main()
