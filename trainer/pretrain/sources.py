"""Where training batches come from: the sample-source protocol, the in-process generator source, and the
choice between it and the datagen replicas (`datagen.service.client.remote_source.RemoteSource`)."""

from __future__ import annotations

import collections.abc
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

import torch

from common.env import NAMESPACE, REDIS_URL, redact
from datagen.ctp.batch import Batch
from datagen.ctp.rng import HELD_OUT_EPOCH, SampleKey
from datagen.generator import Generator, pipelined
from datagen.service.client.flights import RequestRefused
from datagen.service.client.remote_source import RemoteSource
from datagen.service.client.replicas import NoReplicaError
from datagen.service.security import TlsFiles, resolve_token
from datagen.video.container import VideoInfo
from datagen.video.manifest import videos_digest
from trainer.config import ServiceConfig, TrainConfig

log = logging.getLogger(__name__)


class HasTensors(Protocol):
    """A batch: its tensors are what a CUDA consumer must wait for and record its stream on."""

    def tensors(self) -> Sequence[torch.Tensor]: ...


T = TypeVar("T")
B = TypeVar("B", bound=HasTensors)
B_co = TypeVar("B_co", bound=HasTensors, covariant=True)
Closable = collections.abc.Generator[B, None, None]  # an iterator whose `close()` stops its producer


class SampleSource(Protocol):
    """A pretraining run's batches: generated in this process or served by datagen replicas."""

    def stream(self, seed: int, epoch: int, indices: Sequence[int], batch_size: int) -> Closable[Batch]:
        """Batches of batch_size (the last may be smaller) that together hold each index exactly once; `close()`
        stops producing them."""
        ...

    @property
    def delivered(self) -> Mapping[str, int] | None:
        """Samples kept from each datagen replica so far (the starvation advice); None: not from replicas."""
        ...

    @property
    def faults(self) -> Mapping[str, int] | None:
        """Replica faults so far: hedges sent, won and wasted, stalls, failures, samples asked again (None: not
        from replicas)."""
        ...

    def replaced_videos(self) -> set[str]:
        """Unreadable videos whose samples were replaced where the samples were made, beyond this process's
        own generator (which the run reports itself)."""
        ...


class KeyedBatches(Protocol[B_co]):
    """What `InProcessSource` runs: sample keys in, one batch out (datagen's `Generator`, fine-tuning's
    `TrainClips`)."""

    def generate(self, keys: Sequence[SampleKey]) -> B_co: ...


class InProcessSource(Generic[B]):
    """Generates batches in this process, in index order, one batch ahead on a background thread (`prefetched`)."""

    delivered: Mapping[str, int] | None = None  # no replicas
    faults: Mapping[str, int] | None = None

    def __init__(self, maker: KeyedBatches[B], prefetch: int = 2, device: torch.device | str = "cpu") -> None:
        self.maker = maker
        self.prefetch = prefetch
        self.device = torch.device(device)  # where `maker` puts its batches: on CUDA, generation gets a stream

    def stream(self, seed: int, epoch: int, indices: Sequence[int], batch_size: int) -> Closable[B]:
        def make(chunk: Sequence[int]) -> B:
            return self.maker.generate([SampleKey(seed, epoch, int(i)) for i in chunk])

        return prefetched(indices, batch_size, make, self.prefetch, self.device, f"generate-epoch{epoch}")

    def replaced_videos(self) -> set[str]:
        return set()  # the maker is this process's generator: its quarantine is the run's own


def prefetched(
    items: Sequence[T],
    batch_size: int,
    make: Callable[[Sequence[T]], B],
    prefetch: int = 2,
    device: torch.device | str = "cpu",
    name: str = "prefetch",
) -> Closable[B]:
    """`make(chunk)` for each run of `batch_size` items (the last may be shorter), in order, up to `prefetch`
    batches ahead on a background thread (`datagen.generator.pipelined`); `make`'s error is raised here.

    Torch ops and the decoders release the GIL, so making the next batch overlaps the consumer's step. On
    CUDA the producer works on a stream of its own and hands each batch over with an event, so its kernels
    and copies overlap the step's instead of queueing behind them on one stream.
    """
    device = torch.device(device)
    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def produce(chunk: Sequence[T]) -> tuple[B, Any]:
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            return make(chunk), _record(side)

    chunks = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    for _, made in pipelined(chunks, produce, max(1, prefetch), name):
        if isinstance(made, Exception):
            raise made
        yield _received(*made, device)


