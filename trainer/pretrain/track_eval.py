"""Tracking evaluation: mean IoU of predicted trajectories on generated clips, against the first-box baseline.

The mean runs over every (trajectory, frame) pair except frame 0, whose box is the query itself. The
baseline predicts the query box for every frame; a network that tracks nothing scores about the same.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from common.configfile import from_dict
from datagen.ctp.batch import Batch
from datagen.generator import Generator
from datagen.video.manifest import resolve_videos
from trainer.config import TrainConfig
from trainer.model.loss import box_iou, decode, first_box_baseline
from trainer.model.network import CtPNetwork
from trainer.pretrain.sources import held_out_batches
from trainer.runtime.checkpoint import FINETUNE_TASK, checkpoint_task, load_checkpoint, resolve_checkpoint
from trainer.runtime.execution import Execution


@dataclasses.dataclass(frozen=True)
class TrackingScore:
    miou: float
    baseline_miou: float
    clips: int


@torch.no_grad()
def predict_boxes(network: torch.nn.Module, batch: Batch, execution: Execution) -> torch.Tensor:
    """Decoded (B, K, T, 4) trajectories for a batch, queried with each trajectory's frame-0 box."""
    clips, boxes = execution.inputs(batch)
    with execution.autocast():
        targets = network(clips, boxes[:, :, 0])
    return decode(targets.float(), boxes[:, :, 0]).cpu()


def evaluate(
    network: torch.nn.Module, batches: list[Batch], execution: Execution
) -> tuple[TrackingScore, list[torch.Tensor]]:
    """Score `network` (in eval mode, restored afterwards) on `batches`; also returns the predictions."""
    was_training = network.training
    network.eval()
    try:
        predictions = [predict_boxes(network, b, execution) for b in batches]
    finally:
        network.train(was_training)
    truth = torch.cat([b.boxes for b in batches]).cpu()  # batches may live on the generator's device
    predicted = torch.cat(predictions)
    miou = box_iou(predicted, truth)[..., 1:].mean().item()
    baseline = box_iou(first_box_baseline(truth), truth)[..., 1:].mean().item()
    return TrackingScore(miou, baseline, len(truth)), predictions


def network_from_checkpoint(state: dict, execution: Execution) -> tuple[CtPNetwork, TrainConfig]:
    """Rebuild the pretraining network of a checkpoint, ready on `execution`'s device."""
    cfg = from_dict(TrainConfig, state["config"])
    network = CtPNetwork(cfg.model.encoder, cfg.data.generation.clip.num_frames, cfg.model.head_hidden)
    network.load_state_dict(state["model"])
    return execution.prepare(network), cfg


def score_checkpoint(
    checkpoint: str | Path,
    videos: list[str],
    clips: int = 256,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "auto",
) -> tuple[TrackingScore, Path, int]:
    """(the score, the checkpoint file, its step) of a checkpoint or run folder on `clips` clips generated from
    `videos` with the checkpoint's own generation config."""
    execution = Execution.resolve(device)
    path = resolve_checkpoint(checkpoint)  # a run folder → the file it stands for
    state = load_checkpoint(path)
    if checkpoint_task(state) == FINETUNE_TASK:
        raise ValueError(
            f"{path} is a fine-tuned checkpoint (a classifier, no CtP head to track with): give track-eval a "
            f"pretraining checkpoint (ckpt-*.pt) or its run folder; `ctp-train eval --checkpoint {path}` scores this one"
        )
    network, cfg = network_from_checkpoint(state, execution)
    generator = Generator(resolve_videos(videos), cfg.data.generation, device=execution.device)
    score, _ = evaluate(network, held_out_batches(generator, seed, clips, batch_size), execution)
    return score, path, state["step"]
