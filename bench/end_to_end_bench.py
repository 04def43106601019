"""End to end from the video files and from JPEG zips against an official-style pipeline (the same zips, OpenCV).

    python -m bench.end_to_end_bench [--videos PATH...] [--baseline-videos PATH...] [--batch-size 32]
                                     [--batches 3] [--json FILE]

Baseline, the official CtP data path: every video's frames extracted once as JPEG into one zip per video,
named as the official zips name them (`img_00001.jpg`, … from 1; outside the timing, like the official
code's required preprocessing; cached in --cache), then per clip the 16 planned frames read from the zip,
decoded with `cv2.imdecode` and rendered one sample at a time by `reference/ctp.py` (plans drawn up
front, out of its time). Ours: keys in, batches out through `Generator` (plan + decode + render), from the
video files and from the very zips the baseline reads (frame sources: libjpeg-turbo), one stage after the
other (as a replica runs on one core: `Generator.ahead`) and pipelined (the next batch planned and decoded
in a thread while one renders). Same keys, so the same videos, frames and plans; one torch, OpenCV and
decoder thread. `--baseline-videos` (default: --videos) is what the zips are made from, e.g. the originals
of a `ctp-datagen prepare` copy given as --videos. Prints one table with the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.timing import interleaved_best
from common.atomic import write_json
from common.tables import format_table
from datagen.ctp.rng import SampleKey
from datagen.ctp.spec import GenerationConfig
from datagen.generator import Generator, pipelined
from datagen.video.container import VideoInfo
from datagen.video.decode.decoder import Decoder
from datagen.video.frames import OFFICIAL_FMT
from datagen.video.manifest import probe, resolve_videos
from reference.ctp import reference_sample

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"


def extract_zip(video: VideoInfo, decoder: Decoder, cache: Path) -> Path:
    """All frames of `video` as JPEG (OpenCV's default quality) in one zip, named as the official zips (from
    1), made once."""
    key = hashlib.sha1(f"{video.path} {OFFICIAL_FMT}".encode()).hexdigest()[:12]
    out = cache / f"{key}_{Path(video.path).stem}.zip"
    if out.exists():
        return out
    frames = decoder.decode(video, np.arange(video.num_frames)).numpy()
    partial = out.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as z:
        for i, frame in enumerate(frames):
            z.writestr(
                OFFICIAL_FMT.format(i + 1), cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()
            )
    partial.rename(out)
    return out


def read_clip(archive: zipfile.ZipFile, indices: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB: the clip's frames read from the zip and decoded with OpenCV (the official
    ZipItem.get_frame, frame i at name i + 1)."""
    frames = []
    for i in indices:
        bgr = cv2.imdecode(np.frombuffer(archive.read(OFFICIAL_FMT.format(i + 1)), np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise RuntimeError(f"{archive.filename}: frame {i} is not a readable JPEG; delete the zip to remake it")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", default=[str(SHARED / "ucf101"), str(SHARED / "hmdb51")])
    parser.add_argument("--baseline-videos", nargs="+", help="the videos the JPEG zips are made from")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", default="/tmp/ctp-jpeg-zips", help="where the JPEG zips are kept")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    config = GenerationConfig()
    ours = Generator(resolve_videos(args.videos), config, "cpu", Decoder("cpu", num_threads=1))
    base = Generator(resolve_videos(args.baseline_videos or args.videos), config, "cpu", Decoder("cpu", num_threads=1))
    if len(base.videos) != len(ours.videos):
        raise SystemExit(
            "--baseline-videos must hold the same videos as --videos (e.g. the originals of a prepare copy)"
        )
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    zips = [extract_zip(v, base.decoder, cache) for v in base.videos]
    archives = [zipfile.ZipFile(z) for z in zips]
    # the zips in the videos' order, so that a key picks the same video, frames and plan from either
    frames = Generator([probe(z) for z in zips], config, "cpu", Decoder("cpu", num_threads=1))
    if [v.num_frames for v in frames.videos] != [v.num_frames for v in base.videos]:
        raise SystemExit(f"the zips in {cache} do not hold the videos' frames: delete them to remake them")

    batches = [[SampleKey(0, 0, b * args.batch_size + i) for i in range(args.batch_size)] for b in range(args.batches)]
    plans = [p for keys in batches for p in base.plan_many(keys)]
    crop = config.clip.crop_size
    clips = len(plans)

    def baseline() -> None:
        for p in plans:
            reference_sample(read_clip(archives[p.video], p.clip.frame_indices), p, crop)

    def sequential(generator: Generator) -> None:
        for keys in batches:
            generator.generate(keys)

    def pipelined_run(generator: Generator) -> None:
        for _, decoded in pipelined(batches, generator.decode_batch):
            generator.render_batch(decoded)

    pipelines = {
        "official-style: JPEG zips + OpenCV + reference": baseline,
        "ours: video files, stage after stage (a one-core replica)": lambda: sequential(ours),
        "ours: video files, pipelined (decode thread)": lambda: pipelined_run(ours),
        "ours: the same JPEG zips, stage after stage": lambda: sequential(frames),
        "ours: the same JPEG zips, pipelined": lambda: pipelined_run(frames),
    }
    seconds, _ = interleaved_best(pipelines, args.repeats)
    rows = [(name, clips / best) for name, best in seconds.items()]
    names = ", ".join(sorted({Path(v.path).parent.name for v in ours.videos}))
    print(
        f"end to end, {clips} clips of {config.clip.num_frames}x{crop}x{crop} from {len(ours.videos)} videos ({names})"
    )
    print(format_table([(n, f"{v:.1f}", f"{v / rows[0][1]:.2f}x") for n, v in rows], ("pipeline", "clips/s", "ratio")))
    if args.json:
        write_json(args.json, {"videos": args.videos, "clips": clips, "cpu_threads": 1, "clips_per_s": dict(rows)})


if __name__ == "__main__":
    main()
