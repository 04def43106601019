"""The scheduling of one stream's Generate requests (flights) over the replicas, RemoteSource's engine: each
flight judged (silent how long, late or not, what it still owes), pumped by a thread of its own, dispatched,
hedged, taken (each index once), failed and asked again. `remote_source.py` is the façade around it."""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from typing import cast

import grpc

from datagen.service.wire import Received
from protos import datagen_pb2 as pb

from .hedging import HedgeBudget, Lateness
from .reorder import Slice
from .replicas import Flight, Replica, ReplicaPool
from .settings import RemoteSourceConfig

log = logging.getLogger(__name__)

# A replica answering with these is misconfigured for this client: retrying elsewhere would not help.
_FATAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED}


class RequestRefused(ValueError):
    """A request this client's settings make is one the replicas refuse (INVALID_ARGUMENT: a batch above their
    limit, a key out of range): asking again or elsewhere would not help. Its message names the setting."""


def silent(flight: Flight, now: float) -> float:
    """Seconds since the flight, or its replica for another flight of this client, last delivered (or since it was
    sent): a replica busy with this client's other requests is not late with this one."""
    return now - max(flight.last_activity, flight.replica.last_activity)


def late(flight: Flight, now: float, threshold: float | None) -> bool:
    """The flight still owes samples and has been silent past the threshold. Not before its replica's first batch
    since it came up, which holds its warm-up (decoders started, kernels compiled): the stall timeout judges that."""
    return (
        threshold is not None
        and flight.replica.warm
        and bool(flight.remaining)
        and not flight.cancelled
        and silent(flight, now) > threshold
    )


def owed(flight: Flight, part: Slice) -> list[int]:
    """The flight's indices not delivered yet, by it or anyone else, in request order."""
    return [i for i in flight.indices if i in flight.remaining and not part.has(i)]


def pump(flight: Flight, events: queue.Queue) -> None:
    """A flight's thread: forwards its decoded batches, each with the silence of its replica before it (None for a
    replica's first batch since it came up: warm-up, not latency), then its end or its error."""
    r = flight.replica
    try:
        for received in flight.stream:
            now = time.monotonic()
            silence = now - r.last_activity if r.warm else None
            r.warm, r.last_activity, flight.last_activity = True, now, now
            events.put(("batch", flight, (received, silence)))
        events.put(("end", flight, None))
    except Exception as exc:  # RpcError, WireError, a bad slot: the scheduler decides
        events.put(("error", flight, exc))


