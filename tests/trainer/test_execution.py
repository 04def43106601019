"""Where the network runs: CPU training refuses bf16 (wrong oneDNN gradients), auto picks fp32 there."""

from __future__ import annotations

import pytest
import torch

from trainer.cli import main
from trainer.runtime.execution import Execution


def test_cpu_refuses_bf16_and_says_what_to_use():
    with pytest.raises(ValueError, match="run.precision=fp32"):
        Execution.resolve("cpu", "bf16")
    assert Execution.resolve("cpu", "auto") == Execution(torch.device("cpu"), False, False, False)
    assert not Execution.resolve("cpu", "fp32", True).bf16


@pytest.mark.parametrize(
    ("precision", "convolutions", "matmuls"),
    [("fp32", "ieee", "ieee"), ("tf32", "tf32", "tf32"), ("auto", "ieee", "ieee")],
)
def test_fp32_means_ieee_fp32_and_tf32_is_its_own_choice(precision, convolutions, matmuls):
    """cuDNN runs fp32 convolutions as TF32 unless told otherwise: run.precision=fp32 (the paper's numerics)
    turns that off for convolutions and matmuls; tf32 turns both on. The flags are process-wide and need no GPU
    to set (on CPU auto is fp32)."""
    execution = Execution.resolve("cpu", precision)
    assert execution.describe() == f"cpu {'tf32' if precision == 'tf32' else 'fp32'}"
    for other in ("tf32", "fp32"):  # whatever an earlier run in the process set
        Execution.resolve("cpu", other).prepare(torch.nn.Linear(1, 1))
        execution.prepare(torch.nn.Linear(1, 1))
        assert torch.backends.cudnn.conv.fp32_precision == convolutions
        assert torch.backends.cuda.matmul.fp32_precision == matmuls
    bf16 = Execution(torch.device("cpu"), True, False)  # as on CUDA: torch's defaults for the ops left in fp32
    bf16.prepare(torch.nn.Linear(1, 1))
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == ("tf32", "ieee")


def test_ctp_train_reports_the_refusal_without_a_traceback(tmp_path, capsys):
    args = ["pretrain", "--config", "tiny_cpu", "run.device=cpu", "run.precision=bf16"]
    assert main([*args, f"run.out_dir={tmp_path}", f"data.videos=[{tmp_path / 'no-videos'}]"]) != 0
    err = capsys.readouterr().err
    assert "bf16 3D-convolution weight gradients" in err and "Traceback" not in err
