"""Where and how the network runs: device, autocast precision and memory layout, with CUDA-aware defaults."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TypeVar

import torch
from torch import nn

from datagen.ctp.batch import Batch
from trainer.config import RunConfig
from trainer.model.network import normalise
from trainer.runtime.distributed import Ranks, convert_sync_batchnorm, distributed_data_parallel

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

# Found on torch 2.14.1 (oneDNN 3.12, AVX512-BF16 CPU): bf16 3D-convolution weight gradients are garbage whenever
# the feature map has 2 frames (kernel 3, padding 1), e.g. R3D-18's layer4 at 16 input frames; checks/cpu_bf16_check.py
# measures it on any machine. Forward passes are right, so only the gradients, and every step's update, are wrong.
CPU_BF16_REFUSED = (
    "run.precision=bf16 on CPU: this torch's oneDNN computes wrong bf16 3D-convolution weight gradients (errors "
    "up to 1e36, sometimes NaN) for feature maps of 2 frames, as R3D-18's last stage has; CPU runs use fp32: set "
    "run.precision=fp32 or auto (python -m checks.cpu_bf16_check shows the errors on this machine)"
)


def set_fp32_math(convolutions: str, matmuls: str) -> None:
    """How CUDA computes fp32 convolutions and matmuls ("ieee" or "tf32"), process-wide; the API of torch >= 2.9,
    else the one before it (a torch mixing both refuses to tell what is set)."""
    cudnn = torch.backends.cudnn
    if hasattr(cudnn, "conv"):
        cudnn.conv.fp32_precision = convolutions
        torch.backends.cuda.matmul.fp32_precision = matmuls
    else:
        cudnn.allow_tf32 = convolutions == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = matmuls == "tf32"


@dataclasses.dataclass(frozen=True)
class Execution:
    device: torch.device
    bf16: bool  # autocast the forward pass to bfloat16
    channels_last: bool  # channels_last_3d activations (cuDNN's fast path for 3D convs in bf16)
    tf32: bool | None = None  # fp32 convolutions and matmuls on TF32 tensor cores; None: torch's default (bf16 runs)

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto", channels_last: bool | None = None) -> Execution:
        """`auto` means CUDA with bf16 + channels_last_3d when a GPU is present, else CPU fp32 (bf16 is refused there)."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"run.device={device} but no CUDA device is available; use run.device=cpu")
        on_cuda = dev.type == "cuda"
        if dev.type == "cpu" and precision == "bf16":
            raise ValueError(CPU_BF16_REFUSED)
        bf16 = on_cuda if precision == "auto" else precision == "bf16"
        tf32 = None if bf16 else precision == "tf32"
        return cls(dev, bf16, on_cuda if channels_last is None else channels_last, tf32)

    @classmethod
    def for_rank(cls, ranks: Ranks, run: RunConfig) -> Execution:
        """A config's `run` settings on this rank's device (under torchrun, its local GPU)."""
        return cls.resolve(ranks.device(run.device), run.precision, run.channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 batch → normalised clips and float boxes on this device (normalised here, not upstream)."""
        clips = normalise(batch.clips.to(self.device, non_blocking=True), self.channels_last)
        return clips, batch.boxes.to(self.device, non_blocking=True)

    def prepare(self, module: ModuleT) -> ModuleT:
        """Move a module here, in the memory layout the inputs use (on CUDA, cuDNN autotunes the fixed shapes),
        and set how fp32 convolutions and matmuls compute on CUDA: IEEE for fp32, TF32 for tf32, torch's default
        (TF32 convolutions, IEEE matmuls) for the ops bf16 autocast leaves in fp32.

        `cuda:N` also becomes the current device: streams, cuDNN handles and kernels created without an explicit
        device (torch.compile's, torchvision's ops) would otherwise start a context on GPU 0 and run there."""
        set_fp32_math(*{None: ("tf32", "ieee"), True: ("tf32", "tf32"), False: ("ieee", "ieee")}[self.tf32])
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            if self.device.index is not None:
                torch.cuda.set_device(self.device)
        module = module.to(self.device)
        return module.to(memory_format=torch.channels_last_3d) if self.channels_last else module

    def describe(self) -> str:
        precision = "bf16" if self.bf16 else "tf32" if self.tf32 else "fp32"
        return f"{self.device} {precision}{' channels_last_3d' if self.channels_last else ''}"


def distribute(
    module: nn.Module, execution: Execution, ranks: Ranks, sync_batchnorm: bool = True
) -> tuple[nn.Module, nn.Module]:
    """(the network on this rank's device, what a training step calls: the network, DDP-wrapped under torchrun).

    The one rule of pretraining and fine-tuning: under torchrun BatchNorm is synchronised across the ranks
    (`run.sync_batchnorm`, default on; CPU/gloo too, with `CpuSyncBatchNorm`), so it normalises with the global
    batch's statistics and a run trains the same network on 1 rank or N; the buffers are then equal on every
    rank, and DDP need not broadcast them before each forward."""
    sync = ranks.distributed and sync_batchnorm
    network = execution.prepare(convert_sync_batchnorm(module, execution.device) if sync else module)
    if not ranks.distributed:
        return network, network
    return network, distributed_data_parallel(network, execution.device, sync_buffers=not sync)
