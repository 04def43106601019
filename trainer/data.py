"""Where training batches come from: the sample-source protocol and the in-process generator source."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Protocol

from datagen.batch import Batch
from datagen.generator import Generator
from datagen.rng import SampleKey

# Held-out clips use this reserved epoch of the run seed, which training never reaches: they come from
# the same videos and the same generation spec but are disjoint from every training sample.
HELD_OUT_EPOCH = (1 << 24) - 1


class SampleSource(Protocol):
    def stream(self, seed: int, epoch: int, indices: Sequence[int], batch_size: int) -> Iterator[Batch]:
        """Batches of batch_size (the last may be smaller) that together hold each index exactly once."""
        ...


class InProcessSource:
    """Generates batches in this process, in index order, one batch ahead on a background thread.

    Torch ops and the decoders release the GIL, so generating the next batch overlaps the training step.
    """

    def __init__(self, generator: Generator, prefetch: int = 2) -> None:
        self.generator = generator
        self.prefetch = max(1, prefetch)

    def stream(self, seed: int, epoch: int, indices: Sequence[int], batch_size: int) -> Iterator[Batch]:
        chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
        ready: queue.Queue[Batch | BaseException | None] = queue.Queue(self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for chunk in chunks:
                    if stop.is_set():
                        return
                    batch = self.generator.generate([SampleKey(seed, epoch, int(i)) for i in chunk])
                    _put(ready, batch, stop)
                _put(ready, None, stop)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                _put(ready, exc, stop)

        worker = threading.Thread(target=produce, name=f"generate-epoch{epoch}", daemon=True)
        worker.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()


def _put(q: queue.Queue, item: object, stop: threading.Event) -> None:
    """Put unless the consumer has gone away (checked twice a second, so the producer never hangs)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def held_out_batches(generator: Generator, seed: int, clips: int, batch_size: int) -> list[Batch]:
    """The fixed held-out set of generated clips for tracking evaluation, in batches."""
    keys = [SampleKey(seed, HELD_OUT_EPOCH, i) for i in range(clips)]
    return [generator.generate(keys[i : i + batch_size]) for i in range(0, clips, batch_size)]
