"""Batch ↔ GenerateResponse messages: clips as uint8 inline chunks or a shared-memory slot descriptor.

Both sides import this module, so the encoding and its checks exist once. Clips are never converted to
float on the wire (docs/service.md): the trainer normalises on its own device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import torch

from datagen.ctp.batch import Batch
from protos import datagen_pb2 as pb

from .limits import Limits
from .shm_ring import ShmRing

DEFAULT_CHUNK_BYTES = Limits.chunk_bytes
_DTYPES = {"uint8": torch.uint8, "bool": torch.bool, "float32": torch.float32, "int64": torch.int64}


class WireError(ValueError):
    """A message that does not follow the contract (a peer bug or a version skew)."""


@dataclasses.dataclass
class Received:
    """One decoded batch and how it travelled."""

    batch: Batch
    problems: list[pb.SampleProblem]
    shared_memory: bool
    nbytes: int  # clip bytes


def encode_batch(
    batch: Batch,
    problems: list[pb.SampleProblem],
    ring: ShmRing | None = None,
    stream_id: int = 0,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    slot: int | None = None,
) -> Iterator[pb.GenerateResponse]:
    """The messages of one batch: clips through `ring` when a slot is free, else inline in chunks.
    `slot`: the clips are already in that slot of the ring (the replica's worker put them there)."""
    clips = batch.clips
    header = pb.BatchHeader(
        clips=_meta(clips),
        boxes=tensor_to_proto(batch.boxes),
        visible=tensor_to_proto(batch.visible),
        keys=tensor_to_proto(batch.keys),
        problems=problems,
    )
    nbytes = clips.numel()
    if slot is None and ring is not None:
        slot = ring.put(clips, stream_id)
    if slot is not None:
        header.shared_memory.slot = slot
        header.shared_memory.nbytes = nbytes
        yield pb.GenerateResponse(header=header)
        return
    header.inline_bytes = nbytes
    flat = clips.detach().cpu().contiguous().numpy().data.cast("B")
    yield pb.GenerateResponse(header=header, clip_chunk=bytes(flat[:chunk_bytes]))
    for start in range(chunk_bytes, nbytes, chunk_bytes):
        yield pb.GenerateResponse(clip_chunk=bytes(flat[start : start + chunk_bytes]))


class BatchDecoder:
    """Client side: feed the messages of a stream in order; each completed batch comes out once. With
    `pin_memory` (a trainer on a GPU) clips are received into pinned host memory, so that their copy to the
    device does not block: they are copied out of the messages or the ring anyway."""

    def __init__(self, ring: ShmRing | None = None, pin_memory: bool = False):
        self._ring = ring
        self._pin_memory = pin_memory
        self._header: pb.BatchHeader | None = None
        self._clips: torch.Tensor | None = None
        self._filled = 0

    def feed(self, msg: pb.GenerateResponse) -> Received | None:
        if msg.HasField("header"):
            if self._header is not None:
                raise WireError("a new batch began before the previous one's clip bytes all arrived")
            return self._open(msg.header, msg.clip_chunk)
        if self._header is None:
            raise WireError("clip bytes arrived outside a batch")
        return self._append(msg.clip_chunk)

    @property
    def idle(self) -> bool:
        """True between batches: a stream that ends now ended cleanly."""
        return self._header is None

    def _open(self, header: pb.BatchHeader, chunk: bytes) -> Received | None:
        shape = tuple(header.clips.shape)
        if header.clips.dtype != "uint8" or len(shape) != 5 or shape[-1] != 3:
            raise WireError(f"clips must be (B, T, H, W, 3) uint8, got {header.clips.dtype} {shape}")
        nbytes = math.prod(shape)
        transport = header.WhichOneof("clip_transport")
        if transport == "shared_memory":
            if self._ring is None:
                raise WireError("the replica used shared memory that this client did not offer")
            if header.shared_memory.nbytes != nbytes or chunk:
                raise WireError("a shared-memory batch must carry exactly its clip bytes in the slot")
            clips = self._ring.take(header.shared_memory.slot, nbytes, self._buffer(nbytes)).view(shape)
            return self._finish(header, clips, shared_memory=True)
        if transport != "inline_bytes" or header.inline_bytes != nbytes:
            raise WireError(f"inline batch announces {header.inline_bytes} clip bytes, its shape needs {nbytes}")
        self._header, self._clips, self._filled = header, self._buffer(nbytes), 0
        return self._append(chunk)

    def _buffer(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self._pin_memory)

    def _append(self, chunk: bytes) -> Received | None:
        assert self._header is not None and self._clips is not None
        end = self._filled + len(chunk)
        if end > self._clips.numel():
            raise WireError(f"inline clip bytes overflow the announced {self._clips.numel()}")
        self._clips.numpy()[self._filled : end] = np.frombuffer(chunk, np.uint8)
        self._filled = end
        if end < self._clips.numel():
            return None
        header, clips = self._header, self._clips.view(tuple(self._header.clips.shape))
        self._header, self._clips = None, None
        return self._finish(header, clips, shared_memory=False)

    @staticmethod
    def _finish(header: pb.BatchHeader, clips: torch.Tensor, shared_memory: bool) -> Received:
        batch = Batch(
            clips, tensor_from_proto(header.boxes), tensor_from_proto(header.visible), tensor_from_proto(header.keys)
        )
        b = clips.shape[0]
        if batch.boxes.shape[0] != b or batch.visible.shape[0] != b or tuple(batch.keys.shape) != (b, 3):
            raise WireError(
                f"batch parts disagree on its size: clips {b}, boxes {tuple(batch.boxes.shape)}, keys {tuple(batch.keys.shape)}"
            )
        return Received(batch, list(header.problems), shared_memory, clips.numel())


def tensor_to_proto(t: torch.Tensor) -> pb.Tensor:
    return pb.Tensor(meta=_meta(t), data=t.detach().cpu().contiguous().numpy().tobytes())


def tensor_from_proto(msg: pb.Tensor) -> torch.Tensor:
    dtype = _DTYPES.get(msg.meta.dtype)
    if dtype is None:
        raise WireError(f"unsupported tensor dtype {msg.meta.dtype!r}; known: {sorted(_DTYPES)}")
    shape = tuple(msg.meta.shape)
    if len(msg.data) != math.prod(shape) * dtype.itemsize:
        raise WireError(f"tensor of shape {shape} {msg.meta.dtype} cannot hold {len(msg.data)} bytes")
    return (
        torch.frombuffer(bytearray(msg.data), dtype=dtype).view(shape) if msg.data else torch.empty(shape, dtype=dtype)
    )


def _meta(t: torch.Tensor) -> pb.TensorMeta:
    return pb.TensorMeta(dtype=str(t.dtype).removeprefix("torch."), shape=list(t.shape))
