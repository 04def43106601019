"""One configuration channel per side. The trainer: RemoteSource's tunables are its `service.client` (YAML file or
KEY=VALUE overrides), with RemoteSource's keywords above it. A replica: its runtime settings are the `replica:`
section of the YAML `serve --config` reads, with the `serve` flags above it."""

import pytest

from datagen.ctp.spec import load_generation
from datagen.service.client.remote_source import RemoteSource
from datagen.service.client.settings import RemoteSourceConfig
from datagen.service.server.settings import ReplicaConfig, load_replica_config
from trainer.config import load_train_config
from trainer.pretrain.sources import replica_settings


def test_service_client_reaches_remote_source_from_yaml_and_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "service:\n  addresses: ['127.0.0.1:1']\n  shared_memory: false\n  client:\n    stall_timeout: 7.5\n    window: 3\n"
    )
    cfg = load_train_config(str(config), ["service.client.hedge_factor=3", "service.client.hedge_burst=0.5"])
    settings = replica_settings(cfg.service)
    assert settings is not None and settings["settings"] == RemoteSourceConfig(
        window=3, stall_timeout=7.5, hedge_factor=3.0, hedge_burst=0.5
    )
    with RemoteSource(**settings) as source:
        assert source.settings.stall_timeout == 7.5 and source.settings.window == 3
        assert source.lateness.factor == 3.0 and source.hedge_budget.burst == 0.5
    with RemoteSource(**settings, window=5) as source:  # a keyword wins over the config
        assert source.settings.window == 5 and source.settings.stall_timeout == 7.5


def test_bad_client_settings_are_refused_with_their_names():
    with pytest.raises(ValueError, match="window"):
        load_train_config("tiny_cpu", ["service.client.window=0"])
    with pytest.raises(ValueError, match="stall_tmeout"):
        load_train_config("tiny_cpu", ["service.client.stall_tmeout=3"])


def test_replica_settings_come_from_the_yaml_and_the_flags_given(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "data:\n  generation:\n    clip: {num_frames: 8}\n"
        "replica:\n  queue: 3\n  heartbeat: 1.5\n  limits: {max_batch_size: 16, max_streams: 4}\n"
    )
    flags = dict(queue=5, max_streams=7, port=None, max_batch_size=None, log_level="debug")
    settings = load_replica_config(str(config), flags)
    assert (settings.queue, settings.heartbeat, settings.port, settings.log_level) == (5, 1.5, 50051, "debug")
    assert (settings.limits.max_batch_size, settings.limits.max_streams) == (16, 7)
    # the same file is a training config the trainer accepts, and the generation a replica serves from it
    assert load_train_config(str(config)).replica.limits.max_batch_size == 16
    assert load_generation(str(config)).clip.num_frames == 8
    assert load_replica_config(None, {}) == ReplicaConfig()


def test_a_generation_yaml_may_carry_the_replica_section_and_its_errors_are_named(tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text("clip: {num_frames: 8}\nreplica:\n  ttl: 20\n")
    assert load_generation(str(config)).clip.num_frames == 8
    assert load_replica_config(str(config), {}).ttl == 20
    config.write_text("replica:\n  queu: 3\n")
    with pytest.raises(ValueError, match="queu"):
        load_replica_config(str(config), {})
