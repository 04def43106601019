"""The replica's bounded work queue in front of its one generator (one device, two pipelined stages).

Streams submit batches of keys a little ahead of what they send, so generation overlaps transport; the
queue bound is the replica's backpressure: when it is full, streams wait before submitting more. Jobs of
a stream that went away are skipped, not generated. Generation is pipelined: one thread plans and decodes
the next batch while another renders the current one (`datagen.generator.pipelined`). A stream with a
shared-memory ring has each batch's clips copied into a slot here, right after rendering on the same
thread (and CUDA stream), so the copy neither waits on nor blocks a gRPC thread. The samples generated
from a replacement video are the generator's own report, made when it planned them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from datagen.ctp.batch import Batch
from datagen.ctp.rng import SampleKey
from datagen.generator import pipelined
from datagen.verify import Report
from datagen.video.decode.routes import DecodeRoutes
from protos import datagen_pb2 as pb

from ..shm_ring import ShmRing
from .metrics import ReplicaMetrics

log = logging.getLogger(__name__)


class BatchGenerator(Protocol):
    """What the replica needs of datagen.generator.Generator."""

    videos: Sequence  # of VideoInfo
    bad_videos: dict[str, str]
    stats: collections.Counter
    ahead: int  # batches decoded ahead of the render (0: one stage after the other)
    routes: DecodeRoutes  # each decode class's backend: published in Redis and as metrics
    checked: Report | None  # the start-up self-check against the CPU path, where one ran

    def decode_batch(self, keys: Sequence[SampleKey]) -> Any: ...  # plan + decode: the first stage

    def render_batch(self, decoded: Any) -> Batch: ...

    def replaced(self, decoded: Any) -> list[tuple[SampleKey, str]]: ...  # samples made from a replacement

    def mark_bad(self, path: str, reason: str = "") -> bool: ...


class StreamGone(Exception):
    """The client of a stream cancelled or disconnected."""


@dataclasses.dataclass
class Generated:
    batch: Batch
    problems: list[pb.SampleProblem]
    slot: int | None = None  # the ring slot holding the clips; None: send them inline


@dataclasses.dataclass
class _Job:
    keys: list[SampleKey]
    future: concurrent.futures.Future
    ring: ShmRing | None = None
    stream_id: int = 0
    enqueued: float = dataclasses.field(default_factory=time.monotonic)
    abandoned: bool = False


class WorkQueue:
    def __init__(
        self,
        generator: BatchGenerator,
        metrics: ReplicaMetrics,
        capacity: int = 8,
        lookahead: int = 2,
        on_decode_failure: Callable[[], None] = lambda: None,
    ):
        if capacity < 1 or lookahead < 1:
            raise ValueError("the work queue needs a capacity and a per-stream lookahead of at least 1")
        self.generator = generator
        self.metrics = metrics
        self.capacity = capacity
        self.lookahead = lookahead
        self.on_decode_failure = on_decode_failure  # e.g. publish the quarantine at once
        self._queue: queue.Queue[_Job | None] = queue.Queue(capacity)
        self._thread = threading.Thread(target=self._work, name="render", daemon=True)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def run(
        self,
        keys: Sequence[SampleKey],
        batch_size: int,
        active: Callable[[], bool],
        ring: ShmRing | None = None,
        stream_id: int = 0,
    ) -> Iterator[Generated]:
        """Generate `keys` in batches of `batch_size`, in order, their clips put in `ring` (tagged `stream_id`)
        where a slot is free; StreamGone once `active()` turns False (the client reclaims its slots)."""
        chunks = [list(keys[i : i + batch_size]) for i in range(0, len(keys), batch_size)]
        jobs: collections.deque[_Job] = collections.deque()
        submitted = 0
        try:
            while submitted < len(chunks) or jobs:
                while submitted < len(chunks) and len(jobs) < self.lookahead:
                    jobs.append(
                        self._submit(_Job(chunks[submitted], concurrent.futures.Future(), ring, stream_id), active)
                    )
                    submitted += 1
                yield self._result(jobs.popleft(), active)
        finally:
            for job in jobs:
                job.abandoned = True

    def _submit(self, job: _Job, active: Callable[[], bool]) -> _Job:
        while active():
            try:
                self._queue.put(job, timeout=0.25)
                self.metrics.queue_depth.set(self._queue.qsize())
                return job
            except queue.Full:
                continue
        raise StreamGone()

    @staticmethod
    def _result(job: _Job, active: Callable[[], bool]) -> Generated:
        while active():
            try:
                return job.future.result(timeout=0.25)
            except concurrent.futures.TimeoutError:
                continue
        job.abandoned = True
        raise StreamGone()

    def _work(self) -> None:
        for job, decoded in pipelined(self._jobs(), self._decode, self.generator.ahead):
            self._finish(job, decoded)
            job.ring = None  # the pipeline holds the last job a while, not its ring: a dead client's is unmapped

    def _finish(self, job: _Job, decoded: Any) -> None:
        """Render a decoded job, fill its ring slot, and hand the result (or the failure) to its stream."""
        if isinstance(decoded, Exception):
            self._fail(job, decoded)
            return
        if job.abandoned:
            job.future.cancel()
            return
        decoded, started = decoded
        rendering = time.monotonic()
        try:
            batch = self.generator.render_batch(decoded)
            generated = time.monotonic()
            slot = job.ring.put(batch.clips, job.stream_id) if job.ring is not None else None
        except Exception as exc:
            self._fail(job, exc)
            return
        self.metrics.stage_seconds.labels("render").observe(generated - rendering)
        self.metrics.stage_seconds.labels("generate").observe(generated - started)
        if job.ring is not None:
            self.metrics.stage_seconds.labels("shm_copy").observe(time.monotonic() - generated)
        problems = [
            pb.SampleProblem(index=key.index, video=path, reason="unreadable video: replaced")
            for key, path in self.generator.replaced(decoded)
        ]
        self.metrics.replaced.inc(len(problems))
        job.future.set_result(Generated(batch, problems, slot))

    def _jobs(self) -> Iterator[_Job]:
        """The queued jobs whose stream is still there, until stop()."""
        while (job := self._queue.get()) is not None:
            self.metrics.queue_depth.set(self._queue.qsize())
            if job.abandoned:
                job.future.cancel()
                continue
            yield job

    def _decode(self, job: _Job) -> tuple[Any, float]:
        """The first stage of a job, on the decode thread: its plans and frames, and when it started."""
        started = time.monotonic()
        self.metrics.stage_seconds.labels("queue_wait").observe(started - job.enqueued)
        failures = self.generator.stats["decode_failures"]
        try:
            decoded = self.generator.decode_batch(job.keys)
        finally:
            if self.generator.stats["decode_failures"] > failures:
                self.metrics.decode_failures.inc(self.generator.stats["decode_failures"] - failures)
                self.on_decode_failure()
        self.metrics.stage_seconds.labels("decode").observe(time.monotonic() - started)
        return decoded, started

    @staticmethod
    def _fail(job: _Job, exc: Exception) -> None:
        """Hand a job's failure to its stream, which reports INTERNAL."""
        log.error("generation failed", exc_info=exc, extra={"keys": len(job.keys), "first_key": tuple(job.keys[0])})
        job.future.set_exception(exc)
