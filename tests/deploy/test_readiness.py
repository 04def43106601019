"""The deploy/bin gates against a real redis-server and a real replica: a health check's ready-replica, the
trainer's ready-fleet, and ctp-gpu-slot's GPU leases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

import pytest

from tests.deploy.program_parsers import BIN
from tests.service_helpers import RedisServer, ReplicaProcess, free_port, make_videos

TOKEN = "deploy-test-token"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[ReplicaProcess]:
    work = tmp_path_factory.mktemp("replica")
    (work / "token").write_text(TOKEN)
    process = ReplicaProcess(
        work,
        make_videos(work / "videos", count=2),
        redis_url=redis_server.url,
        namespace="deploy",
        extra=["--token-file", str(work / "token")],
    )
    yield process
    process.stop()


def run_script(name: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """A deploy/bin script with only the settings given in `env` (none inherited from this shell)."""
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("CTP_DATAGEN_TOKEN", "CTP_REDIS_URL", "CUDA_VISIBLE_DEVICES")
    }
    return subprocess.run(
        [sys.executable, str(BIN / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**inherited, **(env or {})},
    )


def test_ready_replica_is_the_gate_a_health_check_needs(replica: ReplicaProcess):
    assert (
        run_script("ctp-ready", "replica", "--addr", replica.address, env={"CTP_DATAGEN_TOKEN": TOKEN}).returncode == 0
    )
    refused = run_script("ctp-ready", "replica", "--addr", replica.address)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    dead = run_script("ctp-ready", "replica", "--addr", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert dead.returncode == 1 and "UNAVAILABLE" in dead.stderr


def test_ready_fleet_starts_the_trainer_only_with_enough_replicas(replica: ReplicaProcess, redis_server: RedisServer):
    env = {"CTP_DATAGEN_TOKEN": TOKEN, "CTP_REDIS_URL": redis_server.url}
    started = run_script(
        "ctp-ready", "fleet", "--namespace", "deploy", "--", sys.executable, "-c", "print('trainer started')", env=env
    )
    assert started.returncode == 0 and started.stdout == "trainer started\n" and replica.address in started.stderr
    short = run_script(
        "ctp-ready",
        "fleet",
        "--namespace",
        "deploy",
        "--min-replicas",
        "2",
        "--timeout",
        "1",
        "--",
        sys.executable,
        "-c",
        "print('trainer started')",
        env=env,
    )
    assert short.returncode == 1 and not short.stdout and "1 of 1 registered replicas serving, 2 needed" in short.stderr
    no_redis = run_script(
        "ctp-ready", "fleet", "--redis", f"redis://127.0.0.1:{free_port()}/0", "--timeout", "1", env=env
    )
    assert no_redis.returncode == 1 and "does not answer" in no_redis.stderr


# A stand-in replica: says which GPU it was given, then serves until SIGTERM (it drains and exits 0).
REPLICA = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (print('drained', flush=True), sys.exit(0)))\n"
    "print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'), flush=True)\n"
    "time.sleep(120)\n"
)


def start_slot_replica(redis_url: str, *options: str) -> tuple[subprocess.Popen, str]:
    """ctp-gpu-slot running a stand-in replica in its own session; (process, the GPU it printed)."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("CTP_REDIS_URL", "CUDA_VISIBLE_DEVICES")}
    process = subprocess.Popen(
        [
            sys.executable,
            str(BIN / "ctp-gpu-slot"),
            "--namespace",
            "leases",
            *options,
            "--",
            sys.executable,
            "-c",
            REPLICA,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**inherited, "CTP_REDIS_URL": redis_url},
        start_new_session=True,
    )
    return process, process.stdout.readline().strip()


def test_gpu_slot_leases_follow_replicas_that_stop_restart_or_die(redis_server: RedisServer):
    """Leases of 3 s renewed every second; the killed replica's of 10 s, so that the next one starts inside it
    however loaded the machine, and the last one starts once Redis's clock is past it."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    short = ("--gpus", "2", "--lease-ttl", "3")
    a, gpu_a = start_slot_replica(redis_server.url, *short)
    b, gpu_b = start_slot_replica(redis_server.url, *short)
    assert (gpu_a, gpu_b) == ("0", "1")
    time.sleep(4)  # past the TTL: only renewal keeps both leases
    assert [client.zcard(f"leases:datagen:gpu-lease:{g}") for g in "01"] == [1, 1]

    b.send_signal(signal.SIGTERM)  # scaled down: the replica drains, the lease goes back at once
    assert b.wait(30) == 0 and b.stdout.read().strip() == "drained"
    assert client.zcard("leases:datagen:gpu-lease:1") == 0
    c, gpu_c = start_slot_replica(redis_server.url, "--gpus", "2", "--lease-ttl", "10")
    assert gpu_c == "1"  # a round-robin counter would have stacked this restart on GPU 0 with replica a

    os.killpg(c.pid, signal.SIGKILL)  # died without a word: its lease outlives it by at most the TTL
    c.wait(30)
    d, gpu_d = start_slot_replica(redis_server.url, *short)
    assert gpu_d == "0"  # c's lease still counts: GPU 1 looks taken, the tie goes to the first
    ((_, expires_ms),) = client.zrange("leases:datagen:gpu-lease:1", 0, -1, withscores=True)
    seconds, micros = client.time()  # the leases' clock is Redis's
    time.sleep(max(0.0, expires_ms - (seconds * 1000 + micros // 1000)) / 1000 + 0.5)
    e, gpu_e = start_slot_replica(redis_server.url, *short)
    assert gpu_e == "1"  # expired: GPU 1 has the fewest live leases again
    for process in (a, d, e):
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert [client.zcard(f"leases:datagen:gpu-lease:{g}") for g in "01"] == [0, 0]


def test_gpu_slot_passes_the_replicas_exit_status_and_runs_unpinned_without_need(redis_server: RedisServer):
    show = ["--", sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"]
    redis_env = {"CTP_REDIS_URL": redis_server.url}
    chosen = run_script("ctp-gpu-slot", "--namespace", "slots", *show, env={**redis_env, "CUDA_VISIBLE_DEVICES": "4,6"})
    assert chosen.stdout.strip() == "4" and "leased GPU 4 (of 4,6; 1 replica(s) on it now" in chosen.stderr
    failing = run_script(
        "ctp-gpu-slot", "--gpus", "2", "--", sys.executable, "-c", "raise SystemExit(3)", env=redis_env
    )
    assert failing.returncode == 3
    alone = run_script("ctp-gpu-slot", "--gpus", "2", *show)
    assert alone.stdout.strip() == "unset" and "no Redis" in alone.stderr
    none_needed = run_script("ctp-gpu-slot", *show, env={**redis_env, "CUDA_VISIBLE_DEVICES": "2"})
    assert none_needed.stdout.strip() == "2" and "1 GPU(s) visible" in none_needed.stderr
    down = run_script("ctp-gpu-slot", "--gpus", "2", *show, env={"CTP_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert down.returncode == 1 and "cannot take a GPU lease" in down.stderr and not down.stdout
