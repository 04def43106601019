"""The data cursor: which sample indices of the current epoch are still to be trained on.

A set, not a count, because remote replicas deliver batches in any order; stored as sorted half-open
ranges, which stay tiny for in-order consumption and exact for any order. A resumed run streams exactly
the remaining indices (and a distributed run may reshard them over a different number of ranks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


class EpochCursor:
    def __init__(self, epoch: int, size: int, remaining: np.ndarray | None = None) -> None:
        self.epoch = epoch
        self.size = size
        self._left = np.ones(size, dtype=bool) if remaining is None else remaining

    def remaining(self) -> list[int]:
        """The indices not yet consumed, ascending."""
        return np.flatnonzero(self._left).tolist()

    def __len__(self) -> int:
        return int(self._left.sum())

    def consume(self, indices: Iterable[int]) -> None:
        idx = np.fromiter((int(i) for i in indices), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            raise ValueError(f"sample index out of range for an epoch of {self.size}: {idx.tolist()}")
        if not self._left[idx].all():
            raise ValueError(f"epoch {self.epoch}: indices consumed twice: {idx[~self._left[idx]].tolist()}")
        self._left[idx] = False

    def state_dict(self) -> dict[str, Any]:
        edges = np.flatnonzero(np.diff(np.concatenate([[False], self._left, [False]]).astype(np.int8)))
        return {"epoch": self.epoch, "size": self.size, "ranges": edges.reshape(-1, 2).tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> EpochCursor:
        left = np.zeros(state["size"], dtype=bool)
        for start, stop in state["ranges"]:
            left[start:stop] = True
        return cls(state["epoch"], state["size"], left)
