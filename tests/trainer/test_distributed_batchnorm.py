"""SyncBatchNorm across two real gloo processes on CPU: it must behave as one BatchNorm over the global batch.

Each rank normalises its own rows of one batch; outputs, input gradients, summed parameter gradients and
running statistics are compared with a plain BatchNorm3d that sees the whole batch at once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainer.runtime.distributed import (
    CpuSyncBatchNorm,
    EmptySafeSyncBatchNorm,
    convert_sync_batchnorm,
    sync_batchnorm_layers,
)

# (rank 0's rows, rank 1's rows) of a batch of 5: an uneven split, and a rank with an empty batch.
SPLITS = [((0, 3), (3, 5)), ((0, 5), (5, 5))]


def batch_norm_problem() -> tuple[torch.Tensor, torch.Tensor, nn.BatchNorm3d]:
    """The global batch, a fixed weighting of the outputs (the loss is their weighted sum), a BatchNorm."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 3, 2, 3, 3, generator=g) * 3 + 1.5
    weights = torch.randn(x.shape, generator=g)
    bn = nn.BatchNorm3d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(3, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(3, generator=g))
    return x, weights, bn


def _check_rank(rank: int, init_method: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        for split in SPLITS:
            start, stop = split[rank]
            x, weights, reference = batch_norm_problem()
            full = x.clone().requires_grad_()
            expected = reference(full)
            (expected * weights).sum().backward()

            synced = convert_sync_batchnorm(nn.Sequential(batch_norm_problem()[2]), torch.device("cpu"))[0]
            assert type(synced) is CpuSyncBatchNorm
            part = x[start:stop].clone().requires_grad_()
            out = synced(part)
            (out * weights[start:stop]).sum().backward()
            for p in synced.parameters():  # each rank holds its share of the parameter gradients: sum them
                dist.all_reduce(p.grad)

            torch.testing.assert_close(out, expected[start:stop].detach())
            torch.testing.assert_close(part.grad, full.grad[start:stop])  # the cross-rank terms of backward
            torch.testing.assert_close(synced.weight.grad, reference.weight.grad)
            torch.testing.assert_close(synced.bias.grad, reference.bias.grad)
            torch.testing.assert_close(synced.running_mean, reference.running_mean)
            torch.testing.assert_close(synced.running_var, reference.running_var)  # unbiased, as torch keeps it
        # bf16 input (CPU autocast), rank 1 empty: statistics still exchanged in float32, so the running
        # statistics are those of the global batch's values exactly (a bf16 sum of 90 values is off by ~1e-2).
        x, _, reference = batch_norm_problem()
        x = x.bfloat16()
        reference(x.float())
        synced = convert_sync_batchnorm(nn.Sequential(batch_norm_problem()[2]), torch.device("cpu"))[0]
        out = synced(x[:5] if rank == 0 else x[:0])
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(synced.running_mean, reference.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(synced.running_var, reference.running_var, rtol=1e-6, atol=1e-6)
        dist.barrier()  # neither rank tears down while the other still talks (gloo aborts a process whose peer left)
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_on_gloo_equals_batchnorm_over_the_global_batch(tmp_path):
    # A file store, not tcp://: with TCP, rank 0 hosts the store, and when it exits first rank 1's store
    # client could abort the process (seen once in a full run: rank 1 died with SIGABRT after the checks).
    mp.spawn(_check_rank, args=(f"file://{tmp_path / 'store'}",), nprocs=2, join=True)


def test_outside_a_process_group_it_is_plain_batchnorm():
    x, _, reference = batch_norm_problem()
    synced = convert_sync_batchnorm(nn.Sequential(batch_norm_problem()[2]), torch.device("cpu"))[0]
    torch.testing.assert_close(synced(x), reference(x), rtol=0, atol=0)
    torch.testing.assert_close(synced.running_var, reference.running_var, rtol=0, atol=0)
    assert synced.state_dict().keys() == reference.state_dict().keys()


def test_conversion_keeps_the_weights_and_picks_torchs_module_off_cpu():
    def network() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv3d(3, 4, 1), nn.BatchNorm3d(4), nn.Sequential(nn.BatchNorm3d(4)))

    for device, kind in (("cpu", CpuSyncBatchNorm), ("cuda", EmptySafeSyncBatchNorm)):  # converting needs no GPU
        converted = convert_sync_batchnorm(network(), torch.device(device))
        assert [type(m) for m in converted.modules() if "BatchNorm" in type(m).__name__] == [kind, kind]
        assert sync_batchnorm_layers(converted) == 2
        reference = network().state_dict()
        assert converted.state_dict().keys() == reference.keys()
        assert all(torch.equal(t, reference[k]) for k, t in converted.state_dict().items())


def _distribute_rank(rank: int, init_method: str) -> None:
    from trainer.downstream.model import VideoClassifier
    from trainer.model.encoders import build_encoder
    from trainer.runtime.distributed import Ranks
    from trainer.runtime.execution import Execution, distribute

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        execution = Execution.resolve("cpu")
        for sync, expected in ((True, 12), (False, 0)):  # the tiny classifier's 12 BatchNorms
            classifier = VideoClassifier(build_encoder("tiny", pretraining=False), 3)
            network, model = distribute(classifier, execution, Ranks(rank, 2), sync_batchnorm=sync)
            assert isinstance(model, nn.parallel.DistributedDataParallel) and model.module is network
            assert sync_batchnorm_layers(network) == expected
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fine_tuning_and_pretraining_sync_batchnorm_under_torchrun_on_cpu_too(tmp_path):
    """One rule (trainer.runtime.execution.distribute): fine-tuning on gloo synchronised no BatchNorm before."""
    mp.spawn(_distribute_rank, args=(f"file://{tmp_path / 'store'}",), nprocs=2, join=True)
