"""The optimiser and its step schedule of a config's `optim` section, for pretraining and fine-tuning alike."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from trainer.config import OptimConfig


def build_optimizer(parameters: Iterable[torch.nn.Parameter], optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's), or AdamW (short CPU runs), at the run's scaled learning rate `lr`."""
    if optim.name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(parameters, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> torch.optim.lr_scheduler.MultiStepLR:
    """The learning rate multiplied by `gamma` at each of the `milestones` epochs (stepped once per epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(optim.milestones), gamma=optim.gamma)
