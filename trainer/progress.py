"""Progress a person can follow: a tqdm bar on a terminal, plain log lines in a file or `docker compose logs`.

tqdm redraws itself with carriage returns and cursor moves, which a redirected stderr keeps as garbage; so
bars are shown only when stderr is a terminal, and the loops then log their periodic lines instead.
"""

from __future__ import annotations

import sys


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
