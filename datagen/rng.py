"""Counter-based randomness keyed on (run seed, epoch, sample index): the determinism contract.

Every random choice of a sample is drawn from a Philox stream whose key is the sample key and whose
counter's high word names the purpose (clip, trajectories, colour, ...). Streams never overlap, never
touch process-global state, and do not depend on the batch a sample is generated in or on the device.
"""
from __future__ import annotations

import enum
import functools
from typing import NamedTuple

import numpy as np


class SampleKey(NamedTuple):
    seed: int
    epoch: int
    index: int


class Stream(enum.IntEnum):
    """One independent stream per concern, so that changing one part of the spec leaves the others."""

    VIDEO = 0
    CLIP = 1
    TRAJECTORY = 2
    PATCH = 3
    COLOUR = 4
    PERMUTATION = 5


_INDEX_BITS = 40  # up to ~1e12 samples per epoch and 2^24 epochs fit in one 64-bit key word


def generator(key: SampleKey, stream: Stream, attempt: int = 0) -> np.random.Generator:
    """The Philox generator for one purpose of one sample (attempt > 0: after a video was replaced)."""
    seed, epoch, index = (int(v) for v in key)
    if not (0 <= index < 1 << _INDEX_BITS and 0 <= epoch < 1 << (64 - _INDEX_BITS) and 0 <= seed < 1 << 64):
        raise ValueError(f"sample key out of range: {key}")
    words = np.array([seed, (epoch << _INDEX_BITS) | index], dtype=np.uint64)
    counter = np.array([0, 0, attempt, int(stream)], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=words, counter=counter))


@functools.lru_cache(maxsize=8)
def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order in which an epoch visits `size` videos (read-only, cached)."""
    perm = generator(SampleKey(seed, epoch, 0), Stream.PERMUTATION).permutation(size)
    perm.setflags(write=False)
    return perm
