"""Checkpoints: written atomically (common.atomic), so a crash never leaves a torn file behind;
marked with what they hold; found in run folders; checked before a run resumes from one.

Pretraining and fine-tuning share all of it: the `task` marker, what `--resume auto` picks (the newest
checkpoint that reads back: a damaged one, from a disk or a copy that failed, is set aside and said so), the
resume check, and the video list a checkpoint was trained on (a run resumes only on the same list).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common.atomic import replacing
from common.configfile import differences
from datagen.video.container import VideoInfo
from datagen.video.manifest import videos_digest
from trainer.runtime.rundir import claim_run_dir

log = logging.getLogger(__name__)
_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
FINETUNED_NAME = "finetuned.pt"  # a fine-tuning run's one checkpoint (trainer.downstream.finetune)
CHECKPOINT_FORMAT = 1  # the layout of a checkpoint's entries
PRETRAIN_TASK = "pretrain"
FINETUNE_TASK = "finetune"


def marked(task: str, state: dict[str, Any]) -> dict[str, Any]:
    """`state` with the entries saying what it holds: `task` (pretrain | finetune) and `format`."""
    return {"task": task, "format": CHECKPOINT_FORMAT, **state}


def checkpoint_task(state: dict[str, Any]) -> str:
    """What a checkpoint holds. Checkpoints from before the marker was shared: a fine-tuned one says
    `task: finetune`, a pretraining one only `format: 1` (or, written by hand or in tests, nothing)."""
    return state.get("task", PRETRAIN_TASK)


def check_resumable(
    state: dict[str, Any], task: str, config: dict[str, Any], invariants: tuple[str, ...], source: Path | str
) -> None:
    """Refuse to resume from a checkpoint of another task, or whose `invariants` (sections of the config dict that
    decide the samples and the network) differ from this run's, naming each differing key old -> new."""
    found = checkpoint_task(state)
    if found != task:
        raise ValueError(f"cannot resume from {source}: it holds a {found} run, not a {task} run")
    saved = state["config"]
    changed = [s for s in invariants if saved.get(s) != config.get(s)]
    if changed:
        differ = differences({s: saved.get(s) for s in changed}, {s: config.get(s) for s in changed})
        raise ValueError(
            f"cannot resume: the checkpoint's {' and '.join(changed)} config differs from this run's "
            f"(checkpoint -> this run: {'; '.join(differ)}); resume from {source} with the same "
            f"{', '.join(s + '.*' for s in invariants)} settings"
        )


def resume_point(run_dir: Path, resume: str | None, overwrite: bool, reads: Sequence[str | Path] = ()) -> Path | None:
    """The checkpoint a run continues from (None: a new run), once its folder is this run's (trainer.runtime.rundir).

    `--resume auto`: the folder's newest intact checkpoint, or a new run when it has none yet (what lies there then
    is an unfinished run's outputs, redone from the start); `--resume PATH`: that checkpoint, or a run folder's.
    `reads`: files the command reads (`--init`), which no `--overwrite` may delete."""
    if resume == "auto":
        checkpoint = _newest_intact(run_dir)
        if checkpoint is None:
            log.info("--resume auto: no checkpoint in %s yet, starting fresh", run_dir)
    else:
        checkpoint = resolve_checkpoint(resume) if resume is not None else None
    claim_run_dir(run_dir, run_outputs(run_dir), checkpoint is not None, overwrite or resume == "auto", reads=reads)
    return checkpoint


