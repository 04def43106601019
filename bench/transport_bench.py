"""Loopback transport benchmark: inline gRPC vs shared memory for uint8 CtP batches.

    python -m bench.transport_bench [--batches 40] [--batch-size 32] [--frames 16] [--size 112]

A replica runs in a child process, as in production; its generator is replaced by one precomputed batch
(fresh keys per request), so the table measures transport alone: encode, send, receive, decode. Rows:
a bare Generate stream (ReplicaClient) per transport, then the trainer's RemoteSource on top of it, whose
extra time per batch is the client's scheduling overhead. Ratios are against bare inline gRPC measured in
the same run. Targets (issue 4, 2-core machine): shared memory ≥ 3× inline and ≥ 2 GB/s; inline ≥ 500 MB/s.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import sys
import time
from collections.abc import Sequence

import torch

from common.configfile import apply_overrides, from_dict, to_dict
from common.tables import format_table
from datagen.ctp.batch import Batch
from datagen.ctp.spec import GenerationConfig
from datagen.service.client.remote_source import RemoteSource
from datagen.service.client.replica_client import ReplicaClient
from datagen.service.limits import Limits
from datagen.service.server.servicer import Replica
from datagen.verify import Report
from datagen.video.container import VideoInfo
from datagen.video.decode.routes import DecodeRoutes
from protos import datagen_pb2 as pb


class PrecomputedBatches:
    """Stands in for datagen.generator.Generator: one batch made up front, so generation costs nothing."""

    def __init__(self, batch_size: int, frames: int, size: int, trajectories: int = 3, num_videos: int = 64):
        g = torch.Generator().manual_seed(0)
        self.videos: Sequence[VideoInfo] = [
            VideoInfo(f"bench/{i:03d}.mp4", 300, 30.0, 340, 256, "h264") for i in range(num_videos)
        ]
        self.bad_videos: dict[str, str] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self.ahead = 0  # nothing to overlap: generation costs nothing
        self.routes = DecodeRoutes()  # nothing decoded
        self.checked: Report | None = None  # no self-check to run
        self._clips = torch.randint(0, 256, (batch_size, frames, size, size, 3), dtype=torch.uint8, generator=g)
        self._boxes = torch.rand(batch_size, trajectories, frames, 4, generator=g) * size
        self._visible = torch.rand(batch_size, trajectories, frames, generator=g) > 0.2

    def decode_batch(self, keys):
        return keys

    def render_batch(self, keys) -> Batch:
        n = len(keys)
        return Batch(self._clips[:n], self._boxes[:n], self._visible[:n], torch.tensor([tuple(k) for k in keys]))

    def replaced(self, keys) -> list:
        return []

    def mark_bad(self, path: str, reason: str = "") -> bool:
        return False


def serve(config: GenerationConfig, batch_size: int, chunk_bytes: int, ready, stop) -> None:
    """The child process: one replica on loopback until `stop` is set."""
    clip = config.clip
    replica = Replica(
        PrecomputedBatches(batch_size, clip.num_frames, clip.crop_size),
        config,
        host="127.0.0.1",
        port=0,
        limits=Limits(chunk_bytes=chunk_bytes),
        queue_capacity=8,
    )
    replica.start()
    ready.put(replica.address)
    stop.wait()
    replica.drain(grace_s=5)


def bare_stream(
    address: str, config: GenerationConfig, batches: int, batch_size: int, shm: bool
) -> tuple[float, float, int]:
    """One Generate call for `batches` batches; returns (seconds, client CPU seconds, shared-memory batches)."""
    client = ReplicaClient(address)
    info = client.describe(timeout=30)
    if shm and client.offer_ring(5, batch_size * _sample_bytes(config)):
        raise RuntimeError("shared memory is not reachable on loopback")
    request = pb.GenerateRequest(
        config_digest=info.config_digest,
        videos_digest=info.videos_digest,
        seed=0,
        epoch=0,
        indices=list(range(batches * batch_size)),
        batch_size=batch_size,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    shm_batches = sum(r.shared_memory for r in client.generate(request, stream_id=1))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    client.close()
    return wall, cpu, shm_batches


def remote_source(
    address: str, config: GenerationConfig, batches: int, batch_size: int, shm: bool, **options
) -> tuple[float, float, int]:
    with RemoteSource([address], config=config, shared_memory=shm, **options) as src:
        list(src.stream(0, 1, range(batch_size), batch_size))  # connect and size the ring outside the timing
        before = src.stats["shm_batches"]
        wall, cpu = time.perf_counter(), time.process_time()
        count = sum(len(b) for b in src.stream(0, 2, range(batches * batch_size), batch_size))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert count == batches * batch_size
        return wall, cpu, src.stats["shm_batches"] - before


def _sample_bytes(config: GenerationConfig) -> int:
    return config.clip.num_frames * config.clip.crop_size**2 * 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40, help="batches per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--chunk-bytes", type=int, default=Limits.chunk_bytes, help="inline bytes per gRPC message")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per row")
    parser.add_argument("--window", type=int, default=2, help="RemoteSource: requests in flight per replica")
    parser.add_argument("--request-batches", type=int, default=2, help="RemoteSource: batches per request")
    args = parser.parse_args()
    config = from_dict(
        GenerationConfig,
        apply_overrides(to_dict(GenerationConfig()), [f"clip.num_frames={args.frames}", f"clip.crop_size={args.size}"]),
    )

    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=serve, args=(config, args.batch_size, args.chunk_bytes, ready, stop), daemon=True)
    server.start()
    address = ready.get(timeout=300)
    batch_mb = args.batch_size * _sample_bytes(config) / 1e6
    rows = []
    try:
        for name, run, shm in (
            ("inline gRPC, bare stream", bare_stream, False),
            ("shared memory, bare stream", bare_stream, True),
            ("inline gRPC, RemoteSource", remote_source, False),
            ("shared memory, RemoteSource", remote_source, True),
        ):
            options = {"window": args.window, "request_batches": args.request_batches} if run is remote_source else {}
            best = min(
                (run(address, config, args.batches, args.batch_size, shm, **options) for _ in range(args.repeats)),
                key=lambda r: r[0],
            )
            rows.append((name, *best))
    finally:
        stop.set()
        server.join(timeout=30)

    baseline = rows[0][1]
    print(
        f"{args.batches} batches of {args.batch_size}x{args.frames}x{args.size}x{args.size}x3 uint8 ({batch_mb:.1f} MB each), "
        f"loopback, chunks of {args.chunk_bytes >> 10} KiB, RemoteSource window {args.window} x {args.request_batches} batches, "
        f"best of {args.repeats}"
    )
    header = ("transport", "MB/s", "clips/s", "ms/batch", "client CPU ms/batch", "vs inline", "shm batches")
    cells = [
        (
            name,
            f"{batch_mb * args.batches / wall:.0f}",
            f"{args.batch_size * args.batches / wall:.0f}",
            f"{1e3 * wall / args.batches:.2f}",
            f"{1e3 * cpu / args.batches:.2f}",
            f"{baseline / wall:.2f}x",
            shm_batches,
        )
        for name, wall, cpu, shm_batches in rows
    ]
    print(format_table(cells, header))
    for bare, full in ((rows[0], rows[2]), (rows[1], rows[3])):
        print(
            f"RemoteSource overhead per batch ({bare[0].split(',')[0]}): {1e3 * (full[1] - bare[1]) / args.batches:+.2f} ms wall"
        )
    inline_mbs, shm_mbs = batch_mb * args.batches / rows[0][1], batch_mb * args.batches / rows[1][1]
    print(
        f"targets: shared memory >= 3x inline: {shm_mbs / inline_mbs:.2f}x; shared memory >= 2000 MB/s: {shm_mbs:.0f}; "
        f"inline >= 500 MB/s: {inline_mbs:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
