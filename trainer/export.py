"""Export a pretrained encoder as a plain state dict for torchvision's own video ResNets.

The file holds the encoder only, without `fc` (pretraining has no classifier). Load it with:

    model = torchvision.models.video.r3d_18()        # or r2plus1d_18()
    model.fc = torch.nn.Identity()                   # or replace it with your own classifier after loading
    model.load_state_dict(torch.load(FILE), strict=True)

Strides are not weights: the standard constructor runs the same tensors with stage-4 spatial stride 2.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.model.encoders import torchvision_model
from trainer.runtime.checkpoint import (
    FINETUNE_TASK,
    checkpoint_task,
    damage,
    is_checkpoint_name,
    load_checkpoint,
    resolve_checkpoint,
    save_atomic,
)

ENCODER_PREFIX = "encoder."


def encoder_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The encoder's tensors from a pretraining checkpoint, under torchvision's key names."""
    return {k[len(ENCODER_PREFIX) :]: v for k, v in checkpoint["model"].items() if k.startswith(ENCODER_PREFIX)}


def export_encoder(checkpoint_file: str | Path, out: str | Path, force: bool = False) -> tuple[Path, bool]:
    """Write the encoder of `checkpoint_file` to `out`, after proving torchvision loads it strictly; returns the
    file and whether the checkpoint was a fine-tuned one (its encoder is then the fine-tuned encoder, no fc).

    Never onto a checkpoint (the source or any other: a run could no longer resume), nor onto another existing
    file unless `force`."""
    source, out = resolve_checkpoint(checkpoint_file), Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: name the file to write, e.g. {out / 'encoder.pth'}")
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the checkpoint being exported: write the encoder to another file")
    if is_checkpoint_name(out) or (out.is_file() and damage(out) is None):
        raise ValueError(f"--out {out} is a ctp-train checkpoint: a run resumes from it; write the encoder elsewhere")
    if out.exists() and not force:
        raise FileExistsError(f"--out {out} exists: pass --force to replace it, or name another file")
    checkpoint = load_checkpoint(source)
    encoder = checkpoint["config"]["model"]["encoder"]  # pretraining and fine-tuned checkpoints alike
    weights = encoder_state_dict(checkpoint)
    torchvision_model(encoder).load_state_dict(weights, strict=True)
    return save_atomic(weights, out), checkpoint_task(checkpoint) == FINETUNE_TASK
