"""Files replaced atomically: written under a temporary name beside the target, flushed to disk, renamed.

Readers, and a machine that crashes mid-write, see the previous file or the complete new one, never part of
one. Checkpoints, manifests, results and reports, and re-encoded videos are all written this way."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; renamed over `path` when the block completes.

    If the block fails, the temporary file is removed and `path` is untouched. The temporary name is fixed
    (`.<name>.part`), so what a killed writer left behind is replaced by the next attempt."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync(path.parent)  # make the rename itself durable


def write_atomic(path: str | os.PathLike[str], content: str | bytes) -> Path:
    """Replace `path` with `content` (text is written as UTF-8)."""
    with replacing(path) as tmp:
        tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    return Path(path)


def write_json(path: str | os.PathLike[str], value: Any) -> Path:
    """`value` as JSON, one entry per line (results, reports), replacing `path` atomically."""
    return write_atomic(path, json.dumps(value, indent=1) + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
