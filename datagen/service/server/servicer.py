"""A datagen replica as a gRPC service: validated requests in, batches streamed out.

The replica is stateless (docs/service.md): it generates whatever (seed, epoch, indices) it is asked for, with
the one generation config and video list it was started with, and the client owns the cursor. A
request for another config or video list, or with bad indices or sizes, gets INVALID_ARGUMENT and
changes nothing. Besides DataGen it serves the standard health service and server reflection.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from urllib.parse import urlsplit

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.configfile import to_dict
from datagen.ctp.rng import SampleKey, key_problem
from datagen.ctp.spec import GenerationConfig
from datagen.video.decode.routes import DecodeClass, Route
from datagen.video.manifest import videos_digest
from protos import datagen_pb2 as pb
from protos import datagen_pb2_grpc as pb_grpc

from ..limits import Limits
from ..registry import Heartbeat, Registry, ReplicaRecord
from ..security import TlsFiles, TokenInterceptor
from ..shm_ring import AttachedRings, RingUnreachable, ShmRing
from ..wire import encode_batch
from .metrics import ReplicaMetrics
from .work_queue import BatchGenerator, StreamGone, WorkQueue

log = logging.getLogger(__name__)

PROTOCOL = pb.DESCRIPTOR.package  # "ctp.datagen.v1"
RING_SWEEP_S = 5.0  # how often a replica lets go of dead clients' rings and removes them from /dev/shm
SERVICE = pb.DESCRIPTOR.services_by_name["DataGen"].full_name


class DataGenService(pb_grpc.DataGenServicer):
    def __init__(self, work: WorkQueue, config: GenerationConfig, device: str, limits: Limits = Limits()):
        self.work = work
        self.metrics = work.metrics
        self.config = config
        self.config_digest = config.digest()
        self.videos = videos = work.generator.videos
        self.videos_digest = videos_digest(videos)
        self.num_videos = len(videos)
        self.device = device
        self.limits = limits
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.address = ""  # set once the port is bound
        self.started_at = time.time()
        self.active_streams = 0
        self._streams_lock = threading.Lock()
        self.rings = AttachedRings()

    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> Iterator[pb.GenerateResponse]:
        problem = self._request_problem(request)
        if problem:
            self.metrics.requests.labels("INVALID_ARGUMENT").inc()
            log.warning("rejected request", extra={"reason": problem, "peer": context.peer()})
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        keys = [SampleKey(request.seed, request.epoch, int(i)) for i in request.indices]
        ring = self._ring(request.transport)
        stream_id = request.transport.shared_memory.stream_id
        code = "CANCELLED"  # until the stream completes; a client that goes away leaves it so
        self._count_stream(+1)
        try:
            for generated in self.work.run(keys, request.batch_size, context.is_active, ring, stream_id):
                started = time.monotonic()
                messages = encode_batch(
                    generated.batch, generated.problems, chunk_bytes=self.limits.chunk_bytes, slot=generated.slot
                )  # the worker filled the slot, if one was free
                first = next(messages)
                transport = first.header.WhichOneof("clip_transport")
                self.metrics.batches.labels(transport).inc()  # counted when handed to gRPC
                self.metrics.bytes.labels(transport).inc(generated.batch.clips.numel())
                self.metrics.record_clips(len(generated.batch))
                yield first
                yield from messages
                self.metrics.stage_seconds.labels("send").observe(time.monotonic() - started)
            code = "OK"
        except StreamGone:
            pass
        except Exception as exc:
            code = "INTERNAL"
            context.abort(grpc.StatusCode.INTERNAL, f"generation failed on replica {self.replica_id}: {exc!r}")
        finally:
            self._count_stream(-1)
            self.metrics.requests.labels(code).inc()

    def Describe(self, request: pb.DescribeRequest, context: grpc.ServicerContext) -> pb.DescribeResponse:
        info = pb.DescribeResponse(
            replica_id=self.replica_id,
            address=self.address,
            hostname=socket.gethostname(),
            device=self.device,
            config_digest=self.config_digest,
            config_json=json.dumps(to_dict(self.config), sort_keys=True),
            videos_digest=self.videos_digest,
            num_videos=self.num_videos,
            queue_capacity=self.work.capacity,
            queue_depth=self.work.depth,
            max_batch_size=self.limits.max_batch_size,
            max_request_samples=self.limits.max_request_samples,
            clips_per_second=self.metrics.clips_per_second(),
            versions=versions(),
        )
        page = self.videos[request.videos_from : request.videos_from + min(request.videos_count, 5000)]
        info.videos.extend(pb.VideoEntry(path=v.path, num_frames=v.num_frames) for v in page)
        offer = request.transport.shared_memory
        if offer.name:
            try:
                self.rings.get(offer.name, offer.nonce)
                info.shared_memory = True
            except RingUnreachable as exc:
                info.shared_memory_error = str(exc)
        return info

    def record(self) -> ReplicaRecord:
        """What the heartbeat publishes."""
        return ReplicaRecord(
            replica_id=self.replica_id,
            address=self.address,
            device=self.device,
            hostname=socket.gethostname(),
            config_digest=self.config_digest,
            videos_digest=self.videos_digest,
            num_videos=self.num_videos,
            clips_per_second=round(self.metrics.clips_per_second(), 2),
            queue_depth=self.work.depth,
            queue_capacity=self.work.capacity,
            active_streams=self.active_streams,
            started_at=self.started_at,
            version=PROTOCOL,
            decode_routes=json.dumps(self.work.generator.routes.table(), sort_keys=True),
        )

    def _request_problem(self, r: pb.GenerateRequest) -> str | None:
        """Why a request cannot be served, or None."""
        if r.config_digest != self.config_digest:
            return (
                f"generation config {r.config_digest or '(none)'} is not the one this replica serves "
                f"({self.config_digest}); start replicas with the trainer's config"
            )
        if r.videos_digest != self.videos_digest:
            return (
                f"video list {r.videos_digest or '(none)'} is not the one this replica serves "
                f"({self.videos_digest}, {self.num_videos} videos)"
            )
        if not 1 <= r.batch_size <= self.limits.max_batch_size:
            return (
                f"batch_size {r.batch_size} is outside [1, {self.limits.max_batch_size}], this replica's limit "
                "(ctp-datagen serve --max-batch-size)"
            )
        if not 1 <= len(r.indices) <= self.limits.max_request_samples:
            return (
                f"{len(r.indices)} indices: a request holds 1 to {self.limits.max_request_samples} on this replica "
                "(ctp-datagen serve --max-request-samples)"
            )
        if len(set(r.indices)) != len(r.indices):
            return "indices repeat within the request"
        return key_problem((r.seed, r.epoch, max(r.indices)))

    def _count_stream(self, delta: int) -> None:
        with self._streams_lock:
            self.active_streams += delta
            self.metrics.active_streams.set(self.active_streams)

    def _ring(self, offer: pb.TransportOffer) -> ShmRing | None:
        if not offer.shared_memory.name:
            return None
        try:
            return self.rings.get(offer.shared_memory.name, offer.shared_memory.nonce)
        except RingUnreachable as exc:
            log.info("shared memory unreachable; sending inline", extra={"reason": str(exc)})
            return None


class Replica:
    """One serving replica: gRPC server (+ health, reflection, token, TLS), work queue, metrics, heartbeat."""

    def __init__(
        self,
        generator: BatchGenerator,
        config: GenerationConfig,
        device: str = "cpu",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        advertise: str | None = None,
        token: str | None = None,
        tls: TlsFiles = TlsFiles(),
        limits: Limits = Limits(),
        queue_capacity: int = 8,
        registry: Registry | None = None,
        heartbeat_s: float = 2.0,
        ttl_s: float = 10.0,
        metrics_port: int | None = None,
        metrics_host: str | None = None,
    ):
        self.work = WorkQueue(generator, ReplicaMetrics(), capacity=queue_capacity)
        self.service = DataGenService(self.work, config, device, limits)
        _publish_checks(generator, self.work.metrics)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        refused = self.work.metrics.refused
        interceptors: list[grpc.ServerInterceptor] = (
            [TokenInterceptor(token, lambda why: refused.labels(why.replace(" ", "_")).inc())] if token else []
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=limits.max_streams + 4, thread_name_prefix="rpc"),
            interceptors=interceptors,
            maximum_concurrent_rpcs=limits.max_streams,
            options=[
                ("grpc.so_reuseport", 0),  # a taken port is an error, not a silently shared one
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        pb_grpc.add_DataGenServicer_to_server(self.service, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        bind = f"{host}:{port}"
        try:  # a taken port is bad options, reported as such (the CLI prints ValueErrors without a traceback)
            self.port = (
                self.server.add_secure_port(bind, tls.server_credentials())
                if tls
                else self.server.add_insecure_port(bind)
            )
        except RuntimeError:  # gRPC's "Failed to bind"
            self.port = 0
        if self.port == 0:
            raise ValueError(f"cannot listen on {bind}: the port is taken or the address is not local (--host, --port)")
        self.service.address = advertise or f"{_advertised_host(host)}:{self.port}"
        try:
            self.metrics_host = host if metrics_host is None else metrics_host  # what --host says, by default
            self.metrics_port = (
                self.work.metrics.serve(metrics_port, self.metrics_host) if metrics_port is not None else None
            )
        except OSError as exc:
            self.server.stop(None)
            raise ValueError(
                f"cannot serve metrics on port {metrics_port}: {exc.strerror} "
                "(--metrics-port: another port, 0 for any free one, -1 for none)"
            ) from exc
        self.heartbeat = None
        if registry is not None:
            _warn_if_unreachable(self.service.address, registry.url)
            self.heartbeat = Heartbeat(
                registry,
                snapshot=self.service.record,
                bad_videos=lambda: dict(generator.bad_videos),
                adopt_quarantine=lambda paths: [generator.mark_bad(p, "quarantined by another replica") for p in paths],
                interval=heartbeat_s,
                ttl=ttl_s,
            )
            self.work.on_decode_failure = self.heartbeat.nudge

    @property
    def address(self) -> str:
        return self.service.address

    @property
    def replica_id(self) -> str:
        return self.service.replica_id

    def start(self) -> None:
        self.work.start()
        self.service.rings.sweep_every(RING_SWEEP_S)
        self.server.start()
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.heartbeat:
            self.heartbeat.start()
        log.info(
            "serving",
            extra={
                "address": self.address,
                "replica": self.replica_id,
                "device": self.service.device,
                "metrics_port": self.metrics_port,
                "config_digest": self.service.config_digest,
                "videos": self.service.num_videos,
            },
        )

    def drain(self, grace_s: float = 30.0) -> None:
        """Stop taking work, let in-flight streams finish (up to `grace_s`), then stop."""
        log.info("draining", extra={"active_streams": self.service.active_streams, "grace_s": grace_s})
        self.health.enter_graceful_shutdown()
        if self.heartbeat:
            self.heartbeat.stop(deregister=True)
        self.server.stop(grace_s).wait()
        self.work.stop()
        self.service.rings.stop()
        log.info("stopped", extra={"replica": self.replica_id})


def _publish_checks(generator: BatchGenerator, metrics: ReplicaMetrics) -> None:
    """The start-up self-check's routes and verdicts as metrics, and every route made later as it is made."""

    def publish(cls: DecodeClass, route: Route) -> None:
        metrics.record_route(cls.label, route.name, route.verified and route.backend != "dali")

    for cls, route in generator.routes.items():
        publish(cls, route)
    generator.routes.listeners.append(publish)
    if generator.checked is not None and generator.checked.render is not None and not generator.checked.render.ok:
        metrics.self_check_failures.labels("render").inc()


def versions() -> dict[str, str]:
    found = {"protocol": PROTOCOL, "torch": torch.__version__, "grpc": grpc.__version__}
    for dist in ("ctp-video", "nvidia-dali-cuda130", "nvidia-dali-cuda120", "av"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[dist] = importlib.metadata.version(dist)
    return found


def _warn_if_unreachable(address: str, redis_url: str) -> None:
    """A loopback address registered in a Redis that is not on loopback: clients on other hosts would dial themselves."""
    host = address.rsplit(":", 1)[0].strip("[]")
    redis_host = urlsplit(redis_url).hostname or ""
    if _loopback(host) and not _loopback(redis_host):
        log.warning(
            "advertising %s, a loopback address, in Redis at %s: clients on other hosts cannot reach this replica; "
            "give --advertise HOST:PORT (or --host an interface of this host)",
            address,
            redis_host,
            extra={"address": address, "redis_host": redis_host},
        )


def _loopback(host: str) -> bool:
    """`host` (an address or a name resolved here) is this machine's loopback."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except OSError:
        return False


def _advertised_host(host: str) -> str:
    """Bound to every interface: advertise this host's primary address (a container's or pod's IP)."""
    if host not in ("0.0.0.0", "::", "[::]", ""):
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.gethostname()
