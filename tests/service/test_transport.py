"""Clip transport without the network: the shared-memory ring and the message codec, byte for byte."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

from datagen.ctp.batch import Batch
from datagen.service.shm_ring import RingUnreachable, ShmRing
from datagen.service.wire import BatchDecoder, WireError, encode_batch
from protos import datagen_pb2 as pb


def make_batch(b: int = 3, t: int = 5, h: int = 7, w: int = 9, k: int = 2, first_index: int = 0) -> Batch:
    g = torch.Generator().manual_seed(first_index)
    return Batch(
        clips=torch.randint(0, 256, (b, t, h, w, 3), dtype=torch.uint8, generator=g),
        boxes=torch.rand(b, k, t, 4, generator=g) * 100,
        visible=torch.rand(b, k, t, generator=g) > 0.3,
        keys=torch.tensor([[7, 2, first_index + i] for i in range(b)], dtype=torch.int64),
    )


def over_the_wire(messages) -> list[pb.GenerateResponse]:
    """Serialise and parse, as gRPC does."""
    return [pb.GenerateResponse.FromString(m.SerializeToString()) for m in messages]


def decode_all(decoder: BatchDecoder, messages) -> list:
    return [r for r in (decoder.feed(m) for m in messages) if r is not None]


def assert_same(a: Batch, b: Batch) -> None:
    for name in ("clips", "boxes", "visible", "keys"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name


@pytest.fixture
def ring():
    r = ShmRing.create(num_slots=2, slot_bytes=4096)
    yield r
    r.close()


def test_inline_batches_are_chunked_and_reassembled_exactly() -> None:
    batch = make_batch()
    nbytes = batch.clips.numel()
    messages = over_the_wire(
        encode_batch(batch, [pb.SampleProblem(index=1, video="v.avi", reason="r")], chunk_bytes=100)
    )
    assert len(messages) == math.ceil(nbytes / 100)
    assert messages[0].header.inline_bytes == nbytes and not any(m.HasField("header") for m in messages[1:])
    assert all(len(m.clip_chunk) == 100 for m in messages[:-1])
    (received,) = decode_all(BatchDecoder(), messages)
    assert_same(received.batch, batch)
    assert not received.shared_memory and received.nbytes == nbytes
    assert [(p.index, p.video) for p in received.problems] == [(1, "v.avi")]


def test_shared_memory_slot_carries_the_clips_and_is_released_when_consumed(ring: ShmRing) -> None:
    batch = make_batch()
    producer = ShmRing.attach(ring.name, ring.nonce)
    messages = over_the_wire(encode_batch(batch, [], producer, stream_id=5))
    assert len(messages) == 1 and messages[0].header.WhichOneof("clip_transport") == "shared_memory"
    assert not messages[0].clip_chunk
    assert ring.free_slots() == 1  # filled, not consumed yet
    (received,) = decode_all(BatchDecoder(ring), messages)
    assert received.shared_memory
    assert_same(received.batch, batch)
    assert ring.free_slots() == 2
    producer.close()


def test_full_ring_or_oversized_batch_falls_back_to_inline(ring: ShmRing) -> None:
    producer = ShmRing.attach(ring.name, ring.nonce)
    batches = [make_batch(first_index=10 * i) for i in range(3)]
    sent = [over_the_wire(encode_batch(b, [], producer, stream_id=1)) for b in batches]  # nothing consumed meanwhile
    transports = [m[0].header.WhichOneof("clip_transport") for m in sent]
    assert transports == ["shared_memory", "shared_memory", "inline_bytes"]
    decoder = BatchDecoder(ring)
    for batch, messages in zip(batches, sent):
        (received,) = decode_all(decoder, messages)
        assert_same(received.batch, batch)
    big = make_batch(b=2, t=8, h=16, w=16)  # 12 KiB > one 4 KiB slot
    (messages,) = [over_the_wire(encode_batch(big, [], producer, stream_id=1))]
    assert messages[0].header.WhichOneof("clip_transport") == "inline_bytes"
    assert_same(decode_all(decoder, messages)[0].batch, big)
    producer.close()


class RecordedCalls(TorchFunctionMode):
    """Every torch function and tensor method called while active, with its arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls.append((getattr(func, "__name__", str(func)), args))
        return func(*args, **(kwargs or {}))


