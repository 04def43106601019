"""One connection to one datagen replica: channel security, Describe, and Generate streams decoded to batches.

The scheduling across replicas (discovery, windows, retries, exactly-once) is `datagen.service.client.remote_source.RemoteSource`;
this module only speaks the wire contract with a single replica.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Protocol

import grpc

from datagen.service.security import TlsFiles, token_metadata
from datagen.service.shm_ring import RingUnreachable, ShmRing
from datagen.service.wire import BatchDecoder, Received, WireError
from protos import datagen_pb2 as pb
from protos import datagen_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 20  # generous: replicas chunk clips at 1 MiB by default


class ResponseStream(Protocol):
    """A server-streaming call as grpc returns it: an iterator of the responses that can be cancelled."""

    def __iter__(self) -> Iterator[pb.GenerateResponse]: ...
    def cancel(self) -> bool: ...


class GenerateStream:
    """One Generate call: iterate for decoded batches; `cancel()` from any thread ends it."""

    def __init__(self, call: ResponseStream, ring: ShmRing | None, pin_memory: bool = False):
        self.call = call
        self._decoder = BatchDecoder(ring, pin_memory)

    def __iter__(self) -> Iterator[Received]:
        for msg in self.call:
            received = self._decoder.feed(msg)
            if received is not None:
                yield received
        if not self._decoder.idle:
            raise WireError("the stream ended in the middle of a batch")

    def cancel(self) -> None:
        self.call.cancel()


class ReplicaClient:
    def __init__(
        self,
        address: str,
        token: str | None = None,
        tls: TlsFiles = TlsFiles(),
        server_name: str | None = None,
        pin_memory: bool = False,
    ):
        self.address = address
        self.pin_memory = pin_memory  # batches received into pinned memory (a trainer on a GPU)
        self._metadata = token_metadata(token)
        options: list[tuple[str, int | str]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 20_000),  # notices a vanished host, not only a closed socket
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._channel = (
            grpc.secure_channel(address, tls.channel_credentials(), options)
            if tls
            else grpc.insecure_channel(address, options)
        )
        self._stub = pb_grpc.DataGenStub(self._channel)
        self.ring: ShmRing | None = None

    def describe(self, timeout: float = 5.0, offer: ShmRing | None = None) -> pb.DescribeResponse:
        request = pb.DescribeRequest(transport=_offer(offer, 0))
        return self._stub.Describe(request, timeout=timeout, metadata=self._metadata)

    def videos(self, timeout: float = 30.0, page: int = 2000) -> Iterator[tuple[str, int]]:
        """The replica's video list as (path, frames), in epoch order, fetched a page at a time as it is read."""
        start = 0
        while True:
            request = pb.DescribeRequest(videos_from=start, videos_count=page)
            info = self._stub.Describe(request, timeout=timeout, metadata=self._metadata)
            yield from ((v.path, v.num_frames) for v in info.videos)
            start += len(info.videos)
            if not info.videos or start >= info.num_videos:
                return

    def describe_future(self, timeout: float = 5.0) -> grpc.Future:
        """Describe without waiting: the call's future (its `result()` is the response or raises the RpcError)."""
        return self._stub.Describe.future(pb.DescribeRequest(), timeout=timeout, metadata=self._metadata)

    def offer_ring(self, num_slots: int, slot_bytes: int, timeout: float = 5.0) -> str | None:
        """Make a shared-memory ring for this replica's batches and check the replica can open it.

        Returns None when shared memory will be used, else why not (the client then takes inline bytes)."""
        if self.ring is not None and self.ring.slot_bytes >= slot_bytes and self.ring.num_slots >= num_slots:
            return None
        self.close_ring()
        try:
            ring = ShmRing.create(num_slots, slot_bytes)
        except RingUnreachable as exc:
            return str(exc)
        info = self.describe(timeout, offer=ring)
        if not info.shared_memory:
            ring.close()
            return info.shared_memory_error or "the replica did not open the ring"
        self.ring = ring
        return None

    def generate(self, request: pb.GenerateRequest, stream_id: int) -> GenerateStream:
        """Start a Generate call for `request`, offering this client's ring (if any) tagged `stream_id`."""
        request.transport.CopyFrom(_offer(self.ring, stream_id))
        return GenerateStream(self._stub.Generate(request, metadata=self._metadata), self.ring, self.pin_memory)

    def close_ring(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def close(self) -> None:
        self.close_ring()
        self._channel.close()


def _offer(ring: ShmRing | None, stream_id: int) -> pb.TransportOffer:
    if ring is None:
        return pb.TransportOffer()
    return pb.TransportOffer(shared_memory=pb.SharedMemoryOffer(name=ring.name, nonce=ring.nonce, stream_id=stream_id))
