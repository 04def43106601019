"""GPU verification in one deadline: the self-check, CUDA generation, training and a fed trainer, on a real GPU.

    python -m bench.gpu_check --videos .devpack/videos --out $OUT [--deadline 300]   (see bench/gpu_check.sh)

Sections in order of value (bench/gpu_harness.py runs each in a process group of its own, with the smaller of
its cap and the time left; the caps sum to 280 s of the 300 s deadline). The first after the environment is
`ctp-datagen verify --device cuda`: every decode class probed against PyAV (an HMDB-51 packed-B AVI among
them; JPEG frames, baseline in a zip and progressive in a folder, against libjpeg-turbo), the renderer
against the CPU kernels. Nothing later depends on NVDEC working: generators decode with
`auto`, which routes a class DALI got wrong (or cannot run, as under gVisor without libnvcuvid) to PyAV. A
section that overruns is reported as timed out, never as a wrong result. One table is printed last.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu_harness import Context, Sections, commit, orchestrate, run_child

SECTIONS = Sections()
PRESET = "r3d18_ucf101"


@SECTIONS.add("environment", 20)
def check_environment(ctx: Context) -> None:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "gvisor": "gVisor" in Path("/proc/version").read_text(errors="replace") or platform.release() == "4.4.0",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device",
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else None,
        "commit": commit(),
        "numba_cache": os.environ.get("NUMBA_CACHE_DIR", "beside the modules"),
    }
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        env["driver"] = smi.stdout.split(",")[1].strip() if smi.stdout.count(",") >= 2 else None
    for module in ("nvidia.dali", "av", "grpc", "redis", "numba"):
        started = time.perf_counter()
        try:
            env[module] = __import__(module, fromlist=["__version__"]).__version__
        except Exception as exc:
            env[module] = f"missing: {exc}"
        env[f"{module}_import_s"] = round(time.perf_counter() - started, 2)
    try:
        ctypes.CDLL("libnvcuvid.so.1")
        env["libnvcuvid"] = "loads"
    except OSError as exc:
        env["libnvcuvid"] = f"does not load: {exc}"
    ctx.record(
        "environment",
        env,
        ("GPU", f"{env['gpu']} (sm {env['capability']})", ""),
        ("torch / CUDA / cuDNN", f"{env['torch']} / {env['cuda']} / {env['cudnn']}", ""),
        ("driver / DALI", f"{env.get('driver')} / {env['nvidia.dali']}", ""),
        ("libnvcuvid", env["libnvcuvid"][:40], "loads"),
    )
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible: nothing else can run")
    warm_up_kernels(ctx)


def warm_up_kernels(ctx: Context) -> None:
    """Compile the CPU kernels (numba) once into $NUMBA_CACHE_DIR, so that no later section pays the cold start
    inside its cap; timed."""
    from datagen.decode import Decoder
    from datagen.generator import Generator

    started = time.perf_counter()
    generator = Generator(ctx.manifest()[:1], device="cpu", decoder=Decoder("cpu", "pyav"), self_check=False)
    generator.generate([(0, 0, 0)])
    seconds = time.perf_counter() - started
    ctx.record("numba_warm_up_s", seconds, ("CPU kernels compiled (numba, cold)", f"{seconds:.1f} s", ""))


@SECTIONS.add("self-check (ctp-datagen verify --device cuda)", 50)
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


@SECTIONS.add("CUDA vs CPU generation", 25)
def check_generation(ctx: Context) -> None:
    import torch

    from datagen.decode import Decoder
    from datagen.decode_routes import psnr
    from datagen.generator import Generator
    from datagen.rng import SampleKey

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
    from datagen.decode import Decoder
    from datagen.generator import Generator
    from datagen.render import render
    from datagen.rng import SampleKey

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


@SECTIONS.add("datagen, one replica", 30)
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


@SECTIONS.add("trainer step", 30)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_rate(ctx: Context, name: str, extra: list[str], steps: int) -> tuple[float, float]:
    """R3D-18 pretraining for `steps` steps of 32 clips (a small held-out set: the rate is the point);
    (clips/s, data-wait share) after the first windows; its log goes to $OUT."""
    command = [
        *(sys.executable, "-m", "trainer.cli", "pretrain", "--config", PRESET, "--overwrite"),
        f"data.videos=[{','.join(ctx.videos)}]",
        "data.clips_per_video=512",
        f"run.stop_at_step={steps}",
        "run.log_every=5",
        "eval.clips=32",
        "eval.every_steps=1000000",
        "run.progress=false",
        f"run.out_dir={ctx.scratch / name}",
        *extra,
    ]
    with (ctx.out / f"pretrain_{name}.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    text = (ctx.out / f"pretrain_{name}.log").read_text()
    lines = re.findall(r"step (\d+)/\d+ .*?, ([\d.]+) clips/s, data wait (\d+)%", text)
    if done.returncode or len(lines) < 3:
        raise RuntimeError(f"pretraining failed (exit {done.returncode}): {text[-1500:]}")
    steady = lines[2:]  # the first windows hold cuDNN autotuning and the first batches
    return sum(float(c) for _, c, _ in steady) / len(steady), sum(int(w) for _, _, w in steady) / len(steady) / 100


def metrics_text(port: int, replica: subprocess.Popen, log: Path, wait_s: float) -> str:
    """The replica's /metrics, polled until it answers (it listens once its start-up self-check is done)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except (urllib.error.URLError, ConnectionError):
            if replica.poll() is not None:
                raise RuntimeError(f"the replica exited with {replica.returncode}: {log.read_text()[-1500:]}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"the replica's metrics did not answer in {wait_s:.0f} s (see {log.name})") from None
            time.sleep(0.5)


def replica_batches(text: str) -> dict[str, float]:
    """Batches the replica sent, by transport, from its Prometheus text."""
    return {t: float(v) for t, v in re.findall(r'ctp_datagen_batches_total\{transport="(\w+)"\} ([\d.e+]+)', text)}


def pinned_arrivals(address: str) -> dict[str, bool]:
    """Whether a GPU trainer's client receives clips in pinned memory, through shared memory and inline."""
    from datagen.config import load_generation
    from datagen.service.fleet import RemoteSource

    found = {}
    for shm in (True, False):
        with RemoteSource([address], config=load_generation(PRESET), shared_memory=shm, pin_memory=True) as source:
            batch = next(iter(source.stream(0, 0, range(32), 32)))
            found["shm" if shm else "inline"] = bool(batch.clips.is_pinned())
    return found


@SECTIONS.add("fed trainer", 60)
def bench_fed_trainer(ctx: Context) -> None:
    port, metrics_port = free_port(), free_port()
    serve = [
        *(sys.executable, "-m", "datagen.cli", "serve", *ctx.videos, "--device", "cuda", "--config", PRESET),
        *("--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port)),
    ]
    log_path = ctx.out / "replica.log"
    with log_path.open("w") as log:
        replica = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)  # our process group
    try:
        metrics_text(metrics_port, replica, log_path, 30)
        address = f"127.0.0.1:{port}"
        pinned = pinned_arrivals(address)
        ctx.record(
            "received_pinned",
            pinned,
            ("batches received in pinned memory", ", ".join(f"{k}: {v}" for k, v in pinned.items()), "both True"),
        )
        runs = {
            "shared memory": [f"service.addresses=[{address}]", "service.shared_memory=true"],
            "in-process": [],
            "inline gRPC": [f"service.addresses=[{address}]", "service.shared_memory=false"],
        }
        for name, extra in runs.items():
            before = replica_batches(metrics_text(metrics_port, replica, log_path, 5)) if extra else {}
            clips, wait = pretrain_rate(ctx, name.replace(" ", "_"), extra, 20)
            after = replica_batches(metrics_text(metrics_port, replica, log_path, 5)) if extra else {}
            sent = {t: n - before.get(t, 0) for t, n in after.items()}
            ctx.record(
                f"fed_{name.replace(' ', '_')}",
                {"clips_per_s": clips, "data_wait": wait, "replica_batches": sent},
                (
                    f"R3D-18 pretraining fed by {name}",
                    f"{clips:.0f} clips/s, wait {wait:.0%}"
                    + (f", {int(sent.get('shm', 0))} shm / {int(sent.get('inline', 0))} inline" if extra else ""),
                    "wait < 2 %",
                ),
            )
    finally:
        replica.terminate()
        replica.wait(10)


def two_ranks_worker(rank: int, port: int, result: str) -> None:
    """One of two ranks on cuda:0 (gloo: NCCL refuses two ranks on one GPU): DDP, torch's SyncBatchNorm and bf16
    autocast, rank 1 with an empty batch as the epoch's last global batch can leave it."""
    import torch
    import torch.distributed as dist

    from bench.train_bench import synthetic_batch
    from trainer.config import load_train_config
    from trainer.distributed import Ranks, sync_batchnorm_layers
    from trainer.execution import Execution
    from trainer.pretrain import Trainer

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


@SECTIONS.add("two ranks on one GPU (gloo, SyncBatchNorm, bf16, an empty rank)", 25)
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


@SECTIONS.add("fp32 vs bf16 loss", 40)
def check_precision(ctx: Context) -> None:
    """Both precisions from the same initialisation over the same real CtP batches (made once: decode is not
    timed); fp32 is IEEE fp32 (no TF32)."""
    import torch

    from datagen.generator import Generator
    from datagen.rng import SampleKey
    from trainer.config import load_train_config
    from trainer.execution import Execution
    from trainer.pretrain import Trainer

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", default=[".devpack/videos"])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_check"), help="folder for gpu_check.json")
    parser.add_argument("--deadline", type=float, default=300, help="seconds for every section together")
    parser.add_argument("--batch-size", type=int, default=64, help="datagen batch size")
    parser.add_argument(
        "--only",
        nargs="+",
        default=(),
        metavar="WORD",
        help="run only the sections whose name holds one of these words (and the first, always)",
    )
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.section:
        ctx = Context(args.videos, args.batch_size, Path(args.result), Path("/tmp/gpu_check_runs"), out)
        run_child(SECTIONS, args.section, ctx)
    else:
        child_args = ["--videos", *args.videos, "--batch-size", str(args.batch_size), "--out", str(out)]
        orchestrate(SECTIONS, args.deadline, out, child_args, args.only)


if __name__ == "__main__":
    main()
