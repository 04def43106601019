"""Per-clip decode cost before and after `ctp-datagen prepare`, and what each key-frame interval costs.

    taskset -c 1 python -m bench.prepare_bench [SRC ...] [--clips 60] [--gops 8 16 32 64]

SRC defaults to the shared Kinetics footage (one key frame every ~250 frames). Each GOP setting is prepared
into a temporary folder; the clips are the generator's own (the frame indices `plan_sample` draws for keys
(0, 0, i) with the default generation config), decoded with PyAV's seek-based decoder from the originals
and from each copy. Prints one table with ms and frames decoded per clip, size, and the speed-up over the
originals measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common.tables import format_table
from datagen.ctp.plan import plan_sample
from datagen.ctp.rng import SampleKey
from datagen.ctp.spec import GenerationConfig
from datagen.video.container import VideoInfo
from datagen.video.decode.pyav import PyAVDecoder
from datagen.video.manifest import read_manifest, resolve_videos
from datagen.video.prepare import SHORT_SIDE, Settings, prepare

KINETICS = Path(__file__).resolve().parents[2] / "shared" / "videos" / "kinetics"


def clip_plans(videos: list[VideoInfo], count: int) -> list[tuple[int, np.ndarray]]:
    """(video number, frame indices) of the generator's first `count` samples over these videos."""
    cfg = GenerationConfig()
    plans = []
    for i in range(count):
        n = i % len(videos)
        v = videos[n]
        plans.append((n, plan_sample(SampleKey(0, 0, i), n, v.num_frames, v.height, v.width, cfg).clip.frame_indices))
    return plans


def measure(videos: list[VideoInfo], plans: list[tuple[int, np.ndarray]]) -> tuple[float, float]:
    """(ms per clip, frames decoded per clip); the first pass fills the key-frame cache and the page cache."""
    decoder = PyAVDecoder()
    for n, indices in plans[: len(videos)]:
        decoder.decode(videos[n], indices)
    decoder.frames_decoded = 0
    start = time.perf_counter()
    for n, indices in plans:
        decoder.decode(videos[n], indices)
    return (time.perf_counter() - start) * 1e3 / len(plans), decoder.frames_decoded / len(plans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", default=[str(KINETICS)])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--gops", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--short-side", type=int, default=SHORT_SIDE)
    args = parser.parse_args()

    originals = resolve_videos(args.sources)
    plans = clip_plans(originals, args.clips)
    size = sum(Path(v.path).stat().st_size for v in originals)
    base_ms, base_frames = measure(originals, plans)
    rows = [("original", base_ms, base_frames, size / 2**20, 0.0)]
    with tempfile.TemporaryDirectory() as tmp:
        for gop in args.gops:
            report = prepare(args.sources, Path(tmp) / f"gop{gop}", Settings(args.short_side, gop), workers=1)
            by_source = {Path(p).stem: v for v in read_manifest(report["manifest"])[0] for p in [v.path]}
            prepared = [by_source[Path(v.path).stem] for v in originals]
            ms, frames = measure(prepared, plans)
            rows.append((f"prepared gop {gop}", ms, frames, report["bytes_after"] / 2**20, report["seconds"]))
    print(
        f"{len(originals)} videos, {args.clips} clips (16 frames, strides 1-5 with jitter), short side {args.short_side}"
    )
    cells = [
        (name, f"{ms:.1f}", f"{frames:.1f}", f"{mib:.2f}", f"{seconds:.1f}", f"{base_ms / ms:.2f}x")
        for name, ms, frames, mib, seconds in rows
    ]
    print(format_table(cells, ("input", "ms/clip", "frames/clip", "MiB", "encode s", "speed-up")))


if __name__ == "__main__":
    main()
