"""RemoteSource's tunables have one channel: the trainer's `service.client` (YAML file or KEY=VALUE overrides),
with RemoteSource's keywords above it."""

import pytest

from datagen.service.client.remote_source import RemoteSource
from datagen.service.client.settings import RemoteSourceConfig
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
