"""The transfer experiment's arms: CtP pretraining on the pool and fine-tuning on the labelled videos, each a
run of the project's own `pretrain()` and `finetune()` whose finished result is reused, never half-reused."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import resource
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.atomic import write_json
from datagen.ctp.spec import GenerationConfig
from experiments.transfer.plan import PRETRAIN_SEED
from trainer.config import load_train_config
from trainer.downstream.config import load_downstream_config
from trainer.downstream.finetune import finetune
from trainer.pretrain.loop import pretrain
from trainer.runtime.checkpoint import latest_checkpoint

log = logging.getLogger("experiments.transfer")


def full_spec(simple: GenerationConfig) -> GenerationConfig:
    """The paper's generation spec with the tiny preset's clip geometry (64 px crops, patch sizes and speed
    scaled to them): inner key frames, scale change, shapes, soft edges, opacity, MRM and colour jitter all on."""
    full = GenerationConfig()
    trajectory = dataclasses.replace(
        full.trajectory, anchor_scales=simple.trajectory.anchor_scales, max_speed=simple.trajectory.max_speed
    )
    return dataclasses.replace(full, clip=simple.clip, trajectory=trajectory)


def pretrain_arm(arm: str, pool: Path, out: Path, steps: int, spec: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """CtP pretraining of the tiny encoder on the pool for `steps` steps; returns its final checkpoint and its
    record (time, CPU time, load, mIoU along the run). A finished pretraining of the same arm, steps and
    video spec in `out` is reused with the record it wrote, so a long pretraining runs once."""
    record_file = out / "transfer_pretrain.json"
    wanted = {"arm": arm, "steps": steps, "videos": spec}
    found = latest_checkpoint(out)
    if record_file.is_file() and found is not None:
        record = json.loads(record_file.read_text())
        if {k: record.get(k) for k in wanted} == wanted:
            log.info("%s: reusing the pretraining in %s (finished %s)", arm, out, record["finished"])
            return found, {**record, "reused": True}
    cfg = load_train_config(
        "tiny_cpu",
        [
            f"data.videos=[{pool}]",
            f"data.seed={PRETRAIN_SEED}",
            "data.clips_per_video=1",
            f"run.out_dir={out}",
            "run.progress=false",
            "run.log_every=20",
            f"run.checkpoint_every={10 * steps}",
            f"eval.every_steps={max(1, steps // 4)}",  # the mIoU along the run, against the first-box baseline
        ],
    )
    per_epoch = math.ceil(len(list(pool.iterdir())) / cfg.data.batch_size)
    epochs = max(1, round(steps / per_epoch))
    optim = dataclasses.replace(cfg.optim, epochs=epochs, milestones=(max(1, round(0.8 * epochs)),))
    generation = full_spec(cfg.data.generation) if arm == "ctp_full" else cfg.data.generation
    cfg = dataclasses.replace(cfg, optim=optim, data=dataclasses.replace(cfg.data, generation=generation))
    wall, cpu = time.perf_counter(), cpu_seconds()
    score = pretrain(cfg)
    if score is None:  # stopped by a signal: no finished pretraining to record or reuse
        raise SystemExit(f"{arm}: pretraining stopped before its end; delete {out} and rerun")
    log.info("%s: tracking mIoU %.3f, first-box baseline %.3f", arm, score.miou, score.baseline_miou)
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "miou" in r]
    record = {
        **wanted,
        "miou": [[r["step"], r["miou"]] for r in evals],
        "miou_end": score.miou,
        "baseline_miou": score.baseline_miou,
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": cpu_seconds() - cpu,
        "load_average_end": os.getloadavg(),
        "finished": now(),
    }
    write_json(record_file, record)  # whole or absent: a killed run is redone, never half-reused
    found = latest_checkpoint(out)
    assert found is not None
    return found, {**record, "reused": False}


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and its finished children: the budget's measure, since
    wall time on a shared machine says more about the other users than about the experiment."""
    used = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(u.ru_utime + u.ru_stime for u in used)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def finetune_run(
    train: Path,
    evaluated: Path,
    init: Path | None,
    fraction: float,
    seed: int,
    steps: int,
    lr: float,
    out: Path,
    spec: dict[str, Any],
    frozen: bool = False,
) -> dict[str, Any]:
    """`finetune()` with the tiny_cpu downstream recipe for about `steps` steps: its end-of-run top-1 on
    `evaluated`, with the run's time, CPU time and the load average at its end. A finished run in `out` of
    the same recipe on the same videos (`spec`) is reused with the record it wrote, so that a grid of choices
    on val can grow one arm at a time; a different one there is refused by `finetune()`."""
    record_file = out / "transfer_finetune.json"
    wanted = {"init": str(init), "fraction": fraction, "seed": seed, "steps": steps, "lr": lr, "frozen": frozen}
    wanted["videos"] = spec
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if {k: record.get(k) for k in wanted} == wanted:
            return {**record["result"], "reused": True}  # its time counts in the budget as a reused pretraining's
    wall, cpu = time.perf_counter(), cpu_seconds()
    cfg = load_downstream_config(
        "tiny_cpu",
        [
            f"data.train.videos={train}",
            f"data.test.videos={evaluated}",
            f"data.label_fraction={fraction}",
            f"data.seed={seed}",
            "data.batch_size=8",
            f"optim.lr={lr}",
            f"run.out_dir={out}",
            "run.progress=false",
            "run.log_every=50",
            f"model.init={json.dumps(str(init) if init else '')}",
            f"model.freeze_encoder={str(frozen).lower()}",
        ],
    )
    labelled = sum(1 for p in train.rglob("*") if p.is_file())
    videos = sum(max(1, round(fraction * n)) for n in _class_sizes(train))
    assert videos <= labelled
    epochs = max(1, round(steps / math.ceil(videos / cfg.data.batch_size)))
    cfg = dataclasses.replace(
        cfg,
        optim=dataclasses.replace(cfg.optim, epochs=epochs, milestones=()),
        run=dataclasses.replace(cfg.run, val_every=epochs),
    )
    checkpoint = finetune(cfg)
    summary = json.loads(checkpoint.with_suffix(".json").read_text())
    assert summary["train_videos"] == videos, (summary["train_videos"], videos)
    result = {
        "top1": summary["validation"]["top1"],
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": cpu_seconds() - cpu,
        "load_average_end": os.getloadavg(),
    }
    write_json(record_file, {**wanted, "result": result})  # whole or absent, as the pretraining's record
    return {**result, "reused": False}


def _class_sizes(folder: Path) -> list[int]:
    return [sum(1 for p in c.iterdir() if p.is_file()) for c in sorted(folder.iterdir()) if c.is_dir()]
