"""Logs a person can follow from a file: no tqdm when stderr is no terminal, plain lines with the numbers."""

import logging
import re

from trainer.cli import main
from trainer.runtime.progress import PlainProgress, eta


def test_eta_reads_like_a_duration():
    assert [eta(s) for s in (0, 12.4, 245, 3725, -3)] == ["0s", "12s", "4m05s", "1h02m", "0s"]


def test_redirected_pretraining_logs_plain_lines_with_loss_lr_eta_and_every_evaluation(
    demo_dir, tmp_path, caplog, capfd
):
    caplog.set_level(logging.INFO)
    args = [
        "pretrain",
        "--config",
        "tiny_cpu",
        f"data.videos=[{demo_dir}]",
        f"run.out_dir={tmp_path}",
        "data.batch_size=4",
        "data.clips_per_video=2",
        "optim.epochs=2",
        "eval.clips=4",
        "eval.every_steps=3",
        "run.log_every=2",
    ]  # run.progress stays true: stderr here is a file, not a terminal
    assert main(args) == 0
    assert "\r" not in capfd.readouterr().err  # no bar redrawn into the log
    lines = [r.getMessage() for r in caplog.records]
    steps = [
        line
        for line in lines
        if re.match(
            r"step \d+/6 epoch [12]/2: loss [\d.]+ \(centre [\d.]+, size [\d.]+\), "
            r"lr [\d.e-]+, [\d.]+ clips/s, data wait \d+%, ETA \d+",
            line,
        )
    ]
    assert len(steps) == 4, lines  # steps 2, 3 (epoch end), 4, 6
    evals = [line for line in lines if "held-out tracking mIoU" in line]
    assert [line.split(":")[0] for line in evals] == ["step 0", "step 3", "step 6"]
    assert sum("evaluating 4 held-out clips…" in line for line in lines) == 3


def test_plain_progress_lines_say_count_share_rate_and_eta(monkeypatch, caplog):
    clock = iter([0.0, 5.0, 20.0, 21.0, 40.0])  # start, then one reading per update
    monkeypatch.setattr("trainer.runtime.progress.time.monotonic", lambda: next(clock))
    progress = PlainProgress("testing", 40, "videos", every=15.0)
    with caplog.at_level(logging.INFO, logger="trainer.runtime.progress"):
        for _ in range(4):
            progress.update(10)
    assert caplog.messages == [
        "testing: 20 of 40 videos (50%), 1.0 videos/s, ETA 20s",  # 15 s after the start: the first line
        "testing: 40 of 40 videos (100%), 1.0 videos/s, ETA 0s",  # and the end, whenever it comes
    ]
