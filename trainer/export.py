"""Export a pretrained encoder as a plain state dict for torchvision's own video ResNets.

The file holds the encoder only, without `fc` (pretraining has no classifier). Load it with:

    model = torchvision.models.video.r3d_18()        # or r2plus1d_18()
    model.fc = torch.nn.Identity()                   # or replace it with your own classifier after loading
    model.load_state_dict(torch.load(FILE), strict=True)

Strides are not weights: the standard constructor runs the same tensors with stage-4 spatial stride 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from trainer.checkpoint import FINETUNE_TASK, load_checkpoint, save_atomic
from trainer.encoders import torchvision_model

ENCODER_PREFIX = "encoder."


def encoder_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The encoder's tensors from a pretraining checkpoint, under torchvision's key names."""
    return {k[len(ENCODER_PREFIX) :]: v for k, v in checkpoint["model"].items() if k.startswith(ENCODER_PREFIX)}


def export_encoder(checkpoint_file: str | Path, out: str | Path) -> tuple[Path, bool]:
    """Write the encoder of `checkpoint_file` to `out`, after proving torchvision loads it strictly; returns the
    file and whether the checkpoint was a fine-tuned one (its encoder is then the fine-tuned encoder, no fc)."""
    checkpoint = load_checkpoint(checkpoint_file)
    encoder = checkpoint["config"]["model"]["encoder"]  # pretraining and fine-tuned checkpoints alike
    weights = encoder_state_dict(checkpoint)
    torchvision_model(encoder).load_state_dict(weights, strict=True)
    return save_atomic(weights, out), checkpoint.get("task") == FINETUNE_TASK


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a checkpoint's encoder as a torchvision state dict",
        description="Extract the pretrained encoder for downstream use. The result loads with strict=True into "
        "torchvision.models.video.r3d_18() / r2plus1d_18() after setting `model.fc = torch.nn.Identity()` "
        "(the file has no fc weights).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a pretraining checkpoint (ckpt-*.pt), a fine-tuned one (finetuned.pt: exports its fine-tuned encoder) "
        "or a run folder (its newest checkpoint)",
    )
    p.add_argument("--out", required=True, type=Path, help="output file, e.g. r3d18_ctp.pth")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    path, finetuned = export_encoder(args.checkpoint, args.out)
    kind = "fine-tuned checkpoint: its fine-tuned encoder (without the classifier)" if finetuned else "encoder"
    print(f"{kind} written to {path}")
