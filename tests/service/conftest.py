"""Fixtures of the service's end-to-end tests: synthetic videos, the tiny generation spec, a redis-server and
a fleet of replica processes, all stopped at the end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service_helpers import RedisServer, ReplicaProcess, make_videos, tiny_config


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    return make_videos(tmp_path_factory.mktemp("videos"), count=4)


@pytest.fixture(scope="module")
def config():
    return tiny_config()


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def fleet(tmp_path: Path):
    """Start replicas with fleet.start(n, ...) (in parallel); all are killed at the end of the test."""
    started: list[ReplicaProcess] = []

    class Fleet:
        def start(self, n: int, videos, **kwargs) -> list[ReplicaProcess]:
            new = [ReplicaProcess(tmp_path / "replicas", videos, wait=False, **kwargs) for _ in range(n)]
            started.extend(new)
            for r in new:
                r.wait_serving()
            return new

    yield Fleet()
    for r in started:
        r.stop()
