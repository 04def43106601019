"""How a distributed run is set up: the ranks' shares of an epoch, the per-rank batch, and where the
samples come from (config first, then the deployment's environment)."""

from __future__ import annotations

import pytest

from datagen.service.client.settings import RemoteSourceConfig
from datagen.service.security import TlsFiles
from trainer.config import load_train_config
from trainer.pretrain.loop import Trainer
from trainer.pretrain.sources import replica_settings
from trainer.runtime.distributed import Ranks
from trainer.runtime.execution import Execution


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_global_batch_splits_evenly_and_the_ranks_cover_the_rest_of_the_epoch(world_size):
    remaining = [1, 2, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 17, 18, 20]  # a resumed epoch's leftover, 15 indices
    per_rank, total = 2, 2 * world_size
    shares = [Ranks(rank, world_size).split(remaining) for rank in range(world_size)]
    assert sorted(sum(shares, [])) == remaining  # disjoint, and together exactly the rest
    for start in range(0, len(remaining), total):  # step by step, as every rank streams its share in batches
        step = [share[start // world_size : start // world_size + per_rank] for share in shares]
        assert sorted(sum(step, [])) == remaining[start : start + total]  # the global batch of one process
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_the_global_batch_must_split_over_the_ranks():
    cfg = load_train_config("tiny_cpu", ["data.batch_size=10"])
    with pytest.raises(ValueError, match="data.batch_size=10 is not a multiple of the 4 ranks"):
        Trainer(cfg, Execution.resolve("cpu"), epoch_size=20, ranks=Ranks(0, 4))
    assert Trainer(cfg, Execution.resolve("cpu"), epoch_size=20).batch_size == 10


def test_no_service_named_means_in_process_generation(monkeypatch):
    for name in ("CTP_REDIS_URL", "CTP_NAMESPACE", "CTP_DATAGEN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert replica_settings(load_train_config().service) is None
    monkeypatch.setenv("CTP_REDIS_URL", "")  # as Compose passes an unset variable
    assert replica_settings(load_train_config().service) is None


def test_the_deployments_environment_names_the_fleet(monkeypatch):
    monkeypatch.setenv("CTP_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("CTP_NAMESPACE", "run42")
    monkeypatch.setenv("CTP_DATAGEN_TOKEN", "s3cret")
    settings = replica_settings(load_train_config().service)
    assert settings == {
        "addresses": (),
        "redis_url": "redis://redis:6379/0",
        "namespace": "run42",
        "token": "s3cret",
        "tls": TlsFiles(),
        "server_name": None,
        "shared_memory": True,
        "settings": RemoteSourceConfig(),
    }


def test_the_config_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CTP_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("CTP_NAMESPACE", "run42")
    monkeypatch.setenv("CTP_DATAGEN_TOKEN", "from-env")
    token = tmp_path / "token"
    token.write_text("from-file\n")
    cfg = load_train_config(
        None,
        [
            "service.addresses=[10.0.0.5:50051]",
            "service.redis_url=redis://other:6379/1",
            "service.namespace=mine",
            f"service.token_file={token}",
            "service.tls_ca=ca.pem",
            "service.server_name=datagen",
            "service.shared_memory=false",
        ],
    )
    settings = replica_settings(cfg.service)
    assert settings == {
        "addresses": ("10.0.0.5:50051",),
        "redis_url": "redis://other:6379/1",
        "namespace": "mine",
        "token": "from-file",
        "tls": TlsFiles(ca="ca.pem"),
        "server_name": "datagen",
        "shared_memory": False,
        "settings": RemoteSourceConfig(),
    }
    monkeypatch.delenv("CTP_REDIS_URL")
    only_addresses = replica_settings(load_train_config(None, ["service.addresses=[a:1, b:2]"]).service)
    assert only_addresses["addresses"] == ("a:1", "b:2") and only_addresses["redis_url"] is None
