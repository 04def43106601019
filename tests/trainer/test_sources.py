"""The data cursor and the in-process sample source."""

import threading

import pytest
import torch

from datagen.ctp.batch import Batch
from datagen.ctp.spec import ClipConfig, GenerationConfig
from datagen.generator import Generator
from trainer.pretrain.cursor import EpochCursor
from trainer.pretrain.sources import HELD_OUT_EPOCH, InProcessSource, held_out_batches, prefetched

SMALL = GenerationConfig(clip=ClipConfig(num_frames=8, short_sides=(64,), crop_size=64))


def test_cursor_tracks_out_of_order_consumption_compactly():
    cursor = EpochCursor(epoch=3, size=10)
    cursor.consume([0, 1, 2])
    cursor.consume([7, 5])
    assert cursor.remaining() == [3, 4, 6, 8, 9] and len(cursor) == 5
    state = cursor.state_dict()
    assert state == {"epoch": 3, "size": 10, "ranges": [[3, 5], [6, 7], [8, 10]]}
    restored = EpochCursor.from_state_dict(state)
    assert restored.epoch == 3 and restored.remaining() == cursor.remaining()
    restored.consume([3, 4, 6, 8, 9])
    assert len(restored) == 0 and restored.state_dict()["ranges"] == []


def test_cursor_rejects_duplicates_and_foreign_indices():
    cursor = EpochCursor(epoch=0, size=4)
    cursor.consume([1])
    with pytest.raises(ValueError, match=r"consumed twice: \[1\]"):
        cursor.consume([0, 1])
    with pytest.raises(ValueError, match="out of range"):
        cursor.consume([4])
    assert cursor.remaining() == [0, 2, 3]  # a rejected call changes nothing


@pytest.fixture(scope="module")
def generator(demo_videos) -> Generator:
    return Generator(demo_videos, SMALL)


def test_stream_yields_each_index_once_in_batches(generator):
    indices = [9, 2, 4, 0, 7, 1, 3]
    batches = list(InProcessSource(generator).stream(5, 1, indices, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    keys = torch.cat([b.keys for b in batches])
    assert keys[:, 2].tolist() == indices
    assert (keys[:, 0] == 5).all() and (keys[:, 1] == 1).all()
    direct = generator.generate([(5, 1, i) for i in indices[3:6]])
    assert torch.equal(batches[1].clips, direct.clips)  # a sample is a pure function of its key
    assert torch.equal(batches[1].boxes, direct.boxes)


def test_in_process_source_reports_no_replicas_and_leaves_replacements_to_its_generator(generator):
    # The run reports `generator.bad_videos` itself; a source adds only what other processes replaced.
    source = InProcessSource(generator)
    assert source.delivered is None and source.replaced_videos() == set()


def test_prefetched_makes_each_run_of_items_in_order_on_another_thread():
    made = []

    def make(chunk):
        made.append(threading.current_thread())
        return Batch(*(torch.tensor(chunk),) * 4)

    out = [b.keys.tolist() for b in prefetched(list(range(7)), 3, make, prefetch=1)]
    assert out == [[0, 1, 2], [3, 4, 5], [6]]
    assert threading.current_thread() not in made


def test_closing_a_stream_early_stops_its_producer(generator):
    before = set(threading.enumerate())
    stream = InProcessSource(generator, prefetch=1).stream(0, 0, list(range(40)), batch_size=2)
    next(stream)
    producers = set(threading.enumerate()) - before
    assert producers, "the stream should generate on a thread of its own"
    stream.close()
    assert not any(t.is_alive() for t in producers)  # other tests' threads may come and go meanwhile


def test_generation_errors_reach_the_consumer(generator):
    stream = InProcessSource(generator).stream(0, 0, [0, 1 << 41], batch_size=1)
    next(stream)
    with pytest.raises(ValueError, match="out of range"):
        next(stream)


def test_held_out_clips_are_disjoint_from_training_keys(generator):
    batches = held_out_batches(generator, seed=5, clips=5, batch_size=2)
    keys = torch.cat([b.keys for b in batches])
    assert [len(b) for b in batches] == [2, 2, 1]
    assert keys.tolist() == [[5, HELD_OUT_EPOCH, i] for i in range(5)]


def test_batches_moved_to_a_device_keep_their_keys_on_the_host():
    """The trainer reads every step's keys (the cursor): on a GPU, keys there would cost a device sync a step."""
    batch = Batch(
        torch.zeros(2, 4, 8, 8, 3, dtype=torch.uint8),
        torch.zeros(2, 1, 4, 4),
        torch.ones(2, 1, 4, dtype=torch.bool),
        torch.tensor([[1, 0, 5], [1, 0, 6]]),
    )
    moved = batch.to("meta")  # a device other than the host's, on any machine
    assert {t.device.type for t in (moved.clips, moved.boxes, moved.visible)} == {"meta"}
    assert moved.keys.device.type == "cpu" and torch.equal(moved.keys, batch.keys)
