"""Distributed training on every torch that pyproject allows (≥ 2.10), emulated on this machine's torch.

torch 2.13 added DDP's `forward_sync_buffers` (and deprecated `broadcast_buffers`); the GPU machine runs
torch 2.11, whose DDP rejects the keyword. Two real gloo ranks train here with a DDP class that has the older
signature. The second step leaves rank 1 an empty batch, the epoch's tail. It runs fp32, as every CPU run does:
CPU bf16 is refused (trainer/runtime/execution.py), since oneDNN's bf16 weight gradients of 3D convolutions over 2-frame
maps are garbage (this run's layer3 here; the NaN once seen in it came from there). The bf16 BatchNorm exchange
with an empty rank is tested exactly in test_distributed_batchnorm.py.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import trainer.pretrain.loop
import trainer.runtime.distributed
from datagen.ctp.batch import Batch
from trainer.config import load_train_config
from trainer.pretrain.loop import Trainer
from trainer.runtime.distributed import Ranks, exchanged_input
from trainer.runtime.execution import Execution

FRAMES, SIZE, K = 8, 32, 2


class Torch211DDP(DistributedDataParallel):
    """DDP as torch 2.10–2.12 declare it: no `forward_sync_buffers`, so passing it raises TypeError."""

    passed: ClassVar[dict] = {}

    def __init__(self, module, device_ids=None, output_device=None, dim=0, broadcast_buffers=True):
        Torch211DDP.passed = {"broadcast_buffers": broadcast_buffers}
        super().__init__(
            module, device_ids=device_ids, output_device=output_device, dim=dim, broadcast_buffers=broadcast_buffers
        )


def batch(first: int, size: int) -> Batch:
    g = torch.Generator().manual_seed(first)
    corner = torch.rand(size, K, FRAMES, 2, generator=g) * (SIZE - 12)
    boxes = torch.cat([corner, corner + 4 + torch.rand(size, K, FRAMES, 2, generator=g) * 6], -1)
    keys = torch.stack([torch.zeros(size), torch.zeros(size), first + torch.arange(size)], 1).long()
    clips = torch.randint(0, 256, (size, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)
    return Batch(clips, boxes, torch.ones(size, K, FRAMES, dtype=torch.bool), keys)


def _rank(rank: int, store: str, out: dict) -> None:
    torch.set_num_threads(1)
    for module in (trainer.runtime.distributed, trainer.pretrain.loop):  # wherever the code under test looks DDP up
        if hasattr(module, "DistributedDataParallel"):
            module.DistributedDataParallel = Torch211DDP
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
    try:
        cfg = load_train_config(
            "tiny_cpu",
            [
                "data.batch_size=4",
                f"data.generation.clip.num_frames={FRAMES}",
                f"data.generation.clip.crop_size={SIZE}",
                "optim.name=sgd",
            ],
        )
        execution = Execution.resolve("cpu", "fp32", False)
        model = Trainer(cfg, execution, epoch_size=5, ranks=Ranks(rank, 2))
        assert Torch211DDP.passed == {"broadcast_buffers": False}  # the same meaning as forward_sync_buffers=False
        # Step 1: 4 samples, 2 per rank. Step 2, the epoch's tail: 1 sample, rank 1 gets none.
        losses = [model.train_step(rows(batch(0, 4), rank * 2, rank * 2 + 2), 4), model.train_step(_tail(rank), 1)]
        flat = torch.cat([p.detach().flatten() for p in model.network.parameters()])
        buffers = torch.cat([b.flatten().float() for b in model.network.buffers()])
        out[rank] = (torch.stack(losses).tolist() if rank == 0 else None, flat, buffers)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def rows(b: Batch, start: int, stop: int) -> Batch:
    return Batch(*(t[start:stop] for t in b.tensors()))


def _tail(rank: int) -> Batch:
    return rows(batch(4, 1), 0, 1 - rank)


def test_two_ranks_train_with_torch_211s_ddp_and_an_empty_rank(tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(f"file://{tmp_path / 'store'}", out), nprocs=2, join=True)
    losses, weights0, buffers0 = out[0]
    _, weights1, buffers1 = out[1]
    assert all(torch.isfinite(torch.tensor(step)).all() for step in losses), losses
    torch.testing.assert_close(weights1, weights0, rtol=0, atol=0)  # DDP averaged the gradients on both ranks
    torch.testing.assert_close(buffers1, buffers0, rtol=0, atol=0)  # synchronised BatchNorm, also for the empty rank


def test_an_empty_rank_exchanges_float32_statistics_like_the_others():
    empty = torch.zeros(0, 8, 2, 3, 3, dtype=torch.bfloat16)
    assert exchanged_input(empty).dtype == torch.float32 and exchanged_input(empty).shape == empty.shape
    full = torch.ones(2, 8, 2, 3, 3, dtype=torch.bfloat16)
    assert exchanged_input(full) is full  # non-empty ranks: batch_norm_stats accumulates in float32 already
    fp32 = torch.zeros(0, 8, 2, 3, 3)
    assert exchanged_input(fp32) is fp32
