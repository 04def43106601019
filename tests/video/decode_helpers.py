"""The decode tests' references: a whole video decoded frame by frame, and CtP-like frame requests."""

from __future__ import annotations

import av
import numpy as np

from datagen.video.container import VideoInfo
from datagen.video.decode.pyav import frame_to_rgb


def full_decode(video: VideoInfo) -> np.ndarray:
    """Every frame in decoder output order, converted with the decoder's own colour conversion."""
    with av.open(video.path, metadata_errors="ignore") as container:
        return np.stack([frame_to_rgb(frame, video) for frame in container.decode(video=0)])


def clip_indices(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """A CtP-like clip (stride, jitter, clamping past the end) plus a shuffled copy with repeats."""
    stride = int(rng.integers(1, 6))
    start = int(rng.integers(0, num_frames))
    clip = start + np.arange(16) * stride + rng.integers(0, stride, 16)
    return np.concatenate([clip, rng.permutation(clip)[:5]])
