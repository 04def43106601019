"""Batched CtP generation against the per-sample NumPy/OpenCV baseline, on the same decoded frames.

    python -m bench.generation_bench [--videos PATH...] [--batch-size 32] [--threads 1] [--device cpu] [--json FILE]

Prints one table: clips/s of the baseline (one sample at a time) and of the batched generator (plan +
render, planned in bulk as `Generator.generate` does; on the CPU its compiled kernels, and also the tensor
code that a GPU runs), and their ratio, all with the same number of CPU threads. Decoding is done once, up
front.
Then a second table: host work per sample (planning, decode requests, render's box lists and colour
parameters: everything but the pixel kernels), planned in bulk and key by key, against the 0.25 ms target.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bench.timing import interleaved_best
from common.atomic import write_json
from common.tables import format_table
from datagen.ctp.plan import PlanBatch
from datagen.ctp.render import _paste_step_boxes, render, render_clips
from datagen.ctp.rng import SampleKey
from datagen.ctp.spec import GenerationConfig
from datagen.generator import Generator
from datagen.video.decode.decoder import Decoder
from datagen.video.manifest import resolve_videos
from reference.ctp import reference_sample

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", default=[str(SHARED)])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both (OpenCV and torch)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    device = torch.device(args.device)
    generator = Generator(resolve_videos(args.videos), GenerationConfig(), "cpu", Decoder("cpu"))
    keys = [SampleKey(0, 0, i) for i in range(args.batch_size)]
    plans = [generator.plan(k) for k in keys]
    frames = generator.decode(plans, whole_frames=True)  # the baseline rescales whole frames
    frames_np = [f.numpy() for f in frames]
    frames_dev = [f.to(device) for f in frames]
    crop = generator.config.clip.crop_size

    def baseline() -> list[np.ndarray]:
        return [reference_sample(f, p, crop) for f, p in zip(frames_np, plans)]

    def batched():
        batch = render(generator.plan_many(keys), frames_dev, crop)  # as Generator.generate plans: in bulk
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return batch

    def tensor_code():  # what a GPU runs, here on the same device: the CPU kernels' alternative
        return render_clips(PlanBatch.stack(generator.plan_many(keys)), frames_dev, crop)

    runs = [("baseline (NumPy+OpenCV, per sample)", baseline), ("batched generator", batched)]
    if device.type == "cpu":
        runs.append(("batched generator, tensor code (the GPU path)", tensor_code))
    best, outputs = interleaved_best(dict(runs), args.repeats)
    # name -> (clips/s, the last output: clips or a Batch)
    results: dict[str, tuple[float, Any]] = {name: (args.batch_size / best[name], outputs[name]) for name in outputs}

    (_, (base_rate, base_out)), (_, (_, ours_out)), *_ = results.items()
    diff = np.abs(np.stack(base_out).astype(np.int16) - ours_out.clips.cpu().numpy().astype(np.int16))
    print(
        f"CtP generation, {args.batch_size} clips of {generator.config.clip.num_frames}x{crop}x{crop}, "
        f"K={generator.config.trajectory.num_trajectories}, threads={args.threads}, device={device}"
    )
    rows = [(name, f"{rate:.1f}", f"{rate / base_rate:.2f}x") for name, (rate, _) in results.items()]
    print(format_table(rows, ("implementation", "clips/s", "ratio")))
    print(
        f"mean |baseline - batched| = {diff.mean():.2f} grey levels (resize filters differ: OpenCV linear vs antialiased)"
    )
    host = host_table(generator, (args.batch_size, 256), max(args.repeats, 5))
    if args.json:
        rates = {name: rate for name, (rate, _) in results.items()}
        result = {"batch_size": args.batch_size, "threads": args.threads, "device": str(device), "clips_per_s": rates}
        result |= {"ratio": rates["batched generator"] / base_rate, "host_ms_per_sample": host}
        write_json(args.json, result)


def host_work(generator: Generator, keys: list[SampleKey], bulk: bool) -> None:
    """Everything the host does for a batch besides the pixel kernels."""
    plans = generator.plan_many(keys) if bulk else [generator.plan(k) for k in keys]
    [(generator.videos[p.video], p.clip.frame_indices) for p in plans]  # the decode requests
    batch = PlanBatch.stack(plans)
    cfg = generator.config
    for step in range(cfg.trajectory.num_trajectories):
        _paste_step_boxes(batch, step, cfg.clip.num_frames, cfg.clip.crop_size, cfg.clip.crop_size)


def host_table(generator: Generator, batch_sizes: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Prints the host work per sample; returns it as {"in bulk @32": ms, ...}."""
    out = {}
    for bulk in (True, False):
        for size in batch_sizes:
            keys = [SampleKey(1, 0, i) for i in range(size)]
            host_work(generator, keys, bulk)
            start = time.perf_counter()
            for r in range(repeats):
                host_work(generator, [SampleKey(1, r + 1, i) for i in range(size)], bulk)
            ms = (time.perf_counter() - start) / repeats / size * 1e3
            out[f"{'in bulk' if bulk else 'key by key'} @{size}"] = ms
    rows = [(*name.split(" @"), f"{ms:.3f}") for name, ms in out.items()]
    print(format_table(rows, ("planning", "batch", "ms/sample"), title="\nhost work per sample (target <= 0.25 ms)"))
    return out


if __name__ == "__main__":
    main()
