"""RemoteSource: the trainer's sample source served by datagen replicas (docs/service.md).

The trainer owns the cursor. Each rank streams its own slice of the epoch: the slice is cut into
requests of a few batches; each request goes to the live replica with the least outstanding work that
has room in its window (at most `window` requests in flight per replica: backpressure). A replica that
fails or stalls has its undelivered indices asked of others; whatever arrives twice is dropped. Batches
come out in slice order, each index exactly once, whatever the replicas do, so a remote run sees the
same batches as an in-process one. Replicas come from explicit addresses or from Redis discovery; one
that registers mid-epoch gets work at once, and a Redis outage only stops discovery.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from typing import cast

import grpc
import torch

from datagen import manifest
from datagen.batch import Batch
from datagen.config import GenerationConfig
from datagen.configfile import differences, from_dict, to_dict
from protos import datagen_pb2 as pb

from ..env import redact
from .registry import Discovery, Registry
from .replica_client import GenerateStream, ReplicaClient
from .security import TlsFiles
from .wire import Received

log = logging.getLogger(__name__)

# A replica answering with these is misconfigured for this client: retrying elsewhere would not help.
_FATAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED}
_REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class NoReplicaError(RuntimeError):
    """No replica could serve for `wait_for_replicas` seconds, or every known one refuses this client: a
    deployment problem the command-line tools report as an error line, not a traceback."""


@dataclasses.dataclass(eq=False)
class _Replica:
    client: ReplicaClient
    explicit: bool  # given by address, not discovered: never forgotten
    info: pb.DescribeResponse | None = None
    up: bool = False
    failures: int = 0
    retry_at: float = 0.0
    refused: str = ""  # why this replica can never serve this client (token, config, videos)
    shm_error: str | None = None  # why shared memory is not used with it; None: not decided yet
    flights: set[int] = dataclasses.field(default_factory=set)
    outstanding: int = 0  # samples asked of it and not received yet

    @property
    def name(self) -> str:
        return self.info.replica_id if self.info else self.client.address


@dataclasses.dataclass(eq=False)
class _Flight:
    stream_id: int
    replica: _Replica
    stream: GenerateStream
    indices: list[int]
    remaining: set[int]
    last_activity: float
    cancelled: bool = False
    thread: threading.Thread | None = None


class _Slice:
    """One stream() call's cursor: what is still to be asked, and the reorder buffer."""

    def __init__(self, seed: int, epoch: int, indices: list[int], batch_size: int, request_size: int):
        self.seed, self.epoch, self.batch_size = seed, epoch, batch_size
        self.size = len(indices)
        self.position = {idx: pos for pos, idx in enumerate(indices)}
        if len(self.position) != self.size:
            raise ValueError("the indices of a slice must be distinct")
        self.buffer: dict[int, tuple[Batch, int]] = {}
        self.cursor = 0  # positions before it were yielded
        self._order = itertools.count()
        self._pending = [
            (start, next(self._order), indices[start : start + request_size])
            for start in range(0, self.size, request_size)
        ]
        self.failures: collections.Counter[int] = collections.Counter()

    @property
    def done(self) -> bool:
        return self.cursor == self.size

    def has(self, idx: int) -> bool:
        pos = self.position[idx]
        return pos < self.cursor or pos in self.buffer

    def next_request(self, lookahead: int) -> list[int] | None:
        """The earliest pending indices not yet received, if they lie within `lookahead` of the cursor."""
        while self._pending and self._pending[0][0] < self.cursor + lookahead:
            _, _, indices = heapq.heappop(self._pending)
            wanted = [i for i in indices if not self.has(i)]
            if wanted:
                return wanted
        return None

    def requeue(self, indices: list[int]) -> None:
        wanted = [i for i in indices if not self.has(i)]
        if wanted:
            heapq.heappush(self._pending, (self.position[wanted[0]], next(self._order), wanted))

    def accept(self, idx: int, batch: Batch, row: int) -> str:
        pos = self.position.get(idx)
        if pos is None:
            return "unexpected"
        if pos < self.cursor or pos in self.buffer:
            return "duplicate"
        self.buffer[pos] = (batch, row)
        return "new"

    def ready(self, pin_memory: bool = False) -> Iterator[Batch]:
        """Batches whose every sample has arrived, in slice order (`_assemble`)."""
        while not self.done:
            end = min(self.cursor + self.batch_size, self.size)
            if any(p not in self.buffer for p in range(end - 1, self.cursor - 1, -1)):
                return
            parts = [self.buffer.pop(p) for p in range(self.cursor, end)]
            self.cursor = end
            yield _assemble(parts, pin_memory)


