"""`ctp-torchrun`: torchrun (same arguments, same agent) set up for multi-node runs that outlive their nodes.

Three things plain torchrun gets wrong for a trainer Job (docs/operations.md, "Losing a node"):

- **Rejoining.** torch ≥ 2.5 shares the rendezvous TCPStore with the workers; a surviving agent then skips
  publishing MASTER_ADDR in the next round, and a restarted node waits for it until both agents die
  (pytorch/pytorch#135712, still so in 2.14). `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1` is set unless the
  environment says otherwise.
- **Who hosts the rendezvous store.** torchrun decides it by matching the endpoint's address with its own,
  which races the DNS name of a starting pod: nobody hosts it, and every agent times out. Under an Indexed Job
  (`JOB_COMPLETION_INDEX` set) the pod of index 0 hosts it and the others never do (c10d `is_host`), unless
  `--rdzv-conf` already says. When the store is lost (its pod replaced) or not up yet, torchrun's agent dies;
  here a new agent joins the next store instead, up to `RELAUNCHES` times, so that losing pod 0 costs the
  other pods no restart of their own.
- **Exit status.** 0 only when training finished. When every failed worker exited `STOPPED_EXIT` (a run
  stopped by a signal, checkpointed), or this agent was stopped by SIGTERM/SIGINT (it passes the signal on to
  its workers, which checkpoint), it exits `STOPPED_EXIT` (75) with one line instead of a traceback: a job
  controller can restart it without counting a failure (the Job's podFailurePolicy). Anything else is
  torchrun's own failure (exit 1, with its error summary).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import signal
import sys
import time
from typing import NoReturn

from trainer.runtime.signals import STOPPED_EXIT

SHARED_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
# New agents after losing the rendezvous store, each waiting up to its read_timeout (60 s) for the next one: a
# wrong --rdzv-endpoint still fails, after about 11 minutes.
RELAUNCHES = 10
RELAUNCH_PAUSE_S = 5.0


def store_host_conf(args: argparse.Namespace, job_index: str | None) -> str:
    """torchrun's `--rdzv-conf` with `is_host` decided by the Job index: pod 0 hosts the c10d store.

    Left as it is outside an Indexed Job, for another rendezvous backend, with --standalone (the store is local)
    or when the caller already chose."""
    conf: str = args.rdzv_conf
    if job_index is None or args.standalone or args.rdzv_backend != "c10d":
        return conf
    if any(item.split("=", 1)[0].strip() == "is_host" for item in conf.split(",") if item.strip()):
        return conf
    is_host = f"is_host={'true' if int(job_index) == 0 else 'false'}"
    return f"{conf},{is_host}" if conf.strip() else is_host


def exit_now(code: int) -> NoReturn:
    """End this process with `code` at once, without the interpreter's shutdown.

    After a signal torchrun leaves the rendezvous open (so that the run can go on without this node), and with it
    the rendezvous keep-alive, a daemon thread that calls the TCPStore every few seconds. Ending the interpreter
    while that thread is inside a store call aborts the process (SIGABRT: exit -6, not 75). The workers are gone
    by now; what is buffered is flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stopped(what: str) -> NoReturn:
    print(
        f"ctp-torchrun: {what}; the run is not finished: the same command with --resume auto continues it from "
        f"its newest checkpoint (exit {STOPPED_EXIT})",
        file=sys.stderr,
        flush=True,
    )
    exit_now(STOPPED_EXIT)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault(SHARED_STORE_ENV, "1")  # read when the rendezvous hands out the workers' store
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record
    from torch.distributed.elastic.rendezvous.api import RendezvousClosedError, RendezvousConnectionError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.rdzv_conf = store_host_conf(args, os.environ.get(JOB_INDEX_ENV))
    relaunches = 0
    while True:
        try:
            if relaunches:
                time.sleep(RELAUNCH_PAUSE_S)  # in the try: a SIGTERM now is a stop like any other
            record(run)(copy.copy(args))  # as torchrun's main: a failed worker's error.json is the agent's too
            return 0
        except ChildFailedError as exc:
            if {failure.exitcode for failure in exc.failures.values()} != {STOPPED_EXIT}:
                raise
            _stopped("the workers stopped before the end after a checkpoint")
        except SignalException as exc:
            _stopped(f"stopped by {signal.Signals(exc.sigval).name}, passed on to the workers")
        except (RendezvousConnectionError, RendezvousClosedError) as exc:
            if relaunches == RELAUNCHES:
                raise
            relaunches += 1
            print(
                f"ctp-torchrun: the rendezvous store at {args.rdzv_endpoint} is gone or not up yet "
                f"({type(exc).__name__}); a new agent joins the next one ({relaunches} of {RELAUNCHES})",
                file=sys.stderr,
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
