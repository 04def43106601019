"""What one request may ask of a replica, and how inline clip bytes are cut into messages: the replica enforces
them and tells its clients (Describe). Without imports, so that `ctp-datagen serve --help` shows them at once."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Limits:
    max_batch_size: int = 256
    max_request_samples: int = 4096
    chunk_bytes: int = 1 << 20  # inline clip bytes per GenerateResponse message
    max_streams: int = 64  # concurrent Generate streams; more get RESOURCE_EXHAUSTED
