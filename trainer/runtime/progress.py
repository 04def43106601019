"""Progress a person can follow: a tqdm bar on a terminal, plain log lines in a file or `docker compose logs`.

tqdm redraws itself with carriage returns and cursor moves, which a redirected stderr keeps as garbage; so
bars are shown only when stderr is a terminal, and the loops then log their periodic lines instead.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def show_bars(requested: bool) -> bool:
    """Whether to draw progress bars: asked for (run.progress) and stderr is a terminal."""
    return requested and sys.stderr.isatty()


def eta(seconds: float) -> str:
    """A duration as `1h02m`, `4m05s` or `12s`."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class PlainProgress:
    """A bar's content as a plain log line, at most every `every` seconds and at the end: what a long loop
    (evaluation, retrieval) says where no bar is drawn, so a log file never stays silent for minutes."""

    def __init__(self, desc: str, total: int, unit: str, enabled: bool = True, every: float = 15.0) -> None:
        self.desc, self.total, self.unit, self.enabled, self.every = desc, total, unit, enabled, every
        self.done = 0
        self.started = self.last = time.monotonic()

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or (now - self.last < self.every and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        log.info(
            "%s: %d of %d %s (%.0f%%), %.1f %s/s, ETA %s",
            self.desc,
            self.done,
            self.total,
            self.unit,
            100 * self.done / max(self.total, 1),
            rate,
            self.unit,
            eta((self.total - self.done) / rate if rate else 0),
        )
