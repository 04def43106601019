"""torch.distributed for the downstream loops: torchrun's environment, disjoint shards and gathering results.

Without torchrun (no WORLD_SIZE) everything degrades to one process and no process group is created.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

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
