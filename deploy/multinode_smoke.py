"""The trainer Job of deploy/k8s losing nodes, for real, in containers on this machine (`make multinode-smoke`).

Every part runs in its own container of the project's image on a user-defined network, as pods would: Redis,
two datagen replicas (the ctp-datagen Deployment's command, on CPU) and two trainer nodes (the ctp-trainer Job's
ctp-torchrun command with JOB_COMPLETION_INDEX, one rank per node on CPU, tiny_cpu, fed over gRPC: private IPC,
so no shared memory), with one shared /runs. A small Job controller replaces a node container that exits
non-zero, as the Job does under restartPolicy Never, and counts the failures its podFailurePolicy would count
(any exit but 0 and 75; `docker kill` stands for a crash or an OOM kill, which count, not for a lost machine,
which does not).

Each scenario is a run of its own with one fault: kill node 1, SIGTERM node 1 (a drain), SIGTERM node 0 and
kill node 0 (the rendezvous store's host), kill a replica. Each must end with both nodes exiting 0 and the
metrics audit: steps 1..N once each and every epoch's samples trained exactly once. Printed per scenario: the
stall (fault to the next trained step), steps recomputed, containers replaced, failures counted; written as
JSON with --results. Not part of `make test` (minutes, and a Docker engine).

Knobs, from the environment:
  MULTINODE_NAME        prefix of the containers and the network (default ctp-multinode)
  CTP_IMAGE             image name, tagged with CUDA_VARIANT (default ctp-video-multinode; cu130)
  MULTINODE_DOCKERFILE  the Dockerfile to build (default deploy/Dockerfile)
  CTP_BASE_IMAGE, PIP_INDEX_URL, TORCH_INDEX_URL, DALI_INDEX_URL   build arguments, passed on when set
  REDIS_IMAGE           default redis:7.4.2-alpine
  DOCKER                the docker CLI (default docker; one with BuildKit built in, e.g. /usr/bin/docker,
                        where the one on PATH wants a buildx plugin)
  MULTINODE_KEEP=1      leave the containers at the end
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from datagen.video.synthetic import synthesize_demo
from trainer.runtime.metrics_log import read_records
from trainer.runtime.signals import STOPPED_EXIT

REPO = Path(__file__).resolve().parents[1]
DOCKER = os.environ.get("DOCKER", "docker")
NAME = os.environ.get("MULTINODE_NAME", "ctp-multinode")
IMAGE = f"{os.environ.get('CTP_IMAGE', 'ctp-video-multinode')}:{os.environ.get('CUDA_VARIANT', 'cu130')}"
REDIS_IMAGE = os.environ.get("REDIS_IMAGE", "redis:7.4.2-alpine")
VIDEOS, CLIPS, EPOCHS, BATCH = 4, 12, 5, 8  # tiny_cpu: 48 samples, 6 steps per epoch, 30 steps
STEPS_PER_EPOCH = VIDEOS * CLIPS // BATCH
OVERRIDES = [
    f"data.clips_per_video={CLIPS}",
    f"optim.epochs={EPOCHS}",
    "eval.clips=8",
    "eval.every_steps=1000",
    "run.log_every=1",
    "run.checkpoint_every=4",
    "run.progress=false",
    "run.log_indices=true",
]
FAULT_AT_STEP = 9  # one checkpoint (step 8) behind
SCENARIOS = {
    "kill-node-1": "docker kill of node 1, then a new container (a crashed pod replaced)",
    "stop-node-1": "SIGTERM to node 1 (a drain), then a new container",
    "stop-node-0": "SIGTERM to node 0, the rendezvous store's host, then a new container",
    "kill-node-0": "docker kill of node 0, the rendezvous store's host, then a new container",
    "kill-replica": "docker kill of datagen replica 0, restarted 20 s later",
}
# Lines of the containers' logs, after Docker's timestamp: a step rank 0 trained, a resume.
STEP_LINE = re.compile(r"^(\S+) .*INFO trainer\.pretrain\.reporting: step (\d+)/\d+ epoch")
RESUMED = re.compile(r"^(\S+) .*resumed from \S+ at step (\d+)")


class SmokeFailure(Exception):
    pass


def docker(*args: str, check: bool = True, timeout: float = 600) -> str:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise SmokeFailure(f"docker {' '.join(args[:3])} … exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout.strip()


def container_log(name: str) -> str:
    """A container's output, each line with Docker's UTC timestamp."""
    done = subprocess.run(
        [DOCKER, "logs", "--timestamps", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return done.stdout


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of a container's command."""
    return [re.sub(r"\$\(([A-Za-z_]\w*)\)", lambda m: env[m[1]], arg) for arg in argv]


