"""The distributed trainer on every torch the package declares (≥ 2.10), emulated on this machine's torch.

DDP's `forward_sync_buffers` appeared in torch 2.13: two real gloo ranks train with a DDP class whose
signature is the older one, including an epoch tail that leaves rank 1 an empty batch. The dtype rule that
keeps an empty rank's SyncBatchNorm collectives in step with the others is checked here too (its NCCL path
needs a GPU).
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import trainer.distributed
from datagen.batch import Batch
from trainer.config import load_train_config
from trainer.distributed import EmptySafeSyncBatchNorm, Ranks, statistics_dtype
from trainer.execution import Execution
from trainer.pretrain import Trainer

FRAMES, SIZE = 8, 32


class TorchBefore213DataParallel(DistributedDataParallel):
    """DDP as torch 2.10–2.12 spell it: no `forward_sync_buffers` keyword (a TypeError, as there)."""

    def __init__(self, module: nn.Module, device_ids=None, broadcast_buffers: bool = True) -> None:
        super().__init__(module, device_ids=device_ids, broadcast_buffers=broadcast_buffers)


def _batch(cfg, first: int, count: int) -> Batch:
    k = cfg.data.generation.trajectory.num_trajectories
    g = torch.Generator().manual_seed(first)
    clips = torch.randint(0, 256, (count, FRAMES, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)
    start = torch.rand(count, k, 1, 2, generator=g) * 12
    motion = torch.linspace(0, 6, FRAMES).view(1, 1, FRAMES, 1)
    corner = start + motion
    boxes = torch.cat([corner, corner + 10], dim=-1)
    keys = torch.tensor([[0, 0, i] for i in range(first, first + count)], dtype=torch.int64).view(count, 3)
    return Batch(clips, boxes, torch.ones(count, k, FRAMES, dtype=torch.bool), keys)


def _train_rank(rank: int, init_method: str) -> None:
    torch.set_num_threads(1)
    trainer.distributed.DistributedDataParallel = TorchBefore213DataParallel  # this process's torch is "older"
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        cfg = load_train_config("tiny_cpu", ["data.batch_size=4", f"data.generation.clip.num_frames={FRAMES}",
                                             f"data.generation.clip.crop_size={SIZE}", "optim.name=sgd"])
        trainer_ = Trainer(cfg, Execution.resolve("cpu"), epoch_size=5, ranks=Ranks(rank, 2))
        assert type(trainer_.model) is TorchBefore213DataParallel
        before = [p.detach().clone() for p in trainer_.network.parameters()]
        # 5 samples, 2 per rank: a full step, then the tail's single sample on rank 0 and nothing on rank 1.
        for first, global_batch in ((0, 4), (4, 1)):
            mine = Ranks(rank, 2).split(range(first, first + global_batch))
            batch = _batch(cfg, mine[0], len(mine)) if mine else _batch(cfg, 0, 0)
            losses = trainer_.train_step(batch, global_batch=global_batch)
            assert torch.isfinite(losses).all()
        state = [t.detach() for t in trainer_.network.state_dict().values()]
        gathered = Ranks(rank, 2).gather(state)
        for mine_, theirs in zip(*gathered):  # DDP and synchronised BatchNorm keep the ranks identical
            assert torch.equal(mine_, theirs)
        assert any(not torch.equal(a, b) for a, b in zip(before, trainer_.network.parameters()))  # it trained
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_with_the_ddp_signature_of_torch_before_2_13(tmp_path):
    mp.spawn(_train_rank, args=(f"file://{tmp_path / 'store'}",), nprocs=2, join=True)


@pytest.mark.parametrize("dtype, expected", [(torch.bfloat16, torch.float32), (torch.float16, torch.float32),
                                             (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_an_empty_rank_sends_statistics_in_the_dtype_the_other_ranks_send(dtype, expected):
    # torch's SyncBatchNorm: a non-empty rank all-gathers batch_norm_stats' output (accumulate type: float32 for
    # half types), an empty rank zeros of its input's dtype. The module hands an empty input over in this dtype.
    assert statistics_dtype(dtype) == expected
    bn = EmptySafeSyncBatchNorm(3)
    out = bn(torch.zeros(0, 3, 2, 2, 2, dtype=dtype))  # outside a process group: plain BatchNorm, same dtype back
    assert out.shape == (0, 3, 2, 2, 2) and out.dtype == dtype
