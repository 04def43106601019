"""`ctp-torchrun` (trainer.runtime.launch): who hosts the rendezvous store, the unshared store, exit 75 for a stopped run,
error.json from a crashing rank, and two torchrun nodes on this machine that lose a node and finish anyway.

The two-node tests run each node as Kubernetes runs a pod of the trainer Job: `JOB_COMPLETION_INDEX` set, one
rank per node, the c10d endpoint on node 0. A killed node loses its whole process tree, as a container does.
Each run ends with the audit the distributed tests use: every epoch's samples trained exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.service_helpers import REPO, free_port, make_videos
from trainer.runtime.launch import JOB_INDEX_ENV, SHARED_STORE_ENV, store_host_conf
from trainer.runtime.metrics_log import read_records
from trainer.runtime.signals import STOPPED_EXIT

VENV_BIN = Path(sys.executable).parent
LAUNCH = [sys.executable, "-m", "trainer.runtime.launch"]


def launcher_env(**extra: str) -> dict[str, str]:
    """This environment for a launcher, without what the tests set themselves; ctp-train on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in (SHARED_STORE_ENV, JOB_INDEX_ENV, "TORCHELASTIC_ERROR_FILE")}
    return {
        **env,
        "PYTHONPATH": str(REPO),
        "PATH": f"{VENV_BIN}{os.pathsep}{env['PATH']}",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


# -- who hosts the store -----------------------------------------------------------------------------------


def torchrun_args(*options: str):
    from torch.distributed.run import parse_args

    return parse_args([*options, "--no-python", "ctp-train", "pretrain"])


JOB = ("--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=ctp-trainer-0.ctp-trainer:29400")


def test_pod_0_of_an_indexed_job_hosts_the_store_and_no_other_does():
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.run import config_from_args

    args = torchrun_args(*JOB)
    assert store_host_conf(args, "0") == "is_host=true" and store_host_conf(args, "1") == "is_host=false"
    assert store_host_conf(args, "7") == "is_host=false"
    args.rdzv_conf = store_host_conf(args, "0")
    conf = config_from_args(args)[0].rdzv_configs  # what torchrun hands the c10d backend
    params = RendezvousParameters("c10d", "ctp-trainer-0.ctp-trainer:29400", "run", 2, 2, **conf)
    assert params.get_as_bool("is_host") is True


def test_the_store_host_is_left_alone_where_the_index_does_not_decide():
    job = torchrun_args(*JOB, "--rdzv-conf=join_timeout=1800")
    assert store_host_conf(job, "1") == "join_timeout=1800,is_host=false"
    assert store_host_conf(job, None) == "join_timeout=1800"  # no Indexed Job: torchrun's own rule
    chosen = torchrun_args(*JOB, "--rdzv-conf=is_host=true")
    assert store_host_conf(chosen, "1") == "is_host=true"  # the caller chose
    assert store_host_conf(torchrun_args("--standalone"), "1") == ""
    assert store_host_conf(torchrun_args("--nnodes=2", "--master-addr=n0"), "1") == ""  # static rendezvous


# -- exit status and environment of the workers -----------------------------------------------------------------


def launch_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """ctp-torchrun --standalone running one worker `python -c code`."""
    return subprocess.run(
        [*LAUNCH, "--standalone", "--nproc-per-node=1", "--no-python", sys.executable, "-c", code],
        env=launcher_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_workers_get_an_unshared_store_and_exit_75_only_when_they_all_stopped():
    done = launch_python(f"import os; print(os.environ['{SHARED_STORE_ENV}'])")
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr[-2000:]
    assert launch_python(f"import os; print(os.environ['{SHARED_STORE_ENV}'])", **{SHARED_STORE_ENV: "0"}).stdout == (
        "0\n"
    ), "an explicit choice stands"

    stopped = launch_python(f"raise SystemExit({STOPPED_EXIT})")
    assert stopped.returncode == STOPPED_EXIT == 75
    assert "ctp-torchrun: the workers stopped before the end" in stopped.stderr and "Traceback" not in stopped.stderr
    crashed = launch_python("raise SystemExit(3)")
    assert crashed.returncode == 1 and "exitcode  : 3" in crashed.stderr  # torchrun's own failure summary


# The agent's end after a signal: torchrun leaves the rendezvous keep-alive running (a daemon thread in TCPStore
# calls). Ending the interpreter under it aborts: the same script with sys.exit(75) exits -6 (6 runs of 6 on this
# machine), which is how the two-node test once failed in CI.
KEEP_ALIVE_EXIT = """
import threading, time
from datetime import timedelta
from torch.distributed import TCPStore
from trainer.runtime.launch import exit_now

host = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))
client = TCPStore("127.0.0.1", host.port, is_master=False, timeout=timedelta(seconds=30))
calls = 0

def keep_alive():
    global calls
    while True:
        client.set("last_heartbeat", str(time.time()))
        calls += 1

threading.Thread(target=keep_alive, daemon=True).start()
while calls < 100:
    time.sleep(0.01)
print("stopping after", calls, "store calls", flush=True)
exit_now(75)
"""


@pytest.mark.parametrize("attempt", range(3))
def test_a_stopped_agent_exits_75_while_the_keep_alive_is_in_a_store_call(attempt):
    done = subprocess.run(
        [sys.executable, "-c", KEEP_ALIVE_EXIT], env=launcher_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == STOPPED_EXIT, done.stderr[-2000:]
    assert done.stdout.startswith("stopping after"), "the keep-alive thread made its store calls"


# -- a crashing rank leaves error.json ----------------------------------------------------------------------------

# Injected through sitecustomize, so that the real `ctp-train` entry point runs and crashes in its training loop.
CRASH = """
import os
if os.environ.get("LOCAL_RANK") == "1":
    import trainer.pretrain.loop

    def crash(self, *args, **kwargs):
        raise RuntimeError("injected crash in rank 1's first step")

    trainer.pretrain.loop.Trainer.train_step = crash
"""


def test_a_crashing_rank_leaves_error_json_where_torchrun_logs(demo_dir, tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(CRASH)
    logs, run_dir = tmp_path / "torchrun", tmp_path / "run"
    done = subprocess.run(
        [
            *LAUNCH,
            "--standalone",
            "--nproc-per-node=2",
            f"--log-dir={logs}",
            "--no-python",
            "ctp-train",
            "pretrain",
            "--config",
            "tiny_cpu",
            f"data.videos=[{demo_dir}]",
            f"run.out_dir={run_dir}",
            "eval.clips=2",
            "run.progress=false",
        ],
        env=launcher_env(PYTHONPATH=f"{tmp_path / 'inject'}{os.pathsep}{REPO}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    # docs/operations.md: torchrun/<rdzv id>_<suffix>/attempt_<n>/<local rank>/error.json
    (error_file,) = logs.glob("*/attempt_0/1/error.json")
    message = json.loads(error_file.read_text())["message"]
    assert message["message"] == "RuntimeError: injected crash in rank 1's first step"
    assert "trainer/pretrain/loop.py" in message["extraInfo"]["py_callstack"]


# -- two nodes that lose one ---------------------------------------------------------------------------------------

NODE_RUN = [  # 3 videos × 4 clips = 12 samples per epoch, 4 per step (2 per rank): 3 steps per epoch
    "data.batch_size=4",
    "data.clips_per_video=4",
    "data.generation.clip.num_frames=8",
    "data.generation.clip.crop_size=32",
    "data.generation.clip.short_sides=[32,40]",
    "data.generation.trajectory.anchor_scales=[8,12,16]",
    "eval.clips=2",
    "eval.every_steps=1000",
    "run.log_every=1",
    "run.checkpoint_every=2",
    "run.progress=false",
    "run.log_indices=true",
]
EPOCH, STEPS_PER_EPOCH = 12, 3


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (torchrun starts its workers in sessions of their own)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class Node:
    """One node of a two-node Job: ctp-torchrun with JOB_COMPLETION_INDEX, as a pod of deploy/k8s/trainer.yaml."""

    def __init__(self, index: int, endpoint: str, run_dir: Path, videos: Path, epochs: int, max_restarts: int):
        self.index, self.run_dir = index, run_dir
        self.argv = [
            *LAUNCH,
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_dir.name}",
            f"--max-restarts={max_restarts}",
            "--no-python",
            "ctp-train",
            "pretrain",
            "--config",
            "tiny_cpu",
            "--resume",
            "auto",
            f"data.videos=[{videos}]",
            f"run.out_dir={run_dir}",
            f"optim.epochs={epochs}",
            *NODE_RUN,
        ]
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.starts += 1
        self.log = self.run_dir / f"node{self.index}-{self.starts}.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                self.argv,
                env=launcher_env(**{JOB_INDEX_ENV: str(self.index)}),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
            )

    def kill(self) -> None:
        """SIGKILL to the whole node, as `docker kill` or a lost machine: the agent and its workers."""
        workers = children(self.process.pid)
        for pid in [self.process.pid, *workers]:
            os.kill(pid, signal.SIGKILL)
        self.process.wait(60)
        for pid in workers:
            while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
                time.sleep(0.1)

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"node {self.index} did not finish:\n{self.log.read_text()[-4000:]}")

    def output(self) -> str:
        return "".join(log.read_text() for log in sorted(self.run_dir.glob(f"node{self.index}-*.log")))


def trained_steps(run_dir: Path) -> int:
    return max((r["step"] for r in read_records(run_dir) if "loss" in r), default=0)


def wait_for(predicate: Callable[[], bool], nodes: list[Node], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for node in nodes:
            assert node.process.poll() is None, f"node {node.index} exited:\n{node.output()[-4000:]}"
        assert time.monotonic() < deadline, "timed out:\n" + "\n".join(n.output()[-3000:] for n in nodes)
        time.sleep(0.2)


def assert_every_epoch_trained_once(run_dir: Path, epochs: int) -> None:
    """The metrics audit: steps 1..N once each, and each epoch's samples, over both ranks, exactly once."""
    rows = [r for r in read_records(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, epochs * STEPS_PER_EPOCH + 1))
    for epoch in range(1, epochs + 1):  # metrics.jsonl counts epochs from 1
        trained = [i for r in rows if r["epoch"] == epoch for rank in r["indices"] for i in rank]
        assert sorted(trained) == list(range(EPOCH)), f"epoch {epoch}"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    make_videos(folder, count=3)
    return folder


@pytest.fixture
def job(videos: Path, tmp_path: Path) -> Iterator[Callable[..., list[Node]]]:
    started: list[Node] = []

    def start(epochs: int, max_restarts: int) -> list[Node]:
        endpoint = f"127.0.0.1:{free_port()}"
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        started.extend(Node(i, endpoint, run_dir, videos, epochs, max_restarts) for i in (0, 1))
        return started

    yield start
    for node in started:
        if node.process.poll() is None:
            node.kill()


def test_sigterm_to_one_node_stops_every_node_with_75_not_0(job):
    """A drain of node 1 with no restarts left: node 0, whose own rank stopped with it, must not exit 0 (an
    Indexed Job would count its index as succeeded, and the run could never finish)."""
    nodes = job(epochs=20, max_restarts=0)
    run_dir = nodes[0].run_dir
    wait_for(lambda: trained_steps(run_dir) >= 1, nodes)
    nodes[1].process.send_signal(signal.SIGTERM)
    assert [node.wait() for node in nodes] == [STOPPED_EXIT, STOPPED_EXIT], nodes[0].output()[-3000:]
    assert "stopped by SIGTERM" in nodes[1].output() and "workers stopped before the end" in nodes[0].output()
    assert "Traceback" not in nodes[0].output() + nodes[1].output()


@pytest.mark.slow
def test_two_nodes_lose_a_node_three_ways_and_train_every_epoch_once(job):
    """Node 1 killed and restarted (the shared-store deadlock of torch >= 2.5), node 1 drained (SIGTERM) and
    restarted, node 0 (the store's host) killed and restarted: the run finishes with exit 0 on both nodes."""
    epochs = 5
    nodes = job(epochs=epochs, max_restarts=3)
    node0, node1 = nodes
    run_dir = node0.run_dir

    def after(steps: int) -> None:
        wait_for(lambda: trained_steps(run_dir) >= steps, nodes)

    after(2)
    node1.kill()
    node1.start()  # what the Job controller does: a new pod for index 1
    after(5)
    node1.process.send_signal(signal.SIGTERM)
    assert node1.wait() == STOPPED_EXIT, node1.output()[-4000:]
    node1.start()
    after(9)
    node0.kill()  # node 1's agent loses the store: a new agent waits for the next one, without exiting
    node0.start()
    assert [node.wait() for node in nodes] == [0, 0], node1.output()[-4000:]
    assert node1.starts == 3 and node0.starts == 2
    assert "a new agent joins the next one" in node1.output()
    assert_every_epoch_trained_once(run_dir, epochs)
