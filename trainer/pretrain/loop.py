"""CtP pretraining: the trainer's state and step, and the loop, alone or as one rank of a torchrun job
(its reporting: trainer.pretrain.reporting; its command line: trainer.cli).

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

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from common.configfile import to_dict
from datagen.ctp.batch import Batch
from datagen.ctp.spec import GenerationConfig, upgrade_generation
from datagen.generator import Generator
from datagen.video.container import VideoInfo
from datagen.video.manifest import resolve_videos, videos_digest
from trainer.config import TrainConfig
from trainer.model.encoders import count_parameters
from trainer.model.loss import ctp_loss, encode
from trainer.model.network import CtPNetwork
from trainer.pretrain.cursor import EpochCursor
from trainer.pretrain.reporting import Reporter
from trainer.pretrain.sources import SampleSource, held_out_batches, open_source, replica_problem
from trainer.pretrain.track_eval import TrackingScore
from trainer.runtime.checkpoint import (
    PRETRAIN_TASK,
    check_resumable,
    check_same_videos,
    checkpoint_path,
    load_checkpoint,
    marked,
    prune_checkpoints,
    resume_point,
    save_atomic,
    video_list,
)
from trainer.runtime.distributed import Ranks, process_group, sync_batchnorm_layers
from trainer.runtime.execution import Execution, distribute
from trainer.runtime.optimizer import build_optimizer, build_scheduler
from trainer.runtime.progress import show_bars
from trainer.runtime.signals import Stopped, stop_on_signals

log = logging.getLogger(__name__)

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
        self.network, model = distribute(network, execution, ranks, cfg.run.sync_batchnorm)
        # torch.compile of a module is a module (OptimizedModule); its annotation says only callable.
        self.model = cast(torch.nn.Module, torch.compile(model)) if cfg.run.compile else model
        self.optimizer = build_optimizer(self.network.parameters(), cfg.optim, cfg.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
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
        return marked(
            PRETRAIN_TASK,
            {
                "config": to_dict(self.cfg),
                "model": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "cursor": self.cursor.state_dict(),
                "rng": rng,
            },
        )

    def load_state_dict(self, state: dict[str, Any], source: Path | str) -> None:
        config = state["config"]  # an older release's generation settings upgraded to today's (same samples)
        generation = upgrade_generation(config["data"]["generation"])
        saved = {**state, "config": {**config, "data": {**config["data"], "generation": generation}}}
        check_resumable(
            saved, PRETRAIN_TASK, to_dict(self.cfg), _RESUME_INVARIANTS, source
        )  # run, eval, optim may change
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


def pretrain(cfg: TrainConfig, resume: str | None = None, overwrite: bool = False) -> TrackingScore | None:
    """Train per `cfg` (under torchrun: as one DDP rank); returns the final held-out tracking score, or None when
    stopped at run.stop_at_step; raises `Stopped` when a signal stopped it before the end (after its checkpoint).
    A run.out_dir holding another run is refused unless resuming or `overwrite`."""
    if not cfg.data.videos:
        raise ValueError("data.videos is empty: pass video files, folders or manifests, e.g. data.videos=[out/demo]")
    ranks = Ranks.from_env()
    execution = Execution.for_rank(ranks, cfg.run)  # its refusals first: they need no video
    # Every rank resolves the list before the process group exists: probing a Kinetics-size folder takes longer
    # than a collective waits (rank 0 probing alone kept the others in a broadcast until NCCL's timeout).
    # min_frames=1 as the replicas index (datagen.cli), so that both name the same video list (replicas refuse
    # another); frame indices past a short video's end are clamped to its last frame.
    videos = resolve_videos(cfg.data.videos, min_frames=1)
    probed = [v for v in cfg.data.videos if not str(v).endswith(".json")]
    if probed and len(videos) > LARGE_FOLDER and ranks.distributed and ranks.is_main:
        log.warning(
            "every rank probed the %d videos of %s: index them once (`ctp-datagen index %s --out MANIFEST`) and "
            "pass data.videos=[MANIFEST]",
            len(videos),
            ", ".join(map(str, probed)),
            " ".join(map(str, probed)),
        )
    with process_group(cfg.run.device) as ranks:
        return _pretrain(cfg, execution, videos, resume, overwrite, ranks)


LARGE_FOLDER = 2000  # videos: beyond, each rank probing them costs minutes; a manifest is read in seconds


def _pretrain(
    cfg: TrainConfig,
    execution: Execution,
    videos: list[VideoInfo],
    resume: str | None,
    overwrite: bool,
    ranks: Ranks,
) -> TrackingScore | None:
    run_dir = Path(cfg.run.out_dir)
    digests = ranks.gather((videos_digest(videos), len(videos)))
    if len(set(digests)) > 1:
        raise ValueError(
            "the ranks found different video lists (videos per rank: "
            f"{[n for _, n in digests]}): the folder changed while they probed it; index it once with "
            "`ctp-datagen index` and pass the manifest"
        )
    generator = Generator(videos, cfg.data.generation, device=execution.device, check_renderer=cfg.run.render_check)
    trainer = Trainer(cfg, execution, generator.epoch_length * cfg.data.clips_per_video, ranks)
    refused = ranks.broadcast(replica_problem(cfg, videos, trainer.batch_size) if ranks.is_main else None)
    if refused:  # before the run folder is claimed or written
        raise ValueError(refused)
    checkpoint = ranks.broadcast(
        resume_point(run_dir, resume, overwrite) if ranks.is_main else None
    )  # rank 0's for all
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        check_same_videos(state, videos, checkpoint)
        trainer.load_state_dict(state, checkpoint)
        if ranks.is_main:
            log.info(
                "resumed from %s at step %d: epoch %d has %d of %d samples left, split over %d rank(s)",
                checkpoint,
                trainer.step,
                trainer.cursor.epoch + 1,  # epochs count from 1 wherever a person reads them
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
    stop_at = cfg.run.stop_at_step
    if stop_at is not None and trainer.step >= stop_at:  # resumed at or past it: nothing to train, not a full run
        if ranks.is_main:
            log.warning(
                "run.stop_at_step=%d: the run is at step %d already, nothing to train; continue with a later "
                "run.stop_at_step or run.stop_at_step=null",
                stop_at,
                trainer.step,
            )
        return None
    held_out = held_out_batches(generator, cfg.data.seed, cfg.eval.clips, cfg.data.batch_size) if ranks.is_main else []
    with open_source(cfg, generator) as source, _quiet_bar(ranks.is_main and show_bars(cfg.run.progress)):
        reporter = Reporter(trainer, held_out, run_dir, checkpoint is not None, source)

        def save() -> None:
            trainer.sync_cursor()
            reporter.flush()  # the metrics log never lags behind a checkpoint
            if ranks.is_main:
                save_atomic(
                    trainer.state_dict() | {"videos": video_list(videos)}, checkpoint_path(run_dir, trainer.step)
                )
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
                    if trainer.step != cfg.run.stop_at_step:  # every rank agreed on the step: all raise alike
                        raise Stopped(f"stopped by a signal at step {trainer.step}")
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