def _record(stream: Any) -> Any:
    """An event at the end of the work queued so far on `stream` (None on CPU)."""
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record(stream)
    return event


def _received(batch: B, done: Any, device: torch.device) -> B:
    """The consumer's stream on `device` waits for the producer's work, and the allocator learns the consumer
    uses it. (`current_stream()` alone is the current device's: cuda:0 for a run on cuda:1 outside torchrun.)"""
    if done is not None:
        consumer = torch.cuda.current_stream(device)
        consumer.wait_event(done)
        for tensor in batch.tensors():
            if tensor.is_cuda:
                tensor.record_stream(consumer)
    return batch


def held_out_batches(generator: Generator, seed: int, clips: int, batch_size: int) -> list[Batch]:
    """The fixed held-out set of generated clips for tracking evaluation, in batches."""
    keys = [SampleKey(seed, HELD_OUT_EPOCH, i) for i in range(clips)]
    return [generator.generate(keys[i : i + batch_size]) for i in range(0, clips, batch_size)]


def replica_settings(service: ServiceConfig) -> dict[str, Any] | None:
    """`RemoteSource` arguments from the config, else the environment (`common.env`, which logs each variable
    that decides); None when no replica is named anywhere."""
    redis_url = REDIS_URL.resolve(
        service.redis_url,
        "samples come from the datagen replicas registered there, not from this process "
        f"(unset {REDIS_URL.name} to generate in-process)",
    )
    if not service.addresses and not redis_url:
        return None
    return dict(
        addresses=tuple(service.addresses),
        redis_url=redis_url,
        namespace=NAMESPACE.resolve(service.namespace, "the replicas are looked up under that key prefix"),
        token=resolve_token(token_file=service.token_file, consequence="every request to the replicas carries it"),
        tls=TlsFiles(cert=service.tls_cert, key=service.tls_key, ca=service.tls_ca),
        server_name=service.server_name,
        shared_memory=service.shared_memory,
        settings=service.client,
    )


def replica_problem(cfg: TrainConfig, videos: Sequence[VideoInfo], batch_size: int) -> str | None:
    """What the datagen replicas would refuse in this run, asked before its folder is written (None: nothing, or
    no replicas): none usable (another config or video list, a wrong token, none up), or a rank's batch of
    `batch_size` above their limit. Waits for a replica as the run would."""
    settings = replica_settings(cfg.service)
    if settings is None:
        return None
    with RemoteSource(**settings, config=cfg.data.generation, videos_digest=videos_digest(videos)) as source:
        try:
            source.check(batch_size)
        except RequestRefused as exc:
            return f"data.batch_size={cfg.data.batch_size} ({batch_size} per rank) cannot be served: {exc}"
        except NoReplicaError as exc:
            return str(exc)
    return None


@contextlib.contextmanager
def open_source(cfg: TrainConfig, generator: Generator) -> Iterator[SampleSource]:
    """Datagen replicas when the config or the environment names them, else generation in this process.

    Replicas must serve this run's generation config and video list (`generator.videos`); others are refused."""
    settings = replica_settings(cfg.service)
    if settings is None:
        yield InProcessSource(generator, cfg.run.prefetch, generator.device)
        return
    where = [
        *settings["addresses"],
        *(
            [f"Redis {redact(settings['redis_url'])} namespace {settings['namespace']!r}"]
            if settings["redis_url"]
            else []
        ),
    ]
    log.info("samples from datagen replicas: %s", ", ".join(where))
    pinned = generator.device.type == "cuda"  # received into pinned memory: the step's copy does not block
    with RemoteSource(**settings, config=cfg.data.generation, videos=generator.videos, pin_memory=pinned) as source:
        try:
            yield source
        except NoReplicaError as exc:
            if cfg.service.redis_url or cfg.service.addresses:
                raise
            raise NoReplicaError(
                f"{exc}. This run asked replicas for its samples because {REDIS_URL.name} is set in the "
                f"environment; unset it to generate them in this process"
            ) from exc