def damage(path: Path) -> str | None:
    """Why `path` is no readable ctp-train checkpoint, or None. Cheap: the tensors are mapped, not read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        return "not a ctp-train checkpoint (no model/config entries)"
    return None


def _newest_intact(run_dir: Path) -> Path | None:
    """The newest checkpoint in `run_dir` that reads back; damaged newer ones are renamed `*.damaged` (kept for a
    person to look at, out of the way of pruning and the next `--resume auto`), with a warning that says why."""
    found = list_checkpoints(run_dir)
    finetuned = Path(run_dir) / FINETUNED_NAME
    candidates = found[::-1] or ([finetuned] if finetuned.is_file() else [])
    skipped: list[str] = []
    for path in candidates:
        why = damage(path)
        if why is None:
            if skipped:
                step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("step")
                log.warning(
                    "--resume auto: skipped %s; resuming from %s at step %s",
                    "; ".join(skipped),
                    path.name,
                    step,
                )
            return path
        aside = path.with_name(path.name + ".damaged")
        path.rename(aside)
        skipped.append(f"{path.name} ({why}; kept as {aside.name})")
    if skipped:
        raise ValueError(
            f"--resume auto: no intact checkpoint in {run_dir}: {'; '.join(skipped)}; resume from a copy "
            "(--resume FILE) or start anew in another folder (run.out_dir=...)"
        )
    return None


def video_list(videos: Sequence[VideoInfo]) -> dict[str, Any]:
    """What a checkpoint records of the videos it was trained on (its sample indices name them)."""
    return {
        "digest": videos_digest(videos),
        "paths": [v.path for v in videos],
        "frames": [int(v.num_frames) for v in videos],
    }


def check_same_videos(state: dict[str, Any], videos: Sequence[VideoInfo], source: Path | str) -> None:
    """Refuse to resume on another video list than the checkpoint's (a manifest edited in place, a folder with
    files added or removed): a sample index would name another video. Names the counts and the first difference."""
    saved = state.get("videos")
    if saved is None:
        log.warning("%s records no video list (an older checkpoint): resuming without checking it", source)
        return
    if saved["digest"] == videos_digest(videos):
        return
    theirs, ours = list(zip(saved["paths"], saved["frames"])), [(v.path, int(v.num_frames)) for v in videos]
    first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))

    def entry(listed: list[tuple[str, int]]) -> str:
        return f"{listed[first][0]} ({listed[first][1]} frames)" if first < len(listed) else "(none)"

    raise ValueError(
        f"cannot resume from {source}: the video list changed (checkpoint: {len(theirs)} videos, this run: "
        f"{len(ours)}; first difference at #{first + 1}: checkpoint {entry(theirs)}, this run {entry(ours)}); "
        "resume with the checkpoint's videos (data.videos) or start a new run"
    )


def is_checkpoint_name(path: str | Path) -> bool:
    """`path` is named as the checkpoints of a run are (ckpt-<step>.pt, finetuned.pt)."""
    name = Path(path).name
    return bool(_NAME.match(name)) or name == FINETUNED_NAME


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"ckpt-{step:08d}.pt"


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` to `path`; readers see either the previous file or the complete new one."""
    with replacing(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if _NAME.match(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """A run folder's checkpoint: a pretraining run's newest ckpt-*.pt, or a fine-tuning run's finetuned.pt."""
    finetuned = Path(run_dir) / FINETUNED_NAME
    return latest_checkpoint(run_dir) or (finetuned if finetuned.is_file() else None)


def run_outputs(run_dir: str | Path) -> list[Path]:
    """The checkpoints in a run folder and the files beside a fine-tuned one (its results and evaluations)."""
    run_dir = Path(run_dir)
    return [*list_checkpoints(run_dir), *sorted(run_dir.glob(f"{Path(FINETUNED_NAME).stem}.*"))]


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for old in list_checkpoints(run_dir)[: -max(keep, 1)]:
        old.unlink(missing_ok=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's checkpoint: a pretraining run's newest ckpt-*.pt, or a
    fine-tuning run's finetuned.pt (every command that takes a checkpoint takes its run folder alike)."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = newest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"no checkpoint (ckpt-*.pt or {FINETUNED_NAME}) in the folder {path}")
    return found


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file, or a run folder's (`resolve_checkpoint`), on CPU with `weights_only` (no pickled
    code runs)."""
    path = resolve_checkpoint(path)
    state = read_state(path, "ctp-train checkpoint")
    if "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a ctp-train checkpoint (no model/config entries)")
    return state


def read_state(path: str | Path, what: str = "weights file") -> dict[str, Any]:
    """A weights file loaded on CPU without running pickled code; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        # Not torch's advice to load with weights_only=False: that runs whatever code the file holds.
        why = (
            "it holds pickled Python objects beyond tensors, which are not loaded (no code from a file runs)"
            if "Unsupported global" in str(exc)  # what torch's safe unpickler says of a pickled class
            else "not a file torch.save wrote, or a truncated one"
        )
        raise ValueError(f"{path} is not a readable {what}: {why}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict or checkpoint")
    return state
