"""The GPU check's fed-trainer section: R3D-18 pretraining fed by a real replica over shared memory and inline
gRPC, against in-process generation, with the batches the replica says it sent."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from checks.gpu_harness import PRESET, Context, free_port


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
    from datagen.ctp.spec import load_generation
    from datagen.service.client.remote_source import RemoteSource

    found = {}
    for shm in (True, False):
        with RemoteSource([address], config=load_generation(PRESET), shared_memory=shm, pin_memory=True) as source:
            batch = next(iter(source.stream(0, 0, range(32), 32)))
            found["shm" if shm else "inline"] = bool(batch.clips.is_pinned())
    return found


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