def manifest_command(kind: str, name: str, container: str) -> tuple[list[str], dict[str, str]]:
    """A container's command and plain env values in deploy/k8s, with the ConfigMap's."""
    docs = [
        d
        for f in ("config.yaml", "datagen.yaml", "trainer.yaml")
        for d in yaml.safe_load_all((REPO / "deploy/k8s" / f).read_text())
        if d
    ]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    workload = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    c = next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == container)
    return c["command"], {**config, **{v["name"]: v["value"] for v in c.get("env", []) if "value" in v}}


class Cluster:
    """The network, Redis and the replicas, shared by the scenarios; each scenario a fresh run name."""

    def __init__(self, work: Path) -> None:
        self.work, self.net = work, f"{NAME}-net"
        self.data, self.runs, self.logs = work / "data", work / "runs", work / "logs"
        for folder in (self.data, self.runs, self.logs):
            folder.mkdir(parents=True)
        self.runs.chmod(0o777)  # the image's uid 10001 writes there
        synthesize_demo(self.data, num_videos=VIDEOS, seconds=1.0, size=(96, 64))
        self.env = {"CTP_REDIS_URL": f"redis://{NAME}-redis:6379/0", "CTP_NAMESPACE": NAME, "OMP_NUM_THREADS": "1"}

    def start(self) -> None:
        docker("network", "create", self.net)
        redis = ["redis-server", "--save", "", "--appendonly", "no"]
        docker("run", "-d", "--name", f"{NAME}-redis", "--network", self.net, REDIS_IMAGE, *redis)
        for i in (0, 1):
            self.start_replica(i)
        for i in (0, 1):
            self.wait_replica(i)

    def replica_name(self, i: int) -> str:
        return f"{NAME}-datagen-{i}"

    def start_replica(self, i: int) -> None:
        command, env = manifest_command("Deployment", "ctp-datagen", "datagen")
        name = self.replica_name(i)
        argv = expand(command, {**env, "CTP_VIDEOS": "/data", "POD_IP": name, "TRAINER_CONFIG": "tiny_cpu", **self.env})
        argv[argv.index("--device") + 1] = "cpu"
        docker("rm", "-f", name, check=False)
        docker(
            "run",
            "-d",
            "--name",
            name,
            "--network",
            self.net,
            *self.env_args(),
            "-v",
            f"{self.data}:/data:ro",
            IMAGE,
            *argv,
        )

    def wait_replica(self, i: int, timeout: float = 600) -> None:
        """Until the replica's gRPC health service answers SERVING (its readiness probe)."""
        probe = [DOCKER, "exec", self.replica_name(i), "ctp-ready", "replica", "--addr", "127.0.0.1:50051"]
        deadline = time.monotonic() + timeout
        while subprocess.run([*probe, "--timeout", "5"], capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise SmokeFailure(f"replica {i} not serving:\n{container_log(self.replica_name(i))[-3000:]}")
            time.sleep(2)

    def env_args(self, extra: dict[str, str] | None = None) -> list[str]:
        return [arg for k, v in {**self.env, **(extra or {})}.items() for arg in ("-e", f"{k}={v}")]

    def stop(self) -> None:
        names = docker("ps", "-aq", "--filter", f"name=^{NAME}-", check=False).split()
        if names:
            docker("rm", "-f", *names, check=False)
        docker("network", "rm", self.net, check=False)


class Job:
    """The trainer Job of one run: node containers by index, replaced when they exit non-zero."""

    def __init__(self, cluster: Cluster, run: str) -> None:
        self.cluster, self.run = cluster, run
        self.run_dir = cluster.runs / run
        command, env = manifest_command("Job", "ctp-trainer", "trainer")
        argv = expand(command, {**env, "CTP_RUN_NAME": run, "TRAINER_CONFIG": "tiny_cpu", "CTP_VIDEOS": "/data"})
        argv = [a.replace("--nproc-per-node=gpu", "--nproc-per-node=1") for a in argv]
        self.argv = [re.sub(r"--rdzv-endpoint=[^:]+", f"--rdzv-endpoint={self.node(0)}", a) for a in argv] + OVERRIDES
        self.env = {k: v for k, v in env.items() if k.startswith(("TORCH_", "NCCL_"))}
        self.succeeded: set[int] = set()
        self.exits: list[dict] = []  # every node container that ended: index, exit code, counted, when
        self.saved = 0

    def node(self, i: int) -> str:
        return f"{NAME}-node-{i}"

    def start(self, i: int) -> None:
        env = self.cluster.env_args({**self.env, "JOB_COMPLETION_INDEX": str(i)})
        mounts = ["-v", f"{self.cluster.data}:/data:ro", "-v", f"{self.cluster.runs}:/runs"]
        docker(
            "run",
            "-d",
            "--name",
            self.node(i),
            "--hostname",
            self.node(i),
            "--network",
            self.cluster.net,
            *env,
            *mounts,
            IMAGE,
            *self.argv,
        )

    def save_log(self, i: int) -> Path:
        self.saved += 1
        path = self.cluster.logs / f"{self.run}-node{i}-{self.saved}.log"
        path.write_text(container_log(self.node(i)))
        return path

    def poll(self) -> None:
        """What the Job controller does: an index that exits 0 is done; one that fails gets a new pod."""
        running = [i for i in (0, 1) if i not in self.succeeded]
        states = docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", *map(self.node, running))
        for i, state in zip(running, states.splitlines()):
            status, code = state.split()
            if status != "exited":
                continue
            self.save_log(i)
            docker("rm", self.node(i))
            self.exits.append(
                {"node": i, "exit": int(code), "counted": int(code) not in (0, STOPPED_EXIT), "at": time.time()}
            )
            if int(code) == 0:
                self.succeeded.add(i)
            else:
                self.start(i)

    def steps(self) -> int:
        return max((r["step"] for r in read_records(self.run_dir) if "loss" in r), default=0)

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            self.poll()
            if time.monotonic() > deadline:
                raise SmokeFailure(f"{self.run}: timed out waiting for {what}")
            time.sleep(1)


def audit(run_dir: Path) -> None:
    """The metrics audit of tests/trainer/test_pretrain_distributed.py: each step once, each epoch's samples once."""
    rows = [r for r in read_records(run_dir) if "loss" in r]
    if [r["step"] for r in rows] != list(range(1, EPOCHS * STEPS_PER_EPOCH + 1)):
        raise SmokeFailure(f"{run_dir.name}: steps {[r['step'] for r in rows]}")
    for epoch in range(1, EPOCHS + 1):  # metrics.jsonl counts epochs from 1
        trained = sorted(i for r in rows if r["epoch"] == epoch for rank in r["indices"] for i in rank)
        if trained != list(range(VIDEOS * CLIPS)):
            raise SmokeFailure(f"{run_dir.name}: epoch {epoch} trained {trained}")


def events(logs: list[Path], line: re.Pattern) -> list[tuple[float, int]]:
    """(time, number) of every log line matching `line` (its timestamp, its step), in time order."""
    found = []
    for log in logs:
        for match in filter(None, map(line.match, log.read_text().splitlines())):
            stamp = datetime.datetime.fromisoformat(match[1][:26].rstrip("Z"))
            found.append((stamp.replace(tzinfo=datetime.timezone.utc).timestamp(), int(match[2])))
    return sorted(found)


def costs(logs: list[Path], fault: float) -> dict:
    """What the fault cost: the time without training (fault to the first step after the last resume, or the
    longest wait between two steps when nothing restarted) and the steps trained twice."""
    steps, resumes = events(logs, STEP_LINE), [r for r in events(logs, RESUMED) if r[0] > fault]
    gaps = sorted(b - a for (a, _), (b, _) in itertools.pairwise(steps))
    cost = {"median_step_s": round(gaps[len(gaps) // 2], 2)}
    if resumes:
        resumed_at, resumed_step = resumes[-1]
        first = next(t for t, _ in steps if t > resumed_at)
        trained = max(step for t, step in steps if t < resumed_at)
        return cost | {"stall_s": round(first - fault, 1), "steps_recomputed": max(trained - resumed_step, 0)}
    after = [t for t, _ in steps if t > fault]
    slowest = max(b - a for a, b in itertools.pairwise([fault, *after]))
    return cost | {"stall_s": round(slowest, 1), "steps_recomputed": 0}


def run_scenario(cluster: Cluster, scenario: str) -> dict:
    job = Job(cluster, scenario)
    started = time.time()
    for i in (0, 1):
        job.start(i)
    job.wait(lambda: job.steps() >= 1, 900, "the first step")
    cold_start = time.time() - started
    job.wait(lambda: job.steps() >= FAULT_AT_STEP, 900, f"step {FAULT_AT_STEP}")
    before, fault = job.steps(), time.time()
    if scenario == "kill-replica":
        docker("kill", cluster.replica_name(0))
        time.sleep(20)
        docker("start", cluster.replica_name(0))
    elif scenario.startswith(("kill-node", "stop-node")):
        node = job.node(int(scenario[-1]))
        docker("kill", node) if scenario.startswith("kill") else docker("stop", "-t", "90", node, timeout=200)
    job.wait(lambda: job.succeeded == {0, 1}, 1500, "both nodes to finish")
    audit(job.run_dir)
    logs = sorted(cluster.logs.glob(f"{scenario}-node*.log"))
    text = "".join(p.read_text() for p in logs)
    if "samples from datagen replicas" not in text:
        raise SmokeFailure(f"{scenario}: the ranks were not fed by the replicas")
    return {
        "scenario": scenario,
        "fault": SCENARIOS[scenario],
        "cold_start_s": round(cold_start, 1),  # both nodes started to the first step: what a restart repeats
        "step_at_fault": before,
        **costs(logs, fault),
        "replaced": [e["node"] for e in job.exits if e["exit"] != 0],
        "exits": [(e["node"], e["exit"]) for e in job.exits],
        "counted_failures": sum(e["counted"] for e in job.exits),
        "relaunched_agents": text.count("a new agent joins the next one"),
        "run_s": round(time.time() - started, 1),
        "load_avg_5min": round(os.getloadavg()[1], 1),  # this machine's other work, at the end of the run
        "exactly_once": True,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--results", type=Path, help="also write the results as JSON")
    parser.add_argument("--no-build", action="store_true", help="use the image as it is")
    args = parser.parse_args()
    if not args.no_build:
        build_args = [
            a
            for k in ("CTP_BASE_IMAGE", "PIP_INDEX_URL", "TORCH_INDEX_URL", "DALI_INDEX_URL")
            if k in os.environ
            for a in ("--build-arg", f"{k.removeprefix('CTP_')}={os.environ[k]}")
        ]
        dockerfile = os.environ.get("MULTINODE_DOCKERFILE", str(REPO / "deploy" / "Dockerfile"))
        print(f"building {IMAGE} from {dockerfile}…", flush=True)
        subprocess.run(
            [DOCKER, "build", "-q", "-f", dockerfile, "-t", IMAGE, *build_args, str(REPO)],
            check=True,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )
    results = []
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        cluster = Cluster(Path(tmp))
        cluster.stop()  # what a previous, interrupted smoke test left
        try:
            cluster.start()
            for scenario in args.scenarios:
                print(f"{scenario}: {SCENARIOS[scenario]}…", flush=True)
                result = run_scenario(cluster, scenario)
                results.append(result)
                print(
                    f"PASS {scenario}: "
                    + ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("scenario", "fault")),
                    flush=True,
                )
        except SmokeFailure as exc:
            print(f"FAIL: {exc}", file=sys.stderr)
            for log in sorted(cluster.logs.glob("*.log"))[-2:]:
                print(f"--- {log.name}\n{log.read_text()[-4000:]}", file=sys.stderr)
            return 1
        finally:
            if os.environ.get("MULTINODE_KEEP") != "1":
                cluster.stop()
    if args.results:
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        args.results.write_text(json.dumps({"date": when, "image": IMAGE, "scenarios": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
