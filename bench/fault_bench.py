"""What a replica fault costs the trainer's client: a pull with a healthy fleet against the same pull with one
replica frozen, killed or partitioned mid-epoch, and with every replica throttled alike.

    python -m bench.fault_bench [--replicas 3] [--samples 240] [--batch-size 8] [--repeats 1]
                                [--videos PATH...] [--json FILE] [KEY=VALUE ...]

Real processes throughout: a redis-server, `ctp-datagen serve` replicas registered there (tests/service_helpers),
and `datagen.service.client.remote_source.RemoteSource` pulling `--samples` indices as `ctp-datagen pull` does, checking that
each arrives exactly once. A fresh fleet per run. Scenarios, the fault injected once a quarter of the samples
has arrived:

- clean: nothing happens.
- frozen: SIGSTOP of one replica (a GC pause, a hung disk, a throttled host: TCP stays open, nothing answers).
- killed: SIGKILL of one replica reached through an address that then vanishes (a killed container: its
  connections close, new ones are never answered).
- partitioned: one replica's address goes silent, connections included (a network partition, a dead node).
- throttled: every replica stopped for 0.15 s of every 0.3 s (CPU quota): uniformly slow, not faulty; hedges
  should stay within their budget and the pull take about twice the clean one.

Prints one row per scenario: seconds, the ratio to the clean pull of the same run, the time a fault added,
the longest the consumer waited for one batch after the fault (a trainer's idle GPUs), the client's fault
counters, and whether every sample arrived exactly once. Target (issue 24): a frozen
replica's pull within 1.5x the clean pull + 5 s.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from common.atomic import write_json
from common.tables import format_table
from datagen.service.client.remote_source import RemoteSource
from tests.service_helpers import RedisServer, ReplicaProcess, TcpProxy, free_port

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"
COUNTERS = ("hedges_sent", "hedges_won", "hedges_wasted", "stalls", "replica_failures", "requeued")
SCENARIOS = ("clean", "frozen", "killed", "partitioned", "throttled")


class Throttle:
    """Stops and continues processes on a duty cycle, as a CPU quota does."""

    def __init__(self, replicas: list[ReplicaProcess], stopped_s: float = 0.15, period_s: float = 0.3):
        self.replicas, self.stopped_s, self.period_s = replicas, stopped_s, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for r in self.replicas:
                r.signal(signal.SIGSTOP)
            time.sleep(self.stopped_s)
            for r in self.replicas:
                r.signal(signal.SIGCONT)
            self._stop.wait(self.period_s - self.stopped_s)


def run_scenario(name: str, args: argparse.Namespace, videos: list[Path], workdir: Path, epoch: int) -> dict:
    redis = RedisServer(workdir / "redis")
    proxy: TcpProxy | None = None
    replicas: list[ReplicaProcess] = []
    serve = ["--config", args.config, *args.overrides]
    try:
        for i in range(args.replicas):
            extra = ["--heartbeat", "2", "--ttl", "10"]  # serve's defaults, not the tests' quicker ones
            if i == 0 and name in ("killed", "partitioned"):
                port = free_port()
                proxy = TcpProxy(f"127.0.0.1:{port}")
                extra += ["--port", str(port), "--advertise", proxy.address]
            replicas.append(
                ReplicaProcess(workdir / "replicas", videos, serve, redis_url=redis.url, extra=extra, wait=False)
            )
        for r in replicas:
            r.wait_serving()
        victim, throttle = replicas[0], Throttle(replicas)
        seen: collections.Counter[int] = collections.Counter()
        injected_at = None
        with RemoteSource(redis_url=redis.url, namespace="test", wait_for_replicas=60, stall_timeout=60) as source:
            while len(source.describe()) < args.replicas:
                time.sleep(0.2)
            warm_up = args.replicas * 4 * args.batch_size  # every replica decodes and renders before the clock starts
            for _ in source.stream(0, 0, range(warm_up), args.batch_size):
                pass
            source.stats.clear()
            started = last = time.perf_counter()
            longest_wait = 0.0  # the longest a consumer waited for a batch once the fault was in
            for batch in source.stream(0, epoch, range(args.samples), args.batch_size):
                now = time.perf_counter()
                if injected_at is not None:
                    longest_wait = max(longest_wait, now - last)
                last = now
                seen.update(batch.keys[:, 2].tolist())
                if injected_at is None and len(seen) >= args.samples // 4:
                    injected_at = time.perf_counter() - started
                    if name == "frozen":
                        victim.signal(signal.SIGSTOP)
                    elif name == "killed":
                        assert proxy is not None
                        proxy.vanish()
                        victim.signal(signal.SIGKILL)
                    elif name == "partitioned":
                        assert proxy is not None
                        proxy.vanish(silent=True)
                    elif name == "throttled":
                        throttle.start()
            seconds = time.perf_counter() - started
            stats = dict(source.stats)
        if name == "throttled":
            throttle.stop()
    finally:
        for r in replicas:
            r.signal(signal.SIGCONT)
            r.stop()
        if proxy is not None:
            proxy.close()
        redis.stop()
    exactly_once = len(seen) == args.samples and max(seen.values()) == 1
    return {
        "scenario": name,
        "seconds": round(seconds, 2),
        "fault_at_s": round(injected_at or 0.0, 2),
        "longest_wait_s": round(longest_wait, 2),
        "requests": stats.get("requests", 0),
        **{k: stats.get(k, 0) for k in COUNTERS},
        "exactly_once": exactly_once,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="runs per scenario (the table shows the median)")
    parser.add_argument("--config", default="tiny_cpu", help="the replicas' preset (default tiny_cpu)")
    parser.add_argument(
        "--videos",
        nargs="+",
        type=Path,
        default=sorted((SHARED / "ucf101").glob("*.avi")) + sorted((SHARED / "hmdb51").glob("*.avi")),
        help="video files (default: the shared UCF-101 and HMDB-51 clips)",
    )
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="generation overrides for the replicas")
    args = parser.parse_args()
    if not args.videos:
        parser.error("no videos: give --videos")

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fault-bench-") as tmp:
        for repeat in range(args.repeats):
            for i, name in enumerate(args.scenarios):
                row = run_scenario(name, args, args.videos, Path(tmp) / f"{name}-{repeat}", epoch=1 + i)
                print(f"  {name} (run {repeat + 1}/{args.repeats}): {row}", flush=True)
                rows.append(row)
    median = {
        name: statistics.median_low([r["seconds"] for r in rows if r["scenario"] == name])
        for name in dict.fromkeys(r["scenario"] for r in rows)
    }
    table = []
    for name, seconds in median.items():
        row = next(r for r in rows if r["scenario"] == name and r["seconds"] == seconds)
        clean = median.get("clean")
        table.append(
            (
                name,
                f"{seconds:.1f}",
                f"{seconds / clean:.2f}x" if clean else "-",
                f"{seconds - clean:+.1f}" if clean else "-",
                f"{row['longest_wait_s']:.1f}",
                *(str(row[k]) for k in ("requests", *COUNTERS)),
                "yes" if all(r["exactly_once"] for r in rows if r["scenario"] == name) else "NO",
            )
        )
    print(
        f"{args.samples} samples in batches of {args.batch_size} from {args.replicas} replicas ({args.config} "
        f"{' '.join(args.overrides)}), {len(args.videos)} videos, median of {args.repeats}; fault after a quarter"
    )
    header = ("scenario", "s", "vs clean", "added s", "longest wait s", "requests", *COUNTERS, "exactly once")
    print(format_table(table, header))
    if "clean" in median and "frozen" in median:
        target = 1.5 * median["clean"] + 5
        print(f"target: frozen <= 1.5 x clean + 5 s = {target:.1f} s: {median['frozen']:.1f} s")
    if args.json:
        write_json(
            args.json,
            {
                "command": "python -m bench.fault_bench " + " ".join(sys.argv[1:]),
                "date": datetime.date.today().isoformat(),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, Python {platform.python_version()}",
                "rows": rows,
            },
        )
    return 0 if all(r["exactly_once"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
