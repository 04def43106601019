"""Ctrl-C in a real `ctp-train finetune` process: the first saves at the end of the epoch and says how to resume
(`--resume auto` continues from it), a second stops at once with exit code 130 and no traceback."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from tests.service_helpers import REPO
from tests.trainer.test_signals import _wait_for, assert_second_ctrl_c_stops_at_once
from trainer.runtime.signals import STOPPED_EXIT


def _finetune(videos: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = [
        "finetune",
        "--config",
        "tiny_cpu",
        f"data.train.videos={videos}",
        f"run.out_dir={out}",
        "run.progress=false",
        "run.val_every=0",
        "run.log_every=1",
        *extra,
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=out.parent,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _trained(out: Path) -> bool:
    metrics = out / "metrics.jsonl"
    return metrics.is_file() and '"loss"' in metrics.read_text()


def test_ctrl_c_saves_the_epoch_and_resume_auto_continues(shared_videos, tmp_path):
    out = tmp_path / "run"
    process = _finetune(shared_videos, out, "optim.epochs=50")
    _wait_for(lambda: _trained(out), process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == STOPPED_EXIT, err  # stopped before the end: not 0
    assert "Traceback" not in err
    assert "Ctrl-C: saving a checkpoint at the end of the epoch" in err and "--resume auto" in err
    stopped = torch.load(out / "finetuned.pt", weights_only=True)["epoch"]
    assert 1 <= stopped < 50

    resumed = _finetune(shared_videos, out, "optim.epochs=" + str(stopped + 1), "--resume", "auto")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"after epoch {stopped}" in err
    assert torch.load(out / "finetuned.pt", weights_only=True)["epoch"] == stopped + 1


def test_a_second_ctrl_c_stops_finetune_at_once_without_a_traceback(shared_videos, tmp_path):
    out = tmp_path / "run"
    process = _finetune(shared_videos, out, "optim.epochs=50", "data.batch_size=1")  # 12 steps an epoch: still in it
    _wait_for(lambda: _trained(out), process)
    assert_second_ctrl_c_stops_at_once(process)
