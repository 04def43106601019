"""`ctp-train eval`: the video-level test of a fine-tuned classifier (docs/spec.md).

Each test video gives `clips.test_clips` (10) clips spread over it, resized to 171×128 and centre cropped
to 112; as in the official TSN test, the clips' logits are averaged per video and the mean goes through the
softmax, which is then scored: top-1 and top-5, per-class accuracy and a confusion matrix (also drawn as a
picture). Under torchrun the videos are sharded over the ranks and gathered on rank 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.atomic import write_json
from common.tables import format_table
from datagen.video.manifest import Rejected
from trainer.downstream.clips import ClipIndices, EvalClips, eval_clip_indices
from trainer.downstream.config import DownstreamConfig, load_downstream_config
from trainer.downstream.datasets import LabelledSet, open_split
from trainer.downstream.model import load_classifier
from trainer.downstream.report import percent, results_path
from trainer.downstream.scoring import (
    aggregate_clips,
    confusion_image,
    confusion_matrix,
    per_class_accuracy,
    topk_accuracy,
)
from trainer.model.network import normalise
from trainer.pretrain.sources import prefetched
from trainer.runtime.checkpoint import resolve_checkpoint
from trainer.runtime.distributed import Ranks, process_group
from trainer.runtime.execution import Execution
from trainer.runtime.progress import PlainProgress, show_bars


@torch.no_grad()
def video_means(
    fn: Callable[[torch.Tensor], torch.Tensor],
    data: LabelledSet,
    cfg: DownstreamConfig,
    execution: Execution,
    ranks: Ranks = Ranks(),
    desc: str = "videos",
    indices: ClipIndices = eval_clip_indices,
) -> tuple[torch.Tensor, torch.Tensor, list[Rejected]]:
    """`fn` of every evaluation clip (normalised, (N, 3, T, S, S) → (N, D)), averaged per video; the clips
    are at the frames `indices` gives.

    Returns (positions of the videos in `data`, ascending; their means (V, D) on CPU; skipped videos),
    the same on every rank when distributed.
    """
    positions = list(range(ranks.rank, len(data), ranks.world_size))
    source = EvalClips(data, cfg.clips, execution.device, indices=indices)
    ids, means = [torch.zeros(0, dtype=torch.int64)], []
    stream = prefetched(
        positions, cfg.clips.test_batch_videos, source.for_videos, device=execution.device, name="eval-clips"
    )
    bar = tqdm(
        total=len(positions),
        unit="video",
        desc=desc,
        disable=not (show_bars(cfg.run.progress) and ranks.is_main),
        leave=False,
    )
    lines = PlainProgress(
        desc, len(positions), "videos", enabled=bool(bar.disable) and ranks.is_main and cfg.run.progress
    )
    with contextlib.closing(stream) as batches, bar:
        for batch in batches:
            if len(batch.clips):
                with execution.autocast():
                    values = fn(normalise(batch.clips, execution.channels_last)).float()
                owner, mean = aggregate_clips(values, batch.videos)
                ids.append(owner.cpu())
                means.append(mean.cpu())
            done = min(cfg.clips.test_batch_videos, len(positions) - int(bar.n))
            bar.update(done)
            lines.update(done)
    parts = ranks.gather((torch.cat(ids), torch.cat(means) if means else None, source.skipped))
    ids_all = torch.cat([p[0] for p in parts])
    found = [p[1] for p in parts if p[1] is not None]
    if not found:
        raise ValueError(f"{data.name}: no video could be decoded ({len(source.skipped)} skipped)")
    order = ids_all.argsort()
    return ids_all[order], torch.cat(found)[order], [r for p in parts for r in p[2]]


def predict(
    model: torch.nn.Module, data: LabelledSet, cfg: DownstreamConfig, execution: Execution, ranks: Ranks = Ranks()
) -> tuple[torch.Tensor, torch.Tensor, list[Rejected]]:
    """(positions, per-video scores (V, C), skipped videos): the softmax of the clips' mean logits, as the
    official test scores a video (not the mean of the clips' softmaxes). `model` runs in eval mode, then is
    restored."""
    was_training = model.training
    model.eval()
    try:
        positions, logits, skipped = video_means(model, data, cfg, execution, ranks, desc="testing")
        return positions, logits.softmax(1), skipped
    finally:
        model.train(was_training)


def classification_results(probs: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> dict[str, Any]:
    """Video-level top-1/top-5, per-class accuracy and the confusion matrix, as JSON-ready values."""
    top = topk_accuracy(probs, labels, (1, 5))
    confusion = confusion_matrix(probs.argmax(1), labels, len(classes))
    accuracy, counts = per_class_accuracy(confusion)
    present = counts > 0
    return {
        "videos": len(labels),
        "top1": top[1],
        "top5": top[5],
        "mean_class_accuracy": accuracy[present].mean().item(),
        "per_class": {
            name: {"videos": int(n), "top1": acc}
            for name, n, acc in zip(classes, counts.tolist(), accuracy.tolist())
            if n
        },
        "confusion": confusion.tolist(),
    }


def evaluate(
    model: torch.nn.Module, data: LabelledSet, cfg: DownstreamConfig, execution: Execution, ranks: Ranks = Ranks()
) -> dict[str, Any]:
    """Score `model` on `data` (already labelled in the model's classes)."""
    positions, probs, skipped = predict(model, data, cfg, execution, ranks)
    labels = torch.tensor(data.labels)[positions]
    return {
        "split": data.name,
        "clips_per_video": cfg.clips.test_clips,
        **classification_results(probs, labels, data.classes),
        "skipped": [dataclasses.asdict(r) for r in (*data.rejected, *skipped)],
    }


def summary_table(title: str, results: dict[str, Any], per_class: bool = True) -> str:
    text = format_table(
        [
            ("video top-1 (%)", percent(results["top1"])),
            ("video top-5 (%)", percent(results["top5"])),
            ("mean class accuracy (%)", percent(results["mean_class_accuracy"])),
            ("videos", str(results["videos"])),
            ("skipped videos", str(len(results["skipped"]))),
        ],
        ("metric", "value"),
        title=title,
    )
    if per_class:
        rows = sorted(results["per_class"].items(), key=lambda item: (item[1]["top1"], item[0]))
        text += "\n\n" + format_table(
            [(name, str(r["videos"]), percent(r["top1"])) for name, r in rows],
            ("class", "videos", "top-1 (%)"),
            title="per class (worst first)",
        )
    return text


def evaluate_checkpoint(
    checkpoint: str | Path, config: str | None = None, overrides: list[str] | None = None, out: Path | None = None
) -> None:
    """`ctp-train eval`: score a fine-tuned checkpoint (or its run folder) on its data.test split, or the one
    `config` and `overrides` name; print the results and write them (JSON, confusion matrix PNG) beside it."""
    checkpoint = resolve_checkpoint(checkpoint)
    model, classes, saved = load_classifier(checkpoint)
    cfg = load_downstream_config(config, overrides, base=saved)
    with process_group(cfg.run.device) as ranks:
        execution = Execution.for_rank(ranks, cfg.run)
        model = execution.prepare(model)
        test = ranks.broadcast(open_split(cfg.test_split, progress=cfg.run.progress) if ranks.is_main else None)
        results = evaluate(model, test.relabel(classes), cfg, execution, ranks)
    if not ranks.is_main:
        return
    out = out or results_path(checkpoint, "eval", test.name)
    picture = out.with_suffix(".confusion.png")
    confusion_image(torch.tensor(results["confusion"]), classes).save(picture)
    write_json(out, {"task": "eval", "checkpoint": str(checkpoint), "confusion_image": picture.name, **results})
    print(summary_table(f"eval: {checkpoint} on {test.name} ({cfg.clips.test_clips} clips per video)", results))
    print(f"results: {out}\nconfusion matrix: {picture}")
