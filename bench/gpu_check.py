"""GPU verification in one deadline: decoders, CUDA generation, training and a fed trainer, on a real GPU.

    python -m bench.gpu_check --videos .devpack/videos --out $OUT [--deadline 300]   (see bench/gpu_check.sh)

A lent GPU gives 15 minutes in all, so the check has one deadline (300 s by default) and its sections run in
order of value, each in a child process of its own process group with the smaller of its own cap and the
time left; a section that overruns is killed with everything it started, and the next one runs. The JSON
(`--out`/gpu_check.json) is rewritten after every section and, inside a section, after every measurement,
so whatever ran survives a kill. The NVDEC smoke test runs second: if NVDEC is unusable (the device machine
runs under gVisor, where `libnvcuvid` may be missing) it says so plainly and every later section decodes on
the CPU and still generates and trains on the GPU. One table is printed last.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from datagen.atomic import write_atomic
from datagen.tables import format_table

SECTIONS: list[Section] = []  # in order of value: the deadline cuts the tail


@dataclasses.dataclass
class Section:
    name: str
    cap_s: float
    run: Callable[[Context], None]


def section(name: str, cap_s: float) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    def register(fn: Callable[[Context], None]) -> Callable[[Context], None]:
        SECTIONS.append(Section(name, cap_s, fn))
        return fn

    return register


@dataclasses.dataclass
class Context:
    """What a section child is given, and where it writes what it measured as it goes."""

    videos: list[str]
    nvdec: bool
    batch_size: int
    result_file: Path
    scratch: Path
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    summary: list[list[str]] = dataclasses.field(default_factory=list)

    def record(self, key: str, value: Any, *rows: tuple[str, str, str]) -> None:
        """Keep a measurement (and its summary rows) on disk at once: a later kill loses nothing before it."""
        self.result[key] = value
        self.summary.extend(list(r) for r in rows)
        write_atomic(self.result_file, json.dumps({"result": self.result, "summary": self.summary}, default=str))
        print(f"   {key}: {json.dumps(value, default=str)[:400]}", flush=True)

    def decoder(self, batch_size: int = 8):
        """NVDEC when the smoke test passed, else PyAV on the CPU (generation still runs on the GPU)."""
        from datagen.decode import Decoder

        return Decoder("cuda", "dali", batch_size=batch_size) if self.nvdec else Decoder("cpu", "pyav")

    def manifest(self) -> list:
        from datagen.manifest import resolve_videos

        return resolve_videos(self.videos)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def clip_indices(num_frames: int) -> np.ndarray:
    """A CtP-like clip from the middle of the video (16 frames at stride 2) and the last frame."""
    start = max(0, num_frames // 2 - 16)
    return np.minimum(np.r_[start + 2 * np.arange(16), num_frames - 1], num_frames - 1)


def frames_decoded(decoder: Any) -> int | None:
    """The decoder's own count of frames it decoded, where it keeps one."""
    stats = getattr(decoder, "stats", None)
    return None if stats is None else int(stats.get("frames_decoded", 0)) or None


@section("environment", 25)
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
    for module in ("nvidia.dali", "av", "grpc", "redis"):
        try:
            env[module] = __import__(module, fromlist=["__version__"]).__version__
        except Exception as exc:
            env[module] = f"missing: {exc}"
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


@section("NVDEC smoke", 20)
def check_nvdec(ctx: Context) -> None:
    """Eight frames of one H.264 video through DALI's mixed decoder, against PyAV, in a few seconds."""
    from datagen.decode import Decoder

    videos = ctx.manifest()
    video = next((v for v in videos if v.codec == "h264"), videos[0])
    indices = np.arange(8)
    start = time.perf_counter()
    gpu = Decoder("cuda", "dali").decode(video, indices).cpu().numpy()
    seconds = time.perf_counter() - start
    cpu = Decoder("cpu", "pyav").decode(video, indices).numpy()
    quality = psnr(gpu, cpu)
    usable = gpu.shape == cpu.shape and float(gpu.mean()) > 1 and quality > 30
    ctx.record(
        "nvdec",
        {
            "usable": usable,
            "video": Path(video.path).name,
            "codec": video.codec,
            "seconds": seconds,
            "psnr_db": quality,
            "mean": float(gpu.mean()),
        },
        ("NVDEC (DALI mixed) usable", f"{'yes' if usable else 'NO'}: {quality:.1f} dB, {seconds:.1f} s", "yes"),
    )
    if not usable:
        raise RuntimeError(f"NVDEC decoded {video.path} wrongly (PSNR {quality:.1f} dB vs PyAV, mean {gpu.mean():.1f})")


