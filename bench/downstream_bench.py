"""Throughput of the downstream clip pipeline on one device, each row beside a baseline from the same run.

    python -m bench.downstream_bench --videos DIR [--config tiny_cpu] [--device cpu] [KEY=VALUE ...]

Evaluation decodes all `test_clips` clips of a video in one pass (one seek, frames shared between
overlapping clips); the baseline decodes each clip on its own. Training clips are decoded and transformed a
batch at a time; the baseline makes the same clips one per call.
"""

from __future__ import annotations

import argparse

import torch

from common.tables import format_table
from datagen.bench import timed
from datagen.ctp.rng import SampleKey
from trainer.downstream.clips import EvalClips, TrainClips, eval_clip_indices
from trainer.downstream.config import SplitConfig, load_downstream_config
from trainer.downstream.datasets import open_split


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.downstream_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", required=True, help="a folder of class folders (DIR/<class>/<video>)")
    parser.add_argument("--config", default=None, help="preset or YAML file (default: the paper's recipe)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cfg = load_downstream_config(args.config, args.overrides)
    device = torch.device(args.device)
    data = open_split(SplitConfig("folder", args.videos))
    evaluation = EvalClips(data, cfg.clips, device)
    training = TrainClips(data, cfg.clips, device)

    def eval_per_clip() -> None:
        for video in data.videos:
            for indices in eval_clip_indices(video.num_frames, cfg.clips):
                evaluation.decoder.decode(video, indices)

    n = len(data)
    batch = cfg.data.batch_size
    train_keys = [SampleKey(0, 0, i) for i in range(batch)]
    rows = []
    for name, fn, count, unit in [
        ("eval clips: one decode pass per video", lambda: evaluation.for_videos(range(len(data))), n, "videos/s"),
        ("  baseline: one decode per clip (decode only)", eval_per_clip, n, "videos/s"),
        (f"train clips: batches of {batch}", lambda: training.generate(train_keys), batch, "clips/s"),
        ("  baseline: one clip per call", lambda: [training.generate([k]) for k in train_keys], batch, "clips/s"),
    ]:
        rows.append((name, count / timed(fn, device, args.repeats), unit))
    # Each baseline row is shown relative to the project's way, the row above it.
    lines = [
        (name, f"{rate:.2f}", unit, f"{rate / rows[i - i % 2][1]:.2f}x") for i, (name, rate, unit) in enumerate(rows)
    ]
    c = cfg.clips
    print(
        format_table(
            lines,
            ("stage", "rate", "unit", "relative"),
            title=f"downstream clip pipeline on {device}: {n} videos, {c.num_frames} frames at stride "
            f"{c.frame_stride}, {c.crop_size} px crops, {c.test_clips} test clips per video",
        )
    )


if __name__ == "__main__":
    main()
