"""Counter-based randomness keyed on (run seed, epoch, sample index): the determinism contract.

Every random choice of a sample is drawn from a Philox stream whose key is the sample key and whose
counter's high word names the purpose (clip, trajectories, colour, ...). Streams never overlap, never
touch process-global state, and do not depend on the batch a sample is generated in or on the device.

`uniforms` evaluates the same Philox4x64-10 streams for a whole batch of keys at once in NumPy array code
(bit-identical to `generator(key, stream, attempt).random(n)`), so that planning costs microseconds per
sample instead of one Generator object per sample and stream.
"""

from __future__ import annotations

import argparse
import enum
import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np


class SampleKey(NamedTuple):
    seed: int
    epoch: int
    index: int  # type: ignore[assignment]  # shadows tuple.index: keys are read as key.index


class Stream(enum.IntEnum):
    """One independent stream per concern, so that changing one part of the spec leaves the others."""

    VIDEO = 0
    CLIP = 1
    TRAJECTORY = 2
    PATCH = 3
    COLOUR = 4
    PERMUTATION = 5


_INDEX_BITS = 40  # up to ~1e12 samples per epoch and 2^24 epochs fit in one 64-bit key word
EPOCHS = 1 << (64 - _INDEX_BITS)  # the epochs a key can name
SEEDS = 1 << 63  # run seeds: 0 .. 2^63 - 1, as sample keys travel in int64 tensors


def seed_problem(seed: int, name: str = "seed") -> str | None:
    """Why `seed` cannot be a run seed (for the error that names the setting), or None."""
    return None if 0 <= seed < SEEDS else f"{name} must be in 0 .. 2**63 - 1 (sample keys are int64), got {seed}"


def seed_arg(text: str) -> int:
    """An argparse `type` for --seed options: the range checked as the configs check data.seed."""
    seed = int(text)
    problem = seed_problem(seed)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return seed


# Reserved epochs of a run seed, at the top of the key space where training never gets: their samples come
# from the same videos and spec yet are disjoint from every training sample.
HELD_OUT_EPOCH = EPOCHS - 1  # pretraining's held-out tracking clips
SUBSET_EPOCH = EPOCHS - 2  # fine-tuning's label-fraction subsets, one key per class


def key_problem(key: Sequence[int]) -> str | None:
    """Why (seed, epoch, index) is not a sample key (a field outside its bits, named with its range), or None."""
    seed, epoch, index = (int(v) for v in key)
    fields = (("seed", seed, 1 << 64), ("epoch", epoch, EPOCHS), ("sample index", index, 1 << _INDEX_BITS))
    wrong = [f"the {name} must lie in [0, {limit})" for name, value, limit in fields if not 0 <= value < limit]
    return f"sample key out of range: {tuple(key)}: {'; '.join(wrong)}" if wrong else None


