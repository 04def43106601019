"""CtP pretraining: the loop, its checkpoints and its reporting (one process; DDP wraps `Trainer.model`).

Exactness: the network is initialised from the run seed, batches are pure functions of their sample keys,
and a checkpoint holds model, optimiser, scheduler, step, the set of indices still to consume this epoch
and the RNG state, so a run stopped and resumed reproduces the uninterrupted run's losses step for step.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from datagen.batch import Batch
from datagen.config import to_dict
from datagen.generator import Generator
from datagen.manifest import resolve_videos
from trainer.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, save_atomic
from trainer.config import TrainConfig, load_train_config, presets
from trainer.cursor import EpochCursor
from trainer.data import InProcessSource, SampleSource, held_out_batches
from trainer.execution import Execution
from trainer.metrics import MetricsLog
from trainer.models import count_parameters
from trainer.network import CtPNetwork
from trainer.targets import ctp_loss, encode
from trainer.track_eval import TrackingScore, evaluate
from trainer.viz import boxes_image

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# Sections that decide the samples and the network: a resumed run must not change them.
_RESUME_INVARIANTS = ("model", "data")


class Trainer:
    def __init__(self, cfg: TrainConfig, execution: Execution, epoch_size: int) -> None:
        self.cfg = cfg
        self.execution = execution
        torch.manual_seed(cfg.data.seed)
        self.network = execution.prepare(
            CtPNetwork(cfg.model.encoder, cfg.data.generation.clip.num_frames, cfg.model.head_hidden)
        )
        self.model: torch.nn.Module = torch.compile(self.network) if cfg.run.compile else self.network
        self.optimizer = build_optimizer(self.network, cfg)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(cfg.optim.milestones), gamma=cfg.optim.gamma
        )
        self.step = 0
        self.cursor = EpochCursor(0, epoch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.cursor.size / self.cfg.data.batch_size)

    @property
    def total_steps(self) -> int:
        return self.cfg.optim.epochs * self.steps_per_epoch

    def train_step(self, batch: Batch) -> torch.Tensor:
        """One optimiser step; returns the detached (total, centre, size) losses without a device sync."""
        clips, boxes = self.execution.inputs(batch)
        with self.execution.autocast():
            predicted = self.model(clips, boxes[:, :, 0])
        loss = ctp_loss(predicted, encode(boxes))
        self.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.cursor.consume(batch.keys[:, 2].tolist())
        return torch.stack(loss).detach()

    def end_epoch(self) -> None:
        self.scheduler.step()
        self.cursor = EpochCursor(self.cursor.epoch + 1, self.cursor.size)

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.execution.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.execution.device)
        return {
            "format": CHECKPOINT_FORMAT,
            "config": to_dict(self.cfg),
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "cursor": self.cursor.state_dict(),
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        changed = [s for s in _RESUME_INVARIANTS if state["config"][s] != to_dict(self.cfg)[s]]
        if changed:
            raise ValueError(
                f"cannot resume: the checkpoint's {' and '.join(changed)} config differs from this run's; "
                "resume with the same model.* and data.* settings (run.*, eval.* and optim.epochs may change)"
            )
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.cursor = EpochCursor.from_state_dict(state["cursor"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.execution.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.execution.device)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def build_optimizer(network: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(network.parameters(), lr=cfg.lr, weight_decay=cfg.optim.weight_decay)
    return torch.optim.SGD(network.parameters(), lr=cfg.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)


class StepReport:
    """Collects per-step losses and timing between log points: clips/s and the share spent waiting for data."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.steps: list[tuple[int, int, float]] = []  # (step, epoch, lr)
        self.clips = 0
        self.wait = 0.0
        self.started = time.perf_counter()

    def add(self, step: int, epoch: int, lr: float, losses: torch.Tensor, clips: int, wait: float) -> None:
        self.losses.append(losses)
        self.steps.append((step, epoch, lr))
        self.clips += clips
        self.wait += wait

    def flush(self) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Per-step records and window averages; resets the window."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        values = torch.stack(self.losses).cpu().tolist()
        rows = [
            {"step": s, "epoch": e, "loss": v[0], "loss_centre": v[1], "loss_size": v[2], "lr": lr}
            for (s, e, lr), v in zip(self.steps, values)
        ]
        mean = [sum(col) / len(values) for col in zip(*values)]
        window = {
            "loss/total": mean[0],
            "loss/centre": mean[1],
            "loss/size": mean[2],
            "lr": rows[-1]["lr"],
            "throughput/clips_per_s": self.clips / elapsed,
            "throughput/data_wait": self.wait / elapsed,
        }
        self._reset()
        return rows, window


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[threading.Event]:
    """An event set by SIGTERM (preemption), so the loop checkpoints and exits at the next step boundary."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: requested.set())
    try:
        yield requested
    finally:
        signal.signal(signal.SIGTERM, previous)


class Reporter:
    """What a run reports: per-step records, TensorBoard scalars, the progress bar and held-out tracking."""

    def __init__(self, trainer: Trainer, held_out: list[Batch], run_dir: Path, resumed: bool) -> None:
        self.trainer = trainer
        self.held_out = held_out
        self.metrics = MetricsLog(run_dir, resume_step=trainer.step if resumed else None)
        self.window = StepReport()
        self.bar = tqdm(total=trainer.total_steps, initial=trainer.step, unit="step", dynamic_ncols=True,
                        disable=not trainer.cfg.run.progress)
        self.last_eval: tuple[int, TrackingScore] | None = None

    def step(self, epoch: int, lr: float, losses: torch.Tensor, clips: int, wait: float) -> None:
        self.window.add(self.trainer.step, epoch, lr, losses, clips, wait)
        self.bar.update()

    def flush(self) -> None:
        if not self.window.losses:
            return
        rows, window = self.window.flush()
        self.metrics.records(rows)
        self.metrics.scalars(self.trainer.step, window)
        self.bar.set_postfix(loss=f"{window['loss/total']:.3f}", clips_s=f"{window['throughput/clips_per_s']:.1f}",
                             data_wait=f"{window['throughput/data_wait']:.0%}", refresh=False)

    def evaluate(self) -> TrackingScore:
        """Held-out tracking mIoU and the boxes image, once per step."""
        step = self.trainer.step
        if self.last_eval is not None and self.last_eval[0] == step:
            return self.last_eval[1]
        score, predictions = evaluate(self.trainer.model, self.held_out, self.trainer.execution)
        self.metrics.scalars(step, {"eval/miou": score.miou, "eval/baseline_miou": score.baseline_miou})
        self.metrics.records([{"step": step, "miou": score.miou, "baseline_miou": score.baseline_miou}])
        first = self.held_out[0]
        self.metrics.image(step, "eval/boxes", boxes_image(first.clips[0], first.boxes[0], predictions[0][0]))
        self.last_eval = (step, score)
        return score

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()


def pretrain(cfg: TrainConfig, resume: str | None = None, source: SampleSource | None = None) -> TrackingScore | None:
    """Train per `cfg`; returns the final held-out tracking score, or None when stopped before the end."""
    if not cfg.data.videos:
        raise ValueError("data.videos is empty: pass video files, folders or manifests, e.g. data.videos=[out/demo]")
    run_dir = Path(cfg.run.out_dir)
    execution = Execution.resolve(cfg.run.device, cfg.run.precision, cfg.run.channels_last)
    generator = Generator(resolve_videos(cfg.data.videos), cfg.data.generation, device=execution.device)
    source = source or InProcessSource(generator, cfg.run.prefetch)
    trainer = Trainer(cfg, execution, generator.epoch_length * cfg.data.clips_per_video)
    checkpoint = _resume_from(resume, run_dir)
    if checkpoint is not None:
        trainer.load_state_dict(load_checkpoint(checkpoint))
        log.info("resumed from %s at step %d (epoch %d)", checkpoint, trainer.step, trainer.cursor.epoch)
    log.info("pretraining %s (%.1fM parameters) on %s: %d videos, %d steps per epoch, %d epochs", cfg.model.encoder,
             count_parameters(trainer.network) / 1e6, execution.describe(), len(generator.videos),
             trainer.steps_per_epoch, cfg.optim.epochs)
    reporter = Reporter(trainer, held_out_batches(generator, cfg.data.seed, cfg.eval.clips, cfg.data.batch_size),
                        run_dir, resumed=checkpoint is not None)

    def save() -> None:
        reporter.flush()  # the metrics log never lags behind a checkpoint
        save_atomic(trainer.state_dict(), checkpoint_path(run_dir, trainer.step))
        prune_checkpoints(run_dir, cfg.run.keep_checkpoints)

    try:
        with stop_on_sigterm() as sigterm:
            if trainer.step == 0:
                reporter.evaluate()
            stopped = False
            while trainer.cursor.epoch < cfg.optim.epochs and not stopped:
                stopped = _train_epoch(trainer, source, reporter, save, sigterm)
                if not len(trainer.cursor):
                    trainer.end_epoch()
                save()
            if stopped:
                log.info("stopped at step %d; continue with --resume auto", trainer.step)
                return None
            return reporter.evaluate()
    finally:
        reporter.close()
        if generator.bad_videos:
            log.warning("%d unreadable videos were skipped: %s", len(generator.bad_videos), sorted(generator.bad_videos))


def _train_epoch(trainer: Trainer, source: SampleSource, reporter: Reporter, save: Callable[[], None],
                 sigterm: threading.Event) -> bool:
    """Train on the rest of the cursor's epoch; True when asked to stop (SIGTERM or run.stop_at_step)."""
    cfg, epoch = trainer.cfg, trainer.cursor.epoch
    stream = source.stream(cfg.data.seed, epoch, trainer.cursor.remaining(), cfg.data.batch_size)
    with contextlib.closing(stream) as batches:
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return False
            waited = time.perf_counter() - started
            lr = trainer.lr()
            reporter.step(epoch, lr, trainer.train_step(batch), len(batch), waited)
            if trainer.step % cfg.run.log_every == 0:
                reporter.flush()
            if trainer.step % cfg.eval.every_steps == 0:
                reporter.evaluate()
            if sigterm.is_set() or trainer.step == cfg.run.stop_at_step:
                return True
            if trainer.step % cfg.run.checkpoint_every == 0 and len(trainer.cursor):
                save()


