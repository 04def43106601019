"""How a RemoteSource schedules its requests: the client's tunables in one typed record, which the trainer's YAML
config holds (`service.client.*`, overrides included) and RemoteSource's keyword arguments override."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RemoteSourceConfig:
    window: int = 2  # requests in flight per replica: backpressure
    request_batches: int = 2  # batches per request
    lookahead_batches: int = 32  # how far past the cursor indices may be asked
    stall_timeout: float = 60.0  # s without data before a flight fails and its indices are asked elsewhere
    connect_timeout: float = 5.0  # s to connect to a replica and describe it
    refresh_interval: float = 2.0  # s between Redis discovery polls
    wait_for_replicas: float = 120.0  # s to wait for a usable replica before giving up
    max_failures: int = 5  # attempts of one sample (INTERNAL errors) before the epoch fails
    # Hedged requests (hedging.py): late = silent for hedge_factor × the hedge_quantile of recent silences and
    # at least hedge_floor s; at most hedge_burst + hedge_fraction × requests hedges are sent.
    hedge_quantile: float = 0.95
    hedge_factor: float = 2.0
    hedge_floor: float = 2.0
    hedge_fraction: float = 0.05
    hedge_burst: float = 2.0

    def __post_init__(self) -> None:
        if self.window < 1 or self.request_batches < 1 or self.lookahead_batches < 1:
            raise ValueError("window, request_batches and lookahead_batches must be at least 1")