class FlightScheduler:
    """RemoteSource's scheduling of one stream's flights: dispatch to the least-loaded replica with room, hedge
    the late, take what arrives (each index once), fail the stalled and the broken, ask their indices again."""

    settings: RemoteSourceConfig
    pool: ReplicaPool
    stats: collections.Counter[str]
    delivered: collections.Counter[str]
    problems: collections.deque[pb.SampleProblem]
    lateness: Lateness
    hedge_budget: HedgeBudget
    shared_memory: bool
    _stream_ids: itertools.count
    _slot_bytes: int

    def _lagging(self, r: Replica, now: float) -> bool:
        """A flight of `r` is late: it gets no more work until it answers."""
        threshold = self.lateness.threshold()
        return any(late(f, now, threshold) for f in r.flights.values())

    def _dispatch(self, part: Slice, flights: dict[int, Flight], events: queue.Queue, now: float) -> None:
        """Hand pending indices to the least-loaded replicas that have room in their window."""
        for r in self.pool.members.values():
            if r.up and self.shared_memory and r.shm_error is None:
                self._connect_ring(r)
        while True:
            candidates = [
                r
                for r in self.pool.members.values()
                if r.up and len(r.flights) < self.settings.window and not self._lagging(r, now)
            ]
            if not candidates:
                return
            indices = part.next_request(self.settings.lookahead_batches * part.batch_size)
            if indices is None:
                return
            self._send(part, min(candidates, key=lambda c: (c.outstanding, c.failures)), indices, flights, events)
            self.hedge_budget.earn()

    def _send(
        self, part: Slice, r: Replica, indices: list[int], flights: dict[int, Flight], events: queue.Queue
    ) -> Flight:
        request = pb.GenerateRequest(
            config_digest=self.pool.config_digest,
            videos_digest=self.pool.videos_digest,
            seed=part.seed,
            epoch=part.epoch,
            indices=indices,
            batch_size=part.batch_size,
        )
        stream_id = next(self._stream_ids)
        if r.client.ring is not None:
            r.client.ring.reclaim(live_streams=set(r.flights))
        now = time.monotonic()
        if not any(f.remaining for f in r.flights.values()):
            r.last_activity = now  # idle until now: its silence starts with this request
        flight = Flight(stream_id, r, r.client.generate(request, stream_id), indices, set(indices), now)
        flight.thread = threading.Thread(target=pump, args=(flight, events), name=f"stream-{stream_id}", daemon=True)
        flights[stream_id] = r.flights[stream_id] = flight
        r.outstanding += len(indices)
        self.stats["requests"] += 1
        flight.thread.start()
        return flight

    def _hedge(self, part: Slice, flights: dict[int, Flight], events: queue.Queue, now: float) -> None:
        """Ask another replica for what late flights still owe, the one the consumer needs first first."""
        threshold = self.lateness.threshold()
        if threshold is None:
            return
        overdue = [f for f in flights.values() if f.hedge is None and late(f, now, threshold)]
        for flight in sorted(overdue, key=lambda f: min((part.position[i] for i in f.remaining), default=part.size)):
            wanted = owed(flight, part)
            if not wanted:
                continue
            busy = {flight.replica} | ({flight.hedge_of.replica} if flight.hedge_of else set())
            targets = [
                r
                for r in self.pool.members.values()
                if r.up and r not in busy and len(r.flights) <= self.settings.window and not self._lagging(r, now)
            ]
            if not targets or not self.hedge_budget.spend():
                continue
            target = min(targets, key=lambda c: (c.outstanding, c.failures))
            flight.hedge = self._send(part, target, wanted, flights, events)
            flight.hedge.hedge_of = flight
            self.stats["hedges_sent"] += 1
            log.info(
                "hedging: %d samples late on %s (silent %.1f s, late after %.1f s) also asked of %s",
                len(wanted),
                flight.replica.client.address,
                silent(flight, now),
                threshold,
                target.client.address,
                extra={"samples": len(wanted), "replica": flight.replica.name, "hedge_replica": target.name},
            )

    def _retire(self, part: Slice, flights: dict[int, Flight]) -> None:
        """Cancel flights whose every undelivered index came from elsewhere; a replica beaten by a hedge rests."""
        for flight in list(flights.values()):
            if flight.cancelled or not flight.remaining or owed(flight, part):
                continue
            flight.cancelled = True
            flight.stream.cancel()
            if flight.hedge is not None:  # beaten by its hedge: the replica froze or lags far behind
                self._fail(flight, part, f"late: {flight.hedge.replica.client.address} answered for it first")

    def _land(self, flight: Flight | None) -> None:
        """A flight is done with: a hedge counts as won if it delivered any sample first, else as wasted."""
        if flight is not None and flight.hedge_of is not None and not flight.landed:
            flight.landed = True
            self.stats["hedges_won" if flight.fresh else "hedges_wasted"] += 1

    def _connect_ring(self, r: Replica) -> None:
        """Give the replica a ring sized for this stream's batches (slots: two per request in its window)."""
        try:
            r.shm_error = (
                r.client.offer_ring(2 * self.settings.window + 1, self._slot_bytes, self.settings.connect_timeout) or ""
            )
        except grpc.RpcError as exc:
            self.pool.down(r, f"{exc.code().name}: {exc.details()}")
            return
        if r.shm_error:
            log.info(
                "shared memory unusable with replica; inline transport",
                extra={"replica": r.name, "reason": r.shm_error},
            )
        else:  # the transport is known only now: "replica up" comes before any ring
            log.info("datagen replica %s: clips through shared memory", r.client.address, extra={"replica": r.name})

    def _on_event(self, kind: str, flight: Flight, payload: object, part: Slice, flights: dict[int, Flight]) -> None:
        r = flight.replica
        if kind == "batch":
            received, silence = cast(tuple[Received, float | None], payload)
            if silence is not None:
                self.lateness.observe(silence)
            self._take(flight, received, part)
            return
        self._land(flights.pop(flight.stream_id, None))
        r.flights.pop(flight.stream_id, None)
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
            raise RequestRefused(f"datagen replica {r.client.address} refused the request: {reason}")
        if code == grpc.StatusCode.INTERNAL:  # this request's samples failed there: the replica may serve others
            part.failures.update(flight.remaining)
            index, count = part.failures.most_common(1)[0]
            if count >= self.settings.max_failures:
                raise RuntimeError(f"sample {index} of epoch {part.epoch} failed on {count} attempts; last: {reason}")
            self._fail(flight, part, reason, whole_replica=False)
            return
        self._fail(flight, part, reason)

    def _take(self, flight: Flight, received: Received, part: Slice) -> None:
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
                flight.fresh += 1
            else:
                self.stats["duplicates_dropped" if outcome == "duplicate" else "unexpected_dropped"] += 1

    def _check_stalls(self, part: Slice, flights: dict[int, Flight]) -> None:
        """Fail flights silent for `stall_timeout`, and those of a late replica whose Redis registration expired."""
        now = time.monotonic()
        listed = self.pool.listed()
        patience = self.lateness.threshold() or self.settings.stall_timeout
        for flight in list(flights.values()):
            if flight.cancelled:
                continue
            if not flight.remaining:  # all delivered; its end should follow at once, unless the replica froze
                if now - flight.last_activity > patience:
                    flight.cancelled = True
                    flight.stream.cancel()
                continue
            if now - flight.last_activity > self.settings.stall_timeout:
                self.stats["stalls"] += 1
                self._fail(flight, part, f"stalled: no data for {self.settings.stall_timeout:.0f} s")
            elif silent(flight, now) > patience and self.pool.expired(flight.replica, listed):
                self._fail(flight, part, f"silent for {silent(flight, now):.1f} s and its Redis registration expired")

    def _fail(self, flight: Flight, part: Slice, reason: str, whole_replica: bool = True) -> None:
        """The flight's replica failed it: ask others at once for what it, and with `whole_replica` every other
        flight of that replica, did not deliver (unless a hedge elsewhere still fetches it), and rest the replica."""
        r = flight.replica
        victims = [flight, *(f for f in r.flights.values() if f is not flight)] if whole_replica else [flight]
        lost = 0
        for f in victims:
            if f.cancelled and f is not flight:
                continue
            if not f.cancelled:
                f.cancelled = True  # its remaining events only update the books
                f.stream.cancel()
            partner = f.hedge or f.hedge_of
            covered = partner.remaining if partner is not None and not partner.cancelled else set()
            lost_here = [i for i in owed(f, part) if i not in covered]
            if lost_here:
                lost += len(lost_here)
                part.requeue(lost_here)
        if lost:
            self.stats["requeued"] += lost
            log.info(
                "asking other replicas again for %d samples of %s (%s)",
                lost,
                r.client.address,
                reason,
                extra={"samples": lost, "replica": r.name, "reason": reason},
            )
        if r.up:
            self.pool.down(r, reason)
