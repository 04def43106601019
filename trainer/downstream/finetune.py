"""`ctp-train finetune`: action recognition from a pretrained encoder (or random init, the baseline).

The paper's recipe is the default (docs/spec.md): SGD lr 0.01 for batch 32, momentum 0.9, weight decay 5e-4,
150 epochs with ×0.1 at 60 and 120, gradient-norm clip 40, dropout 0.5. Training clips are drawn per
(seed, epoch, index) like pretraining samples, decoded in-process; under torchrun each rank takes a
disjoint shard of every epoch and the gradients are averaged by DDP. The checkpoint is written after every
epoch (resume continues from the next one exactly: the clips are keyed and dropout is reseeded per epoch),
and the validation results are written next to it as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from datagen.config import differences, to_dict, to_yaml
from trainer.checkpoint import FINETUNED_NAME, save_atomic
from trainer.ctp_model import normalise
from trainer.data import InProcessSource
from trainer.distributed import Ranks, convert_sync_batchnorm, distributed_data_parallel, process_group
from trainer.downstream.clips import ClipBatch, TrainClips
from trainer.downstream.config import DownstreamConfig, load_downstream_config, presets
from trainer.downstream.datasets import LabelledSet, label_subset, open_split
from trainer.downstream.evaluate import evaluate, summary_table
from trainer.downstream.model import FINETUNE_TASK, VideoClassifier, load_encoder, read_state
from trainer.downstream.report import write_json
from trainer.execution import Execution
from trainer.metrics_log import MetricsLog
from trainer.progress import eta, show_bars
from trainer.rundir import claim_run_dir
from trainer.signals import stop_on_signals

log = logging.getLogger(__name__)

CHECKPOINT_NAME = FINETUNED_NAME
# Sections that decide the clips and the network: a resumed run must not change them.
_RESUME_INVARIANTS = ("model", "data", "clips")


class FineTuner:
    """The classifier (DDP-wrapped when distributed), its optimiser and schedule; one SGD step at a time."""

    def __init__(self, cfg: DownstreamConfig, classes: tuple[str, ...], execution: Execution, ranks: Ranks) -> None:
        torch.manual_seed(cfg.data.seed)  # the same initial classifier on every rank and in every run
        encoder = load_encoder(cfg.model.encoder, cfg.model.init or None)
        if encoder.name != cfg.model.encoder:
            log.info("%s holds a %s encoder: model.encoder=%s", cfg.model.init, encoder.name, encoder.name)
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder=encoder.name))
        model: nn.Module = VideoClassifier(encoder, len(classes), cfg.model.dropout)
        if ranks.distributed and execution.device.type == "cuda" and cfg.run.sync_batchnorm:
            model = convert_sync_batchnorm(model, execution.device)
        self.cfg, self.classes, self.execution = cfg, classes, execution
        self.model = execution.prepare(model)
        self.network = distributed_data_parallel(self.model, execution.device) if ranks.distributed else self.model
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(cfg.optim.milestones), gamma=cfg.optim.gamma
        )
        self.epoch = 0  # epochs completed
        self.step = 0

    def train_step(self, batch: ClipBatch) -> torch.Tensor:
        """One SGD step on this rank's clips; returns the detached (loss, clip top-1) without a device sync."""
        x = normalise(batch.clips.to(self.execution.device, non_blocking=True), self.execution.channels_last)
        labels = batch.labels.to(self.execution.device)
        with self.execution.autocast():
            logits = self.network(x)
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.step += 1
        return torch.stack([loss.detach(), (logits.argmax(1) == labels).float().mean()])

    def end_epoch(self) -> None:
        self.scheduler.step()
        self.epoch += 1

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "task": FINETUNE_TASK,
            "config": to_dict(self.cfg),
            "classes": list(self.classes),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        if state.get("task") != FINETUNE_TASK:
            raise ValueError(f"cannot resume from {source}: not a fine-tuning checkpoint")
        ours = to_dict(self.cfg)
        changed = [s for s in _RESUME_INVARIANTS if state["config"][s] != ours[s]]
        if changed or tuple(state["classes"]) != self.classes:
            differ = [d for s in changed for d in differences(state["config"][s], ours[s], f"{s}.")]
            if tuple(state["classes"]) != self.classes:
                differ.append(f"classes: {list(state['classes'])} -> {list(self.classes)}")
            raise ValueError(
                f"cannot resume from {source}: its {', '.join(changed) or 'class'} config differs from this "
                f"run's (checkpoint -> this run: {'; '.join(differ)}); resume with the same config "
                "(only optim.* and run.* may change)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = state["epoch"], state["step"]


def finetune(cfg: DownstreamConfig, resume: str | None = None, overwrite: bool = False) -> Path:
    """Fine-tune per `cfg`; returns the checkpoint (its validation results lie beside it as JSON). A run.out_dir
    holding another fine-tuning run is refused unless resuming or `overwrite`."""
    with process_group(cfg.run.device) as ranks:
        return _finetune(cfg, resume, overwrite, ranks)


def _finetune(cfg: DownstreamConfig, resume: str | None, overwrite: bool, ranks: Ranks) -> Path:
    checkpoint = Path(cfg.run.out_dir) / CHECKPOINT_NAME
    execution = Execution.for_rank(ranks, cfg.run)
    if cfg.data.batch_size % ranks.world_size:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} must be a multiple of the {ranks.world_size} ranks")
    resume_file = checkpoint if resume == "auto" else Path(resume) if resume else None
    resuming = resume_file is not None and (resume_file.is_file() or resume != "auto")
    if ranks.is_main:
        outputs = sorted(checkpoint.parent.glob(f"{checkpoint.stem}.*"))  # the checkpoint, its results, its evaluations
        claim_run_dir(checkpoint.parent, outputs, resuming, overwrite or resume == "auto")
    train, val = ranks.broadcast(_open_data(cfg) if ranks.is_main else None)
    tuner = FineTuner(cfg, train.classes, execution, ranks)
    if resuming:
        tuner.load_state_dict(read_state(resume_file), resume_file)
        log.info("resumed from %s after epoch %d", resume_file, tuner.epoch)

    clips = TrainClips(train, cfg.clips, execution.device)
    source = InProcessSource(clips, cfg.data.prefetch)
    shard_size = len(ranks.shard(len(train)))
    per_rank_batch = cfg.data.batch_size // ranks.world_size
    steps_per_epoch = -(-shard_size // per_rank_batch)
    metrics = MetricsLog(checkpoint.parent, resume_step=tuner.step if tuner.epoch else None) if ranks.is_main else None
    if ranks.is_main:
        log.info(
            "fine-tuning %s (%s) on %s: %d videos, %d classes, %d steps per epoch, %s, %d rank(s)",
            tuner.cfg.model.encoder,
            cfg.model.init or "random init",
            train.name,
            len(train),
            len(train.classes),
            steps_per_epoch,
            execution.describe(),
            ranks.world_size,
        )
    results: dict[str, Any] = {}
    bar = tqdm(
        total=cfg.optim.epochs * steps_per_epoch,
        initial=tuner.step,
        unit="step",
        dynamic_ncols=True,
        disable=not (show_bars(cfg.run.progress) and ranks.is_main),
    )
    stopped = False
    with bar, stop_on_signals("the end of the epoch (fine-tuning checkpoints once per epoch)") as stop_requested:
        while tuner.epoch < cfg.optim.epochs and not stopped:
            epoch = tuner.epoch
            tuner.network.train()
            torch.manual_seed(cfg.data.seed * 1_000_003 + epoch * ranks.world_size + ranks.rank)  # dropout masks
            window: list[torch.Tensor] = []
            started = time.perf_counter()
            with contextlib.closing(
                source.stream(cfg.data.seed, epoch, ranks.shard(len(train)), per_rank_batch)
            ) as batches:
                for batch in batches:
                    window.append(tuner.train_step(batch))
                    bar.update()
                    if metrics and (tuner.step % cfg.run.log_every == 0 or tuner.step % steps_per_epoch == 0):
                        _log_window(metrics, bar, tuner, window, time.perf_counter() - started, steps_per_epoch)
                        window, started = [], time.perf_counter()
            tuner.end_epoch()
            if cfg.run.val_every and (tuner.epoch % cfg.run.val_every == 0 or tuner.epoch == cfg.optim.epochs):
                if ranks.is_main:
                    log.info("epoch %d: validating on %d videos of %s…", tuner.epoch, len(val), val.name)
                results = evaluate(tuner.model, val, cfg, execution, ranks)
                if ranks.is_main:
                    log.info(
                        "epoch %d/%d: validation top-1 %.2f%%, top-5 %.2f%%",
                        tuner.epoch,
                        cfg.optim.epochs,
                        100 * results["top1"],
                        100 * results["top5"],
                    )
                if metrics:
                    metrics.scalars(tuner.step, {"val/top1": results["top1"], "val/top5": results["top5"]})
                    metrics.records(
                        [
                            {
                                "step": tuner.step,
                                "epoch": tuner.epoch,
                                "val_top1": results["top1"],
                                "val_top5": results["top5"],
                            }
                        ]
                    )
            if ranks.is_main:
                save_atomic(tuner.state_dict(), checkpoint)
            stopped = tuner.epoch < cfg.optim.epochs and any(ranks.gather(stop_requested.is_set()))  # together
    if stopped:
        if ranks.is_main:
            log.info(
                "stopped after epoch %d of %d, checkpoint %s; continue by running the same command with --resume auto",
                tuner.epoch,
                cfg.optim.epochs,
                checkpoint,
            )
        if metrics:
            metrics.close()
        return checkpoint
    unreadable = {path: reason for found in ranks.gather(clips.bad_videos) for path, reason in found.items()}
    if metrics:
        metrics.close()
        _report(tuner.cfg, train, unreadable, checkpoint, results)
    return checkpoint


def _open_data(cfg: DownstreamConfig) -> tuple[LabelledSet, LabelledSet | None]:
    train = label_subset(
        open_split(cfg.data.train, progress=show_bars(cfg.run.progress)), cfg.data.label_fraction, cfg.data.seed
    )
    val = (
        open_split(cfg.test_split, progress=show_bars(cfg.run.progress)).relabel(train.classes)
        if cfg.run.val_every
        else None
    )
    if val is not None and {v.path for v in val.videos} & {v.path for v in train.videos}:
        log.warning("the validation split %s shares videos with the training split %s", val.name, train.name)
    return train, val


def _log_window(
    metrics: MetricsLog, bar: tqdm, tuner: FineTuner, window: list[torch.Tensor], seconds: float, steps_per_epoch: int
) -> None:
    """Per-step records and TensorBoard averages of rank 0's loss and clip accuracy since the last log; a plain
    log line instead of the bar's postfix when no bar is drawn."""
    values = torch.stack(window).cpu()
    first = tuner.step - len(window) + 1
    lr = tuner.lr()
    metrics.records(
        [
            {"step": first + i, "epoch": tuner.epoch, "loss": v[0], "top1": v[1], "lr": lr}
            for i, v in enumerate(values.tolist())
        ]
    )
    mean = values.mean(0).tolist()
    metrics.scalars(
        tuner.step,
        {"train/loss": mean[0], "train/clip_top1": mean[1], "lr": lr, "throughput/steps_per_s": len(window) / seconds},
    )
    bar.set_postfix(loss=f"{mean[0]:.3f}", top1=f"{mean[1]:.2f}", refresh=False)
    if bar.disable:
        total = tuner.cfg.optim.epochs * steps_per_epoch
        log.info(
            "step %d/%d epoch %d/%d: loss %.4f, clip top-1 %.2f, lr %.3g, %.2f steps/s, ETA %s",
            tuner.step,
            total,
            tuner.epoch + 1,
            tuner.cfg.optim.epochs,
            mean[0],
            mean[1],
            lr,
            len(window) / seconds,
            eta((total - tuner.step) * seconds / len(window)),
        )


def _report(
    cfg: DownstreamConfig, train: LabelledSet, unreadable: dict[str, str], checkpoint: Path, results: dict[str, Any]
) -> None:
    summary = {
        "task": "finetune",
        "checkpoint": str(checkpoint),
        "init": cfg.model.init or "random",
        "encoder": cfg.model.encoder,
        "train_split": train.name,
        "train_videos": len(train),
        "label_fraction": cfg.data.label_fraction,
        "epochs": cfg.optim.epochs,
        "unreadable_training_videos": unreadable,
        "validation": results,
    }
    out = write_json(checkpoint.with_suffix(".json"), summary)
    if results:
        print(
            summary_table(
                f"finetune: validation after epoch {cfg.optim.epochs} on {results['split']}", results, per_class=False
            )
        )
    print(f"checkpoint: {checkpoint}\nresults: {out}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune an encoder for action recognition (UCF-101, HMDB-51, Kinetics, class folders)",
        description="Fine-tune a classifier on data.train from an exported encoder or a pretraining checkpoint "
        "(--init; without it: random initialisation, the baseline), validating on data.test every run.val_every "
        "epochs. The defaults are the paper's recipe. Run under torchrun for DDP. Example: `ctp-train finetune "
        "--config ucf101 --init r3d18_ctp.pth data.train.videos=/data/UCF-101 data.train.annotations=/data/ucfTrainTestlist`.",
        epilog=f"presets: {', '.join(presets())}",
    )
    p.add_argument("--config", default=None, help="preset or YAML file (default: the paper's recipe)")
    p.add_argument(
        "--init",
        default=None,
        metavar="WEIGHTS",
        help="exported encoder, pretraining checkpoint or run folder (its newest checkpoint; sets model.init; "
        "default: random initialisation)",
    )
    p.add_argument(
        "--label-fraction",
        type=float,
        default=None,
        metavar="F",
        help="train on this share of each class's labelled videos, e.g. 0.1 (sets data.label_fraction)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="auto|CKPT",
        help="continue a run; `auto`: its own checkpoint, if any (default: a new run)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete a fine-tuning run already in run.out_dir first (default: refuse)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.epochs=50")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    overrides = list(args.overrides)
    if args.init is not None:
        overrides.append(f"model.init={json.dumps(args.init)}")  # a quoted YAML string
    if args.label_fraction is not None:
        overrides.append(f"data.label_fraction={args.label_fraction}")
    cfg = load_downstream_config(args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    finetune(cfg, resume=args.resume, overwrite=args.overwrite)
