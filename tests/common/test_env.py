"""The CTP_* environment variables (common/env.py): defined in one place, honoured alike by every command, and
named in the log whenever one decides what a command does."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import env
from datagen.service.registry import Registry, ReplicaRecord
from tests.service_helpers import REPO, RedisServer
from trainer.config import ServiceConfig
from trainer.pretrain.sources import replica_settings


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def test_every_ctp_variable_a_program_reads_is_defined_in_the_env_module():
    names = {v.name for v in env.VARIABLES}
    sources = [*REPO.glob("common/**/*.py"), *REPO.glob("datagen/**/*.py"), *REPO.glob("trainer/**/*.py")]
    sources += (REPO / "deploy" / "bin").iterdir()
    for path in sources:
        if path.name == "env.py":
            continue
        text = path.read_text()
        assert not re.search(r"environ(\.get)?[\[(]\s*[\"']CTP_", text), f"{path}: reads a CTP_* variable itself"
        unknown = set(re.findall(r"\bCTP_[A-Z_]+\b", text)) - names
        assert not unknown, f"{path} names {sorted(unknown)}, which common/env.py does not define"
    assert len(names) == len(env.VARIABLES) and all(v.meaning for v in env.VARIABLES)


def test_a_flag_wins_then_the_variable_named_in_the_log_then_the_default(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="common.env")
    monkeypatch.setenv("CTP_NAMESPACE", "")  # empty: unset
    assert env.NAMESPACE.resolve(None, "x") == "ctp" and not caplog.records
    monkeypatch.setenv("CTP_NAMESPACE", "fleet-b")
    assert env.NAMESPACE.resolve("given", "x") == "given" and not caplog.records
    assert env.NAMESPACE.resolve(None, "keys start with fleet-b:") == "fleet-b"
    assert caplog.messages == ["CTP_NAMESPACE=fleet-b from the environment: keys start with fleet-b:"]
    monkeypatch.setenv("CTP_REDIS_URL", "redis://user:hunter2@cp:6379/0")
    monkeypatch.setenv("CTP_DATAGEN_TOKEN", "s3cret")
    env.REDIS_URL.resolve(None, "a")
    env.DATAGEN_TOKEN.resolve(None, "b")
    assert "hunter2" not in caplog.text and "s3cret" not in caplog.text and "CTP_DATAGEN_TOKEN=(set)" in caplog.text


def test_an_exported_redis_url_turns_pretraining_to_replicas_and_says_so(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("CTP_REDIS_URL", raising=False)
    assert replica_settings(ServiceConfig()) is None and "CTP_REDIS_URL" not in caplog.text
    monkeypatch.setenv("CTP_REDIS_URL", "redis://elsewhere:6379/0")
    monkeypatch.setenv("CTP_NAMESPACE", "exp7")
    settings = replica_settings(ServiceConfig())
    assert settings is not None and (settings["redis_url"], settings["namespace"]) == (
        "redis://elsewhere:6379/0",
        "exp7",
    )
    (line,) = [m for m in caplog.messages if m.startswith("CTP_REDIS_URL=")]
    assert "datagen replicas" in line and "unset CTP_REDIS_URL to generate in-process" in line
    assert any(m.startswith("CTP_NAMESPACE=exp7 from the environment") for m in caplog.messages)


def test_status_reads_the_namespace_from_the_environment_as_the_trainer_does(redis_server: RedisServer):
    """`docker compose exec datagen ctp-datagen status` in a fleet with its own CTP_NAMESPACE lists its replicas."""
    record = ReplicaRecord("r1", "10.0.0.5:50051", "cpu", "h", "c", "v", 3)
    Registry(redis_server.url, "fleet-b").register(record, ttl=60)
    environment = {"CTP_REDIS_URL": redis_server.url, "CTP_NAMESPACE": "fleet-b", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "datagen.cli", "status"], env=environment, capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert "1 live replica(s)" in done.stdout and "10.0.0.5:50051" in done.stdout and "'fleet-b'" in done.stdout
    assert "CTP_NAMESPACE=fleet-b from the environment" in done.stderr
    flag = subprocess.run(
        [sys.executable, "-m", "datagen.cli", "status", "--namespace", "ctp"],
        env=environment,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert "0 live replica(s)" in flag.stdout and "CTP_NAMESPACE" not in flag.stderr, "a flag wins over the variable"
