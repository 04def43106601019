"""The transfer experiment's plans: its arms, label fractions, seeds and budgets, the full one and the quick one
that checks the pipeline; fixed here, before any run."""

from __future__ import annotations

import dataclasses

from experiments.transfer.dataset import Scene

ARMS = ("scratch", "ctp_full", "ctp_simple")
FRACTIONS = (0.05, 0.2, 1.0)
SEEDS = (0, 1, 2)
PRETRAIN_SEED = 0
BUDGET_CPU_SECONDS = 2 * 45 * 60  # the 45 minutes on 2 cores


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one experiment."""

    per_class: dict[str, int]  # labelled videos per class in train, val and test
    pool: int  # unlabelled pretraining videos
    frames: int
    size: tuple[int, int]  # (width, height)
    pretrain_steps: dict[str, int]  # per pretrained arm
    finetune_steps: int  # per run, whatever the label fraction
    finetune_lr: dict[str, float]  # per arm: SGD, for batch 32 (the config's convention), scaled to batch 8
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    arms: tuple[str, ...] = ARMS
    scene: Scene = dataclasses.field(default_factory=Scene)
    linear_probe: bool = False  # a diagnostic: the encoders frozen, only the classifier trained


FULL = Plan(
    per_class={"train": 30, "val": 10, "test": 20},
    pool=240,
    frames=50,
    size=(128, 96),
    pretrain_steps={"ctp_full": 3000, "ctp_simple": 750},  # the simple game is learnt in fewer
    finetune_steps=600,
    # Chosen per arm on val (100 % labels, seed 0) from {0.01, 0.04, 0.16, 0.64}: docs/transfer.md.
    finetune_lr={"scratch": 0.01, "ctp_full": 0.16, "ctp_simple": 0.16},
    fractions=FRACTIONS,
    seeds=SEEDS,
    arms=ARMS,
)

QUICK = Plan(
    per_class={"train": 2, "val": 1, "test": 1},
    pool=4,
    frames=20,
    size=(96, 64),
    pretrain_steps={"ctp_full": 2, "ctp_simple": 2},
    finetune_steps=2,
    finetune_lr=dict.fromkeys(ARMS, 0.1),
    fractions=(0.5, 1.0),
    seeds=(0,),
)
