"""The replicas one client uses: given by address or discovered in Redis, probed in the background, checked
for compatibility (config, video list, token), rested with exponential backoff after a failure.

`fleet.RemoteSource` schedules its requests over the pool's live members; each `Replica` keeps the requests
(`Flight`s) it has in flight, which the scheduler alone moves.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import cast

import grpc

from common.configfile import differences, from_dict, to_dict
from common.env import redact
from datagen.ctp.spec import GenerationConfig
from datagen.video.container import VideoInfo
from datagen.video.manifest import first_difference
from datagen.video.manifest import videos_digest as videos_digest_of
from protos import datagen_pb2 as pb

from ..registry import Discovery, Registry
from ..security import TlsFiles
from .replica_client import GenerateStream, ReplicaClient

log = logging.getLogger(__name__)

_REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class NoReplicaError(RuntimeError):
    """No replica could serve for `wait_for_replicas` seconds, or every known one refuses this client: a
    deployment problem the command-line tools report as an error line, not a traceback."""


@dataclasses.dataclass(eq=False)
class Replica:
    client: ReplicaClient
    explicit: bool  # given by address, not discovered: never forgotten
    info: pb.DescribeResponse | None = None
    up: bool = False
    failures: int = 0
    retry_at: float = 0.0
    refused: str = ""  # why this replica can never serve this client (token, config, videos)
    shm_error: str | None = None  # why shared memory is not used with it; None: not decided yet
    flights: dict[int, Flight] = dataclasses.field(default_factory=dict)
    outstanding: int = 0  # samples asked of it and not received yet
    probe: grpc.Future | None = None  # a Describe in progress: (re)connecting never blocks the scheduler
    last_activity: float = 0.0  # when it last delivered to this client, or was handed work while idle
    warm: bool = False  # delivered since it came up (its first batch may include its warm-up)

    @property
    def name(self) -> str:
        return self.info.replica_id if self.info else self.client.address


@dataclasses.dataclass(eq=False)
class Flight:
    """One Generate request in flight."""

    stream_id: int
    replica: Replica
    stream: GenerateStream
    indices: list[int]
    remaining: set[int]
    last_activity: float  # when it was sent or last delivered (its pump thread moves it)
    cancelled: bool = False
    thread: threading.Thread | None = None
    hedge: Flight | None = None  # the duplicate asked of another replica because this one was late
    hedge_of: Flight | None = None  # the late flight this one duplicates
    fresh: int = 0  # samples it delivered first
    landed: bool = False  # done with, and counted


class ReplicaPool:
    def __init__(
        self,
        addresses: Sequence[str],
        redis_url: str | None,
        namespace: str,
        *,
        config: GenerationConfig | None,
        videos_digest: str | None,
        videos: Sequence[VideoInfo] | None,
        token: str | None,
        tls: TlsFiles,
        server_name: str | None,
        pin_memory: bool,
        connect_timeout: float,
        refresh_interval: float,
        wait_for_replicas: float,
        stats: collections.Counter[str],
    ):
        self.config_digest = config.digest() if config else None  # None: adopt the first replica's
        self.videos = videos  # this client's list: a replica serving another is told where they part
        self.videos_digest = videos_digest_of(videos) if videos is not None else videos_digest
        self.config = config
        self._token, self._tls, self._server_name = token, tls, server_name
        self.pin_memory = pin_memory
        self.connect_timeout, self.wait_for_replicas = connect_timeout, wait_for_replicas
        self.stats = stats
        self.members: dict[str, Replica] = {address: Replica(self._client(address), True) for address in addresses}
        self._discovery: Discovery | None = None
        if redis_url:
            self._discovery = Discovery(Registry(redis_url, namespace), refresh_interval)
            self._discovery.start()

    def live(self) -> list[Replica]:
        return [r for r in self.members.values() if r.up]

    def wait(self) -> None:
        """Until a replica is up (and the others probed, or half a second): NoReplicaError after
        `wait_for_replicas`, or at once when every one refuses."""
        started = time.monotonic()
        announced = False
        while True:
            now = time.monotonic()
            self.maintain(now)
            if self.live() and (now - started > 0.5 or all(r.probe is None for r in self.members.values())):
                return
            if self.all_refused():
                raise NoReplicaError(f"every datagen replica refuses this client; {self.why_none()}")
            if now - started > self.wait_for_replicas:
                raise NoReplicaError(
                    f"no usable datagen replica after {self.wait_for_replicas:.0f} s; {self.why_none()}"
                )
            if not announced and now - started > 1.0:  # said only when it does wait
                log.info("waiting up to %.0f s for a datagen replica (%s)", self.wait_for_replicas, self.where())
                announced = True
            time.sleep(0.05)

    def limits(self) -> tuple[int, int]:
        """The largest batch and request every live replica serves."""
        infos = [r.info for r in self.live() if r.info is not None]
        return min(i.max_batch_size for i in infos), min(i.max_request_samples for i in infos)

    def all_refused(self) -> bool:
        """Every replica known refuses this client (token, config, videos), and discovery found no other."""
        listed = self._discovery is None or self._discovery.latest() is not None
        return listed and bool(self.members) and all(r.refused for r in self.members.values())

    def why_none(self) -> str:
        known = [f"{r.client.address}: {r.refused or 'unreachable'}" for r in self.members.values()]
        return f"known replicas: {known or 'none'} (from {self.where()})"

    def where(self) -> str:
        if self._discovery is None:
            return "addresses " + ", ".join(self.members)
        return f"Redis {redact(self._discovery.registry.url)} namespace {self._discovery.registry.namespace!r}"

    def listed(self) -> set[str] | None:
        """The addresses registered in Redis at the latest listing; None without discovery or a listing."""
        listed = self._discovery.latest() if self._discovery is not None else None
        return None if listed is None else {record.address for record in listed}

    @staticmethod
    def expired(r: Replica, listed: set[str] | None) -> bool:
        """A discovered replica no longer registered (a live one renews its record: it froze or went away)."""
        return listed is not None and not r.explicit and r.client.address not in listed

    def maintain(self, now: float) -> None:
        """Adopt newly discovered replicas, forget vanished ones, and (re)connect those due, in the background."""
        present = self.listed()
        if present is not None:
            for address in present - self.members.keys():
                self.members[address] = Replica(self._client(address), explicit=False)
            for address, r in list(self.members.items()):
                if not r.explicit and not r.up and not r.flights and r.probe is None and address not in present:
                    r.client.close()
                    del self.members[address]
        for r in self.members.values():
            if r.probe is not None:
                if r.probe.done():
                    self._probed(r)
            elif not r.up and not r.refused and not r.flights and now >= r.retry_at:
                r.probe = r.client.describe_future(self.connect_timeout)

    def down(self, r: Replica, reason: str) -> None:
        """Rest `r`: no work until a probe after 0.5 s, 1 s, 2 s … 30 s finds it up again."""
        r.up = False
        r.failures += 1
        r.retry_at = time.monotonic() + min(30.0, 0.5 * 2 ** min(r.failures, 6))
        self.stats["replica_failures"] += 1
        log.warning(
            "datagen replica %s down (%s); retrying in %.1f s, giving up after %.0f s without any live replica",
            r.client.address,
            reason,
            r.retry_at - time.monotonic(),
            self.wait_for_replicas,
            extra={
                "replica": r.name,
                "address": r.client.address,
                "reason": reason,
                "retry_in_s": round(r.retry_at - time.monotonic(), 1),
            },
        )

    def close(self) -> None:
        if self._discovery is not None:
            self._discovery.stop()
        for r in self.members.values():
            r.client.close()

    def _client(self, address: str) -> ReplicaClient:
        return ReplicaClient(address, self._token, self._tls, self._server_name, self.pin_memory)

    def _probed(self, r: Replica) -> None:
        """A Describe answered: the replica is up, refuses this client, or rests again."""
        probe, r.probe = cast(grpc.Future, r.probe), None
        try:
            info = probe.result()
            r.refused = self._incompatibility(info, r.client)
        except grpc.RpcError as exc:
            if exc.code() not in _REFUSED:
                self.down(r, f"{exc.code().name}: {exc.details()}")
                return
            r.refused = f"{exc.code().name}: {exc.details()}"
        if r.refused:
            log.error(
                "datagen replica %s refused this client: %s",
                r.client.address,
                r.refused,
                extra={"replica": r.client.address, "reason": r.refused},
            )
            return
        r.client.close_ring()  # a fresh ring: slots a failed replica left claimed are not inherited
        r.shm_error = None
        r.info, r.up, r.warm = info, True, False
        log.info(
            "datagen replica up",
            extra={
                "replica": info.replica_id,
                "address": r.client.address,
                "device": info.device,
            },
        )

    def _incompatibility(self, info: pb.DescribeResponse, client: ReplicaClient) -> str:
        """Why this replica cannot serve this client ('' if it can); the first replica sets unset digests."""
        if self.config_digest is None:
            self.config_digest = info.config_digest
            self.config = from_dict(GenerationConfig, json.loads(info.config_json))
        if self.videos_digest is None:
            self.videos_digest = info.videos_digest
        if info.config_digest != self.config_digest:
            differ = differences(json.loads(info.config_json), to_dict(self.config)) if self.config else []
            return f"serves generation config {info.config_digest}, this client trains with {self.config_digest}" + (
                f"; differing settings (replica -> this client): {', '.join(differ)}" if differ else ""
            )
        if info.videos_digest != self.videos_digest:
            theirs = f"serves video list {info.videos_digest} ({info.num_videos} videos)"
            if self.videos is None:
                return f"{theirs}, this client expects {self.videos_digest}"
            where = first_difference(self.videos, client.videos(self.connect_timeout))
            return f"{theirs}, this client expects {self.videos_digest} ({len(self.videos)} videos); {where}"
        return ""
