"""A replica's Prometheus metrics, on their own HTTP port, plus the throughput it advertises in Redis.

Each replica owns its registry (not the process-global one), so several replicas in one process, as in
the benchmark, do not clash. clips/s is `rate(ctp_datagen_clips_total[1m])` in Prometheus; the replica
also keeps a short moving rate of its own for the registry and Describe.
"""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STAGES = ("queue_wait", "generate", "send")


class ReplicaMetrics:
    def __init__(self, window_s: float = 10.0):
        self.registry = CollectorRegistry()
        r = self.registry
        self.clips = Counter("ctp_datagen_clips", "Clips generated and sent", registry=r)
        self.batches = Counter("ctp_datagen_batches", "Batches sent", ["transport"], registry=r)
        self.bytes = Counter("ctp_datagen_clip_bytes", "Clip bytes sent", ["transport"], registry=r)
        self.decode_failures = Counter("ctp_datagen_decode_failures", "Videos found unreadable here", registry=r)
        self.replaced = Counter(
            "ctp_datagen_replaced_samples", "Samples generated from a replacement video", registry=r
        )
        self.requests = Counter("ctp_datagen_requests", "Generate requests by final status", ["code"], registry=r)
        self.refused = Counter("ctp_datagen_refused_calls", "Calls refused for their token", ["reason"], registry=r)
        self.queue_depth = Gauge("ctp_datagen_queue_depth", "Batches waiting in the work queue", registry=r)
        self.active_streams = Gauge("ctp_datagen_active_streams", "Generate streams in flight", registry=r)
        self.decode_route = Gauge(
            "ctp_datagen_decode_route",
            "1 for the backend that decodes each decode class met so far (datagen/video/decode/routes.py)",
            ["decode_class", "backend"],
            registry=r,
        )
        self.self_check_failures = Counter(
            "ctp_datagen_self_check_failures",
            "Checks against the CPU path that differed: decode classes routed to PyAV, renderer comparisons",
            ["check"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "ctp_datagen_stage_seconds",
            "Per-batch latency of each stage",
            ["stage"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self._routes: dict[str, str] = {}
        self._window_s = window_s
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def record_route(self, decode_class: str, backend: str, failed: bool) -> None:
        """A decode class's route (`DecodeRoutes` listener); `failed`: its probe differed from PyAV."""
        with self._lock:
            previous = self._routes.get(decode_class)
            self._routes[decode_class] = backend
        if previous is not None and previous != backend:
            self.decode_route.labels(decode_class, previous).set(0)
        self.decode_route.labels(decode_class, backend).set(1)
        if failed:
            self.self_check_failures.labels("decode").inc()

    def record_clips(self, count: int) -> None:
        self.clips.inc(count)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, count))
            self._trim(now)

    def clips_per_second(self) -> float:
        """Clips over the last `window_s` seconds (0 when idle)."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(c for _, c in self._recent) / self._window_s

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self._window_s:
            self._recent.popleft()

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Expose /metrics on `port` (0: any free port); returns the bound port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server.server_port
