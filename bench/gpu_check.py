"""GPU verification: NVDEC decoding, CUDA generation and training, measured on a real GPU (issue 7).

    python bench/gpu_check.py --videos .devpack/videos --out $OUT/gpu_check.json   (see bench/gpu_check.sh)

Each check runs under its own time budget and records a failure instead of stopping the others. Prints the
full results as they come and one short table last; writes everything to --out as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import re
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datagen.bench import timed  # noqa: E402
from datagen.config import GenerationConfig  # noqa: E402
from datagen.decode import Decoder  # noqa: E402
from datagen.generator import Generator  # noqa: E402
from datagen.manifest import resolve_videos  # noqa: E402
from datagen.render import render  # noqa: E402
from datagen.rng import SampleKey  # noqa: E402

RESULTS: dict[str, Any] = {}
SUMMARY: list[tuple[str, str, str]] = []  # (check, value, target or verdict)


def section(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Run a check, keeping its failure (with traceback) in the results instead of aborting the script."""
    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            start = time.perf_counter()
            print(f"\n== {name}", flush=True)
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 — a failing GPU path is a result to report
                RESULTS[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                SUMMARY.append((name, "FAILED", f"{type(exc).__name__}: {str(exc)[:60]}"))
                print(traceback.format_exc(), flush=True)
            print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)
        return run
    return wrap


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@section("decode: DALI mixed (NVDEC) vs PyAV")
def check_decode(videos: list) -> None:
    gpu, cpu = Decoder("cuda", "dali"), Decoder("cpu", "pyav")
    rows = {}
    for v in videos:
        indices = np.array([0, 1, 2, 7, 15, 31, v.num_frames // 2, v.num_frames - 1])
        a = gpu.decode(v, indices).cpu().numpy()
        b = cpu.decode(v, indices).numpy()
        rows[Path(v.path).name] = {"codec": v.codec, "psnr_db": psnr(a, b), "max_abs": int(np.abs(a.astype(int) - b).max())}
        print(f"   {Path(v.path).name:<34}{v.codec:<8} PSNR {rows[Path(v.path).name]['psnr_db']:.1f} dB")
    RESULTS["decode_psnr"] = rows
    worst = min(r["psnr_db"] for r in rows.values())
    SUMMARY.append(("NVDEC vs PyAV frames, worst PSNR", f"{worst:.1f} dB", "≥ 40 dB"))


@section("generation: CUDA vs CPU for the same keys")
def check_generation(videos: list) -> None:
    keys = [SampleKey(3, 1, i) for i in range(16)]
    cpu = Generator(videos, GenerationConfig(), "cpu", Decoder("cpu", "pyav")).generate(keys)
    gpu = Generator(videos, GenerationConfig(), "cuda", Decoder("cuda", "dali")).generate(keys).to("cpu")
    same_boxes = torch.equal(cpu.boxes, gpu.boxes) and torch.equal(cpu.visible, gpu.visible)
    diff = (cpu.clips.int() - gpu.clips.int()).abs().float()
    RESULTS["generation_cuda_vs_cpu"] = {"boxes_and_visibility_identical": same_boxes,
                                         "pixel_mean_abs": diff.mean().item(), "pixel_p99_abs": diff.flatten().kthvalue(int(diff.numel() * 0.99)).values.item(),
                                         "psnr_db": psnr(cpu.clips.numpy(), gpu.clips.numpy())}
    print("  ", RESULTS["generation_cuda_vs_cpu"])
    SUMMARY.append(("CUDA vs CPU generation: boxes/visibility", "identical" if same_boxes else "DIFFER", "identical"))
    SUMMARY.append(("CUDA vs CPU generation: pixel PSNR", f"{RESULTS['generation_cuda_vs_cpu']['psnr_db']:.1f} dB", "decoder + float tolerance"))


@section("datagen throughput on one GPU")
def bench_datagen(videos: list, batch_size: int) -> None:
    generator = Generator(videos, GenerationConfig(), "cuda", Decoder("cuda", "dali", batch_size=batch_size))
    keys = [SampleKey(0, 0, i) for i in range(batch_size)]
    plans = [generator.plan(k) for k in keys]
    frames = generator.decode(plans)
    crop = generator.config.clip.crop_size
    rates = {
        "NVDEC decode": batch_size / timed(lambda: generator.decode(list(plans)), generator.device, 3),
        "generation (plan + render)": batch_size / timed(lambda: render([generator.plan(k) for k in keys], frames, crop), generator.device, 5),
        "end to end": batch_size / timed(lambda: generator.generate(keys), generator.device, 3),
    }
    RESULTS["datagen_clips_per_s"] = rates
    for name, rate in rates.items():
        print(f"   {name:<28}{rate:>10.0f} clips/s")
        SUMMARY.append((f"datagen {name}", f"{rate:.0f} clips/s", "≥ 2000 end to end" if name == "end to end" else ""))


@section("trainer step: R3D-18 and R(2+1)D-18, fp32 / bf16 / bf16 + channels_last_3d")
def bench_trainer(budget_s: int) -> None:
    """bench/train_bench.py on CUDA (each configuration in its own process, so peak memory is its own)."""
    bench = Path(__file__).with_name("train_bench.py")
    done = subprocess.run([sys.executable, str(bench), "--device", "cuda", "--steps", "10", "--warmup", "3"],
                          capture_output=True, text=True, timeout=budget_s)
    print(done.stderr[-3000:], done.stdout, sep="\n")
    RESULTS["trainer_step"] = done.stdout
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0] in ("r3d_18", "r2plus1d_18"):
            target = "≥ 800 (bf16)" if parts[0] == "r3d_18" and parts[1].startswith("bf16") else ""
            SUMMARY.append((f"train step {parts[0]} {parts[1]}", f"{parts[2]} clips/s", target))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pretrain_rate(videos: list[str], extra: list[str], out_dir: Path, budget_s: int) -> tuple[float, float]:
    """Run R3D-18 pretraining for 40 steps of 32 clips; (clips/s, data-wait share) after the warm-up."""
    command = [sys.executable, "-m", "trainer.cli", "pretrain", "--config", "r3d18_ucf101",
               f"data.videos=[{','.join(videos)}]", "data.clips_per_video=512", "run.stop_at_step=40",
               "run.log_every=5", "eval.every_steps=1000000", "run.progress=false", f"run.out_dir={out_dir}", *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=budget_s)
    lines = re.findall(r"step (\d+): ([\d.]+) clips/s, (\d+)% of the time waiting for data", done.stderr + done.stdout)
    if done.returncode or len(lines) < 3:
        raise RuntimeError(f"pretraining failed (exit {done.returncode}): {(done.stderr or done.stdout)[-1500:]}")
    steady = lines[2:]  # the first windows hold cuDNN autotuning and the first batches
    return (sum(float(c) for _, c, _ in steady) / len(steady), sum(int(w) for _, _, w in steady) / len(steady) / 100)


@section("replica feeding a trainer on this GPU: in-process vs shared memory vs gRPC")
def bench_fed_trainer(videos: list[str], budget_s: int) -> None:
    port = _free_port()
    replica = subprocess.Popen([sys.executable, "-m", "datagen.cli", "serve", *videos, "--device", "cuda",
                                "--port", str(port), "--metrics-port", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows = {}
    try:
        address = f"service.addresses=[127.0.0.1:{port}]"
        runs = {"in-process generation": [], "replica, shared memory": [address, "service.shared_memory=true"],
                "replica, inline gRPC": [address, "service.shared_memory=false"]}
        for name, extra in runs.items():
            clips, wait = _pretrain_rate(videos, extra, Path("/tmp/gpu_check_runs") / name.split(",")[-1].strip().replace(" ", "_"), budget_s // 3)
            rows[name] = {"clips_per_s": clips, "data_wait": wait}
            print(f"   {name:<26}{clips:>9.0f} clips/s  data wait {wait:.0%}", flush=True)
            SUMMARY.append((f"R3D-18 pretraining fed by {name}", f"{clips:.0f} clips/s, wait {wait:.0%}", ""))
    finally:
        replica.terminate()
        try:
            replica.wait(30)
        except subprocess.TimeoutExpired:
            replica.kill()
    RESULTS["fed_trainer"] = rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", default=[".devpack/videos"])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible")
    RESULTS["machine"] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
                          "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
    try:
        import nvidia.dali as dali
        RESULTS["machine"]["dali"] = dali.__version__
    except ImportError as exc:
        RESULTS["machine"]["dali"] = f"missing: {exc}"
    print(RESULTS["machine"], flush=True)

    videos = resolve_videos(args.videos)
    check_decode(videos)
    check_generation(videos)
    bench_datagen(videos, args.batch_size)
    bench_trainer(240)
    bench_fed_trainer([str(Path(v).resolve()) for v in args.videos], 240)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(RESULTS, indent=2, default=str))
    width = max(len(s[0]) for s in SUMMARY) + 2
    print(f"\n{'check':<{width}}{'result':<22}target")
    for name, value, target in SUMMARY:
        print(f"{name:<{width}}{value:<22}{target}")
    print(f"full results: {args.out}")


if __name__ == "__main__":
    main()
