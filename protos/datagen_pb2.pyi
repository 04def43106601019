from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("config_digest", "videos_digest", "seed", "epoch", "indices", "batch_size", "transport")
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    VIDEOS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    config_digest: str
    videos_digest: str
    seed: int
    epoch: int
    indices: _containers.RepeatedScalarFieldContainer[int]
    batch_size: int
    transport: TransportOffer
    def __init__(self, config_digest: _Optional[str] = ..., videos_digest: _Optional[str] = ..., seed: _Optional[int] = ..., epoch: _Optional[int] = ..., indices: _Optional[_Iterable[int]] = ..., batch_size: _Optional[int] = ..., transport: _Optional[_Union[TransportOffer, _Mapping]] = ...) -> None: ...

class TransportOffer(_message.Message):
    __slots__ = ("shared_memory",)
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    shared_memory: SharedMemoryOffer
    def __init__(self, shared_memory: _Optional[_Union[SharedMemoryOffer, _Mapping]] = ...) -> None: ...

class SharedMemoryOffer(_message.Message):
    __slots__ = ("name", "nonce", "stream_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    nonce: bytes
    stream_id: int
    def __init__(self, name: _Optional[str] = ..., nonce: _Optional[bytes] = ..., stream_id: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("header", "clip_chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CLIP_CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: BatchHeader
    clip_chunk: bytes
    def __init__(self, header: _Optional[_Union[BatchHeader, _Mapping]] = ..., clip_chunk: _Optional[bytes] = ...) -> None: ...

class BatchHeader(_message.Message):
    __slots__ = ("clips", "inline_bytes", "shared_memory", "boxes", "visible", "keys", "problems")
    CLIPS_FIELD_NUMBER: _ClassVar[int]
    INLINE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    VISIBLE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    clips: TensorMeta
    inline_bytes: int
    shared_memory: SharedMemorySlot
    boxes: Tensor
    visible: Tensor
    keys: Tensor
    problems: _containers.RepeatedCompositeFieldContainer[SampleProblem]
    def __init__(self, clips: _Optional[_Union[TensorMeta, _Mapping]] = ..., inline_bytes: _Optional[int] = ..., shared_memory: _Optional[_Union[SharedMemorySlot, _Mapping]] = ..., boxes: _Optional[_Union[Tensor, _Mapping]] = ..., visible: _Optional[_Union[Tensor, _Mapping]] = ..., keys: _Optional[_Union[Tensor, _Mapping]] = ..., problems: _Optional[_Iterable[_Union[SampleProblem, _Mapping]]] = ...) -> None: ...

class TensorMeta(_message.Message):
    __slots__ = ("dtype", "shape")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("meta", "data")
    META_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    meta: TensorMeta
    data: bytes
    def __init__(self, meta: _Optional[_Union[TensorMeta, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SharedMemorySlot(_message.Message):
    __slots__ = ("slot", "nbytes")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    slot: int
    nbytes: int
    def __init__(self, slot: _Optional[int] = ..., nbytes: _Optional[int] = ...) -> None: ...

class SampleProblem(_message.Message):
    __slots__ = ("index", "video", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    video: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., video: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ("transport", "videos_from", "videos_count")
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    VIDEOS_FROM_FIELD_NUMBER: _ClassVar[int]
    VIDEOS_COUNT_FIELD_NUMBER: _ClassVar[int]
    transport: TransportOffer
    videos_from: int
    videos_count: int
    def __init__(self, transport: _Optional[_Union[TransportOffer, _Mapping]] = ..., videos_from: _Optional[int] = ..., videos_count: _Optional[int] = ...) -> None: ...

class VideoEntry(_message.Message):
    __slots__ = ("path", "num_frames")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    path: str
    num_frames: int
    def __init__(self, path: _Optional[str] = ..., num_frames: _Optional[int] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("replica_id", "address", "hostname", "device", "config_digest", "config_json", "videos_digest", "num_videos", "queue_capacity", "queue_depth", "max_batch_size", "max_request_samples", "clips_per_second", "versions", "shared_memory", "shared_memory_error", "videos")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    VIDEOS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    NUM_VIDEOS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLIPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_ERROR_FIELD_NUMBER: _ClassVar[int]
    VIDEOS_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    address: str
    hostname: str
    device: str
    config_digest: str
    config_json: str
    videos_digest: str
    num_videos: int
    queue_capacity: int
    queue_depth: int
    max_batch_size: int
    max_request_samples: int
    clips_per_second: float
    versions: _containers.ScalarMap[str, str]
    shared_memory: bool
    shared_memory_error: str
    videos: _containers.RepeatedCompositeFieldContainer[VideoEntry]
    def __init__(self, replica_id: _Optional[str] = ..., address: _Optional[str] = ..., hostname: _Optional[str] = ..., device: _Optional[str] = ..., config_digest: _Optional[str] = ..., config_json: _Optional[str] = ..., videos_digest: _Optional[str] = ..., num_videos: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., queue_depth: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_request_samples: _Optional[int] = ..., clips_per_second: _Optional[float] = ..., versions: _Optional[_Mapping[str, str]] = ..., shared_memory: _Optional[bool] = ..., shared_memory_error: _Optional[str] = ..., videos: _Optional[_Iterable[_Union[VideoEntry, _Mapping]]] = ...) -> None: ...
