"""A clip's frame indices, limited to its video's frames, and the array its frames are decoded into: what every
decoder (PyAV, DALI's video and image decoders, the JPEG frame decoder) does alike before it decodes."""

from __future__ import annotations

import numpy as np

from datagen.video.container import VideoInfo


def clamp_indices(video: VideoInfo, indices: np.ndarray) -> np.ndarray:
    """Frame indices limited to the video's frames: a clip that runs past the end repeats the last one."""
    return np.clip(np.asarray(indices, dtype=np.int64), 0, max(video.num_frames - 1, 0))


def clip_array(
    video: VideoInfo, indices: np.ndarray, channels: int = 3, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A clip's indices limited to the video's frames, and the (T, H, W, channels) uint8 array its frames are
    decoded into: `out` if given, which must have that shape."""
    wanted = clamp_indices(video, indices)
    shape = (wanted.size, video.height, video.width, channels)
    clip = np.empty(shape, np.uint8) if out is None else out
    if clip.shape != shape:
        raise ValueError(f"a clip of shape {shape} does not fit into one of {clip.shape}")
    return wanted, clip
