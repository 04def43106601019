"""Run metrics: one JSON line per step or evaluation (exact, machine-readable) and TensorBoard scalars/images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from common.atomic import write_atomic


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            self._truncate_after(resume_step)
        # TensorBoard hides events at or after purge_step: those of a crashed run past its last checkpoint.
        purge = None if resume_step is None else resume_step + 1
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)

    def _truncate_after(self, step: int) -> None:
        """Forget records a crashed run wrote after its last checkpoint; the resumed run redoes those steps."""
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            write_atomic(self.path, "".join(f"{line}\n" for line in kept))  # a crash now keeps the old log

    def records(self, rows: list[dict[str, Any]]) -> None:
        with self.path.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.tensorboard.add_scalar(name, value, step)

    def image(self, step: int, name: str, image: torch.Tensor) -> None:
        self.tensorboard.add_image(name, image, step)

    def close(self) -> None:
        self.tensorboard.close()


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
