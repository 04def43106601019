"""Checkpoints written atomically (datagen.atomic), so a crash never leaves a torn file behind."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from datagen.atomic import replacing

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")
FINETUNED_NAME = "finetuned.pt"  # a fine-tuning run's one checkpoint (trainer.downstream.finetune)
FINETUNE_TASK = "finetune"  # the `task` entry of a fine-tuned checkpoint


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
    found = latest_checkpoint(path) or (path / FINETUNED_NAME if (path / FINETUNED_NAME).is_file() else None)
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
        raise ValueError(f"{path} is not a readable {what} ({exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict or checkpoint")
    return state
