"""`ctp-datagen serve | status | pull`: run a replica, inspect the fleet, load-test it end to end."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import signal
import time
from typing import TYPE_CHECKING

from common import jsonlog
from common.env import NAMESPACE, REDIS_URL, redact
from common.tables import format_table

if TYPE_CHECKING:
    from .security import TlsFiles
    from .server.servicer import Replica
    from .server.settings import ReplicaConfig

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0  # pull's progress lines


def _redis_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        metavar="URL",
        help=f"redis://[user:password@]host:port/db of the control plane (default ${REDIS_URL.name})",
    )
    parser.add_argument(
        "--namespace",
        help=f"key prefix: one per run or fleet sharing a Redis (default ${NAMESPACE.name}, else {NAMESPACE.default})",
    )


def _control_plane(args: argparse.Namespace, consequence: str) -> None:
    """--redis and --namespace as given, else from the environment (each logged when it decides)."""
    args.redis = REDIS_URL.resolve(args.redis, consequence)
    args.namespace = NAMESPACE.resolve(args.namespace, f"the fleet's keys in Redis start with {NAMESPACE.value()}:")


def _security_args(parser: argparse.ArgumentParser, side: str) -> None:
    parser.add_argument(
        "--token-file", metavar="FILE", help="shared token (default $CTP_DATAGEN_TOKEN; none: no check)"
    )
    parser.add_argument("--tls-cert", metavar="PEM", help=f"{side} certificate (TLS)")
    parser.add_argument("--tls-key", metavar="PEM", help=f"{side} private key (TLS)")
    ca_help = (
        "CA that client certificates must chain to (mutual TLS)"
        if side == "server"
        else "CA that verifies replicas (TLS)"
    )
    parser.add_argument("--tls-ca", metavar="PEM", help=ca_help)


def _tls(args: argparse.Namespace) -> TlsFiles:
    from .security import TlsFiles

    return TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)


# -- serve -------------------------------------------------------------------------------------------


def _serve_parser(subparsers: argparse._SubParsersAction, help_text: str) -> None:
    from ..options import add_generation_args
    from .server.settings import ReplicaConfig

    p = subparsers.add_parser(
        "serve",
        help=help_text,
        description="Settings: the defaults, then the `replica:` section of the --config YAML (a training preset or "
        "YAML, or a generation YAML), then these flags.",
    )
    add_generation_args(p, videos="positional")
    defaults, limits = ReplicaConfig(), ReplicaConfig().limits

    def setting(flag: str, kind: type, default: object, text: str, **extra) -> None:
        p.add_argument(flag, type=kind, help=f"{text} (default {default})", **extra)

    setting("--host", str, defaults.host, "interface to listen on")
    setting(
        "--port",
        int,
        defaults.port,
        "gRPC port; 0 picks a free one, printed at start (a further replica on this host: --port 0 --metrics-port 0)",
    )
    setting("--advertise", str, "this host's IP and the port", "address clients use", metavar="HOST:PORT")
    setting(
        "--metrics-port",
        int,
        defaults.metrics_port,
        "Prometheus /metrics port; 0 picks a free one, printed at start; -1 disables",
    )
    setting("--metrics-host", str, "the --host one", "interface of the metrics endpoint", metavar="HOST")
    setting("--queue", int, defaults.queue, "work queue capacity in batches (backpressure)")
    setting("--max-batch-size", int, limits.max_batch_size, "largest batch a client may ask for")
    setting("--max-request-samples", int, limits.max_request_samples, "most samples in one request")
    setting("--max-streams", int, limits.max_streams, "concurrent streams")
    setting("--chunk-bytes", int, limits.chunk_bytes, "inline clip bytes per message")
    setting("--heartbeat", float, defaults.heartbeat, "seconds between Redis heartbeats")
    setting("--ttl", float, defaults.ttl, "seconds a registration outlives its last heartbeat")
    setting("--drain-timeout", float, defaults.drain_timeout, "seconds SIGTERM waits for in-flight streams")
    setting("--log-level", str, defaults.log_level, "debug, info, warning or error")
    _redis_args(p)
    _security_args(p, "server")
    p.set_defaults(func=_serve)


def _replica_config(args: argparse.Namespace) -> ReplicaConfig:
    """The replica's settings: defaults ← the --config YAML's `replica:` section ← the flags given."""
    from .server.settings import ReplicaConfig, load_replica_config

    names = [f.name for f in dataclasses.fields(ReplicaConfig) if f.name != "limits"]
    names += [f.name for f in dataclasses.fields(ReplicaConfig().limits)]
    return load_replica_config(args.config, {name: getattr(args, name) for name in names})


def _serve(args: argparse.Namespace) -> int:
    from ..options import make_generator

    settings = _replica_config(args)
    jsonlog.setup(settings.log_level, service="ctp-datagen")
    _control_plane(args, "this replica registers there")
    # Every thread started from here on inherits the blocked mask: the signals reach only sigwait below.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    generator = make_generator(args)
    replica = _replica(args, settings, generator)
    replica.start()
    metrics = (
        f", metrics on http://{replica.metrics_host}:{replica.metrics_port}/metrics" if replica.metrics_port else ""
    )
    print(f"ctp-datagen serve: listening on {replica.address} (gRPC){metrics}", flush=True)
    received = signal.sigwait(stop_signals)
    log.info("signal received", extra={"signal": signal.Signals(received).name})
    replica.drain(settings.drain_timeout)
    return 0


def _replica(args: argparse.Namespace, settings: ReplicaConfig, generator) -> Replica:
    """The replica the settings and options describe (ports 0: free ones, which `serve` prints once listening)."""
    from .registry import Registry
    from .security import resolve_token
    from .server.servicer import Replica

    return Replica(
        generator,
        generator.config,
        str(generator.device),
        host=settings.host,
        port=settings.port,
        advertise=settings.advertise,
        token=resolve_token(
            token_file=args.token_file, consequence="every RPC must carry it (others: UNAUTHENTICATED)"
        ),
        tls=_tls(args),
        limits=settings.limits,
        queue_capacity=settings.queue,
        registry=Registry(args.redis, args.namespace) if args.redis else None,
        heartbeat_s=settings.heartbeat,
        ttl_s=settings.ttl,
        metrics_port=None if settings.metrics_port < 0 else settings.metrics_port,
        metrics_host=settings.metrics_host,
    )


# -- status ------------------------------------------------------------------------------------------


def _status_parser(subparsers: argparse._SubParsersAction, help_text: str) -> None:
    p = subparsers.add_parser("status", help=help_text)
    _redis_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    import redis

    from .registry import Registry

    _control_plane(args, "the replicas registered there are listed")
    if not args.redis:
        raise ValueError(f"status reads the Redis control plane: give --redis URL or set ${REDIS_URL.name}")
    registry = Registry(args.redis, args.namespace)
    try:
        replicas, quarantined = registry.replicas(), registry.quarantined()
    except redis.RedisError as exc:
        raise ConnectionError(
            f"cannot read the control plane at {redact(args.redis)} ({exc}); is Redis running "
            f"there? (--redis URL or ${REDIS_URL.name})"
        ) from None
    if args.json:
        records = [dataclasses.asdict(r) | {"decode_routes": r.routes} for r in replicas]
        print(json.dumps({"replicas": records, "quarantined": quarantined}, indent=2))
        return 0
    now = time.time()
    print(f"{len(replicas)} live replica(s) in {redact(args.redis)} namespace {args.namespace!r}")
    if replicas:
        rows = [
            (
                r.replica_id,
                r.address,
                r.device,
                f"{r.clips_per_second:.1f}",
                f"{r.queue_depth}/{r.queue_capacity}",
                str(r.active_streams),
                _duration(now - r.started_at),
            )
            for r in replicas
        ]
        print(
            format_table(rows, ("replica", "address", "device", "clips/s", "queue", "streams", "up"), align="<<<>>>>")
        )
        print(f"total {sum(r.clips_per_second for r in replicas):.1f} clips/s")
        _print_routes(replicas)
    print(f"{len(quarantined)} quarantined video(s)")
    for path, info in sorted(quarantined.items()):
        print(f"  {path}: {info.get('reason', '?')} (replica {info.get('replica', '?')})")
    return 0


# -- pull --------------------------------------------------------------------------------------------


def _pull_parser(subparsers: argparse._SubParsersAction, help_text: str) -> None:
    from ..ctp.rng import seed_arg

    p = subparsers.add_parser("pull", help=help_text)
    p.add_argument("--epoch", type=int, required=True, help="the epoch whose samples to pull")
    p.add_argument("--num-samples", type=int, required=True, help="pulls indices 0..N-1")
    p.add_argument("--seed", type=seed_arg, default=0, help="the run seed of the sample keys (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    p.add_argument("--addr", action="append", default=[], metavar="HOST:PORT", help="replica address (repeatable)")
    p.add_argument("--no-shm", action="store_true", help="never use shared memory (inline gRPC only)")
    p.add_argument("--window", type=int, default=2, help="requests in flight per replica")
    p.add_argument(
        "--stall-timeout", type=float, default=60.0, help="seconds a stream may deliver nothing (default 60)"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for a live replica before giving up (default 120)",
    )
    p.add_argument("--server-name", help="TLS name to verify replicas against, if not their address")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")
    _redis_args(p)
    _security_args(p, "client")
    p.set_defaults(func=_pull)


def _pull(args: argparse.Namespace) -> int:
    from datagen.service.client.replicas import NoReplicaError

    try:
        return _pull_batches(args)
    except NoReplicaError as exc:
        raise ConnectionError(str(exc)) from exc


def _pull_batches(args: argparse.Namespace) -> int:
    from common.atomic import write_json
    from datagen.service.client.remote_source import FAULT_COUNTERS, RemoteSource

    from .security import resolve_token

    _control_plane(args, "samples are pulled from the replicas registered there")
    if not args.addr and not args.redis:
        raise ValueError(f"pull needs replicas: --addr HOST:PORT (repeatable) or --redis URL (or ${REDIS_URL.name})")
    if args.num_samples < 1:
        raise ValueError("--num-samples must be at least 1")
    seen: collections.Counter[int] = collections.Counter()
    clip_bytes = 0
    with RemoteSource(
        args.addr,
        args.redis,
        args.namespace,
        token=resolve_token(token_file=args.token_file),
        tls=_tls(args),
        server_name=args.server_name,
        shared_memory=not args.no_shm,
        window=args.window,
        stall_timeout=args.stall_timeout,
        wait_for_replicas=args.wait,
    ) as source:
        started = reported = time.perf_counter()
        for batch in source.stream(args.seed, args.epoch, range(args.num_samples), args.batch_size):
            seen.update(batch.keys[:, 2].tolist())
            clip_bytes += batch.clips.numel()
            if time.perf_counter() - reported >= PROGRESS_EVERY_S:
                reported = time.perf_counter()
                log.info(
                    "pulled %d of %d samples (%.1f clips/s)",
                    len(seen),
                    args.num_samples,
                    len(seen) / (reported - started),
                )
        elapsed = time.perf_counter() - started
        stats, delivered = dict(source.stats), dict(source.delivered)
    result = {
        "received": stats.get("received", 0),
        "unique": len(seen),
        "duplicates_dropped": stats.get("duplicates_dropped", 0),
        "missing": args.num_samples - len(seen),
        "yielded_twice": sum(1 for c in seen.values() if c > 1),
        "clips_per_s": round(len(seen) / elapsed, 2),
        "mb_per_s": round(clip_bytes / elapsed / 1e6, 2),
        "seconds": round(elapsed, 3),
        "shm_batches": stats.get("shm_batches", 0),
        "inline_batches": stats.get("inline_batches", 0),
        **{name: stats.get(name, 0) for name in FAULT_COUNTERS},  # hedges sent/won/wasted, stalls, failures, requeued
        "replaced_samples": stats.get("replaced_samples", 0),
        "per_replica": delivered,
    }
    print(format_table([(k, v) for k, v in result.items() if k != "per_replica"], ("metric", "value"), align="<<"))
    for replica, count in sorted(delivered.items()):
        print(f"  {replica}: {count} samples")
    if args.json:
        write_json(args.json, result)
    ok = result["missing"] == 0 and result["yielded_twice"] == 0
    print("exactly once: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


def _print_routes(replicas: list) -> None:
    """Which backend decodes each decode class, over the replicas that met it (datagen/video/decode/routes.py)."""
    routes = collections.Counter((cls, backend) for r in replicas for cls, backend in r.routes.items())
    if not routes:
        return
    print(f"decode routes ({len({cls for cls, _ in routes})} classes; a class a GPU decoder got wrong is PyAV's)")
    rows = [(cls, backend, str(n)) for (cls, backend), n in sorted(routes.items())]
    print(format_table(rows, ("decode class", "decoded by", "replicas"), align="<<>"))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


PARSERS = {"serve": _serve_parser, "status": _status_parser, "pull": _pull_parser}
