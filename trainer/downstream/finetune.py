"""`ctp-train finetune`: action recognition from a pretrained encoder (or random init, the baseline).

The paper's recipe is the default (docs/spec.md): SGD lr 0.01 for batch 32, momentum 0.9, weight decay 5e-4,
150 epochs with ×0.1 at 60 and 120, gradient-norm clip 40, dropout 0.5. Training clips are drawn per
(seed, epoch, index) like pretraining samples, decoded in-process; under torchrun each rank takes a
disjoint shard of every epoch and the gradients are averaged by DDP. The checkpoint is written after every
epoch (resume continues from the next one exactly: the clips are keyed and dropout is reseeded per epoch),
and the validation results are written next to it as JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from common.atomic import write_json
from common.configfile import to_dict
from trainer.config import EncoderName
from trainer.downstream.clips import ClipBatch, TrainClips
from trainer.downstream.config import DownstreamConfig
from trainer.downstream.datasets import LabelledSet, label_subset, open_split
from trainer.downstream.evaluate import evaluate, summary_table
from trainer.downstream.model import VideoClassifier, load_encoder, read_state
from trainer.model.network import normalise
from trainer.pretrain.sources import InProcessSource
from trainer.runtime.checkpoint import FINETUNE_TASK, FINETUNED_NAME, check_resumable, marked, resume_point, save_atomic
from trainer.runtime.distributed import Ranks, process_group
from trainer.runtime.execution import Execution, distribute
from trainer.runtime.metrics_log import MetricsLog
from trainer.runtime.optimizer import build_optimizer, build_scheduler
from trainer.runtime.progress import eta, show_bars
from trainer.runtime.signals import Stopped, stop_on_signals

log = logging.getLogger(__name__)

CHECKPOINT_NAME = FINETUNED_NAME
# Sections that decide the clips and the network (and the classes it tells apart): a resumed run must not change them.
_RESUME_INVARIANTS = ("model", "data", "clips", "classes")


class FineTuner:
    """The classifier (DDP-wrapped when distributed), its optimiser and schedule; one SGD step at a time."""

    def __init__(self, cfg: DownstreamConfig, classes: tuple[str, ...], execution: Execution, ranks: Ranks) -> None:
        torch.manual_seed(cfg.data.seed)  # the same initial classifier on every rank and in every run
        encoder = load_encoder(cfg.model.encoder, cfg.model.init or None)
        if encoder.name != cfg.model.encoder:
            log.info("%s holds a %s encoder: model.encoder=%s", cfg.model.init, encoder.name, encoder.name)
            name = cast(EncoderName, encoder.name)  # a built encoder's name is one of them
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder=name))
        classifier = VideoClassifier(encoder, len(classes), cfg.model.dropout, cfg.model.freeze_encoder)
        self.cfg, self.classes, self.execution = cfg, classes, execution
        self.model, self.network = distribute(classifier, execution, ranks, cfg.run.sync_batchnorm)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(trained, cfg.optim, cfg.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
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
        self._warm_up()
        self.optimizer.step()
        self.step += 1
        return torch.stack([loss.detach(), (logits.argmax(1) == labels).float().mean()])

    def _warm_up(self) -> None:
        """The learning rate of this step: the schedule's, scaled up linearly from `warmup_ratio` over the first
        `warmup_steps` (mmcv's linear warm-up, as the official Something-Something recipe)."""
        steps, ratio = self.cfg.optim.warmup_steps, self.cfg.optim.warmup_ratio
        if self.step <= steps and steps:
            factor = 1 - (1 - ratio) * (1 - self.step / steps)
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr * factor

    def end_epoch(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr  # the schedule steps from its own rate, not a warm-up's
        self.scheduler.step()
        self.epoch += 1

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return marked(
            FINETUNE_TASK,
            {
                "config": to_dict(self.cfg),
                "classes": list(self.classes),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch,
                "step": self.step,
            },
        )

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        saved = {**state, "config": {**state["config"], "classes": state.get("classes")}}
        ours = {**to_dict(self.cfg), "classes": list(self.classes)}
        check_resumable(saved, FINETUNE_TASK, ours, _RESUME_INVARIANTS, source)  # optim.* and run.* may change
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = state["epoch"], state["step"]


def finetune(cfg: DownstreamConfig, resume: str | None = None, overwrite: bool = False) -> Path:
    """Fine-tune per `cfg`; returns the checkpoint (its validation results lie beside it as JSON), or raises
    `Stopped` when a signal stopped it before the end (after its checkpoint). A run.out_dir holding another
    fine-tuning run is refused unless resuming or `overwrite`."""
    with process_group(cfg.run.device) as ranks:
        return _finetune(cfg, resume, overwrite, ranks)


def _finetune(cfg: DownstreamConfig, resume: str | None, overwrite: bool, ranks: Ranks) -> Path:
    checkpoint = Path(cfg.run.out_dir) / CHECKPOINT_NAME
    execution = Execution.for_rank(ranks, cfg.run)
    if cfg.data.batch_size % ranks.world_size:
        raise ValueError(f"data.batch_size={cfg.data.batch_size} must be a multiple of the {ranks.world_size} ranks")
    reads = [cfg.model.init] if cfg.model.init else []  # never deleted by --overwrite: fine-tuning starts from it
    resume_file = ranks.broadcast(resume_point(checkpoint.parent, resume, overwrite, reads) if ranks.is_main else None)
    train, val = ranks.broadcast(_open_data(cfg) if ranks.is_main else None)
    tuner = FineTuner(cfg, train.classes, execution, ranks)
    if resume_file is not None:
        tuner.load_state_dict(read_state(resume_file), resume_file)
        log.info("resumed from %s after epoch %d", resume_file, tuner.epoch)

    clips = TrainClips(train, cfg.clips, execution.device)
    source = InProcessSource(clips, cfg.data.prefetch, execution.device)  # on CUDA: a stream of its own
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
            dropout_seed = cfg.data.seed * 1_000_003 + epoch * ranks.world_size + ranks.rank
            torch.manual_seed(dropout_seed % (1 << 64))  # dropout masks; torch takes seeds below 2**64
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
            if val is not None and (tuner.epoch % cfg.run.val_every == 0 or tuner.epoch == cfg.optim.epochs):
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
        raise Stopped(f"stopped by a signal after epoch {tuner.epoch}")
    unreadable = {path: reason for found in ranks.gather(clips.bad_videos) for path, reason in found.items()}
    if metrics:
        metrics.close()
        _report(tuner.cfg, train, unreadable, checkpoint, results)
    return checkpoint


def _open_data(cfg: DownstreamConfig) -> tuple[LabelledSet, LabelledSet | None]:
    train = label_subset(open_split(cfg.data.train, progress=cfg.run.progress), cfg.data.label_fraction, cfg.data.seed)
    val = open_split(cfg.test_split, progress=cfg.run.progress).relabel(train.classes) if cfg.run.val_every else None
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
            {"step": first + i, "epoch": tuner.epoch + 1, "loss": v[0], "top1": v[1], "lr": lr}  # from 1
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
