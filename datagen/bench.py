"""`ctp-datagen bench`: throughput of decode alone, generation alone and end to end on one device."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from common import tables

from .ctp.render import render
from .ctp.rng import SampleKey
from .generator import Generator, pipelined


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats


def run_bench(generator: Generator, batch_size: int = 32, repeats: int = 3, seed: int = 0) -> dict:
    """Clips/s of decode, generation (plan + render) and end to end (as the replica runs: decode of the next
    batch overlapping the render where it can, `Generator.ahead`); pictures decoded per clip; host
    milliseconds per sample (planning: the host work that does not shrink with a faster device)."""
    keys = [SampleKey(seed, 0, i) for i in range(batch_size)]
    plans = generator.plan_many(keys)
    frames = generator.decode(plans)
    crop = generator.config.clip.crop_size
    decoded = generator.decoder.frames_decoded
    decode_s = timed(lambda: generator.decode(list(plans)), generator.device, repeats)
    frames_per_clip = (generator.decoder.frames_decoded - decoded) / ((repeats + 1) * batch_size)
    generate_s = timed(lambda: render(generator.plan_many(keys), frames, crop), generator.device, repeats)

    def end_to_end() -> None:  # as a replica does it: the next batch decodes while one renders (not on one core)
        for _, decoded in pipelined([keys] * repeats, generator.decode_batch, generator.ahead):
            generator.render_batch(decoded)

    end_to_end_s = timed(end_to_end, generator.device, 1) / repeats
    host_s = timed(lambda: generator.plan_many(keys), generator.device, repeats)
    return {
        "decode": {"clips_per_s": batch_size / decode_s, "frames_decoded_per_clip": frames_per_clip},
        "generate": {"clips_per_s": batch_size / generate_s},
        "end_to_end": {"clips_per_s": batch_size / end_to_end_s},
        "host_ms_per_sample": 1000 * host_s / batch_size,
        "device": str(generator.device),
        "batch_size": batch_size,
        "frames_per_clip": generator.config.clip.num_frames,
        "cpu_cores": len(os.sched_getaffinity(0)),
    }


def format_table(result: dict, title: str) -> str:
    """`run_bench`'s result for people: clips and frames per second per stage."""
    t = result["frames_per_clip"]
    stages = (("decode", "decode"), ("generate (plan + render)", "generate"), ("end to end", "end_to_end"))
    rows = [(name, f"{result[s]['clips_per_s']:.1f}", f"{result[s]['clips_per_s'] * t:.0f}") for name, s in stages]
    return (
        tables.format_table(rows, ("stage", "clips/s", "frames/s"), title=title)
        + f"\nframes decoded per clip {result['decode']['frames_decoded_per_clip']:.1f}; "
        f"host {result['host_ms_per_sample']:.3f} ms per sample (planning)"
    )
