"""CtP pretraining: the loop, its checkpoints and its reporting, alone or as one rank of a torchrun job.

Exactness: the network is initialised from the run seed, batches are pure functions of their sample keys,
and a checkpoint holds model, optimiser, scheduler, step, the set of indices still to consume this epoch
and the RNG state, so a run stopped and resumed reproduces the uninterrupted run's losses step for step.

Distribution (DDP): every step trains on the next `data.batch_size` indices of the epoch's remaining ones,
split over the ranks (`Ranks.split`), so a step holds the same samples whatever the world size. BatchNorm is
synchronised and each rank's loss is weighted by its share of the global batch, so the gradient is the
global batch's. Before a checkpoint, rank 0 gathers what every rank consumed; the checkpoint thus holds the
exact remaining set, which a resumed run splits over its own ranks.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from datagen.batch import Batch
from datagen.config import GenerationConfig, differences, to_dict, to_yaml, upgrade_generation
from datagen.generator import Generator
from datagen.manifest import resolve_videos
from trainer.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_atomic,
)
from trainer.config import TrainConfig, load_train_config, presets
from trainer.ctp_model import CtPNetwork
from trainer.cursor import EpochCursor
from trainer.data import SampleSource, held_out_batches, open_source
from trainer.distributed import (
    Ranks,
    convert_sync_batchnorm,
    distributed_data_parallel,
    process_group,
    sync_batchnorm_layers,
)
from trainer.encoders import count_parameters
from trainer.execution import Execution
from trainer.loss import ctp_loss, encode
from trainer.metrics_log import MetricsLog
from trainer.progress import eta, show_bars
from trainer.rundir import claim_run_dir
from trainer.signals import stop_on_signals
from trainer.starvation import RankWindow, StarvationMonitor
from trainer.track_eval import TrackingScore, evaluate
from trainer.viz import boxes_image

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# Sections that decide the samples and the network: a resumed run must not change them.
_RESUME_INVARIANTS = ("model", "data")


class Trainer:
    def __init__(self, cfg: TrainConfig, execution: Execution, epoch_size: int, ranks: Ranks = Ranks()) -> None:
        if cfg.data.batch_size % ranks.world_size:
            raise ValueError(
                f"data.batch_size={cfg.data.batch_size} is not a multiple of the {ranks.world_size} ranks: "
                "each rank trains data.batch_size / ranks clips per step"
            )
        self.cfg = cfg
        self.execution = execution
        self.ranks = ranks
        self.batch_size = cfg.data.batch_size // ranks.world_size  # this rank's clips per step
        torch.manual_seed(cfg.data.seed)
        network = CtPNetwork(cfg.model.encoder, cfg.data.generation.clip.num_frames, cfg.model.head_hidden)
        self.network = execution.prepare(
            convert_sync_batchnorm(network, execution.device) if ranks.distributed else network
        )
        model: torch.nn.Module = self.network
        if ranks.distributed:  # synchronised BatchNorm keeps the buffers equal on every rank: no need to broadcast them
            model = distributed_data_parallel(model, execution.device, sync_buffers=False)
        self.model = torch.compile(model) if cfg.run.compile else model
        self.optimizer = build_optimizer(self.network, cfg)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, milestones=list(cfg.optim.milestones), gamma=cfg.optim.gamma
        )
        self.step = 0
        self.cursor = EpochCursor(0, epoch_size)
        self._consumed: list[int] = []  # this rank's indices trained on and not yet in the cursor

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.cursor.size / self.cfg.data.batch_size)

    @property
    def total_steps(self) -> int:
        return self.cfg.optim.epochs * self.steps_per_epoch

    def train_step(self, batch: Batch, global_batch: int | None = None) -> torch.Tensor:
        """One optimiser step; returns this rank's detached (total, centre, size) losses without a device sync.

        `global_batch`: the step's clips over all ranks (default: every rank has as many as this one)."""
        clips, boxes = self.execution.inputs(batch)
        with self.execution.autocast():
            predicted = self.model(clips, boxes[:, :, 0])
        loss = ctp_loss(predicted, encode(boxes))
        # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the global batch
        # makes that the gradient of the global batch's mean loss, also when the epoch's last batch splits unevenly.
        share = 1.0 if global_batch is None else len(batch) * self.ranks.world_size / global_batch
        self.optimizer.zero_grad(set_to_none=True)
        (loss.total * share).backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.step += 1
        self._consumed.extend(batch.keys[:, 2].tolist())
        return torch.stack(loss).detach()

    def sync_cursor(self) -> None:
        """Enter what every rank trained on since the last call into the cursor (a collective: all ranks call it)."""
        for consumed in self.ranks.gather(self._consumed):
            self.cursor.consume(consumed)
        self._consumed = []

    def end_epoch(self) -> None:
        self.scheduler.step()
        self.cursor = EpochCursor(self.cursor.epoch + 1, self.cursor.size)

    def state_dict(self) -> dict[str, Any]:
        if self._consumed:
            raise RuntimeError("sync_cursor() first: the cursor does not hold every consumed index yet")
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
        ours, saved = to_dict(self.cfg), copy.deepcopy(state["config"])
        saved["data"]["generation"] = upgrade_generation(saved["data"]["generation"])
        changed = [s for s in _RESUME_INVARIANTS if saved[s] != ours[s]]
        if changed:
            differ = [d for s in changed for d in differences(saved[s], ours[s], f"{s}.")]
            raise ValueError(
                f"cannot resume: the checkpoint's {' and '.join(changed)} config differs from this run's "
                f"(checkpoint -> this run: {'; '.join(differ)}); resume with the same model.* and data.* settings "
                "(run.*, eval.* and optim.epochs may change)"
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
    return torch.optim.SGD(
        network.parameters(), lr=cfg.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
    )


@dataclasses.dataclass
class RankReport:
    """One rank's log window in plain Python values (gathered by rank 0)."""

    steps: list[tuple[int, int, float]]  # (step, epoch, lr)
    losses: list[list[float]]  # per step: this rank's mean (total, centre, size)
    indices: list[list[int]]  # per step: the sample indices this rank trained on
    seconds: float
    wait: float  # seconds spent waiting for the next batch
    delivered: dict[str, int] | None  # clips kept from each replica since the start (None: in-process data)

    @property
    def window(self) -> RankWindow:
        return RankWindow(sum(map(len, self.indices)), self.seconds, self.wait)


class StepReport:
    """Collects one rank's steps between log points: losses (left on the device until then), indices, data wait."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.steps: list[tuple[int, int, float]] = []
        self.losses: list[torch.Tensor] = []
        self.indices: list[list[int]] = []
        self.wait = 0.0
        self.started = time.perf_counter()

    def add(self, step: int, epoch: int, lr: float, losses: torch.Tensor, indices: list[int], wait: float) -> None:
        self.steps.append((step, epoch, lr))
        self.losses.append(losses)
        self.indices.append(indices)
        self.wait += wait

    def flush(self, delivered: dict[str, int] | None) -> RankReport:
        """The window so far; starts a new one."""
        report = RankReport(
            self.steps,
            torch.stack(self.losses).cpu().tolist(),
            self.indices,
            time.perf_counter() - self.started,
            self.wait,
            delivered,
        )
        self._reset()
        return report


def merge_reports(reports: list[RankReport], log_indices: bool) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-step records and window scalars over all ranks: a step's losses are its global batch's mean."""
    losses = torch.tensor([r.losses for r in reports], dtype=torch.float64)  # (ranks, steps, 3)
    counts = torch.tensor([[len(i) for i in r.indices] for r in reports], dtype=torch.float64)  # (ranks, steps)
    values = ((losses * counts[..., None]).sum(0) / counts.sum(0)[:, None]).tolist()
    rows = []
    for j, ((step, epoch, lr), v) in enumerate(zip(reports[0].steps, values)):
        row = {"step": step, "epoch": epoch, "loss": v[0], "loss_centre": v[1], "loss_size": v[2], "lr": lr}
        if log_indices:
            row["indices"] = [r.indices[j] for r in reports]
        rows.append(row)
    mean = [sum(column) / len(values) for column in zip(*values)]
    windows = [r.window for r in reports]
    scalars = {
        "loss/total": mean[0],
        "loss/centre": mean[1],
        "loss/size": mean[2],
        "lr": rows[-1]["lr"],
        "throughput/clips_per_s": sum(w.clips_per_s for w in windows),
        "throughput/data_wait": sum(w.wait_share for w in windows) / len(windows),
    }
    if len(reports) > 1:
        for rank, w in enumerate(windows):
            scalars[f"throughput/rank{rank}/clips_per_s"] = w.clips_per_s
            scalars[f"throughput/rank{rank}/data_wait"] = w.wait_share
    return rows, scalars


class Reporter:
    """What a run reports: every rank its own throughput in the log; rank 0 the per-step records, TensorBoard
    scalars, the progress bar, held-out tracking and, when the ranks wait on data, how to feed them."""

    def __init__(
        self, trainer: Trainer, held_out: list[Batch], run_dir: Path, resumed: bool, source: SampleSource
    ) -> None:
        self.trainer = trainer
        self.held_out = held_out
        main = trainer.ranks.is_main
        self.metrics = MetricsLog(run_dir, resume_step=trainer.step if resumed else None) if main else None
        self.window = StepReport()
        self.bar = tqdm(
            total=trainer.total_steps,
            initial=trainer.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (show_bars(trainer.cfg.run.progress) and main),
        )
        self.source = source
        self.last_eval: tuple[int, TrackingScore] | None = None
        self.starvation = StarvationMonitor()

    def step(self, epoch: int, lr: float, losses: torch.Tensor, indices: list[int], wait: float) -> None:
        self.window.add(self.trainer.step, epoch, lr, losses, indices, wait)
        self.bar.update()

    def flush(self) -> None:
        """Log and record the window (a collective: every rank calls it at the same steps)."""
        if not self.window.steps:
            return
        ranks = self.trainer.ranks
        by_replica = self.source.delivered
        mine = self.window.flush(dict(by_replica) if by_replica is not None else None)
        w = mine.window
        if ranks.distributed:
            log.info(
                "rank %d/%d step %d: %.1f clips/s, %.0f%% of the time waiting for data",
                ranks.rank,
                ranks.world_size,
                self.trainer.step,
                w.clips_per_s,
                100 * w.wait_share,
            )
        reports = ranks.gather(mine)
        if self.metrics is None:
            return
        rows, scalars = merge_reports(reports, self.trainer.cfg.run.log_indices)
        self.metrics.records(rows)
        self.metrics.scalars(self.trainer.step, scalars)
        self.bar.set_postfix(
            loss=f"{scalars['loss/total']:.3f}",
            clips_s=f"{scalars['throughput/clips_per_s']:.1f}",
            data_wait=f"{scalars['throughput/data_wait']:.0%}",
            refresh=False,
        )
        if self.bar.disable:
            self._log_line(rows, scalars, mine.seconds)
        delivered = None
        if by_replica is not None:  # per replica, over all ranks
            delivered = sum((collections.Counter(r.delivered) for r in reports), collections.Counter())
        advice = self.starvation.update([r.window for r in reports], delivered)
        if advice:
            log.warning(advice)

    def _log_line(self, rows: list[dict[str, Any]], scalars: dict[str, float], seconds: float) -> None:
        """The bar's content as one plain line (stderr is no terminal, or run.progress=false)."""
        trainer = self.trainer
        left = (trainer.total_steps - trainer.step) * seconds / len(rows)
        log.info(
            "step %d/%d epoch %d/%d: loss %.4f (centre %.4f, size %.4f), lr %.3g, %.1f clips/s, data wait %.0f%%, ETA %s",
            trainer.step,
            trainer.total_steps,
            rows[-1]["epoch"] + 1,
            trainer.cfg.optim.epochs,
            scalars["loss/total"],
            scalars["loss/centre"],
            scalars["loss/size"],
            scalars["lr"],
            scalars["throughput/clips_per_s"],
            100 * scalars["throughput/data_wait"],
            eta(left),
        )

    def evaluate(self) -> TrackingScore | None:
        """Held-out tracking mIoU and the boxes image, once per step, on rank 0 (None elsewhere)."""
        if self.metrics is None:
            return None
        step = self.trainer.step
        if self.last_eval is not None and self.last_eval[0] == step:
            return self.last_eval[1]
        log.info("step %d: evaluating %d held-out clips…", step, sum(len(b) for b in self.held_out))
        score, predictions = evaluate(self.trainer.network, self.held_out, self.trainer.execution)
        log.info(
            "step %d: held-out tracking mIoU %.4f (first-box baseline %.4f, %d clips)",
            step,
            score.miou,
            score.baseline_miou,
            score.clips,
        )
        self.metrics.scalars(step, {"eval/miou": score.miou, "eval/baseline_miou": score.baseline_miou})
        self.metrics.records([{"step": step, "miou": score.miou, "baseline_miou": score.baseline_miou}])
        first = self.held_out[0]
        self.metrics.image(step, "eval/boxes", boxes_image(first.clips[0], first.boxes[0], predictions[0][0]))
        self.last_eval = (step, score)
        return score

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()


def pretrain(cfg: TrainConfig, resume: str | None = None, overwrite: bool = False) -> TrackingScore | None:
    """Train per `cfg` (under torchrun: as one DDP rank); returns the final held-out tracking score, or None when
    stopped before the end. A run.out_dir holding another run is refused unless resuming or `overwrite`."""
    if not cfg.data.videos:
        raise ValueError("data.videos is empty: pass video files, folders or manifests, e.g. data.videos=[out/demo]")
    with process_group(cfg.run.device) as ranks:
        return _pretrain(cfg, resume, overwrite, ranks)


def _pretrain(cfg: TrainConfig, resume: str | None, overwrite: bool, ranks: Ranks) -> TrackingScore | None:
    run_dir = Path(cfg.run.out_dir)
    execution = Execution.for_rank(ranks, cfg.run)
    # Probed once, by rank 0. min_frames=1 as the replicas index (datagen.cli), so that both name the same video
    # list (replicas refuse another); frame indices past a short video's end are clamped to its last frame.
    videos = ranks.broadcast(resolve_videos(cfg.data.videos, min_frames=1) if ranks.is_main else None)
    generator = Generator(videos, cfg.data.generation, device=execution.device)
    trainer = Trainer(cfg, execution, generator.epoch_length * cfg.data.clips_per_video, ranks)
    checkpoint = ranks.broadcast(
        _resume_from(resume, run_dir, overwrite) if ranks.is_main else None
    )  # rank 0's choice for all
    if checkpoint is not None:
        trainer.load_state_dict(load_checkpoint(checkpoint))
        if ranks.is_main:
            log.info(
                "resumed from %s at step %d: epoch %d has %d of %d samples left, split over %d rank(s)",
                checkpoint,
                trainer.step,
                trainer.cursor.epoch,
                len(trainer.cursor),
                trainer.cursor.size,
                ranks.world_size,
            )
    if ranks.is_main:
        log.info(
            "pretraining %s (%.1fM parameters) on %s × %d rank(s): %d videos, %d steps per epoch of %d clips, "
            "%d epochs%s",
            cfg.model.encoder,
            count_parameters(trainer.network) / 1e6,
            execution.describe(),
            ranks.world_size,
            len(videos),
            trainer.steps_per_epoch,
            cfg.data.batch_size,
            cfg.optim.epochs,
            f", {sync_batchnorm_layers(trainer.model)} SyncBatchNorm layers" if ranks.distributed else "",
        )
    held_out = held_out_batches(generator, cfg.data.seed, cfg.eval.clips, cfg.data.batch_size) if ranks.is_main else []
    with open_source(cfg, generator) as source, _quiet_bar(ranks.is_main and show_bars(cfg.run.progress)):
        reporter = Reporter(trainer, held_out, run_dir, checkpoint is not None, source)

        def save() -> None:
            trainer.sync_cursor()
            reporter.flush()  # the metrics log never lags behind a checkpoint
            if ranks.is_main:
                save_atomic(trainer.state_dict(), checkpoint_path(run_dir, trainer.step))
                prune_checkpoints(run_dir, cfg.run.keep_checkpoints)

        try:
            with stop_on_signals(f"the next log point (every {cfg.run.log_every} steps)") as stop_requested:
                if trainer.step == 0:
                    reporter.evaluate()
                stopped = False
                while trainer.cursor.epoch < cfg.optim.epochs and not stopped:
                    stopped = _train_epoch(trainer, source, reporter, save, stop_requested)
                    trainer.sync_cursor()
                    if not len(trainer.cursor):
                        trainer.end_epoch()
                    save()
                if stopped:
                    if ranks.is_main:
                        log.info(
                            "stopped at step %d, checkpoint %s; continue by running the same command with --resume auto",
                            trainer.step,
                            checkpoint_path(run_dir, trainer.step),
                        )
                    return None
                return ranks.broadcast(reporter.evaluate())
        finally:
            reporter.close()
            bad = set(generator.bad_videos) | source.replaced_videos()
            if bad:
                log.warning("rank %d: %d unreadable videos were replaced: %s", ranks.rank, len(bad), sorted(bad))


def _quiet_bar(enabled: bool) -> contextlib.AbstractContextManager:
    """Log lines printed above rank 0's progress bar instead of through it."""
    return logging_redirect_tqdm() if enabled else contextlib.nullcontext()


def _empty_batch(generation: GenerationConfig) -> Batch:
    """A rank's batch in a step whose global batch has no sample left for it (an epoch's last, uneven step)."""
    t, size, k = generation.clip.num_frames, generation.clip.crop_size, generation.trajectory.num_trajectories
    return Batch(
        torch.zeros(0, t, size, size, 3, dtype=torch.uint8),
        torch.zeros(0, k, t, 4),
        torch.zeros(0, k, t, dtype=torch.bool),
        torch.zeros(0, 3, dtype=torch.int64),
    )


def _train_epoch(
    trainer: Trainer,
    source: SampleSource,
    reporter: Reporter,
    save: Callable[[], None],
    stop_requested: threading.Event,
) -> bool:
    """Train on the rest of the cursor's epoch; True when asked to stop (SIGTERM, Ctrl-C or run.stop_at_step).

    Every rank takes the same number of steps: one per `data.batch_size` remaining indices. In the last step a
    rank may have nothing left; it then steps on an empty batch so that the collectives still meet."""
    cfg, epoch, ranks = trainer.cfg, trainer.cursor.epoch, trainer.ranks
    remaining = trainer.cursor.remaining()
    stream = source.stream(cfg.data.seed, epoch, ranks.split(remaining), trainer.batch_size)
    with contextlib.closing(stream) as batches:
        for first in range(0, len(remaining), cfg.data.batch_size):
            started = time.perf_counter()
            batch = next(batches, None)
            waited = time.perf_counter() - started
            if batch is None:
                batch = _empty_batch(cfg.data.generation)
            lr = trainer.lr()
            losses = trainer.train_step(batch, global_batch=min(cfg.data.batch_size, len(remaining) - first))
            reporter.step(epoch, lr, losses, batch.keys[:, 2].tolist(), waited)
            stop = False
            if trainer.step % cfg.run.log_every == 0:
                reporter.flush()
                stop = any(ranks.gather(stop_requested.is_set()))  # the ranks stop together, at the same step
            if trainer.step % cfg.eval.every_steps == 0:
                reporter.evaluate()
            if stop or trainer.step == cfg.run.stop_at_step:
                return True
            if trainer.step % cfg.run.checkpoint_every == 0 and first + cfg.data.batch_size < len(remaining):
                save()
        if next(batches, None) is not None:  # also lets a remote stream end on its own
            raise RuntimeError(f"the sample source yielded more batches than epoch {epoch} has left")
    return False


def _resume_from(resume: str | None, run_dir: Path, overwrite: bool) -> Path | None:
    """The checkpoint to resume from, once the run folder is this run's (trainer.rundir)."""
    checkpoint = None
    if resume == "auto":
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            log.info("--resume auto: no checkpoint in %s yet, starting fresh", run_dir)
    elif resume is not None:
        checkpoint = Path(resume)
    # --resume auto without a checkpoint: what lies there is an unfinished run's metrics, redone from step 0.
    claim_run_dir(run_dir, list_checkpoints(run_dir), checkpoint is not None, overwrite or resume == "auto")
    return checkpoint


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
    p.add_argument(
        "--resume",
        default=None,
        metavar="auto|CKPT",
        help="continue from a checkpoint; `auto` takes the newest one in run.out_dir, if any (default: a new run)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the checkpoints and metrics of a run already in run.out_dir first (default: refuse)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.batch_size=64")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    score = pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    if score is not None and Ranks.from_env().is_main:
        print(
            f"tracking mIoU {score.miou:.4f}  first-box baseline {score.baseline_miou:.4f}  "
            f"({score.clips} held-out clips)  run: {cfg.run.out_dir}"
        )
