"""The GPU check's throughput sections: one datagen replica (decode, generation, end to end, NVDEC's
utilisation) and the trainer's step per encoder and precision."""

from __future__ import annotations

import shutil
import subprocess
import threading
from typing import Any

import numpy as np

from checks.gpu_harness import Context


class DecoderUtilisation:
    """nvidia-smi's NVDEC utilisation (%, all engines together), sampled every 200 ms while in use."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DecoderUtilisation:
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=utilization.decoder", "--format=csv,noheader,nounits", "-lms", "200"]
            self._process = subprocess.Popen(query, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line))

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()

    def summary(self) -> dict[str, float | None]:
        busy = self.samples or [0]
        return {"mean_pct": float(np.mean(busy)), "max_pct": float(max(busy)), "samples": len(self.samples)}


def datagen_rates(ctx: Context, seconds: float) -> dict[str, Any]:
    """Decode alone, generation alone and end to end, clips/s of one replica process on this GPU, with NVDEC's
    utilisation while it decodes (DALI decodes a batch's clips in `num_threads` threads, each with an NVDEC
    decoder of its own: the driver spreads them over the engines)."""
    from datagen.bench import timed
    from datagen.ctp.render import render
    from datagen.ctp.rng import SampleKey
    from datagen.generator import Generator
    from datagen.video.decode.decoder import Decoder

    generator = Generator(ctx.manifest(), device="cuda", decoder=Decoder("cuda", batch_size=ctx.batch_size))
    keys = [SampleKey(0, 0, i) for i in range(ctx.batch_size)]
    plans = [generator.plan(k) for k in keys]
    frames = generator.decode(plans)
    crop = generator.config.clip.crop_size
    repeats = max(1, int(seconds))
    with DecoderUtilisation() as nvdec:
        decode_s = timed(lambda: generator.decode(list(plans)), generator.device, repeats)
    render_s = timed(lambda: render([generator.plan(k) for k in keys], frames, crop), generator.device, repeats)
    total_s = timed(lambda: generator.generate(keys), generator.device, repeats)
    n = ctx.batch_size
    return {
        "decode_clips_per_s": n / decode_s,
        "generate_clips_per_s": n / render_s,
        "end_to_end_clips_per_s": n / total_s,
        "decode_frames_per_s": n * generator.config.clip.num_frames / decode_s,
        "decoder_share": decode_s / total_s,
        "nvdec_utilisation": nvdec.summary(),
        "routes": generator.routes.table(),
    }


def bench_datagen(ctx: Context) -> None:
    rates = datagen_rates(ctx, 3)
    busy = rates["nvdec_utilisation"]
    ctx.record(
        "datagen_one_replica",
        rates,
        ("datagen decode (one replica)", f"{rates['decode_clips_per_s']:.0f} clips/s", ""),
        ("NVDEC utilisation while decoding", f"mean {busy['mean_pct']:.0f} %, max {busy['max_pct']:.0f} %", ""),
        ("datagen generation (one replica)", f"{rates['generate_clips_per_s']:.0f} clips/s", ""),
        (
            "datagen end to end (one replica)",
            f"{rates['end_to_end_clips_per_s']:.0f} clips/s, decode {rates['decoder_share']:.0%}",
            "≥ 2000 per GPU",
        ),
    )


def bench_trainer(ctx: Context) -> None:
    import torch

    from bench.train_bench import measure

    for encoder, variants in (
        ("r3d_18", ("bf16+cl3d", "bf16", "tf32", "fp32")),
        ("r2plus1d_18", ("bf16+cl3d", "fp32")),
    ):
        for variant in variants:
            row = measure(encoder, variant, False, "cuda", 32, steps=8, warmup=3)
            torch.cuda.empty_cache()
            target = "≥ 800" if encoder == "r3d_18" and variant.startswith("bf16") else ""
            ctx.record(
                f"train_{encoder}_{variant}",
                row,
                (
                    f"train step {encoder} {variant}",
                    f"{row['clips_per_s']:.0f} clips/s, {row['peak_gib']:.1f} GiB",
                    target,
                ),
            )
