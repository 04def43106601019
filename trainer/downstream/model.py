"""The downstream classifier (encoder at standard strides → average pool → dropout → linear) and the files its
weights come from: an exported encoder, a pretraining checkpoint or a fine-tuned checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.export import ENCODER_PREFIX, encoder_state_dict
from trainer.model.encoders import Encoder, build_encoder
from trainer.runtime.checkpoint import FINETUNE_TASK, checkpoint_task, read_state, resolve_checkpoint

log = logging.getLogger(__name__)


class VideoClassifier(nn.Module):
    def __init__(self, encoder: Encoder, num_classes: int, dropout: float = 0.5, freeze_encoder: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.encoder.out_channels, num_classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.001)
        nn.init.zeros_(self.fc.bias)
        self.frozen = freeze_encoder  # linear evaluation: the encoder neither learns nor updates its statistics
        self.encoder.requires_grad_(not freeze_encoder)

    def train(self, mode: bool = True) -> VideoClassifier:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised clips → (B, classes) logits."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self.pool(self.encoder(clips)).flatten(1)
        return self.fc(self.dropout(features))


def is_finetuned(state: dict[str, Any]) -> bool:
    return checkpoint_task(state) == FINETUNE_TASK


def encoder_weights(path: str | Path) -> tuple[str | None, dict[str, torch.Tensor]]:
    """(encoder name if the file records it, encoder tensors under torchvision's key names) from an exported
    encoder (`ctp-train export`, or a torchvision video ResNet state dict: its `fc` is dropped), a pretraining
    checkpoint or a fine-tuned checkpoint."""
    state = read_state(resolve_checkpoint(path))
    if "model" in state and "config" in state:  # a pretraining or fine-tuned checkpoint
        return state["config"]["model"]["encoder"], encoder_state_dict(state)
    return None, {k: v for k, v in state.items() if not k.startswith(("fc.", ENCODER_PREFIX + "fc."))}


def load_encoder(name: str, weights: str | Path | None = None) -> Encoder:
    """A standard-stride encoder initialised from `weights` (randomly when None). A checkpoint records its
    encoder, which then decides the architecture; an exported state dict must fit `name`."""
    if weights is None:
        return build_encoder(name, pretraining=False)
    recorded, tensors = encoder_weights(weights)
    if recorded and recorded != name:  # the file's architecture wins; a person must know, the recipe is the config's
        log.warning(
            "%s holds a %s encoder, not the config's model.encoder=%s: fine-tuning the %s encoder with the rest of "
            "the config as it is (epochs, lr, clip size%s)",
            weights,
            recorded,
            name,
            recorded,
            "; a tiny encoder has its own recipe: --config tiny_cpu" if recorded == "tiny" else "",
        )
    encoder = build_encoder(recorded or name, pretraining=False)
    try:
        result = encoder.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # tensors of the wrong shape
        raise ValueError(
            f"{weights} does not fit a {encoder.name} encoder ({str(exc).splitlines()[-1].strip()}); "
            "set model.encoder to the encoder it was trained with"
        ) from None
    problems = [
        f"{what}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
        for what, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys))
        if keys
    ]
    if problems:
        raise ValueError(
            f"{weights} does not fit a {encoder.name} encoder ({'; '.join(problems)}); "
            "set model.encoder to the encoder it was trained with"
        )
    return encoder


def load_classifier(path: str | Path) -> tuple[VideoClassifier, tuple[str, ...], dict[str, Any]]:
    """A fine-tuned checkpoint (or its run folder) → (classifier with its weights, its class names, its config dict)."""
    state = read_state(resolve_checkpoint(path))
    if not is_finetuned(state):
        raise ValueError(
            f"{path} is not a fine-tuned checkpoint (make one with `ctp-train finetune`); "
            "retrieval takes exported encoders and pretraining checkpoints too"
        )
    config, classes = state["config"], tuple(state["classes"])
    model = VideoClassifier(
        build_encoder(config["model"]["encoder"], pretraining=False), len(classes), config["model"]["dropout"]
    )
    model.load_state_dict(state["model"])
    return model, classes, config