@section("decode per codec", 30)
def check_decode(ctx: Context) -> None:
    from datagen.decode import Decoder, auto_backend

    if not ctx.nvdec:
        raise RuntimeError("skipped: NVDEC unusable (see the smoke test)")
    cpu = Decoder("cpu", "pyav")
    seen: set[str] = set()
    for video in ctx.manifest():
        if video.codec in seen:
            continue
        seen.add(video.codec)
        indices = clip_indices(video.num_frames)
        auto = Decoder("cuda", "auto")
        row: dict[str, Any] = {"video": Path(video.path).name, "frames": video.num_frames}
        try:
            start = time.perf_counter()
            frames = auto.decode(video, indices).cpu().numpy()
            row.update(
                seconds=time.perf_counter() - start,
                psnr_db=psnr(frames, cpu.decode(video, indices).numpy()),
                frames_decoded_per_clip=frames_decoded(auto),
            )
            row.update(routed_to=auto_backend(video.codec, "cuda"), retried_on_cpu=int(auto.stats["dali_fallbacks"]))
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        ctx.record(
            f"decode_{video.codec}",
            row,
            (
                f"decode {video.codec}: auto on CUDA vs PyAV",
                f"{row['psnr_db']:.1f} dB" if "psnr_db" in row else "FAILED: " + row["error"][:30],
                "≥ 40 dB",
            ),
        )


@section("CUDA vs CPU generation", 30)
def check_generation(ctx: Context) -> None:
    import torch

    from datagen.config import GenerationConfig
    from datagen.decode import Decoder
    from datagen.generator import Generator
    from datagen.rng import SampleKey

    videos = ctx.manifest()
    keys = [SampleKey(3, 1, i) for i in range(16)]
    cpu = Generator(videos, GenerationConfig(), "cpu", Decoder("cpu", "pyav")).generate(keys)
    gpu = Generator(videos, GenerationConfig(), "cuda", ctx.decoder()).generate(keys).to("cpu")
    same = torch.equal(cpu.boxes, gpu.boxes) and torch.equal(cpu.visible, gpu.visible)
    diff = (cpu.clips.int() - gpu.clips.int()).abs().float()
    quality = psnr(cpu.clips.numpy(), gpu.clips.numpy())
    ctx.record(
        "generation_cuda_vs_cpu",
        {
            "decoder": "nvdec" if ctx.nvdec else "pyav",
            "boxes_and_visibility_identical": same,
            "pixel_mean_abs": diff.mean().item(),
            "psnr_db": quality,
        },
        ("CUDA vs CPU generation: boxes/visibility", "identical" if same else "DIFFER", "identical"),
        ("CUDA vs CPU generation: pixel PSNR", f"{quality:.1f} dB", "decoder + float tolerance"),
    )


def datagen_rates(ctx: Context, seconds: float) -> dict[str, float]:
    """Decode alone, generation alone and end to end, clips/s of one replica process on this GPU."""
    from datagen.bench import timed
    from datagen.config import GenerationConfig
    from datagen.generator import Generator
    from datagen.render import render
    from datagen.rng import SampleKey

    generator = Generator(ctx.manifest(), GenerationConfig(), "cuda", ctx.decoder(ctx.batch_size))
    keys = [SampleKey(0, 0, i) for i in range(ctx.batch_size)]
    plans = [generator.plan(k) for k in keys]
    frames = generator.decode(plans)
    crop = generator.config.clip.crop_size
    repeats = max(1, int(seconds))
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
    }


@section("datagen, one replica", 35)
def bench_datagen(ctx: Context) -> None:
    rates = datagen_rates(ctx, 3)
    ctx.record(
        "datagen_one_replica",
        {**rates, "decoder": "nvdec" if ctx.nvdec else "pyav"},
        ("datagen decode (one replica)", f"{rates['decode_clips_per_s']:.0f} clips/s", ""),
        ("datagen generation (one replica)", f"{rates['generate_clips_per_s']:.0f} clips/s", ""),
        (
            "datagen end to end (one replica)",
            f"{rates['end_to_end_clips_per_s']:.0f} clips/s, decode {rates['decoder_share']:.0%}",
            "≥ 2000 per GPU",
        ),
    )


