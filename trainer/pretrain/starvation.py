"""Is the trainer waiting on data, and how many datagen replicas would keep it fed.

Over one log window, with every rank's clips, wall seconds and seconds spent waiting for its next batch:

    consumption  C = Σ_ranks clips / (seconds − wait)       clips/s training would take if it never waited
    per replica  d = delivered clips / seconds / n          clips/s one of the n delivering replicas sent us
    replicas needed  = ⌈C / d⌉

While the trainer starves, the replicas run flat out, so d is what a replica can make and ⌈C / d⌉ is the
fleet that would match the ranks; when the trainer is fed, backpressure idles the replicas and d says
nothing about their capacity, so no advice is given. A window in which replicas failed (a request hedged or
stalled, a replica down, samples asked again, a replica that delivered before and nothing now) is no
measure of the fleet's size either: the wait comes from the fault, and the advice says so instead.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

# The client's fault counters (datagen.service.client.remote_source.FAULT_COUNTERS) that mean a replica misbehaved, in words.
FAULTS = {
    "hedges_sent": "request(s) late and hedged",
    "stalls": "stall(s)",
    "replica_failures": "replica failure(s)",
    "requeued": "sample(s) asked again",
}
STARVED_SHARE = 0.10  # above this mean share of wall time spent waiting for data, the data side limits training
ADVICE_EVERY_S = 300.0  # how often a starving trainer repeats its advice


@dataclasses.dataclass(frozen=True)
class RankWindow:
    """One rank's measurements over a log window."""

    clips: int
    seconds: float
    wait: float

    @property
    def clips_per_s(self) -> float:
        return self.clips / max(self.seconds, 1e-9)

    @property
    def wait_share(self) -> float:
        return min(self.wait / max(self.seconds, 1e-9), 1.0)


def consumption_rate(windows: Sequence[RankWindow]) -> float:
    """Clips/s all ranks together would train if they never waited for data."""
    return sum(w.clips / max(w.seconds - w.wait, 1e-9) for w in windows)


def replicas_needed(consumption: float, delivered: Mapping[str, int], seconds: float) -> int | None:
    """⌈consumption / per-replica delivery rate⌉; None when no replica delivered anything."""
    active = [count for count in delivered.values() if count > 0]
    if not active or seconds <= 0:
        return None
    per_replica = sum(active) / seconds / len(active)
    return max(1, math.ceil(consumption / per_replica))


def starvation_advice(
    windows: Sequence[RankWindow],
    delivered: Mapping[str, int] | None,
    faults: Mapping[str, int] | None = None,
    silent: Sequence[str] = (),
) -> str | None:
    """What to tell the operator when the ranks waited more than STARVED_SHARE of the window, else None.

    `delivered`: clips each replica sent to this job in the window (all ranks), None for in-process data;
    `faults`: the client's fault counters over the window (all ranks); `silent`: replicas that delivered in the
    window before and nothing in this one."""
    wait = sum(w.wait_share for w in windows) / len(windows)
    if wait <= STARVED_SHARE:
        return None
    seconds = max(w.seconds for w in windows)
    consumption = consumption_rate(windows)
    head = f"data-starved: the ranks waited {wait:.0%} of the last {seconds:.1f} s for samples"
    if delivered is None:
        made = sum(w.clips for w in windows) / seconds
        return (
            f"{head}; in-process generation makes {made:.1f} clips/s, training could consume {consumption:.1f}: serve "
            "the samples from datagen replicas (set CTP_REDIS_URL or service.addresses; docs/operations.md)"
        )
    failed = [f"{faults[name]} {words}" for name, words in FAULTS.items() if faults and faults.get(name)]
    failed += [f"replica {name} delivered nothing" for name in silent]
    if failed:
        return (
            f"{head} while datagen replicas failed ({', '.join(failed)}): a fault, not too few replicas; check "
            "`ctp-datagen status` and the replicas' logs (docs/operations.md, troubleshooting)"
        )
    needed = replicas_needed(consumption, delivered, seconds)
    if needed is None:
        return f"{head}, and no datagen replica delivered any: check the fleet with `ctp-datagen status`"
    active = sum(1 for count in delivered.values() if count > 0)
    per_replica = sum(delivered.values()) / seconds / active
    if needed <= active:  # enough replicas: the clips are slow between them and the trainer
        return (
            f"{head}; {active} replica(s) delivered {per_replica:.1f} clips/s each and training could consume "
            f"{consumption:.1f} clips/s: about {needed} replicas would keep it fed, no more than deliver now; check "
            "the transport between replicas and trainer (docs/operations.md, troubleshooting)"
        )
    return (
        f"{head}; {active} replica(s) delivered {per_replica:.1f} clips/s each and training could consume "
        f"{consumption:.1f} clips/s: about {needed} replicas would keep it fed, {needed - active} more than the "
        f"{active} delivering now (docs/operations.md, scaling the replicas)"
    )


class StarvationMonitor:
    """Advice from successive log windows: not from the first (it fills the pipeline), then at most once every
    `every_s` seconds while the ranks starve."""

    def __init__(self, every_s: float = ADVICE_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self._delivered: collections.Counter[str] = collections.Counter()
        self._faults: collections.Counter[str] = collections.Counter()
        self._delivering: set[str] = set()
        self._windows = 0
        self._advised_at = -math.inf

    def update(
        self,
        windows: Sequence[RankWindow],
        delivered: Mapping[str, int] | None,
        faults: Mapping[str, int] | None = None,
    ) -> str | None:
        """`delivered`: clips kept from each replica since the start, summed over the ranks (None: in-process);
        `faults`: the client's fault counters since the start, summed over the ranks."""
        in_window, faults_in_window, silent = None, None, []
        if delivered is not None:
            total = collections.Counter(delivered)
            in_window, self._delivered = total - self._delivered, total
            silent = sorted(self._delivering - in_window.keys())
            self._delivering = set(in_window)
        if faults is not None:
            total = collections.Counter(faults)
            faults_in_window, self._faults = total - self._faults, total
        self._windows += 1
        advice = starvation_advice(windows, in_window, faults_in_window, silent)
        if advice is None or self._windows == 1 or self.clock() - self._advised_at < self.every_s:
            return None
        self._advised_at = self.clock()
        return advice
