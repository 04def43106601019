"""When a flight is late, and how many duplicate requests a client may send: hedged requests (docs/service.md).

A sample is a pure function of its key, so asking a second replica for a late flight's indices is safe: the
first answer is kept and the other dropped. A flight is late once it has been silent (since it was sent, or
since its last batch) for longer than `factor` times the `quantile` of the silences the client observed
recently, and never under `floor` seconds; until `min_observations` silences were seen nothing is late. The
threshold thus follows the replicas' speed: a fleet that is slow everywhere is not hedged. A token bucket
bounds the extra load: each request earns `fraction` of a hedge, a hedge spends one, at most `burst` are
saved, so a client sends at most `burst + fraction × requests` hedges.
"""

from __future__ import annotations

import collections
import math


class Lateness:
    """The threshold of silence past which a flight is late, from the silences observed lately."""

    def __init__(
        self,
        quantile: float = 0.95,
        factor: float = 2.0,
        floor: float = 2.0,
        window: int = 256,
        min_observations: int = 8,
    ):
        if not 0 < quantile <= 1 or factor < 1 or floor < 0 or window < min_observations or min_observations < 1:
            raise ValueError(
                "lateness needs 0 < quantile <= 1, factor >= 1, floor >= 0, window >= min_observations >= 1"
            )
        self.quantile, self.factor, self.floor, self.min_observations = quantile, factor, floor, min_observations
        self._recent: collections.deque[float] = collections.deque(maxlen=window)
        self._threshold: float | None = None

    def observe(self, seconds: float) -> None:
        """A silence that ended: from a flight's dispatch, or its previous batch, to its next batch."""
        self._recent.append(seconds)
        self._threshold = None

    def threshold(self) -> float | None:
        """Seconds of silence that make a flight late; None while too few silences were observed."""
        if len(self._recent) < self.min_observations:
            return None
        if self._threshold is None:
            ordered = sorted(self._recent)
            rank = max(math.ceil(self.quantile * len(ordered)) - 1, 0)  # the nearest-rank quantile
            self._threshold = max(self.floor, self.factor * ordered[rank])
        return self._threshold


class HedgeBudget:
    """A token bucket: hedges as a bounded share of requests."""

    def __init__(self, fraction: float = 0.05, burst: float = 2.0):
        if fraction < 0 or burst < 0:
            raise ValueError("a hedge budget cannot be negative")
        self.fraction, self.burst = fraction, burst
        self.tokens = burst

    def earn(self) -> None:
        """A request was sent."""
        self.tokens = min(self.burst, self.tokens + self.fraction)

    def spend(self) -> bool:
        """Take one hedge if the bucket holds one."""
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