@section("trainer step", 50)
def bench_trainer(ctx: Context) -> None:
    import torch

    from bench.train_bench import measure

    for encoder in ("r3d_18", "r2plus1d_18"):
        for variant in ("bf16+cl3d", "bf16", "fp32"):
            row = measure(encoder, variant, False, "cuda", 32, steps=10, warmup=3)
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
    """R3D-18 pretraining for `steps` steps of 32 clips; (clips/s, data-wait share) after the first windows."""
    command = [
        sys.executable,
        "-m",
        "trainer.cli",
        "pretrain",
        "--config",
        "r3d18_ucf101",
        "--overwrite",
        f"data.videos=[{','.join(ctx.videos)}]",
        "data.clips_per_video=512",
        f"run.stop_at_step={steps}",
        "run.log_every=5",
        "eval.every_steps=1000000",
        "run.progress=false",
        f"run.out_dir={ctx.scratch / name}",
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = re.findall(r"step (\d+)/\d+ .*?, ([\d.]+) clips/s, data wait (\d+)%", done.stderr + done.stdout)
    if done.returncode or len(lines) < 3:
        raise RuntimeError(f"pretraining failed (exit {done.returncode}): {(done.stderr or done.stdout)[-1500:]}")
    steady = lines[2:]  # the first windows hold cuDNN autotuning and the first batches
    return sum(float(c) for _, c, _ in steady) / len(steady), sum(int(w) for _, _, w in steady) / len(steady) / 100


def replica_batches(metrics_port: int) -> dict[str, float]:
    """Batches the replica sent, by transport, from its Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {t: float(v) for t, v in re.findall(r'ctp_datagen_batches_total\{transport="(\w+)"\} ([\d.e+]+)', text)}


@section("fed trainer", 75)
def bench_fed_trainer(ctx: Context) -> None:
    port, metrics_port = free_port(), free_port()
    serve = [
        sys.executable,
        "-m",
        "datagen.cli",
        "serve",
        *ctx.videos,
        "--device",
        "cuda",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
    ] + ([] if ctx.nvdec else ["--backend", "pyav"])
    replica = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # our process group
    address = f"service.addresses=[127.0.0.1:{port}]"
    runs = {
        "shared memory": [address, "service.shared_memory=true"],
        "inline gRPC": [address, "service.shared_memory=false"],
        "in-process": [],
    }
    try:
        for name, extra in runs.items():
            before = replica_batches(metrics_port) if extra else {}
            clips, wait = pretrain_rate(ctx, name.replace(" ", "_"), extra, 30)
            sent = {t: n - before.get(t, 0) for t, n in replica_batches(metrics_port).items()} if extra else {}
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


@section("fp32 vs bf16 loss", 50)
def check_precision(ctx: Context) -> None:
    """Both precisions from the same initialisation over the same real CtP batches (cached: decode is not timed)."""
    import torch

    from datagen.config import GenerationConfig
    from datagen.generator import Generator
    from datagen.rng import SampleKey
    from trainer.config import load_train_config
    from trainer.execution import Execution
    from trainer.pretrain import Trainer

    generator = Generator(ctx.manifest(), GenerationConfig(), "cuda", ctx.decoder(32))
    batches = [generator.generate([SampleKey(7, 0, b * 32 + i) for i in range(32)]) for b in range(12)]
    steps, curves = 240, {}
    for precision in ("bf16", "fp32"):
        cfg = load_train_config("r3d18_ucf101", [f"run.precision={precision}", "run.device=cuda"])
        torch.manual_seed(0)
        trainer = Trainer(cfg, Execution.resolve("cuda", precision, precision == "bf16"), epoch_size=steps * 32)
        losses = [trainer.train_step(batches[s % len(batches)])[0] for s in range(steps)]
        curve = torch.stack(losses).float().cpu().view(-1, 20).mean(1).tolist()  # mean of every 20 steps
        curves[precision] = curve
        ctx.record(f"loss_{precision}", curve)
    gap = (curves["bf16"][-1] - curves["fp32"][-1]) / curves["fp32"][-1]
    ctx.record(
        "precision",
        {
            "steps": steps,
            "distinct_batches": len(batches),
            "last20_bf16": curves["bf16"][-1],
            "last20_fp32": curves["fp32"][-1],
            "relative_gap": gap,
        },
        (
            f"loss after {steps} steps, bf16 vs fp32",
            f"{curves['bf16'][-1]:.3f} vs {curves['fp32'][-1]:.3f} ({gap:+.1%})",
            "within a few %",
        ),
    )


@section("datagen, several replicas", 40)
def bench_replicas(ctx: Context) -> None:
    for count in (2, 4):
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.gpu_check",
                    "--worker",
                    "--videos",
                    *ctx.videos,
                    "--batch-size",
                    str(ctx.batch_size),
                    "--nvdec",
                    str(int(ctx.nvdec)),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        rates = [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
        total = sum(r["end_to_end_clips_per_s"] for r in rates)
        ctx.record(
            f"datagen_{count}_replicas",
            {"per_replica": rates, "end_to_end_clips_per_s": total},
            (f"datagen end to end, {count} replicas", f"{total:.0f} clips/s", "≥ 2000 per GPU"),
        )


# ---- the orchestrator: one deadline, one child process group per section, JSON after every section ----


def commit() -> str:
    if shutil.which("git"):
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    packed = Path(".devpack/commit")  # written by bench/gpu_pack.sh: the device machine may have no git
    return packed.read_text().strip() if packed.exists() else "unknown"


def run_section(sec: Section, args: argparse.Namespace, nvdec: bool, budget: float, out: Path) -> dict[str, Any]:
    """The section in a child of its own process group, killed with all it started at the budget."""
    result_file = out / f".section-{SECTIONS.index(sec)}.json"
    result_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "bench.gpu_check",
        "--section",
        sec.name,
        "--result",
        str(result_file),
        "--videos",
        *args.videos,
        "--batch-size",
        str(args.batch_size),
        "--nvdec",
        str(int(nvdec)),
    ]
    start = time.monotonic()
    child = subprocess.Popen(command, start_new_session=True)
    try:
        code: int | str = child.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        code = f"killed at its budget of {budget:.0f} s"
    finally:
        kill_group(child)
    outcome = json.loads(result_file.read_text()) if result_file.exists() else {"result": {}, "summary": []}
    outcome.update(seconds=round(time.monotonic() - start, 1), budget_s=round(budget), exit=code)
    result_file.unlink(missing_ok=True)
    return outcome


def kill_group(child: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.1)
    child.wait()


def orchestrate(args: argparse.Namespace) -> None:
    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "deadline_s": args.deadline,
        "sections": {},
    }
    nvdec = True

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(f"gpu_check: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        for sec in SECTIONS:
            if (
                args.only
                and sec.run not in (check_environment, check_nvdec)
                and not any(w in sec.name for w in args.only)
            ):
                continue
            left = args.deadline - (time.monotonic() - start) - 2
            if left < 8:
                print(f"\n== {sec.name}: skipped, {left:.0f} s left", flush=True)
                report["sections"][sec.name] = {
                    "exit": "skipped: deadline",
                    "summary": [[sec.name, "SKIPPED", "deadline"]],
                }
                continue
            print(f"\n== {sec.name} ({min(sec.cap_s, left):.0f} s of {left:.0f} s left)", flush=True)
            outcome = run_section(sec, args, nvdec, min(sec.cap_s, left), out)
            if outcome["exit"] != 0:
                outcome["summary"].append(
                    [
                        sec.name,
                        "FAILED" if isinstance(outcome["exit"], int) else "KILLED",
                        str(outcome.get("error", outcome["exit"]))[:60],
                    ]
                )
            if sec.run is check_nvdec:
                nvdec = outcome["exit"] == 0 and outcome["result"].get("nvdec", {}).get("usable", False)
                if not nvdec:
                    print(
                        "\n!! NVDEC is unusable on this machine: the sections below decode with PyAV on the CPU "
                        "and generate and train on the GPU.",
                        flush=True,
                    )
            report["sections"][sec.name] = outcome
            write_report(report, out)
    finally:
        report["seconds"] = round(time.monotonic() - start, 1)
        write_report(report, out)
        print_table(report)


def write_report(report: dict[str, Any], out: Path) -> None:
    write_atomic(out / "gpu_check.json", json.dumps(report, indent=2, default=str))


def print_table(report: dict[str, Any]) -> None:
    rows = [row for outcome in report["sections"].values() for row in outcome.get("summary", [])]
    if not rows:
        return
    print("\n" + format_table(rows, ("check", "result", "target"), align="<<<"))
    print(f"({report.get('seconds', '?')} s of a {report['deadline_s']} s deadline)", flush=True)


def run_child(args: argparse.Namespace) -> None:
    """One section, in this process: its measurements go to --result as they are taken."""
    sec = next(s for s in SECTIONS if s.name == args.section)
    ctx = Context(args.videos, bool(args.nvdec), args.batch_size, Path(args.result), Path("/tmp/gpu_check_runs"))
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    write_atomic(ctx.result_file, json.dumps({"result": {}, "summary": []}))
    try:
        sec.run(ctx)
    except Exception as exc:
        traceback.print_exc()
        saved = json.loads(ctx.result_file.read_text())
        saved.update(error=f"{type(exc).__name__}: {exc}"[:2000], traceback=traceback.format_exc()[-4000:])
        write_atomic(ctx.result_file, json.dumps(saved, default=str))
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", default=[".devpack/videos"])
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_check"), help="folder for gpu_check.json")
    parser.add_argument("--deadline", type=float, default=300, help="seconds for every section together")
    parser.add_argument("--batch-size", type=int, default=64, help="datagen batch size")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="WORD",
        help="run only the sections whose name holds one of these words (and the first two, always)",
    )
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--nvdec", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one of several replicas measured together: its rates as one JSON line
        ctx = Context(args.videos, bool(args.nvdec), args.batch_size, Path(os.devnull), Path("/tmp"))
        print(json.dumps(datagen_rates(ctx, 3)))
    elif args.section:
        run_child(args)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
