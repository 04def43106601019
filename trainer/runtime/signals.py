"""Stop requests: SIGTERM (preemption) and Ctrl-C both ask a training loop to checkpoint at its next safe point.

A run so stopped before its end raises `Stopped` on every rank, and the CLI exits `STOPPED_EXIT` (75), so that
exit 0 always means "training finished": a job controller (Kubernetes, torchrun) tells a drained run, to be
resumed, from a finished one. A second Ctrl-C stops at once (KeyboardInterrupt; the CLI exits 130 without a
traceback). Outside the main thread no handler can be installed and the event is never set.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)
_stopped_at_once = threading.Event()  # a second Ctrl-C came: what fails next failed because of it

# sysexits.h's EX_TEMPFAIL ("try again later"): stopped before the end, after a checkpoint; `--resume auto` goes on.
STOPPED_EXIT = 75


class Stopped(Exception):
    """A run stopped by a signal before its end, after its checkpoint (raised by every rank alike)."""


@contextlib.contextmanager
def stop_on_signals(safe_point: str = "the next step") -> Iterator[threading.Event]:
    """An event set by SIGTERM or the first SIGINT; the loop checkpoints at `safe_point` and exits."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGINT and requested.is_set():
            _stopped_at_once.set()
            raise KeyboardInterrupt
        if requested.is_set():
            return
        # Set before logging: a second Ctrl-C during the warning runs this handler again, inside it, and
        # must find the first one counted.
        requested.set()
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        log.warning(
            "%s: saving a checkpoint at %s, then stopping (Ctrl-C again stops at once, losing the steps "
            "since the last checkpoint)",
            name,
            safe_point,
        )

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stopped_at_once() -> bool:
    """Whether a second Ctrl-C interrupted the run (its KeyboardInterrupt may surface as another error, e.g.
    from inside torch.save, which the atomic write leaves without a torn file)."""
    return _stopped_at_once.is_set()
