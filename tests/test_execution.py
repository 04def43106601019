"""Where the network runs: CPU training refuses bf16 (wrong oneDNN gradients), auto picks fp32 there."""

from __future__ import annotations

import pytest
import torch

from trainer.cli import main
from trainer.execution import Execution


def test_cpu_refuses_bf16_and_says_what_to_use():
    with pytest.raises(ValueError, match="run.precision=fp32"):
        Execution.resolve("cpu", "bf16")
    assert Execution.resolve("cpu", "auto") == Execution(torch.device("cpu"), False, False)
    assert not Execution.resolve("cpu", "fp32", True).bf16


def test_ctp_train_reports_the_refusal_without_a_traceback(tmp_path, capsys):
    args = ["pretrain", "--config", "tiny_cpu", "run.device=cpu", "run.precision=bf16"]
    assert main([*args, f"run.out_dir={tmp_path}", f"data.videos=[{tmp_path / 'no-videos'}]"]) != 0
    err = capsys.readouterr().err
    assert "bf16 3D-convolution weight gradients" in err and "Traceback" not in err
