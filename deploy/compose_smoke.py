"""The Compose stack as a user runs it, on this machine's Docker engine in CPU mode (`make compose-smoke`).

Builds the image, starts Redis, two datagen replicas and the trainer with docker-compose.yml + compose.cpu.yml
on synthetic videos and the tiny_cpu preset, then checks what a user relies on: replicas turn healthy, the
trainer logs loss lines and takes clips through shared memory, `--scale datagen=3` is adopted while training,
a killed replica costs nothing, `docker compose stop trainer` checkpoints and exits 75 without a traceback,
`up --no-deps trainer` resumes without touching the replicas, the finished run's metrics.jsonl equals an
in-process run of the same config record for record (nothing lost or repeated), the app user owns every cache
file, TensorBoard answers on 127.0.0.1 only, and `down -v` with the profile leaves nothing behind. One PASS
line per check, with times; the first failure stops the test (its logs are printed) and the stack is removed.

Not part of `make test` (it takes minutes and a Docker engine). Knobs, from the environment:
  COMPOSE_PROJECT_NAME  project, hence container, network and volume names (default ctp-smoke)
  CTP_IMAGE             image name, tagged with CUDA_VARIANT (default ctp-video-smoke)
  CTP_BASE_IMAGE, REDIS_IMAGE, PIP_INDEX_URL, TORCH_INDEX_URL, DALI_INDEX_URL   as in .env (the base images
                        and package indexes: stand-ins and PyPI on a machine without a registry)
  SMOKE_KEEP=1          leave the stack running at the end (or at a failure) for a look
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ["-f", "docker-compose.yml", "-f", "compose.cpu.yml"]
RUN = "smoke"
# tiny_cpu on 6 videos, 16 clips each: 12 steps per epoch, 48 in all
# A stop waits for the next log point, and torchrun kills its workers 30 s after passing SIGTERM on: one step
# between log points keeps that well inside on a loaded machine (4 steps took 80 s at a load average of 10).
OVERRIDES = "data.clips_per_video=16 optim.epochs=4 run.log_every=1 run.checkpoint_every=12 eval.every_steps=24"


class SmokeFailure(Exception):
    pass


class Stack:
    """docker compose on this project, with the smoke test's settings in the environment."""

    def __init__(self, data: Path, tensorboard_port: int) -> None:
        self.project = os.environ.get("COMPOSE_PROJECT_NAME", "ctp-smoke")
        self.env = {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            "CTP_IMAGE": os.environ.get("CTP_IMAGE", "ctp-video-smoke"),
            "CTP_DATA_DIR": str(data),
            "CTP_VIDEOS": "/data",
            "CTP_RUN_NAME": RUN,
            "TRAINER_CONFIG": "tiny_cpu",
            "TRAINER_OVERRIDES": OVERRIDES,
            "TRAINER_CPU_PROCS": "1",
            "DATAGEN_REPLICAS": "2",
            "DATAGEN_CPU_THREADS": "1",
            "DATAGEN_START_PERIOD": "300s",
            "TENSORBOARD_PORT": str(tensorboard_port),
        }
        self.env.pop("TENSORBOARD_HOST", None)  # the default, 127.0.0.1, is under test

    def compose(self, *args: str, check: bool = True, capture: bool = True, timeout: float = 900) -> str:
        done = subprocess.run(
            ["docker", "compose", *FILES, *args],
            cwd=REPO,
            env=self.env,
            capture_output=capture,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode:
            raise SmokeFailure(f"docker compose {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done.stdout or ""

    def containers(self, service: str, running_only: bool = True) -> list[dict]:
        out = self.compose("ps", "--format", "json", *([] if running_only else ["--all"]), service)
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [r for row in rows for r in (row if isinstance(row, list) else [row])]

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", "--no-log-prefix", service)

    def run(self, service: str, *command: str) -> str:
        """A one-off container's output (the image's entry point, which prints a banner, left out)."""
        return self.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", command[0], service, *command[1:])

    def inspect(self, container: str, template: str) -> str:
        return subprocess.run(
            ["docker", "inspect", "-f", template, container], capture_output=True, text=True, check=True
        ).stdout.strip()


def wait_for(what: str, condition: Callable[[], object], timeout: float, every: float = 2.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SmokeFailure(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def passed(check: str, started: float, detail: str = "") -> None:
    print(f"PASS {check} ({time.monotonic() - started:.1f} s){': ' + detail if detail else ''}", flush=True)


def healthy(stack: Stack, service: str, count: int) -> bool:
    rows = stack.containers(service)
    return len(rows) == count and all(r.get("Health") == "healthy" for r in rows)


def steps_logged(log: str) -> list[int]:
    return [int(m) for m in re.findall(r"step (\d+)/\d+ epoch", log)]


def data_folder() -> Path:
    """Six short synthetic videos (three codecs) in a folder the containers' user can read."""
    from datagen.video.synthetic import synthesize_demo

    folder = Path(tempfile.mkdtemp(prefix="ctp-smoke-data-"))
    synthesize_demo(folder / "videos", num_videos=6)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def records(text: str) -> list[dict]:
    """metrics.jsonl's records (it holds no wall-clock values: equal runs give equal records)."""
    return [json.loads(line) for line in text.splitlines()]


def smoke(stack: Stack) -> None:
    t = time.monotonic()
    stack.compose("build", "trainer", capture=False, timeout=3600)
    image = f"{stack.env['CTP_IMAGE']}:{os.environ.get('CUDA_VARIANT', 'cu130')}"
    size = int(
        subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True, check=True
        ).stdout
    )
    passed("build", t, f"{image}, {size / 1e9:.2f} GB")

    t = time.monotonic()
    stack.compose("up", "-d", "datagen", "trainer")
    wait_for("2 healthy replicas", lambda: healthy(stack, "datagen", 2), 300)
    passed("up: redis and 2 replicas healthy, trainer started", t)

    t = time.monotonic()
    wait_for("the trainer's first loss lines", lambda: len(steps_logged(stack.logs("trainer"))) >= 2, 300)
    log = stack.logs("trainer")
    if "samples from datagen replicas" not in log:
        raise SmokeFailure("the trainer generates in-process instead of taking samples from the replicas")
    if "through shared memory" not in log:
        raise SmokeFailure("no replica hands clips to the trainer through shared memory")
    passed("training on replicas: loss lines, clips through shared memory", t, f"step {steps_logged(log)[-1]}")

    t = time.monotonic()
    stack.compose("up", "-d", "--no-deps", "--scale", "datagen=3", "datagen")
    wait_for("3 healthy replicas", lambda: healthy(stack, "datagen", 3), 300)
    wait_for(
        "the trainer to adopt the third replica",
        lambda: len(set(re.findall(r"datagen replica up .*address=([\d.:]+)", stack.logs("trainer")))) >= 3,
        120,
    )
    status = stack.compose("exec", "-T", "datagen", "ctp-datagen", "status")
    if "3 live replica(s)" not in status:
        raise SmokeFailure(f"`docker compose exec datagen ctp-datagen status` says:\n{status}")
    passed(
        "--scale datagen=3: the third replica is adopted while training; `exec datagen ctp-datagen status` lists 3", t
    )

    t = time.monotonic()
    victim = stack.containers("datagen")[0]["Name"]
    subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
    before = steps_logged(stack.logs("trainer"))[-1]
    wait_for(
        "training to go on after a replica was killed",
        lambda: steps_logged(stack.logs("trainer"))[-1] >= before + 8,
        180,
    )
    passed("docker kill of a replica: training goes on", t, f"killed {victim} at step {before}")

    t = time.monotonic()
    trainer = stack.containers("trainer")[0]["Name"]
    if "stopped at step" in stack.logs("trainer") or not stack.containers("trainer"):
        raise SmokeFailure("the run ended before it could be stopped: give it more steps (OVERRIDES)")
    stack.compose("stop", "trainer")
    code, log = stack.inspect(trainer, "{{.State.ExitCode}}"), stack.logs("trainer")
    if code != "75" or "Traceback" in log or "stopped at step" not in log:
        raise SmokeFailure(
            f"docker compose stop trainer: exit {code}, traceback {'Traceback' in log}, log:\n{log[-3000:]}"
        )
    stopped_at = int(re.findall(r"stopped at step (\d+)", log)[-1])
    passed("docker compose stop trainer: checkpoint, exit 75, no traceback", t, f"stopped at step {stopped_at}")

    t = time.monotonic()
    replicas = {r["Name"] for r in stack.containers("datagen")}
    stack.compose("up", "-d", "--no-deps", "trainer")
    wait_for("the resumed run to finish", lambda: stack.inspect(trainer, "{{.State.Status}}") == "exited", 900, 5)
    code, log = stack.inspect(trainer, "{{.State.ExitCode}}"), stack.logs("trainer")
    if code != "0" or f"resumed from /runs/{RUN}/ckpt-{stopped_at:08d}.pt" not in log:
        raise SmokeFailure(f"the resumed run exited {code}:\n{log[-3000:]}")
    if {r["Name"] for r in stack.containers("datagen")} != replicas:
        raise SmokeFailure("up --no-deps trainer changed the replicas")
    passed("up -d --no-deps trainer: resumed, finished (exit 0), replicas untouched", t, f"{len(replicas)} replicas")

    t = time.monotonic()
    fed = records(stack.run("trainer", "cat", f"/runs/{RUN}/metrics.jsonl"))
    stack.compose(
        "run", "--rm", "--no-deps", "-T", "-e", "CTP_REDIS_URL=", "trainer",
        "ctp-train", "pretrain", "--config", "tiny_cpu", "data.videos=[/data]", f"run.out_dir=/runs/{RUN}-inprocess",
        *OVERRIDES.split(),
    )  # fmt: skip
    alone = records(stack.run("trainer", "cat", f"/runs/{RUN}-inprocess/metrics.jsonl"))
    if fed != alone:
        first = next((i for i, (a, b) in enumerate(zip(fed, alone)) if a != b), min(len(fed), len(alone)))
        raise SmokeFailure(
            f"metrics differ from record {first}: replicas {fed[first : first + 2]}, in-process {alone[first : first + 2]}"
        )
    steps = sum("loss" in r for r in fed)
    passed(
        "the replica-fed, stopped and resumed run equals an in-process run record for record",
        t,
        f"{len(fed)} records, {steps} steps",
    )

    t = time.monotonic()
    listing = stack.run(
        "datagen", "sh", "-c",
        'find "$CTP_CACHE_DIR" ! -user "$(id -u)" | sed "s/^/not the app user\'s: /"; '
        'find "$NUMBA_CACHE_DIR" -name "*.nbi" | wc -l',
    )  # fmt: skip
    *foreign, kernels = listing.strip().splitlines() or ["0"]
    if foreign or int(kernels) == 0:
        raise SmokeFailure(f"cache volume: {foreign or 'no numba kernel cached in ' + '$NUMBA_CACHE_DIR'}")
    passed("cache volume: every file the app user's, numba kernels cached", t, f"{kernels} kernel index files")

    t = time.monotonic()
    stack.compose("--profile", "tensorboard", "up", "-d", "tensorboard")
    port = stack.env["TENSORBOARD_PORT"]
    bound = stack.compose("--profile", "tensorboard", "port", "tensorboard", "6006").strip()
    if bound != f"127.0.0.1:{port}":
        raise SmokeFailure(f"TensorBoard is published on {bound}, not 127.0.0.1:{port}")

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as reply:
                return RUN in reply.read().decode()
        except OSError:
            return False

    wait_for("TensorBoard to list the run", answers, 120)
    passed("TensorBoard on 127.0.0.1 lists the run", t, bound)

    t = time.monotonic()
    down(stack)
    left = leftovers(stack)
    if left:
        raise SmokeFailure(f"down -v left {left}")
    passed("--profile tensorboard down -v: no container, network or volume left", t)


def down(stack: Stack) -> None:
    stack.compose("--profile", "tensorboard", "down", "-v", "--remove-orphans", check=False)


def leftovers(stack: Stack) -> list[str]:
    label = f"label=com.docker.compose.project={stack.project}"
    found = []
    for kind in ("container", "network", "volume"):
        listed = subprocess.run(
            ["docker", kind, "ls", *(["--all"] if kind == "container" else []), "--filter", label, "--format", "{{.Names}}" if kind == "container" else "{{.Name}}"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        found += [f"{kind} {name}" for name in listed]
    return found


def main() -> int:
    if shutil.which("docker") is None:
        print("compose-smoke: no docker command here", file=sys.stderr)
        return 2
    data = data_folder()
    stack = Stack(data, free_port())
    started = time.monotonic()
    print(f"compose-smoke: project {stack.project}, image {stack.env['CTP_IMAGE']}, data {data}", flush=True)
    ok = False
    try:
        down(stack)  # what an earlier, interrupted smoke test left
        smoke(stack)
        ok = True
    except Exception as exc:  # whatever failed: report it, then remove the stack
        print(f"FAIL {type(exc).__name__}: {exc}", file=sys.stderr)
        for service in ("datagen", "trainer"):
            print(f"---- docker compose logs {service} (last lines)", file=sys.stderr)
            print(stack.compose("logs", "--no-color", service, check=False)[-4000:], file=sys.stderr)
    finally:
        if os.environ.get("SMOKE_KEEP") != "1":
            down(stack)
            shutil.rmtree(data, ignore_errors=True)
    print(f"compose-smoke: {'PASS' if ok else 'FAIL'} in {time.monotonic() - started:.0f} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
