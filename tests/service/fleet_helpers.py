"""The trainer's client as the end-to-end tests build it, the same keys generated in-process, and the
exactly-once contract they check."""

from __future__ import annotations

from pathlib import Path

import torch

from datagen.ctp.batch import Batch
from datagen.ctp.rng import SampleKey
from datagen.generator import Generator
from datagen.service.client.remote_source import RemoteSource
from datagen.video.manifest import resolve_videos

SEED, NS = 11, "fleet"


def source(config, **kwargs) -> RemoteSource:
    """The trainer's client; a short lookahead keeps most of the slice unasked when a test disturbs the fleet."""
    defaults = dict(
        lookahead_batches=3,
        config=config,
        namespace=NS,
        refresh_interval=0.2,
        stall_timeout=120,
        connect_timeout=10,
        wait_for_replicas=120,
    )
    return RemoteSource(**{**defaults, **kwargs})


def in_process(
    videos, config, epoch: int, indices: list[int], batch_size: int, bad: tuple[str, ...] = ()
) -> list[Batch]:
    """`videos`: paths, or VideoInfo probed earlier."""
    generator = Generator(videos if not isinstance(videos[0], Path) else resolve_videos(videos), config)
    for path in bad:
        generator.mark_bad(path)
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return [generator.generate([SampleKey(SEED, epoch, i) for i in chunk]) for chunk in chunks]


def assert_exactly_once_and_equal(got: list[Batch], expected: list[Batch], indices: list[int]) -> None:
    order = [i for b in got for i in b.keys[:, 2].tolist()]
    assert order == indices, "every index exactly once, in slice order"
    assert [len(b) for b in got] == [len(b) for b in expected]
    for g, e in zip(got, expected):
        for name in ("clips", "boxes", "visible", "keys"):
            assert torch.equal(getattr(g, name), getattr(e, name)), name