def test_put_copies_the_clips_once_straight_into_the_slot(ring: ShmRing) -> None:
    """No host tensor of its own on the way (on CUDA `.cpu()` is a whole extra copy into pageable memory):
    one copy_ from the clips themselves, here a non-contiguous view, into the slot's shared pages."""
    producer = ShmRing.attach(ring.name, ring.nonce)
    clips = make_batch().clips.transpose(1, 2)
    with RecordedCalls() as recorded:
        slot = producer.put(clips, stream_id=4)
    copies = [args for name, args in recorded.calls if name == "copy_"]
    assert len(copies) == 1, recorded.calls
    source = copies[0][1]
    assert (source.data_ptr(), source.stride()) == (clips.data_ptr(), clips.stride())  # the clips themselves
    assert not [name for name, _ in recorded.calls if name in {"cpu", "to", "numpy", "contiguous", "reshape", "clone"}]
    assert torch.equal(ring.take(slot, clips.numel()).view(clips.shape), clips)
    producer.close()


def test_reclaim_frees_only_slots_of_streams_no_longer_read(ring: ShmRing) -> None:
    producer = ShmRing.attach(ring.name, ring.nonce)
    clips = make_batch().clips
    assert producer.put(clips, stream_id=1) is not None and producer.put(clips, stream_id=2) is not None
    assert ring.free_slots() == 0
    assert ring.reclaim(live_streams={1}) == 1
    assert ring.free_slots() == 1
    assert ring.reclaim(live_streams={1}) == 0
    producer.close()


def test_attach_refuses_a_missing_or_foreign_segment(ring: ShmRing) -> None:
    with pytest.raises(RingUnreachable, match="not visible"):
        ShmRing.attach(ring.name + "x", ring.nonce)
    with pytest.raises(RingUnreachable, match="nonce"):
        ShmRing.attach(ring.name, bytes(16))
    for name in ("../../etc/passwd", "", ".hidden", "a/b"):  # the name comes from a client: only /dev/shm entries
        with pytest.raises(RingUnreachable, match="not a shared-memory segment name"):
            ShmRing.attach(name, ring.nonce)


def test_take_refuses_slots_that_were_not_filled(ring: ShmRing) -> None:
    with pytest.raises(ValueError, match="not a filled slot"):
        ring.take(0, 10)
    with pytest.raises(ValueError, match="not a filled slot"):
        ring.take(5, 10)


def test_a_private_dev_shm_cannot_see_the_ring(ring: ShmRing) -> None:
    """A container without shared IPC: another /dev/shm mount, as Docker gives each container by default."""
    if shutil.which("unshare") is None:
        pytest.skip("util-linux `unshare` is not installed")
    if subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode != 0:
        pytest.skip("this kernel or sandbox does not allow user+mount namespaces (unshare -Urm)")
    code = (
        f"from datagen.service.shm_ring import ShmRing, RingUnreachable\n"
        f"try:\n    ShmRing.attach({ring.name!r}, {ring.nonce!r})\nexcept RingUnreachable as e:\n    print('unreachable:', e)\n"
        f"else:\n    print('attached')\n"
    )
    script = f'mount -t tmpfs tmpfs /dev/shm && exec {sys.executable} -c "$0"'
    out = subprocess.run(["unshare", "-Urm", "sh", "-c", script, code], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("unreachable:"), out.stdout + out.stderr
    assert ShmRing.attach(ring.name, ring.nonce) is not None  # while this process, on the host's /dev/shm, can


def test_decoder_rejects_streams_that_break_the_contract(ring: ShmRing) -> None:
    batch = make_batch()
    messages = over_the_wire(encode_batch(batch, [], chunk_bytes=100))
    decoder = BatchDecoder()
    decoder.feed(messages[0])
    with pytest.raises(WireError, match="before the previous"):
        decoder.feed(messages[0])
    with pytest.raises(WireError, match="outside a batch"):
        BatchDecoder().feed(messages[1])
    overflow = pb.GenerateResponse()
    overflow.CopyFrom(messages[-1])
    overflow.clip_chunk = bytes(len(overflow.clip_chunk) + 1)
    decoder = BatchDecoder()
    decode_all(decoder, messages[:-1])
    with pytest.raises(WireError, match="overflow"):
        decoder.feed(overflow)
    producer = ShmRing.attach(ring.name, ring.nonce)
    (shm_message,) = over_the_wire(encode_batch(batch, [], producer, stream_id=3))
    with pytest.raises(WireError, match="did not offer"):
        BatchDecoder().feed(shm_message)
    bad = pb.GenerateResponse()
    bad.CopyFrom(messages[0])
    bad.header.keys.data = bad.header.keys.data[:-8]
    with pytest.raises(WireError, match="cannot hold"):
        decode_all(BatchDecoder(), [bad, *messages[1:]])
    producer.close()