def _assemble(parts: list[tuple[Batch, int]], pin_memory: bool = False) -> Batch:
    """One batch from (batch, row) pairs; a received batch that is exactly the wanted one is passed as is.
    Otherwise the rows' clips are gathered straight into one tensor (pinned with `pin_memory`, as received
    clips are: `BatchDecoder`)."""
    first = parts[0][0]
    if len(parts) == len(first) and all(b is first and r == i for i, (b, r) in enumerate(parts)):
        return first
    clips = torch.empty((len(parts), *first.clips.shape[1:]), dtype=first.clips.dtype, pin_memory=pin_memory)
    pieces, at = [], 0
    for _, run in itertools.groupby(parts, key=lambda p: id(p[0])):  # runs of rows from one received batch
        rows = list(run)
        source, idx = rows[0][0], torch.tensor([r for _, r in rows])
        torch.index_select(source.clips, 0, idx, out=clips[at : at + len(idx)])
        pieces.append((source.boxes[idx], source.visible[idx], source.keys[idx]))
        at += len(idx)
    boxes, visible, keys = (torch.cat(t) for t in zip(*pieces))
    return Batch(clips, boxes, visible, keys)


class RemoteSource:
    """Batches from datagen replicas (explicit addresses and/or Redis discovery): the trainer's remote sample source."""

    def __init__(
        self,
        addresses: Sequence[str] = (),
        redis_url: str | None = None,
        namespace: str = "ctp",
        *,
        config: GenerationConfig | None = None,
        videos_digest: str | None = None,
        videos: Sequence[manifest.VideoInfo] | None = None,
        token: str | None = None,
        tls: TlsFiles = TlsFiles(),
        server_name: str | None = None,
        shared_memory: bool = True,
        window: int = 2,
        request_batches: int = 2,
        lookahead_batches: int = 32,
        stall_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        refresh_interval: float = 2.0,
        wait_for_replicas: float = 120.0,
        max_failures: int = 5,
        pin_memory: bool = False,
    ):
        if not addresses and not redis_url:
            raise ValueError("no datagen replicas: give their addresses (HOST:PORT) or a Redis URL to discover them")
        if window < 1 or request_batches < 1 or lookahead_batches < 1:
            raise ValueError("window, request_batches and lookahead_batches must be at least 1")
        self.config_digest = config.digest() if config else None  # None: adopt the first replica's
        self.videos = videos  # this client's list: a replica serving another is told where they part
        self.videos_digest = manifest.videos_digest(videos) if videos is not None else videos_digest
        self._config = config
        self._token, self._tls, self._server_name = token, tls, server_name
        self.shared_memory = shared_memory
        self.pin_memory = pin_memory  # batches land in pinned memory: a GPU trainer's copy does not block
        self.window, self.request_batches, self.lookahead_batches = window, request_batches, lookahead_batches
        self.stall_timeout, self.connect_timeout = stall_timeout, connect_timeout
        self.wait_for_replicas, self.max_failures = wait_for_replicas, max_failures
        self.stats: collections.Counter[str] = collections.Counter()
        self.delivered: collections.Counter[str] = collections.Counter()  # samples kept, per replica id
        self.problems: collections.deque[pb.SampleProblem] = collections.deque(maxlen=10_000)  # the latest
        self._replicas: dict[str, _Replica] = {}
        for address in addresses:
            self._replicas[address] = _Replica(self._client(address), explicit=True)
        self._stream_ids = itertools.count(1)
        self._slot_bytes = 0  # per-batch clip bytes of the stream in progress: sizes the rings
        self._discovery: Discovery | None = None
        if redis_url:
            self._discovery = Discovery(Registry(redis_url, namespace), refresh_interval)
            self._discovery.start()

    # -- public ------------------------------------------------------------------------------------

    def stream(self, seed: int, epoch: int, indices: Sequence[int], batch_size: int) -> Generator[Batch, None, None]:
        """Batches of batch_size (the last may be smaller), in the order of `indices`, each index once."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        part = _Slice(seed, epoch, [int(i) for i in indices], batch_size, batch_size * self.request_batches)
        events: queue.Queue[tuple[str, _Flight, object]] = queue.Queue()
        flights: dict[int, _Flight] = {}
        self._await_replicas()
        self._slot_bytes = batch_size * self._sample_bytes()
        for r in self._replicas.values():
            if r.shm_error == "":  # the ring may be too small for this batch size: check again
                r.shm_error = None
        waiting_since = time.monotonic()
        try:
            while not part.done or flights:  # the streams' own ends too: a replica sees them complete, not cancelled
                now = time.monotonic()
                self._maintain(now)
                self._dispatch(part, flights, events)
                if any(r.up for r in self._replicas.values()) or flights:
                    waiting_since = now
                elif self._all_refused() or now - waiting_since > self.wait_for_replicas:
                    raise NoReplicaError(
                        f"no live datagen replica for {now - waiting_since:.0f} s "
                        f"({part.size - part.cursor} of {part.size} samples undelivered); {self._why_none()}"
                    )
                try:
                    event = events.get(timeout=0.2)
                    while True:  # everything that arrived, then schedule again
                        self._on_event(*event, part, flights)
                        event = events.get_nowait()
                except queue.Empty:
                    pass
                self._check_stalls(part, flights)
                for batch in part.ready(self.pin_memory):
                    self.stats["yielded"] += len(batch)
                    yield batch
        finally:
            for flight in flights.values():
                flight.cancelled = True
                flight.stream.cancel()
            for flight in flights.values():
                if flight.thread is not None:
                    flight.thread.join(timeout=5)
            for r in self._replicas.values():
                r.flights.clear()
                r.outstanding = 0
                if r.client.ring is not None:
                    r.client.ring.reclaim(live_streams=set())

    def describe(self) -> list[pb.DescribeResponse]:
        """The replicas this source would use now (waits for one, up to `wait_for_replicas`)."""
        self._await_replicas()
        return [r.info for r in self._replicas.values() if r.up and r.info is not None]

    def replaced_videos(self) -> set[str]:
        """The videos the replicas found unreadable and replaced in what they sent (of the latest reports)."""
        return {problem.video for problem in self.problems}

    @property
    def epoch_length(self) -> int:
        """Sample indices per epoch: the number of videos the replicas serve."""
        return int(self.describe()[0].num_videos)

    def close(self) -> None:
        if self._discovery is not None:
            self._discovery.stop()
        for r in self._replicas.values():
            r.client.close()

    def __enter__(self) -> RemoteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- replicas ----------------------------------------------------------------------------------

    def _client(self, address: str) -> ReplicaClient:
        return ReplicaClient(address, self._token, self._tls, self._server_name, self.pin_memory)

    def _await_replicas(self) -> None:
        deadline = time.monotonic() + self.wait_for_replicas
        log.info("waiting up to %.0f s for a datagen replica (%s)", self.wait_for_replicas, self._where())
        while True:
            self._maintain(time.monotonic())
            if any(r.up for r in self._replicas.values()):
                return
            if self._all_refused() or time.monotonic() > deadline:
                raise NoReplicaError(
                    f"no usable datagen replica after {self.wait_for_replicas:.0f} s; {self._why_none()}"
                )
            time.sleep(0.2)

    def _all_refused(self) -> bool:
        """Every replica known refuses this client (token, config, videos), and discovery found no other."""
        listed = self._discovery is None or self._discovery.latest() is not None
        return listed and bool(self._replicas) and all(r.refused for r in self._replicas.values())

    def _why_none(self) -> str:
        known = [f"{r.client.address}: {r.refused or 'unreachable'}" for r in self._replicas.values()]
        return f"known replicas: {known or 'none'} (from {self._where()})"

    def _where(self) -> str:
        if self._discovery is None:
            return "addresses " + ", ".join(self._replicas)
        return f"Redis {redact(self._discovery.registry.url)} namespace {self._discovery.registry.namespace!r}"

    def _maintain(self, now: float) -> None:
        """Adopt newly discovered replicas, forget vanished ones, and (re)connect those due."""
        if self._discovery is not None:
            listed = self._discovery.latest()
            if listed is not None:
                for record in listed:
                    if record.address not in self._replicas:
                        self._replicas[record.address] = _Replica(self._client(record.address), explicit=False)
                present = {record.address for record in listed}
                for address, r in list(self._replicas.items()):
                    if not r.explicit and not r.up and not r.flights and address not in present:
                        r.client.close()
                        del self._replicas[address]
        for r in self._replicas.values():
            if not r.up and not r.refused and not r.flights and now >= r.retry_at:
                self._connect(r)

    def _connect(self, r: _Replica) -> None:
        try:
            info = r.client.describe(self.connect_timeout)
            r.refused = self._incompatibility(info, r.client)
            if r.refused:
                log.error(
                    "datagen replica %s refused this client: %s",
                    r.client.address,
                    r.refused,
                    extra={"replica": r.client.address, "reason": r.refused},
                )
                return
        except grpc.RpcError as exc:
            if exc.code() in _REFUSED:
                r.refused = f"{exc.code().name}: {exc.details()}"
                log.error(
                    "datagen replica %s refused this client: %s",
                    r.client.address,
                    r.refused,
                    extra={"replica": r.client.address, "reason": r.refused},
                )
            else:
                self._down(r, f"{exc.code().name}: {exc.details()}")
            return
        r.client.close_ring()  # a fresh ring: slots a failed replica left claimed are not inherited
        r.shm_error = None
        r.info, r.up = info, True
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
            self._config = from_dict(GenerationConfig, json.loads(info.config_json))
        if self.videos_digest is None:
            self.videos_digest = info.videos_digest
        if info.config_digest != self.config_digest:
            differ = differences(json.loads(info.config_json), to_dict(self._config)) if self._config else []
            return f"serves generation config {info.config_digest}, this client trains with {self.config_digest}" + (
                f"; differing settings (replica -> this client): {', '.join(differ)}" if differ else ""
            )
        if info.videos_digest != self.videos_digest:
            theirs = f"serves video list {info.videos_digest} ({info.num_videos} videos)"
            if self.videos is None:
                return f"{theirs}, this client expects {self.videos_digest}"
            where = manifest.first_difference(self.videos, client.videos(self.connect_timeout))
            return f"{theirs}, this client expects {self.videos_digest} ({len(self.videos)} videos); {where}"
        return ""

    def _down(self, r: _Replica, reason: str) -> None:
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

    def _sample_bytes(self) -> int:
        assert self._config is not None  # set by the config argument or by the first replica
        clip = self._config.clip
        return clip.num_frames * clip.crop_size * clip.crop_size * 3

    # -- flights -----------------------------------------------------------------------------------

    def _dispatch(self, part: _Slice, flights: dict[int, _Flight], events: queue.Queue) -> None:
        """Hand pending indices to the least-loaded replicas that have room in their window."""
        for r in self._replicas.values():
            if r.up and self.shared_memory and r.shm_error is None:
                self._connect_ring(r)
        while True:
            candidates = [r for r in self._replicas.values() if r.up and len(r.flights) < self.window]
            if not candidates:
                return
            indices = part.next_request(self.lookahead_batches * part.batch_size)
            if indices is None:
                return
            r = min(candidates, key=lambda c: (c.outstanding, c.failures))
            request = pb.GenerateRequest(
                config_digest=self.config_digest,
                videos_digest=self.videos_digest,
                seed=part.seed,
                epoch=part.epoch,
                indices=indices,
                batch_size=part.batch_size,
            )
            stream_id = next(self._stream_ids)
            if r.client.ring is not None:
                r.client.ring.reclaim(live_streams=r.flights)
            flight = _Flight(
                stream_id, r, r.client.generate(request, stream_id), indices, set(indices), time.monotonic()
            )
            flight.thread = threading.Thread(
                target=_pump, args=(flight, events), name=f"stream-{stream_id}", daemon=True
            )
            flights[stream_id] = flight
            r.flights.add(stream_id)
            r.outstanding += len(indices)
            self.stats["requests"] += 1
            flight.thread.start()

    def _connect_ring(self, r: _Replica) -> None:
        """Give the replica a ring sized for this stream's batches (slots: two per request in its window)."""
        try:
            r.shm_error = r.client.offer_ring(2 * self.window + 1, self._slot_bytes, self.connect_timeout) or ""
        except grpc.RpcError as exc:
            self._down(r, f"{exc.code().name}: {exc.details()}")
            return
        if r.shm_error:
            log.info(
                "shared memory unusable with replica; inline transport",
                extra={"replica": r.name, "reason": r.shm_error},
            )
        else:  # the transport is known only now: "replica up" comes before any ring
            log.info("datagen replica %s: clips through shared memory", r.client.address, extra={"replica": r.name})

    def _on_event(self, kind: str, flight: _Flight, payload: object, part: _Slice, flights: dict[int, _Flight]) -> None:
        r = flight.replica
        if kind == "batch":
            assert isinstance(payload, Received)
            self._take(flight, payload, part)
            return
        flights.pop(flight.stream_id, None)
        r.flights.discard(flight.stream_id)
        r.outstanding -= len(flight.remaining)
        if flight.cancelled:
            return
        if kind == "end":
            if flight.remaining:
                log.warning(
                    "stream from %s ended early; asking again for %d samples",
                    r.client.address,
                    len(flight.remaining),
                    extra={"replica": r.name, "missing": len(flight.remaining)},
                )
                part.requeue([i for i in flight.indices if i in flight.remaining])
            return
        assert isinstance(payload, Exception)
        code = payload.code() if isinstance(payload, grpc.RpcError) else None
        reason = (
            f"{code.name}: {cast(grpc.RpcError, payload).details()}" if code else f"{type(payload).__name__}: {payload}"
        )
        if code in _FATAL:
            raise RuntimeError(f"datagen replica {r.client.address} refused a request: {reason}")
        if code == grpc.StatusCode.INTERNAL:
            part.failures.update(flight.remaining)
            index, count = part.failures.most_common(1)[0]
            if count >= self.max_failures:
                raise RuntimeError(f"sample {index} of epoch {part.epoch} failed on {count} attempts; last: {reason}")
        self._fail(flight, part, reason)

    def _take(self, flight: _Flight, received: Received, part: _Slice) -> None:
        keys = received.batch.keys
        if not bool((keys[:, 0] == part.seed).all() and (keys[:, 1] == part.epoch).all()):
            self._fail(flight, part, "sent samples of another (seed, epoch)")
            return
        self.stats["shm_batches" if received.shared_memory else "inline_batches"] += 1
        self.stats["clip_bytes"] += received.nbytes
        for problem in received.problems:
            self.stats["replaced_samples"] += 1
            self.problems.append(problem)
        for row, idx in enumerate(keys[:, 2].tolist()):
            self.stats["received"] += 1
            if idx in flight.remaining:
                flight.remaining.discard(idx)
                flight.replica.outstanding -= 1
            outcome = part.accept(idx, received.batch, row)
            if outcome == "new":
                self.delivered[flight.replica.name] += 1
            else:
                self.stats["duplicates_dropped" if outcome == "duplicate" else "unexpected_dropped"] += 1

    def _check_stalls(self, part: _Slice, flights: dict[int, _Flight]) -> None:
        now = time.monotonic()
        for flight in list(flights.values()):
            if not flight.cancelled and now - flight.last_activity > self.stall_timeout:
                self.stats["stalls"] += 1
                self._fail(flight, part, f"stalled: no data for {self.stall_timeout:.0f} s")

    def _fail(self, flight: _Flight, part: _Slice, reason: str) -> None:
        """The flight's replica failed it: ask others for what it did not deliver, and rest that replica."""
        if not flight.cancelled:
            flight.cancelled = True  # its remaining events only update the books
            flight.stream.cancel()
        lost = [i for i in flight.indices if i in flight.remaining]
        if lost:
            self.stats["requeued"] += len(lost)
            part.requeue(lost)
            log.info(
                "asking other replicas again for %d samples of %s (%s)",
                len(lost),
                flight.replica.client.address,
                reason,
                extra={"samples": len(lost), "replica": flight.replica.name, "reason": reason},
            )
        if flight.replica.up:
            self._down(flight.replica, reason)


def _pump(flight: _Flight, events: queue.Queue) -> None:
    """A flight's thread: forwards its decoded batches, then its end or its error, to the scheduler."""
    try:
        for received in flight.stream:
            flight.last_activity = time.monotonic()
            events.put(("batch", flight, received))
        events.put(("end", flight, None))
    except Exception as exc:  # RpcError, WireError, a bad slot: the scheduler decides
        events.put(("error", flight, exc))
