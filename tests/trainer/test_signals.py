"""A run never clobbers another, and Ctrl-C saves: refused folders, --overwrite, SIGINT in a real process (exit 75:
stopped before the end; run.stop_at_step, the end a run was given, exits 0)."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.service_helpers import REPO
from trainer.cli import main
from trainer.runtime import signals
from trainer.runtime.checkpoint import list_checkpoints
from trainer.runtime.metrics_log import read_records
from trainer.runtime.signals import STOPPED_EXIT

RUN = [
    "data.batch_size=4",
    "data.clips_per_video=2",
    "optim.epochs=2",
    "optim.milestones=[1]",
    "eval.clips=4",
    "run.checkpoint_every=2",
    "run.log_every=1",
    "run.progress=false",
]


def pretrain_args(demo_dir, out, *extra):
    return ["pretrain", "--config", "tiny_cpu", f"data.videos=[{demo_dir}]", f"run.out_dir={out}", *RUN, *extra]


def test_a_new_run_refuses_a_folder_holding_another_and_overwrite_clears_it(demo_dir, tmp_path, capsys):
    assert main(pretrain_args(demo_dir, tmp_path, "run.stop_at_step=4")) == 0
    before = {p.name: p.stat().st_mtime_ns for p in list_checkpoints(tmp_path)}
    assert sorted(before) == ["ckpt-00000003.pt", "ckpt-00000004.pt"]
    capsys.readouterr()

    assert main(pretrain_args(demo_dir, tmp_path, "run.stop_at_step=3")) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume auto" in err and "--overwrite" in err and "run.out_dir=" in err
    assert {p.name: p.stat().st_mtime_ns for p in list_checkpoints(tmp_path)} == before  # untouched

    assert main(pretrain_args(demo_dir, tmp_path, "run.stop_at_step=3", "--overwrite")) == 0
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000002.pt", "ckpt-00000003.pt"]  # no old 4
    steps = [r["step"] for r in read_records(tmp_path) if "loss" in r]
    assert steps == [1, 2, 3]  # once each: nothing of the old run left


def test_resume_auto_into_a_folder_without_checkpoints_starts_clean(demo_dir, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 999.0}\n')  # a run that died before checkpointing
    assert main(pretrain_args(demo_dir, tmp_path, "run.stop_at_step=2", "--resume", "auto")) == 0
    assert next(r["loss"] for r in read_records(tmp_path) if "loss" in r) != 999.0


def _wait_for(predicate, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _start(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", *args],
        env=env,
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _logged_step(run_dir: Path) -> int:
    steps = [r["step"] for r in read_records(run_dir) if "loss" in r] if (run_dir / "metrics.jsonl").is_file() else []
    return max(steps, default=0)


def test_ctrl_c_checkpoints_and_says_how_to_resume(demo_dir, tmp_path):
    out = tmp_path / "run"
    process = _start(pretrain_args(demo_dir, out, "optim.epochs=50", "run.checkpoint_every=1000"), tmp_path)
    _wait_for(lambda: _logged_step(out) >= 1, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == STOPPED_EXIT == 75, err  # not 0: the run did not finish
    assert "Traceback" not in err
    assert "Ctrl-C: saving a checkpoint" in err and "--resume auto" in err
    *epoch_ends, stopped = [int(c.stem.split("-")[1]) for c in list_checkpoints(out)]
    # Under load the signal may land after an epoch's end (3 steps): those checkpoints are the only others.
    assert stopped >= 1 and all(step % 3 == 0 for step in epoch_ends)
    assert _logged_step(out) == stopped  # nothing trained past the checkpoint


def assert_second_ctrl_c_stops_at_once(process: subprocess.Popen, acknowledged: str = "Ctrl-C: saving") -> None:
    """A Ctrl-C, and once the process has said it will stop (`acknowledged` on stderr), a second one: the
    process exits 130 at once, saying so, without a traceback.

    The second waits for the first's acknowledgement because CPython runs a signal's Python handler only
    between bytecodes: two SIGINTs that both arrive during one long C call (a backward pass) are one."""
    said = threading.Event()
    err: list[str] = []

    def read_stderr() -> None:
        for line in process.stderr:
            err.append(line)
            if acknowledged in line:
                said.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    drain = threading.Thread(target=process.stdout.read, daemon=True)
    drain.start()
    process.send_signal(signal.SIGINT)
    assert said.wait(60), "".join(err)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    reader.join(10)
    text = "".join(err)
    assert process.returncode == 130, text
    assert "Traceback" not in text and "interrupted" in text


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(demo_dir, tmp_path):
    out = tmp_path / "run"
    process = _start(pretrain_args(demo_dir, out, "optim.epochs=50", "run.log_every=1000"), tmp_path)
    _wait_for(lambda: bool(list_checkpoints(out)), process)  # past start-up: in the loop
    assert_second_ctrl_c_stops_at_once(process)


def test_a_ctrl_c_during_the_first_ones_warning_stops_at_once(monkeypatch):
    """The second Ctrl-C lands while the first's handler is still writing its warning (CPython runs the handler
    again, nested): it must find the first counted and stop at once, not be taken for the first."""
    monkeypatch.setattr(signals, "_stopped_at_once", threading.Event())

    class SecondCtrlC(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # bytecodes, between which the nested handler runs
                time.sleep(0)

    handler = SecondCtrlC()
    signals.log.addHandler(handler)
    try:
        with pytest.raises(KeyboardInterrupt), signals.stop_on_signals() as requested:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                time.sleep(0)
    finally:
        signals.log.removeHandler(handler)
    assert requested.is_set() and signals.stopped_at_once()