def key_words(keys: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """(N, 3) sample keys → (N, 2) uint64 Philox key words (seed, epoch << 40 | index), range-checked."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind == "i" and (keys < 0).any():
        raise ValueError(f"sample key out of range: {keys[np.nonzero(keys < 0)[0][0]].tolist()}")
    try:
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1, 3)
    except OverflowError:  # a negative Python int
        raise ValueError(f"sample key out of range: {keys}") from None
    seed, epoch, index = keys[:, 0], keys[:, 1], keys[:, 2]
    bad = (index >= np.uint64(1 << _INDEX_BITS)) | (epoch >= np.uint64(EPOCHS))
    if bad.any():
        raise ValueError(f"sample key out of range: {tuple(int(v) for v in keys[np.argmax(bad)])}")
    return np.stack([seed, (epoch << np.uint64(_INDEX_BITS)) | index], 1)


def generator(key: SampleKey, stream: Stream, attempt: int = 0) -> np.random.Generator:
    """The Philox generator for one purpose of one sample (attempt > 0: after a video was replaced)."""
    problem = key_problem(key)
    if problem:
        raise ValueError(problem)
    seed, epoch, index = (int(v) for v in key)
    words = np.array([seed, (epoch << _INDEX_BITS) | index], dtype=np.uint64)
    counter = np.array([0, 0, attempt, int(stream)], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=words, counter=counter))


_M0, _M1 = 0xD2E7470EE14C6C93, 0xCA5A826395121157  # Philox4x64 multipliers
_W0, _W1 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBB67AE8584CAA73B)  # its key increments
_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def _mulhilo(a: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """High and low 64-bit words of a · m, from 32-bit halves (NumPy has no 128-bit product)."""
    m_lo, m_hi = np.uint64(m & 0xFFFFFFFF), np.uint64(m >> 32)
    a_lo, a_hi = a & _LOW, a >> _32
    lh, hl = a_lo * m_hi, a_hi * m_lo
    mid = ((a_lo * m_lo) >> _32) + (lh & _LOW) + (hl & _LOW)
    return a_hi * m_hi + (lh >> _32) + (hl >> _32) + (mid >> _32), a * np.uint64(m)


def _philox(ctr: list[np.ndarray], key: list[np.ndarray]) -> list[np.ndarray]:
    """Philox4x64-10 of counter words `ctr` (4 arrays) under key words `key` (2 arrays), elementwise."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = k0 + _W0, k1 + _W1
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def uniforms(keys: np.ndarray, attempts: np.ndarray, counts: Mapping[Stream, int]) -> dict[Stream, np.ndarray]:
    """For every key (N, 3) at its attempt (N,), the first `counts[stream]` doubles in [0, 1) of each
    stream: row i of stream s equals `generator(keys[i], s, attempts[i]).random(counts[s])` bit for bit.
    All streams of all keys are one vectorised Philox evaluation."""
    words = key_words(keys)
    attempts = np.asarray(attempts, dtype=np.uint64).reshape(-1)
    n = len(words)
    blocks = {s: -(-c // 4) for s, c in counts.items()}
    per_key = sum(blocks.values())
    # Counter words per (key, stream, block): NumPy's Philox increments the counter before each block.
    block = np.concatenate([np.arange(1, b + 1, dtype=np.uint64) for b in blocks.values()])
    stream = np.concatenate([np.full(b, int(s), dtype=np.uint64) for s, b in blocks.items()])
    ctr = [np.tile(block, n), np.zeros(n * per_key, np.uint64), np.repeat(attempts, per_key), np.tile(stream, n)]
    out = np.stack(_philox(ctr, [np.repeat(words[:, 0], per_key), np.repeat(words[:, 1], per_key)]), 1)
    doubles = (out.reshape(n, per_key * 4) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    result, at = {}, 0
    for s, b in blocks.items():
        result[s] = doubles[:, at * 4 : at * 4 + counts[s]]
        at += b
    return result


@functools.lru_cache(maxsize=8)
def epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order in which an epoch visits `size` videos (read-only, cached)."""
    perm = generator(SampleKey(seed, epoch, 0), Stream.PERMUTATION).permutation(size)
    perm.setflags(write=False)
    return perm


class Draws:
    """Hands out the columns of an (N, n) matrix of uniforms in a fixed order, so that each choice of a
    sample has a fixed place in its stream. `Draws.counting()` hands out zeros and counts them: running a
    planner on it once tells how many uniforms the planner takes for a config."""

    def __init__(self, u: np.ndarray | None) -> None:
        self.u, self.used = u, 0

    @classmethod
    def counting(cls) -> Draws:
        return cls(None)

    def take(self, *shape: int) -> np.ndarray:
        """(N, *shape) uniforms in [0, 1)."""
        n = int(np.prod(shape, dtype=np.int64))
        start, self.used = self.used, self.used + n
        if self.u is None:
            return np.zeros((1, *shape))
        if self.used > self.u.shape[1]:
            raise ValueError(f"a planner took more than the {self.u.shape[1]} uniforms drawn for it")
        return self.u[:, start : self.used].reshape(len(self.u), *shape)


def choose(u: np.ndarray, probs: Sequence[float]) -> np.ndarray:
    """Indices drawn with probabilities `probs` (inverse CDF of uniforms `u`)."""
    cdf = np.cumsum(np.asarray(probs, dtype=np.float64))
    return np.minimum(np.searchsorted(cdf / cdf[-1], u, side="right"), len(cdf) - 1)


def pick(u: np.ndarray, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """One of `values`, each equally likely."""
    values = np.asarray(values)
    return values[np.minimum((u * len(values)).astype(np.int64), len(values) - 1)]


def between(u: np.ndarray, low: float | np.ndarray, high: float | np.ndarray) -> np.ndarray:
    """Uniform in [low, high)."""
    return low + (high - low) * u


def below(u: np.ndarray, high: np.ndarray | int) -> np.ndarray:
    """Integers uniform in [0, high), high ≥ 1."""
    return np.minimum((u * high).astype(np.int64), np.asarray(high) - 1)
