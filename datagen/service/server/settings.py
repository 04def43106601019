"""A replica's runtime settings in one typed record: the `replica:` section of the YAML that `ctp-datagen serve
--config` reads (a training preset or YAML, whose `data.generation` it serves, or a generation YAML), each
field overridden by its `serve` flag. No heavy import, so `serve --help` shows the defaults at once."""

from __future__ import annotations

import dataclasses
from typing import Any

from common.configfile import from_dict, read_yaml, resolve_preset

from ..limits import Limits


@dataclasses.dataclass(frozen=True)
class ReplicaConfig:
    host: str = "0.0.0.0"  # interface to listen on
    port: int = 50051  # gRPC port; 0 picks a free one
    advertise: str | None = None  # HOST:PORT clients use; None: this host's IP and the port
    metrics_port: int = 9464  # Prometheus /metrics; 0 picks a free one, -1 disables
    metrics_host: str | None = None  # None: the gRPC host's interface
    queue: int = 8  # work queue capacity in batches (backpressure)
    limits: Limits = Limits()  # what one request may ask (batch size, samples, streams, message bytes)
    heartbeat: float = 2.0  # s between Redis heartbeats
    ttl: float = 10.0  # s a registration outlives its last heartbeat
    drain_timeout: float = 30.0  # s SIGTERM waits for in-flight streams
    log_level: str = "info"  # debug, info, warning or error

    def __post_init__(self) -> None:
        if self.queue < 1 or self.heartbeat <= 0 or self.ttl <= self.heartbeat:
            raise ValueError("replica: queue must be >= 1, heartbeat > 0 and ttl > heartbeat")


def replica_section(config: str | None) -> dict[str, Any]:
    """The `replica:` section of a YAML file or preset (empty without one)."""
    return (read_yaml(resolve_preset(config)).get("replica") or {}) if config else {}


def load_replica_config(config: str | None, flags: dict[str, Any]) -> ReplicaConfig:
    """Defaults ← the YAML's `replica:` section ← the flags given (None: not given). A flag named after a
    field of `limits` sets that field."""
    loaded = from_dict(ReplicaConfig, replica_section(config), "replica.")
    given = {name: value for name, value in flags.items() if value is not None}
    limit_names = {f.name for f in dataclasses.fields(Limits)}
    limits = dataclasses.replace(loaded.limits, **{k: v for k, v in given.items() if k in limit_names})
    return dataclasses.replace(loaded, limits=limits, **{k: v for k, v in given.items() if k not in limit_names})
