"""RemoteSource: the trainer's sample source served by datagen replicas (docs/service.md).

The trainer owns the cursor. Each rank streams its own slice of the epoch: the slice is cut into
requests of a few batches; each request goes to the live replica with the least outstanding work that
has room in its window (at most `window` requests in flight per replica: backpressure). A request that is
late against the latency the client observes is also asked of another replica (a hedge, `hedging.py`),
within a budget; a replica that fails, stalls, or loses to a hedge has all its undelivered indices asked
of others at once; whatever arrives twice is dropped. Batches come out in slice order, each index exactly
once, whatever the replicas do, so a remote run sees the same batches as an in-process one. Replicas come
from explicit addresses or from Redis discovery; one that registers mid-epoch gets work at once, and a
Redis outage only stops discovery.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import queue
import time
from collections.abc import Generator, Sequence
from typing import Any

from datagen.ctp.batch import Batch
from datagen.ctp.rng import key_problem
from datagen.ctp.spec import GenerationConfig
from datagen.video.container import VideoInfo
from protos import datagen_pb2 as pb

from ..security import TlsFiles
from ..shm_ring import sweep_orphans
from .flights import FlightScheduler, RequestRefused
from .hedging import HedgeBudget, Lateness
from .reorder import Slice
from .replicas import Flight, NoReplicaError, ReplicaPool
from .settings import RemoteSourceConfig

log = logging.getLogger(__name__)

# What went wrong with the replicas, as counted in `stats` (the trainer's metrics and starvation advice).
FAULT_COUNTERS = ("hedges_sent", "hedges_won", "hedges_wasted", "stalls", "replica_failures", "requeued")


class RemoteSource(FlightScheduler):
    """Batches from datagen replicas (explicit addresses and/or Redis discovery): the trainer's remote sample source."""

    def __init__(
        self,
        addresses: Sequence[str] = (),
        redis_url: str | None = None,
        namespace: str = "ctp",
        *,
        config: GenerationConfig | None = None,
        videos_digest: str | None = None,
        videos: Sequence[VideoInfo] | None = None,
        token: str | None = None,
        tls: TlsFiles = TlsFiles(),
        server_name: str | None = None,
        shared_memory: bool = True,
        pin_memory: bool = False,
        settings: RemoteSourceConfig = RemoteSourceConfig(),
        lateness: Lateness | None = None,
        hedge_budget: HedgeBudget | None = None,
        **tuning: Any,
    ):
        """`settings` (the trainer's `service.client`), each field overridable by a keyword (`window=4`)."""
        if not addresses and not redis_url:
            raise ValueError("no datagen replicas: give their addresses (HOST:PORT) or a Redis URL to discover them")
        self.settings = s = dataclasses.replace(settings, **tuning)
        self.shared_memory = shared_memory
        self.pin_memory = pin_memory  # batches land in pinned memory: a GPU trainer's copy does not block
        self.lateness = lateness or Lateness(s.hedge_quantile, s.hedge_factor, s.hedge_floor)
        self.hedge_budget = hedge_budget or HedgeBudget(s.hedge_fraction, s.hedge_burst)
        self.stats: collections.Counter[str] = collections.Counter()
        self.delivered: collections.Counter[str] = collections.Counter()  # samples kept, per replica id
        self.problems: collections.deque[pb.SampleProblem] = collections.deque(maxlen=10_000)  # the latest
        self.pool = ReplicaPool(
            addresses,
            redis_url,
            namespace,
            config=config,
            videos_digest=videos_digest,
            videos=videos,
            token=token,
            tls=tls,
            server_name=server_name,
            pin_memory=pin_memory,
            connect_timeout=s.connect_timeout,
            refresh_interval=s.refresh_interval,
            wait_for_replicas=s.wait_for_replicas,
            stats=self.stats,
        )
        self._stream_ids = itertools.count(1)
        self._slot_bytes = 0  # per-batch clip bytes of the stream in progress: sizes the rings
        if shared_memory:
            sweep_orphans()  # rings of this host's clients that were killed with their resource tracker

    # -- public ------------------------------------------------------------------------------------

    def stream(self, seed: int, epoch: int, indices: Sequence[int], batch_size: int) -> Generator[Batch, None, None]:
        """Batches of batch_size (the last may be smaller), in the order of `indices`, each index once."""
        indices = [int(i) for i in indices]
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        problem = indices and (key_problem((seed, epoch, max(indices))) or key_problem((seed, epoch, min(indices))))
        if problem:
            raise RequestRefused(problem)
        self.check(batch_size)
        request_size = max(1, min(batch_size * self.settings.request_batches, self.pool.limits()[1]))
        part = Slice(seed, epoch, indices, batch_size, request_size)
        events: queue.Queue[tuple[str, Flight, object]] = queue.Queue()
        flights: dict[int, Flight] = {}
        self._slot_bytes = batch_size * self._sample_bytes()
        for r in self.pool.members.values():
            if r.shm_error == "":  # the ring may be too small for this batch size: check again
                r.shm_error = None
        waiting_since = time.monotonic()
        try:
            # the streams' own ends too: a replica sees them complete, not cancelled
            while not part.done or any(not f.cancelled for f in flights.values()):
                now = time.monotonic()
                self.pool.maintain(now)
                self._hedge(part, flights, events, now)
                self._dispatch(part, flights, events, now)
                if any(r.up for r in self.pool.members.values()) or flights:
                    waiting_since = now
                elif self.pool.all_refused() or now - waiting_since > self.settings.wait_for_replicas:
                    raise NoReplicaError(
                        f"no live datagen replica for {now - waiting_since:.0f} s "
                        f"({part.size - part.cursor} of {part.size} samples undelivered); {self.pool.why_none()}"
                    )
                try:
                    event = events.get(timeout=0.2)
                    while True:  # everything that arrived, then schedule again
                        self._on_event(*event, part, flights)
                        event = events.get_nowait()
                except queue.Empty:
                    pass
                self._check_stalls(part, flights)
                self._retire(part, flights)
                for batch in part.ready(self.pin_memory):
                    self.stats["yielded"] += len(batch)
                    yield batch
        finally:
            for flight in flights.values():
                flight.cancelled = True
                flight.stream.cancel()
                self._land(flight)
            for flight in flights.values():
                if flight.thread is not None:
                    flight.thread.join(timeout=5)
            for r in self.pool.members.values():
                r.flights.clear()
                r.outstanding = 0
                if r.client.ring is not None:
                    r.client.ring.reclaim(live_streams=set())

    def check(self, batch_size: int) -> None:
        """Wait for a usable replica (`wait_for_replicas`), then refuse a batch size the replicas would refuse."""
        self.pool.wait()
        largest = self.pool.limits()[0]
        if batch_size > largest:
            raise RequestRefused(
                f"a batch of {batch_size} samples is above the largest the datagen replicas serve ({largest}; "
                "ctp-datagen serve --max-batch-size)"
            )

    def describe(self) -> list[pb.DescribeResponse]:
        """The replicas this source would use now (waits for one, up to `wait_for_replicas`)."""
        self.pool.wait()
        return [r.info for r in self.pool.live() if r.info is not None]

    def replaced_videos(self) -> set[str]:
        """The videos the replicas found unreadable and replaced in what they sent (of the latest reports)."""
        return {problem.video for problem in self.problems}

    @property
    def faults(self) -> dict[str, int]:
        """Hedges sent, won and wasted, stalls, replica failures, samples asked again: since the start."""
        return {name: self.stats[name] for name in FAULT_COUNTERS}

    @property
    def epoch_length(self) -> int:
        """Sample indices per epoch: the number of videos the replicas serve."""
        return int(self.describe()[0].num_videos)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> RemoteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- replicas ----------------------------------------------------------------------------------

    def _sample_bytes(self) -> int:
        assert self.pool.config is not None  # set by the config argument or by the first replica
        clip = self.pool.config.clip
        return clip.num_frames * clip.crop_size * clip.crop_size * 3
