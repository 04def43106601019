"""What a pretraining run reports: each rank's throughput in the log; rank 0 the per-step records (global-batch
means over the ranks), TensorBoard scalars, the progress bar or its plain log line, held-out tracking, and, when
the ranks wait on data, how to feed them."""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from datagen.ctp.batch import Batch
from trainer.config import TrainConfig
from trainer.pretrain.sources import SampleSource
from trainer.pretrain.starvation import RankWindow, StarvationMonitor
from trainer.pretrain.track_eval import TrackingScore, evaluate
from trainer.pretrain.viz import boxes_image
from trainer.runtime.distributed import Ranks
from trainer.runtime.execution import Execution
from trainer.runtime.metrics_log import MetricsLog
from trainer.runtime.progress import eta, show_bars

log = logging.getLogger(__name__)


class Trainee(Protocol):
    """What the reporter reads of the run it reports (`pretrain.Trainer`), so that it need not import it."""

    cfg: TrainConfig
    ranks: Ranks
    execution: Execution
    network: torch.nn.Module
    step: int

    @property
    def total_steps(self) -> int: ...


@dataclasses.dataclass
class RankReport:
    """One rank's log window in plain Python values (gathered by rank 0)."""

    steps: list[tuple[int, int, float]]  # (step, epoch, lr)
    losses: list[list[float]]  # per step: this rank's mean (total, centre, size)
    indices: list[list[int]]  # per step: the sample indices this rank trained on
    seconds: float
    wait: float  # seconds spent waiting for the next batch
    delivered: dict[str, int] | None  # clips kept from each replica since the start (None: in-process data)
    faults: dict[str, int] | None = None  # the replica client's fault counters since the start (None: in-process)

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

    def flush(self, delivered: dict[str, int] | None, faults: dict[str, int] | None = None) -> RankReport:
        """The window so far; starts a new one."""
        report = RankReport(
            self.steps,
            torch.stack(self.losses).cpu().tolist(),
            self.indices,
            time.perf_counter() - self.started,
            self.wait,
            delivered,
            faults,
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
        row = {"step": step, "epoch": epoch + 1, "loss": v[0], "loss_centre": v[1], "loss_size": v[2], "lr": lr}
        if log_indices:
            row["indices"] = [r.indices[j] for r in reports]
        rows.append(row)
    mean = [sum(column) / len(values) for column in zip(*values)]
    windows = [r.window for r in reports]
    scalars = {
        "train/loss": mean[0],  # tags as fine-tuning's: train/, val/, lr, throughput/
        "train/loss_centre": mean[1],
        "train/loss_size": mean[2],
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
        self, trainer: Trainee, held_out: list[Batch], run_dir: Path, resumed: bool, source: SampleSource
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
        by_replica, faults = self.source.delivered, self.source.faults
        mine = self.window.flush(
            dict(by_replica) if by_replica is not None else None, dict(faults) if faults is not None else None
        )
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
        all_faults = None
        if faults is not None:  # hedges sent, won, wasted, stalls, failures, samples asked again: all ranks, so far
            all_faults = sum((collections.Counter(r.faults) for r in reports), collections.Counter())
            scalars |= {f"datagen/{name}": float(all_faults[name]) for name in faults}
        self.metrics.records(rows)
        self.metrics.scalars(self.trainer.step, scalars)
        self.bar.set_postfix(
            loss=f"{scalars['train/loss']:.3f}",
            clips_s=f"{scalars['throughput/clips_per_s']:.1f}",
            data_wait=f"{scalars['throughput/data_wait']:.0%}",
            refresh=False,
        )
        if self.bar.disable:
            self._log_line(rows, scalars, mine.seconds)
        delivered = None
        if by_replica is not None:  # per replica, over all ranks
            delivered = sum((collections.Counter(r.delivered) for r in reports), collections.Counter())
        advice = self.starvation.update([r.window for r in reports], delivered, all_faults)
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
            rows[-1]["epoch"],
            trainer.cfg.optim.epochs,
            scalars["train/loss"],
            scalars["train/loss_centre"],
            scalars["train/loss_size"],
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
        self.metrics.scalars(step, {"val/miou": score.miou, "val/baseline_miou": score.baseline_miou})
        self.metrics.records([{"step": step, "miou": score.miou, "baseline_miou": score.baseline_miou}])
        first = self.held_out[0]
        self.metrics.image(step, "val/boxes", boxes_image(first.clips[0], first.boxes[0], predictions[0][0]))
        self.last_eval = (step, score)
        return score

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
