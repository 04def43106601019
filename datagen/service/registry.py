"""The Redis control plane: replica registration with a TTL heartbeat, discovery (polled by clients), and the
video quarantine.

Redis never carries samples. Every record expires on its own, so a replica that dies vanishes from
discovery after its TTL, and one that outlived a Redis restart re-registers on its next heartbeat
(it re-publishes the videos it quarantined as well). Keys live under a namespace, so several runs or
tests can share one Redis.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import cast

import redis
from redis.typing import EncodableT, FieldT

from common.env import redact

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReplicaRecord:
    """What a replica publishes about itself on every heartbeat."""

    replica_id: str
    address: str
    device: str
    hostname: str
    config_digest: str
    videos_digest: str
    num_videos: int
    clips_per_second: float = 0.0
    queue_depth: int = 0
    queue_capacity: int = 0
    active_streams: int = 0
    started_at: float = 0.0
    version: str = ""
    decode_routes: str = ""  # JSON: decode class → the backend that decodes it (see `routes`)

    @property
    def routes(self) -> dict[str, str]:
        return json.loads(self.decode_routes) if self.decode_routes else {}

    @classmethod
    def from_redis(cls, fields: dict[str, str]) -> ReplicaRecord:
        kinds = {f.name: str(f.type) for f in dataclasses.fields(cls)}  # annotations are strings here
        known = {k: v for k, v in fields.items() if k in kinds}  # newer replicas may publish more
        return cls(**{k: {"int": int, "float": float}.get(kinds[k], str)(v) for k, v in known.items()})


class Registry:
    """Reads and writes the records of one namespace in one Redis (`redis://[user:password@]host:port/db`)."""

    def __init__(self, url: str, namespace: str = "ctp", timeout: float = 2.0):
        self.url = url
        self.namespace = namespace
        self._redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def _replica_key(self, replica_id: str) -> str:
        return f"{self.namespace}:datagen:replica:{replica_id}"

    @property
    def _members_key(self) -> str:
        return f"{self.namespace}:datagen:replicas"

    @property
    def _quarantine_key(self) -> str:
        return f"{self.namespace}:datagen:quarantine"

    def register(self, record: ReplicaRecord, ttl: float) -> None:
        """Create or refresh the record; it expires `ttl` seconds after the last call."""
        key = self._replica_key(record.replica_id)
        fields: dict[FieldT, EncodableT] = {k: str(v) for k, v in dataclasses.asdict(record).items()}
        pipe = self._redis.pipeline()
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, int(ttl * 1000))
        pipe.sadd(self._members_key, record.replica_id)
        pipe.execute()

    def deregister(self, replica_id: str) -> None:
        pipe = self._redis.pipeline()
        pipe.delete(self._replica_key(replica_id))
        pipe.srem(self._members_key, replica_id)
        pipe.execute()

    def replicas(self) -> list[ReplicaRecord]:
        """Live replicas, sorted by id; members whose record expired are dropped from the set."""
        ids = sorted(cast(set[str], self._redis.smembers(self._members_key)))  # decode_responses: text
        pipe = self._redis.pipeline()
        for replica_id in ids:
            pipe.hgetall(self._replica_key(replica_id))
        live, expired = [], []
        for replica_id, fields in zip(ids, pipe.execute()):
            (live.append(ReplicaRecord.from_redis(fields)) if fields else expired.append(replica_id))
        if expired:
            self._redis.srem(self._members_key, *expired)
        return live

    def quarantine(self, videos: dict[str, str], replica_id: str) -> None:
        """Publish unreadable videos (path → reason); the first report of a video is kept."""
        if not videos:
            return
        pipe = self._redis.pipeline()
        for path, reason in videos.items():
            pipe.hsetnx(
                self._quarantine_key, path, json.dumps({"reason": reason, "replica": replica_id, "at": time.time()})
            )
        pipe.execute()

    def quarantined(self) -> dict[str, dict]:
        """Every quarantined video: path → {reason, replica, at}."""
        reports = cast(dict[str, str], self._redis.hgetall(self._quarantine_key))  # decode_responses: text
        return {path: json.loads(info) for path, info in reports.items()}

    def close(self) -> None:
        self._redis.close()


class Heartbeat:
    """A replica's background thread: register, publish its bad videos, adopt everyone else's.

    Redis being down is logged once per outage and never stops the replica; the next successful beat
    re-registers it and re-publishes everything it knows, so a restarted Redis is repopulated.
    """

    def __init__(
        self,
        registry: Registry,
        snapshot: Callable[[], ReplicaRecord],
        bad_videos: Callable[[], dict[str, str]],
        adopt_quarantine: Callable[[set[str]], object],  # its return value is not used
        interval: float = 2.0,
        ttl: float = 10.0,
    ):
        self.registry = registry
        self._snapshot = snapshot
        self._bad_videos = bad_videos
        self._adopt = adopt_quarantine
        self.interval = interval
        self.ttl = ttl
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._published: set[str] = set()
        self.connected: bool | None = None  # None: not tried yet

    def start(self) -> None:
        self._thread.start()

    def nudge(self) -> None:
        """Beat now rather than at the next interval (a video was just found unreadable)."""
        self._wake.set()

    def beat(self) -> None:
        """One heartbeat; raises redis.RedisError when Redis is unreachable."""
        record = self._snapshot()
        self.registry.register(record, self.ttl)
        bad = self._bad_videos()
        self.registry.quarantine({p: r for p, r in bad.items() if p not in self._published}, record.replica_id)
        self._published |= bad.keys()
        self._adopt(set(self.registry.quarantined()) - bad.keys())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
                if self.connected is not True:
                    log.info(
                        "registered", extra={"redis": redact(self.registry.url), "namespace": self.registry.namespace}
                    )
                self.connected = True
            except redis.RedisError as exc:
                if self.connected is not False:  # once per outage
                    log.warning(
                        "redis unreachable; serving on, will re-register",
                        extra={"redis": redact(self.registry.url), "error": str(exc)},
                    )
                self.connected, self._published = False, set()  # re-publish everything once it is back
            self._wake.wait(self.interval)
            self._wake.clear()

    def stop(self, deregister: bool = True) -> None:
        """Stop beating and, by default, remove the record so clients send no more work here."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        if deregister:
            try:
                self.registry.deregister(self._snapshot().replica_id)
            except redis.RedisError as exc:
                log.warning("could not deregister; the record expires by itself", extra={"error": str(exc)})


class Discovery:
    """A client's view of the fleet: polls the registry in the background and keeps the last successful
    listing, so a Redis outage only stops discovery (the replicas already known keep serving)."""

    def __init__(self, registry: Registry, interval: float):
        self.registry = registry
        self.interval = interval
        self._latest: list[ReplicaRecord] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="discovery", daemon=True)
        self._ok: bool | None = None

    def start(self) -> None:
        self._thread.start()

    def latest(self) -> list[ReplicaRecord] | None:
        with self._lock:
            return self._latest

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self.registry.replicas()
                with self._lock:
                    self._latest = listed
                if self._ok is False:
                    log.info("redis reachable again", extra={"redis": redact(self.registry.url)})
                self._ok = True
            except redis.RedisError as exc:
                if self._ok is not False:
                    log.warning(
                        "redis unreachable; streaming on with known replicas",
                        extra={"redis": redact(self.registry.url), "error": str(exc)},
                    )
                self._ok = False
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.registry.close()
