"""One `RemoteSource.stream()` call's cursor: the indices still to be asked, and the reorder buffer that yields
whole batches in slice order, each index once, whatever order the replicas answer in."""

from __future__ import annotations

import collections
import heapq
import itertools
from collections.abc import Iterator

import torch

from datagen.ctp.batch import Batch


class Slice:
    """What is still to be asked of the replicas, and what arrived ahead of the cursor."""

    def __init__(self, seed: int, epoch: int, indices: list[int], batch_size: int, request_size: int):
        self.seed, self.epoch, self.batch_size = seed, epoch, batch_size
        self.size = len(indices)
        self.position = {idx: pos for pos, idx in enumerate(indices)}
        if len(self.position) != self.size:
            raise ValueError("the indices of a slice must be distinct")
        self.buffer: dict[int, tuple[Batch, int]] = {}
        self.cursor = 0  # positions before it were yielded
        self._order = itertools.count()
        self._pending = [
            (start, next(self._order), indices[start : start + request_size])
            for start in range(0, self.size, request_size)
        ]
        self.failures: collections.Counter[int] = collections.Counter()

    @property
    def done(self) -> bool:
        return self.cursor == self.size

    def has(self, idx: int) -> bool:
        pos = self.position[idx]
        return pos < self.cursor or pos in self.buffer

    def next_request(self, lookahead: int) -> list[int] | None:
        """The earliest pending indices not yet received, if they lie within `lookahead` of the cursor."""
        while self._pending and self._pending[0][0] < self.cursor + lookahead:
            _, _, indices = heapq.heappop(self._pending)
            wanted = [i for i in indices if not self.has(i)]
            if wanted:
                return wanted
        return None

    def requeue(self, indices: list[int]) -> None:
        wanted = [i for i in indices if not self.has(i)]
        if wanted:
            heapq.heappush(self._pending, (self.position[wanted[0]], next(self._order), wanted))

    def accept(self, idx: int, batch: Batch, row: int) -> str:
        pos = self.position.get(idx)
        if pos is None:
            return "unexpected"
        if pos < self.cursor or pos in self.buffer:
            return "duplicate"
        self.buffer[pos] = (batch, row)
        return "new"

    def ready(self, pin_memory: bool = False) -> Iterator[Batch]:
        """Batches whose every sample has arrived, in slice order (`assemble`)."""
        while not self.done:
            end = min(self.cursor + self.batch_size, self.size)
            if any(p not in self.buffer for p in range(end - 1, self.cursor - 1, -1)):
                return
            parts = [self.buffer.pop(p) for p in range(self.cursor, end)]
            self.cursor = end
            yield assemble(parts, pin_memory)


def assemble(parts: list[tuple[Batch, int]], pin_memory: bool = False) -> Batch:
    """One batch from (batch, row) pairs; a received batch that is exactly the wanted one is passed as is.
    Otherwise the rows' clips are gathered straight into one tensor (pinned with `pin_memory`, as received
    clips are: `BatchDecoder`)."""
    first = parts[0][0]
    if len(parts) == len(first) and all(b is first and r == i for i, (b, r) in enumerate(parts)):
        return first
    clips = torch.empty((len(parts), *first.clips.shape[1:]), dtype=first.clips.dtype, pin_memory=pin_memory)
    pieces, at = [], 0
    for _, run in itertools.groupby(parts, key=lambda p: id(p[0])):  # runs of rows from one received batch
        rows = list(run)
        source, idx = rows[0][0], torch.tensor([r for _, r in rows])
        torch.index_select(source.clips, 0, idx, out=clips[at : at + len(idx)])
        pieces.append((source.boxes[idx], source.visible[idx], source.keys[idx]))
        at += len(idx)
    boxes, visible, keys = (torch.cat(t) for t in zip(*pieces))
    return Batch(clips, boxes, visible, keys)
