"""Trainer step throughput and peak memory: the real CtP step (normalise, forward, loss, backward, clip, SGD).

    python -m bench.train_bench [--device auto] [--batch-size 32] [--steps 3] [--compile]
                                [--encoders r3d_18 r2plus1d_18] [--threads 0]

Both encoders at 16×112×112 with 3 trajectories, in fp32, bf16 autocast and bf16 + channels_last_3d (and each
of those under torch.compile with --compile). Every (encoder, variant) runs in a fresh subprocess, so its
peak memory is its own: CUDA max allocated, or on CPU the peak resident set of the process. Prints one
table; ratios are against fp32 of the same encoder in the same run. Batches are synthetic (random pixels,
valid random boxes), so data generation is not measured here.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from common.tables import format_table
from datagen.ctp.batch import Batch
from trainer.config import load_train_config
from trainer.pretrain.loop import Trainer
from trainer.runtime.execution import Execution

VARIANTS = {  # name → (run.precision, run.channels_last)
    "fp32": ("fp32", False),
    "tf32": ("tf32", False),
    "bf16": ("bf16", False),
    "bf16+cl3d": ("bf16", True),
}
FRAMES, SIZE, TRAJECTORIES = 16, 112, 3


def synthetic_batch(batch_size: int, step: int, generator: torch.Generator) -> Batch:
    clips = torch.randint(0, 256, (batch_size, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8, generator=generator)
    corner = torch.rand(batch_size, TRAJECTORIES, FRAMES, 2, generator=generator) * (SIZE - 40)
    size = 16 + torch.rand(batch_size, TRAJECTORIES, FRAMES, 2, generator=generator) * 24
    keys = torch.stack(
        [torch.zeros(batch_size), torch.zeros(batch_size), step * batch_size + torch.arange(batch_size)], 1
    )
    visible = torch.ones(batch_size, TRAJECTORIES, FRAMES, dtype=torch.bool)
    return Batch(clips, torch.cat([corner, corner + size], -1), visible, keys.long())


def measure(encoder: str, variant: str, compile_: bool, device: str, batch_size: int, steps: int, warmup: int) -> dict:
    """clips/s and peak memory of `steps` training steps after `warmup` ones, in this process."""
    precision, channels_last = VARIANTS[variant]
    cfg = load_train_config(
        None,
        [
            f"model.encoder={encoder}",
            f"data.batch_size={batch_size}",
            f"run.device={device}",
            f"run.precision={precision}",
            f"run.channels_last={channels_last}",
            f"run.compile={compile_}",
        ],
    )
    execution = Execution.resolve(cfg.run.device, cfg.run.precision, cfg.run.channels_last)
    trainer = Trainer(cfg, execution, epoch_size=(warmup + steps) * batch_size)
    rng = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(batch_size, i, rng) for i in range(warmup + steps)]
    if execution.device.type == "cuda":
        batches = [Batch(*(t.pin_memory() for t in (b.clips, b.boxes, b.visible, b.keys))) for b in batches]
    for batch in batches[:warmup]:
        trainer.train_step(batch)
    sync(execution.device)
    if execution.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(execution.device)
    start = time.perf_counter()
    for batch in batches[warmup:]:
        losses = trainer.train_step(batch)
    losses.cpu()
    sync(execution.device)
    seconds = time.perf_counter() - start
    if execution.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(execution.device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"clips_per_s": steps * batch_size / seconds, "peak_gib": peak / 2**30, "device": describe(execution.device)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--encoders", nargs="+", default=["r3d_18", "r2plus1d_18"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (cuDNN autotune, compilation)")
    parser.add_argument("--compile", action="store_true", help="also measure each variant under torch.compile")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--one", nargs=3, metavar=("ENCODER", "VARIANT", "COMPILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:  # child process: one configuration, one JSON line
        encoder, variant, compile_ = args.one
        print(
            json.dumps(
                measure(encoder, variant, compile_ == "1", args.device, args.batch_size, args.steps, args.warmup)
            )
        )
        return

    rows = []
    for encoder in args.encoders:
        for compile_ in (False, True) if args.compile else (False,):
            for variant in args.variants:
                child = [sys.executable, "-m", "bench.train_bench", "--one", encoder, variant, str(int(compile_))]
                for flag in ("device", "batch_size", "steps", "warmup", "threads"):
                    child += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
                done = subprocess.run(child, capture_output=True, text=True)
                if done.returncode:
                    result = {
                        "error": done.stderr.strip().splitlines()[-1]
                        if done.stderr.strip()
                        else f"exit {done.returncode}"
                    }
                else:
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append((encoder, variant + (" +compile" if compile_ else ""), result))
                print(f"  {rows[-1][0]} {rows[-1][1]}: {result}", file=sys.stderr, flush=True)
    print(table(rows, args.batch_size))


def table(rows: list[tuple[str, str, dict]], batch_size: int) -> str:
    """The results with each variant's speed relative to fp32 of the same encoder; failures listed below."""
    device = next((r["device"] for _, _, r in rows if "device" in r), "?")
    baseline = {e: r["clips_per_s"] for e, v, r in rows if v == "fp32" and "clips_per_s" in r}
    cells = [
        (encoder, variant, "failed", "-", "-")
        if "error" in r
        else (
            encoder,
            variant,
            f"{r['clips_per_s']:.2f}",
            f"{r['clips_per_s'] / baseline[encoder]:.2f}x" if encoder in baseline else "-",
            f"{r['peak_gib']:.2f}",
        )
        for encoder, variant, r in rows
    ]
    text = format_table(
        cells,
        ("encoder", "variant", "clips/s", "vs fp32", "peak GiB"),
        title=f"trainer step, 16×112×112, batch {batch_size}, {device}",
        align="<<>>>",
    )
    failures = [f"{encoder} {variant} failed: {r['error'][:200]}" for encoder, variant, r in rows if "error" in r]
    return "\n".join([text, *failures])


if __name__ == "__main__":
    main()
