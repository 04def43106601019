"""The GPU check's correctness sections: the self-check users run, CUDA generation against the CPU's, two
ranks on one GPU, and fp32 against bf16 training over the same batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from checks.gpu_harness import PRESET, Context, free_port


def check_self(ctx: Context) -> None:
    """The installation check users run, as they run it; its table goes to the log, its JSON here."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "datagen.cli", "verify", "--videos", *ctx.videos, "--device", "cuda", "--json"]
    with (ctx.out / "verify.log").open("w") as log:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
    seconds = time.perf_counter() - started
    report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else None
    if report is None:
        raise RuntimeError(f"verify exited {done.returncode} without a report (see verify.log)")
    nvdec = any(c["verdict"] == "PASS" and not c["class"].startswith("jpeg-frames") for c in report["classes"])
    rows = [
        (f"decode {c['class']}", f"{c['verdict']} -> {c['backend']}: {c['reason'][:46]}", "PASS or reference")
        for c in report["classes"]
    ]
    render = report["render"] or {}
    rows.append(
        (
            "render CUDA vs CPU kernels",
            f"{'PASS' if render.get('ok') else 'FAIL'}: {render.get('max_diff')} levels",
            "PASS",
        )
    )
    rows.append(("NVDEC usable (a class passed)", "yes" if nvdec else "NO", "yes"))
    ctx.record("verify", report | {"exit": done.returncode, "wall_s": seconds}, *rows)


def check_generation(ctx: Context) -> None:
    import torch

    from datagen.ctp.rng import SampleKey
    from datagen.generator import Generator
    from datagen.video.decode.decoder import Decoder
    from datagen.video.decode.routes import psnr

    videos = ctx.manifest()
    keys = [SampleKey(3, 1, i) for i in range(16)]
    cpu = Generator(videos, device="cpu", decoder=Decoder("cpu", "pyav")).generate(keys)
    cuda = Generator(videos, device="cuda", self_check=False)  # auto: each class probed on its first clip
    gpu = cuda.generate(keys).to("cpu")
    same = torch.equal(cpu.boxes, gpu.boxes) and torch.equal(cpu.visible, gpu.visible)
    quality = psnr(cpu.clips.numpy(), gpu.clips.numpy())
    ctx.record(
        "generation_cuda_vs_cpu",
        {
            "boxes_and_visibility_identical": same,
            "pixel_mean_abs": (cpu.clips.int() - gpu.clips.int()).abs().float().mean().item(),
            "psnr_db": quality,
            "routes": cuda.routes.table(),
        },
        ("CUDA vs CPU generation: boxes/visibility", "identical" if same else "DIFFER", "identical"),
        ("CUDA vs CPU generation: pixel PSNR", f"{quality:.1f} dB", "≥ 35 dB (decoder + float)"),
    )


def two_ranks_worker(rank: int, port: int, result: str) -> None:
    """One of two ranks on cuda:0 (gloo: NCCL refuses two ranks on one GPU): DDP, torch's SyncBatchNorm and bf16
    autocast, rank 1 with an empty batch as the epoch's last global batch can leave it."""
    import torch
    import torch.distributed as dist

    from bench.train_bench import synthetic_batch
    from trainer.config import load_train_config
    from trainer.pretrain.loop import Trainer
    from trainer.runtime.distributed import Ranks, sync_batchnorm_layers
    from trainer.runtime.execution import Execution

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cfg = load_train_config(PRESET, ["run.device=cuda", "data.batch_size=8"])
        execution = Execution(torch.device("cuda:0"), bf16=True, channels_last=True)
        trainer = Trainer(cfg, execution, epoch_size=64, ranks=Ranks(rank, 2, 0))
        rng = torch.Generator().manual_seed(rank)
        losses = []
        for step in range(3):
            batch = synthetic_batch(4 if rank == 0 else (4 if step < 2 else 0), step, rng)
            losses.append(trainer.train_step(batch, global_batch=8 if step < 2 else 4).float().cpu().tolist())
        checksum = float(sum(p.detach().double().sum() for p in trainer.network.parameters()))
        sums: list[float] = [0.0, 0.0]
        dist.all_gather_object(sums, checksum)
        layers = sync_batchnorm_layers(trainer.network)
        Path(result).write_text(json.dumps({"losses": losses, "checksums": sums, "sync_batchnorm_layers": layers}))
    finally:
        dist.destroy_process_group()


def check_two_ranks(ctx: Context) -> None:
    import torch.multiprocessing as mp

    result = ctx.scratch / "two_ranks.json"
    result.unlink(missing_ok=True)
    mp.start_processes(two_ranks_worker, args=(free_port(), str(result)), nprocs=2, start_method="spawn")
    outcome = json.loads(result.read_text())
    finite = all(np.isfinite(step).all() for step in outcome["losses"])
    same = outcome["checksums"][0] == outcome["checksums"][1]
    ctx.record(
        "two_ranks_one_gpu",
        outcome | {"finite": finite, "ranks_agree": same},
        ("2 ranks on 1 GPU: losses finite, weights equal", f"{finite}, {same}", "True, True"),
    )


def check_precision(ctx: Context) -> None:
    """Both precisions from the same initialisation over the same real CtP batches (made once: decode is not
    timed); fp32 is IEEE fp32 (no TF32)."""
    import torch

    from datagen.ctp.rng import SampleKey
    from datagen.generator import Generator
    from trainer.config import load_train_config
    from trainer.pretrain.loop import Trainer
    from trainer.runtime.execution import Execution

    generator = Generator(ctx.manifest(), device="cuda", self_check=False)
    batches = [generator.generate([SampleKey(7, 0, b * 32 + i) for i in range(32)]) for b in range(8)]
    steps, curves = 120, {}
    for precision in ("bf16", "fp32"):
        cfg = load_train_config(PRESET, [f"run.precision={precision}", "run.device=cuda"])
        torch.manual_seed(0)
        execution = Execution.resolve("cuda", precision, precision == "bf16")
        trainer = Trainer(cfg, execution, epoch_size=steps * 32)
        losses = [trainer.train_step(batches[s % len(batches)])[0] for s in range(steps)]
        curve = torch.stack(losses).float().cpu().view(-1, 20).mean(1).tolist()  # mean of every 20 steps
        curves[precision] = curve
        ctx.record(f"loss_{precision}", curve)
    gap = (curves["bf16"][-1] - curves["fp32"][-1]) / curves["fp32"][-1]
    ctx.record(
        "precision",
        {"steps": steps, "last20_bf16": curves["bf16"][-1], "last20_fp32": curves["fp32"][-1], "relative_gap": gap},
        (
            f"loss after {steps} steps, bf16 vs fp32",
            f"{curves['bf16'][-1]:.3f} vs {curves['fp32'][-1]:.3f} ({gap:+.1%})",
            "within a few %",
        ),
    )
