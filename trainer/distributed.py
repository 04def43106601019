"""torch.distributed for the training loops: torchrun's environment, disjoint shards, gathering results,
and SyncBatchNorm that also works on CPU (gloo).

Without torchrun (no WORLD_SIZE) everything degrades to one process and no process group is created.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
from torch import nn

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: str) -> str:
        """The device of this rank: with several ranks on CUDA, each takes the GPU of its local rank."""
        wants_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
        return f"cuda:{self.local_rank}" if self.distributed and wants_cuda else requested

    def shard(self, size: int) -> list[int]:
        """This rank's sample indices of an epoch of `size`: every world_size-th of 0..padded-1, where the
        epoch is padded to a multiple of the world size so all ranks take the same number of steps (a
        padded index i ≥ size is a further sample of video i mod size, with its own random clip)."""
        padded = -(-size // self.world_size) * self.world_size
        return list(range(self.rank, padded, self.world_size))

    def split(self, indices: Sequence[int]) -> list[int]:
        """This rank's part of `indices`, without padding: every world_size-th, from its rank on.

        Consecutive runs of world_size × b indices (one global batch of b per rank) thus give every rank
        b of them, whatever the world size; only the last, partial global batch splits unevenly."""
        return list(indices[self.rank :: self.world_size])

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank (picklable objects)."""
        if not self.distributed:
            return [value]
        out: list[T] = [None] * self.world_size  # type: ignore[list-item]
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


@contextlib.contextmanager
def process_group(requested_device: str = "auto", timeout_minutes: int = 30) -> Iterator[Ranks]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) for the duration; a no-op alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ranks = Ranks(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not ranks.distributed:
        yield ranks
        return
    device = torch.device(ranks.device(requested_device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes),
                            device_id=device if device.type == "cuda" else None)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


class SyncBatchNorm(nn.SyncBatchNorm):
    """torch's SyncBatchNorm, plus the CPU case it refuses (its fused kernels are CUDA-only).

    On CPU the batch statistics are all-reduced with autograd (sums, then squared deviations from the
    global mean), so every rank normalises with the mean and variance of the whole global batch and the
    backward pass carries the cross-rank terms, exactly as torch's CUDA path does. A rank may bring an
    empty batch. On CUDA, or outside a multi-rank group, or in eval mode, this is torch's module as is.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.device.type != "cpu" or not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        group = self.process_group or dist.group.WORLD
        if dist.get_world_size(group) == 1:
            return super().forward(input)
        if self.momentum is None or not self.track_running_stats:
            raise ValueError("the CPU SyncBatchNorm supports track_running_stats with a fixed momentum only")
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // input.size(1)], dtype=input.dtype)
        totals = dist_autograd.all_reduce(torch.cat([input.sum(dims), count]), group=group)
        n = totals[-1]
        mean = totals[:-1] / n
        centred = input - mean.view(shape)
        var = dist_autograd.all_reduce((centred * centred).sum(dims), group=group) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1).clamp(min=1), self.momentum)  # unbiased, as torch keeps it
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm of `module` as a `SyncBatchNorm` (same parameters, buffers and state-dict keys)."""
    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for m in module.modules():
        if type(m) is nn.SyncBatchNorm:
            m.__class__ = SyncBatchNorm  # adds only behaviour: no state to convert
    return module
