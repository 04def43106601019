"""Tracking evaluation: mean IoU of predicted trajectories on generated clips, against the first-box baseline.

The mean runs over every (trajectory, frame) pair except frame 0, whose box is the query itself. The
baseline predicts the query box for every frame; a network that tracks nothing scores about the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from datagen.batch import Batch
from datagen.config import from_dict
from datagen.generator import Generator
from datagen.manifest import resolve_videos
from trainer.checkpoint import load_checkpoint, resolve_checkpoint
from trainer.config import TrainConfig
from trainer.ctp_model import CtPNetwork
from trainer.data import held_out_batches
from trainer.execution import Execution
from trainer.loss import box_iou, decode, first_box_baseline


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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "track-eval",
        help="tracking mIoU of a pretrained checkpoint on generated clips",
        description="Generate held-out CtP clips from VIDEOS (with the checkpoint's generation config) and "
        "report the mean IoU of the predicted trajectories beside the first-box baseline.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a pretraining checkpoint (ckpt-*.pt) or a run folder (its newest checkpoint)",
    )
    p.add_argument("--videos", nargs="+", required=True, help="video files, folders or manifests")
    p.add_argument("--clips", type=int, default=256, help="number of generated clips (default 256)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--json", type=Path, help="also write the result as JSON (keys miou, baseline_miou, clips)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    execution = Execution.resolve(args.device)
    checkpoint = resolve_checkpoint(args.checkpoint)  # a run folder → the file it stands for
    state = load_checkpoint(checkpoint)
    network, cfg = network_from_checkpoint(state, execution)
    generator = Generator(resolve_videos(args.videos), cfg.data.generation, device=execution.device)
    batches = held_out_batches(generator, args.seed, args.clips, args.batch_size)
    score, _ = evaluate(network, batches, execution)
    print(f"tracking mIoU {score.miou:.4f}  first-box baseline {score.baseline_miou:.4f}  ({score.clips} clips)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = dataclasses.asdict(score) | {"checkpoint": str(checkpoint), "step": state["step"]}
        args.json.write_text(json.dumps(result, indent=1) + "\n")