def _resume_from(resume: str | None, run_dir: Path) -> Path | None:
    if resume is None:
        return None
    if resume == "auto":
        found = latest_checkpoint(run_dir)
        if found is None:
            log.info("--resume auto: no checkpoint in %s yet, starting fresh", run_dir)
        return found
    return Path(resume)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="CtP self-supervised pretraining of a video encoder",
        description="Pretrain an encoder with Catch-the-Patch on clips generated in-process from video files. "
        "Configuration: a preset or YAML file, then KEY=VALUE overrides (YAML values), e.g. "
        "`ctp-train pretrain --config tiny_cpu data.videos=[out/demo] optim.epochs=5`.",
        epilog=f"presets: {', '.join(presets())}",
    )
    p.add_argument("--config", default=None, help="preset name or YAML file (default: built-in defaults)")
    p.add_argument("--resume", default=None, metavar="auto|CKPT",
                   help="continue from a checkpoint; `auto` takes the newest one in run.out_dir, if any")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.batch_size=64")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    cfg = load_train_config(args.config, args.overrides)
    score = pretrain(cfg, resume=args.resume)
    if score is not None:
        print(f"tracking mIoU {score.miou:.4f}  first-box baseline {score.baseline_miou:.4f}  "
              f"({score.clips} held-out clips)  run: {cfg.run.out_dir}")
