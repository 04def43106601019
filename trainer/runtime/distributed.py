"""torch.distributed for the training loops: torchrun's environment, disjoint shards, gathering results,
and BatchNorm synchronised across ranks, also on CPU (gloo).

Without torchrun (no WORLD_SIZE) everything degrades to one process and no process group is created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import inspect
import os
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from trainer.runtime.signals import Stopped

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """This process's place in a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK), or the only rank without one."""
        return cls(
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )

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
        out: list[T] = [None] * self.world_size  # type: ignore[list-item]  # placeholders all_gather_object fills
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value: T | None) -> T:
        """Rank 0's `value` on every rank (the others may pass None)."""
        if not self.distributed:
            return cast(T, value)
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return cast(T, box[0])


@contextlib.contextmanager
def process_group(requested_device: str = "auto", timeout_minutes: int = 30) -> Iterator[Ranks]:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) for the duration; a no-op alone."""
    ranks = Ranks.from_env()
    if not ranks.distributed:
        yield ranks
        return
    device = torch.device(ranks.device(requested_device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(minutes=timeout_minutes),
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield ranks
    except Stopped:
        dist.barrier()  # a stop is agreed by every rank: they leave together, as at the end
        raise
    else:
        dist.barrier()  # no rank tears down while a peer is still talking: gloo aborts a process whose peer left
    finally:
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with autograd: the gradient of every rank's input is the sum of the ranks' output gradients.

    Plain `dist.all_reduce` rather than torch's functional collectives: their registry of in-flight work kept
    the gloo process group alive past `destroy_process_group`, and its worker thread then aborted the process
    at interpreter exit (SIGABRT, "terminate called without an active exception") in one run of 5–30."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


class CpuSyncBatchNorm(_BatchNorm):
    """SyncBatchNorm for CPU tensors (gloo), which torch's SyncBatchNorm and DDP refuse (their kernels are CUDA's).

    The batch statistics are all-reduced with autograd (sums, then squared deviations from the global mean), so
    every rank normalises with the mean and variance of the whole global batch and the backward pass carries the
    cross-rank terms, as torch's CUDA path does; a rank may bring an empty batch. Statistics are exchanged in
    float32 whatever the input's dtype (under bf16 autocast a count of 800,000 values would not even be exact).
    Outside a multi-rank process group, or in eval mode, it is a plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        if self.momentum is None or not self.track_running_stats:
            raise ValueError("CpuSyncBatchNorm needs track_running_stats and a fixed momentum")
        x = input.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.size(1)], dtype=x.dtype)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
        assert tracked is not None and running_mean is not None and running_var is not None  # track_running_stats
        with torch.no_grad():
            tracked.add_(1)
            running_mean.lerp_(mean, self.momentum)
            running_var.lerp_(var * n / (n - 1).clamp(min=1), self.momentum)  # unbiased, as torch keeps it
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        out = out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out
        return out.to(input.dtype)


def exchanged_input(input: torch.Tensor) -> torch.Tensor:
    """What a rank hands torch's SyncBatchNorm so that every rank exchanges statistics of one dtype.

    A non-empty rank all-gathers float32 statistics (`batch_norm_stats` accumulates in float32, also for bf16
    input); an empty rank all-gathers zeros of its input's dtype. Under bf16 autocast that is 2 bytes a value
    against 4, which NCCL does not check: the step hangs until the timeout or averages garbage. An empty
    input in float32 costs nothing and makes the zeros float32 too, forward and backward."""
    return input.float() if input.numel() == 0 and input.dtype != torch.float32 else input


class EmptySafeSyncBatchNorm(nn.SyncBatchNorm):
    """torch's SyncBatchNorm with the rule above: the epoch's tail may leave ranks an empty batch."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(exchanged_input(input))


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` with every BatchNorm synchronised across ranks: torch's SyncBatchNorm on accelerators,
    `CpuSyncBatchNorm` on CPU. Parameters, buffers and state-dict keys stay those of the BatchNorms."""
    if device.type != "cpu":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    kind = CpuSyncBatchNorm if device.type == "cpu" else EmptySafeSyncBatchNorm
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            m.__class__ = kind  # same state, only the forward differs: nothing to copy
    return module


def distributed_data_parallel(module: nn.Module, device: torch.device, sync_buffers: bool = True) -> nn.Module:
    """DDP on this rank's device; `sync_buffers=False` skips broadcasting buffers before every forward (right
    when BatchNorm is synchronised: the buffers are equal on every rank already).

    torch ≥ 2.13 names that `forward_sync_buffers` and deprecates `broadcast_buffers`; older releases, which
    pyproject allows, only know `broadcast_buffers`, which there also skips the buffers' broadcast at
    construction: harmless, since every rank builds the network from the same seed or loads the same checkpoint."""
    options: dict[str, Any] = {}
    if not sync_buffers:
        known = inspect.signature(DistributedDataParallel.__init__).parameters
        options["forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"] = False
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None, **options)


def sync_batchnorm_layers(module: nn.Module) -> int:
    """How many BatchNorm layers of `module` synchronise across ranks."""
    return sum(isinstance(m, (nn.SyncBatchNorm, CpuSyncBatchNorm)) for m in module.modules())
