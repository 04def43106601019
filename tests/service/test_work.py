"""The replica's pipelined work queue: decode of batch n + 1 overlaps the render of batch n, batches are the
sequential generator's, and replaced samples are the ones the generator replaced."""

from __future__ import annotations

import itertools
import os
import threading

import pytest
import torch

from datagen.ctp.plan import choose_video
from datagen.ctp.rng import SampleKey
from datagen.generator import Generator, pipelined
from datagen.service.server.metrics import ReplicaMetrics
from datagen.service.server.work_queue import WorkQueue


def run_queue(generator, batches: list[list[SampleKey]]):
    work = WorkQueue(generator, ReplicaMetrics(), capacity=4, lookahead=len(batches))
    work.start()
    try:
        keys = [k for b in batches for k in b]
        return list(work.run(keys, len(batches[0]), lambda: True))
    finally:
        work.stop()


class Overlap(Generator):
    """Renders batch n only once the decode of batch n + 1 has begun (or 20 s passed)."""

    ahead = 1  # decode ahead even where this machine has one core

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decodes_begun = 0
        self.began = threading.Condition()
        self.overlapped: list[bool] = []

    def decode_batch(self, keys):
        with self.began:
            self.decodes_begun += 1
            self.began.notify_all()
        return super().decode_batch(keys)

    def render_batch(self, decoded):
        n = len(self.overlapped) + 1  # this is batch n; has the decode of batch n + 1 begun?
        with self.began:
            self.overlapped.append(self.began.wait_for(lambda: self.decodes_begun > n, timeout=20))
        return super().render_batch(decoded)


def test_decode_of_the_next_batch_overlaps_the_render_and_batches_are_unchanged(demo_videos):
    batches = [[SampleKey(3, 0, 2 * b + i) for i in range(2)] for b in range(3)]
    generator = Overlap(demo_videos)
    results = run_queue(generator, batches)
    assert generator.overlapped[:-1] == [True, True], "the next batch's decode must run while one renders"
    reference = Generator(demo_videos)
    for keys, result in zip(batches, results):
        expected = reference.generate(keys)
        assert torch.equal(result.batch.clips, expected.clips) and torch.equal(result.batch.boxes, expected.boxes)
        assert result.problems == []


class QuarantineWhileRendering(Generator):
    """The fleet's quarantine of `path` arrives (as from Redis) while the first batch renders."""

    def __init__(self, videos, path: str):
        super().__init__(videos)
        self.path = path

    def render_batch(self, decoded):
        self.mark_bad(self.path, "told by the control plane")
        return super().render_batch(decoded)


def test_replaced_samples_are_the_generators_replacements_not_a_recount(demo_videos):
    n = len(demo_videos)
    first = [SampleKey(0, 0, 0), SampleKey(0, 0, 1)]
    video = choose_video(first[0], n)
    later = next(SampleKey(0, 1, i) for i in range(n) if choose_video(SampleKey(0, 1, i), n) == video)
    generator = QuarantineWhileRendering(demo_videos, demo_videos[video].path)
    (result,) = run_queue(generator, [first])
    # The batch was planned and decoded from its own videos before the quarantine: nothing was replaced.
    assert result.problems == [] and generator.bad_videos
    (result,) = run_queue(generator, [[later, SampleKey(0, 1, (later.index + 1) % n)]])
    (problem,) = result.problems
    assert (problem.index, problem.video) == (later.index, demo_videos[video].path)


@pytest.mark.parametrize("ahead", [2, 0])
def test_pipelined_hands_each_result_or_exception_over_in_order(ahead):
    threads = set()

    def first(x: int) -> int:
        threads.add(threading.current_thread())
        if x == 2:
            raise ValueError("two")
        return 10 * x

    out = list(pipelined(range(4), first, ahead=ahead))
    assert [i for i, _ in out] == [0, 1, 2, 3]
    assert [r for _, r in out if not isinstance(r, Exception)] == [0, 10, 30]
    with pytest.raises(ValueError, match="two"):
        raise out[2][1]
    assert (threads == {threading.current_thread()}) == (ahead == 0)


def test_pipelined_stops_its_thread_when_the_consumer_closes_it_and_raises_what_ended_it():
    before = set(threading.enumerate())
    stream = pipelined(itertools.count(), lambda x: x, ahead=2, name="endless")
    assert [next(stream)[1] for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert set(threading.enumerate()) - before == set()

    class Interrupted(BaseException):
        pass

    def first(x: int) -> int:
        if x == 1:
            raise Interrupted()
        return x

    stream = pipelined(range(5), first, ahead=1)
    assert next(stream) == (0, 0)
    with pytest.raises(Interrupted):
        next(stream)


def test_a_replica_on_one_core_runs_its_stages_in_line_and_batches_are_unchanged(demo_videos):
    """Two threads on one core only contend (13 % slower end to end here): there the replica decodes and
    renders in its one thread and still serves the same batches and reports the same replaced samples; with
    a second core the stages overlap."""
    bad = demo_videos[1].path
    batches = [[SampleKey(0, 0, b * 20 + i) for i in range(20)] for b in range(2)]
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})  # this thread's, inherited by the queue's
        inline = Generator(demo_videos)
        inline.mark_bad(bad, "test")
        assert inline.ahead == 0
        results = run_queue(inline, batches)
    finally:
        os.sched_setaffinity(0, cores)
    reference = Generator(demo_videos)
    reference.mark_bad(bad, "test")
    assert reference.ahead == (1 if len(cores) > 1 else 0)
    for keys, result in zip(batches, results):
        decoded = reference.decode_batch(keys)
        expected = reference.render_batch(decoded)
        assert torch.equal(result.batch.clips, expected.clips) and torch.equal(result.batch.boxes, expected.boxes)
        assert torch.equal(result.batch.keys, expected.keys)
        replaced = [(p.index, p.video) for p in result.problems]
        assert replaced == [(k.index, path) for k, path in reference.replaced(decoded)] and replaced
    assert inline.stats["samples"] == 40
