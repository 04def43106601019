"""A run's folder belongs to one run: a new run never overwrites or mixes with the checkpoints of another.

Without `--resume`, a folder that already holds a run's outputs is refused (the message offers `--resume auto`
or another folder); `--overwrite` clears those outputs first, so no old checkpoint or metric line survives.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

# What a run writes into its folder besides its checkpoints (trainer.runtime.metrics_log.MetricsLog).
_RUN_OUTPUTS = ("metrics.jsonl", "tensorboard")


def claim_run_dir(
    run_dir: Path,
    checkpoints: list[Path],
    resuming: bool,
    overwrite: bool,
    key: str = "run.out_dir",
    reads: Sequence[str | Path] = (),
) -> None:
    """Make `run_dir` this run's: refuse a folder holding another run unless resuming it or told to overwrite it.

    `checkpoints`: the run's checkpoint files in the folder (they and the metrics are what a new run would clobber);
    `reads`: files or folders the command reads, e.g. the checkpoint it fine-tunes: never deleted, even when told
    to overwrite (the command would then fail without them, the old run gone)."""
    if resuming:
        return
    outputs = [*checkpoints, *(run_dir / name for name in _RUN_OUTPUTS if (run_dir / name).exists())]
    if not outputs:
        return
    needed = [str(r) for r in reads if any(_within(p, Path(r)) for p in outputs)]
    if needed:
        raise FileExistsError(
            f"{run_dir} holds {', '.join(needed)}, which this command reads: it cannot also be this run's folder "
            f"(--overwrite would delete it); write this run to another folder ({key}=...)"
        )
    if not overwrite:
        names = ", ".join(sorted(p.name for p in outputs))
        raise FileExistsError(
            f"{run_dir} already holds a run ({names}); continue it with --resume auto, start this run in another "
            f"folder ({key}=...), or pass --overwrite to delete the old run's checkpoints and metrics first"
        )
    for path in outputs:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _within(path: Path, read: Path) -> bool:
    """`path` is `read`, or lies in the folder `read`."""
    path, read = path.resolve(), read.resolve()
    return path == read or read in path.parents
