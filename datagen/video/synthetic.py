"""Synthetic demo footage: real encoded video files, so the demo and the tests need no download.

Each video shows a few textured objects, each with its own motion, over a textured background that pans
slowly. The pixels are a pure function of the seed; the files are encoded with real codecs through PyAV.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from common.atomic import replacing

log = logging.getLogger(__name__)

# codec → (FFmpeg encoder, container extension, encoder options). Containers follow the datasets: MPEG-4
# Part 2 in AVI as in UCF-101/HMDB-51, H.264 in MP4 as in Kinetics, VP8/VP9 in WebM.
ENCODERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "vp9": ("libvpx-vp9", ".webm", {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}),
    "vp8": ("libvpx", ".webm", {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "1M"}),
    "mpeg4": ("mpeg4", ".avi", {"bf": "2", "b": "1500k"}),
    "h264": ("libx264", ".mp4", {"preset": "veryfast", "crf": "23"}),
    "hevc": ("libx265", ".mp4", {"preset": "ultrafast", "crf": "28", "x265-params": "log-level=error"}),
    "mjpeg": ("mjpeg", ".avi", {"b": "8M"}),
    "av1": ("libsvtav1", ".mp4", {"preset": "10", "crf": "40", "svtav1-params": "lp=1"}),
}
KEYFRAME_INTERVAL = 25  # frames: several GOPs per video, so decoders really have to seek


def encoder_available(codec: str) -> bool:
    try:
        av.codec.Codec(ENCODERS[codec][0], "w")
    except (KeyError, av.codec.codec.UnknownCodecError):
        return False
    return True


def synthesize_demo(
    out_dir: str | os.PathLike[str],
    num_videos: int = 6,
    seconds: float = 3.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    codecs: Sequence[str] = ("vp9", "mpeg4", "h264"),
    seed: int = 0,
) -> list[Path]:
    """Write `num_videos` videos (codecs taken in turn) to `out_dir`; returns the files written, sorted.

    A codec whose encoder this PyAV build lacks is skipped with a warning, so the set may be smaller.
    """
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"size {size}: width and height must be even (4:2:0 chroma)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(num_videos):
        codec = codecs[i % len(codecs)]
        if not encoder_available(codec):
            log.warning("demo video %d skipped: this PyAV build has no %s encoder", i, codec)
            continue
        path = out / f"demo_{i:02d}_{codec}{ENCODERS[codec][1]}"
        frames = render_scene(np.random.default_rng([seed, i]), round(seconds * fps), width, height)
        encode(path, frames, codec, fps)
        written.append(path)
    return sorted(written)


def encode(path: Path, frames: np.ndarray, codec: str, fps: int) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames; single-threaded so the bytes are reproducible."""
    encoder, _, options = ENCODERS[codec]
    with (
        replacing(path) as tmp,
        av.open(str(tmp), "w", format=path.suffix[1:] if path.suffix != ".mp4" else "mp4") as container,
    ):
        stream = container.add_stream(encoder, rate=Fraction(fps), options=dict(options))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.codec_context.gop_size = KEYFRAME_INTERVAL
        stream.codec_context.thread_count = 1
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


def render_scene(rng: np.random.Generator, num_frames: int, width: int, height: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a panning textured background with 2-4 textured ellipses and rectangles moving
    at constant velocity, bouncing off the borders."""
    pan = rng.uniform(-1.0, 1.0, 2)  # background (x, y) px per frame
    margin = np.ceil(np.abs(pan) * num_frames).astype(int) + 1
    origin = np.where(pan < 0, margin - 1, 0)  # the crop window stays inside the background
    background = texture(rng, height + margin[1], width + margin[0])
    objects = []
    for _ in range(int(rng.integers(2, 5))):
        h, w = (int(v) for v in rng.integers([24, 24], [height // 2, width // 2]))
        yy, xx = np.mgrid[:h, :w]
        ellipse = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 1.0
        mask = ellipse if rng.random() < 0.5 else np.ones((h, w), bool)
        start = rng.uniform([0, 0], [height - h, width - w])
        velocity = rng.uniform(-4.0, 4.0, 2)
        objects.append((texture(rng, h, w), mask, start, velocity))

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        ox, oy = np.round(origin + pan * t).astype(int)
        frame = background[oy : oy + height, ox : ox + width].copy()
        for tex, mask, start, velocity in objects:
            h, w = mask.shape
            y, x = (_bounce(start[k] + velocity[k] * t, (height - h, width - w)[k]) for k in (0, 1))
            region = frame[y : y + h, x : x + w]
            region[mask] = tex[mask]
        frames[t] = frame
    return frames


def _bounce(position: float, limit: int) -> int:
    """Reflect a free position into [0, limit] (an object bouncing off the borders)."""
    period = 2 * max(limit, 1)
    p = position % period
    return round(p if p <= limit else period - p)


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 texture: smooth coloured blobs under a few oriented gratings, so motion is visible
    everywhere while the colours stay as smooth as in camera footage (4:2:0 chroma keeps them)."""
    cell = int(rng.integers(8, 24))
    coarse = rng.uniform(0, 255, (height // cell + 2, width // cell + 2, 3)).astype(np.float32)
    blobs = cv2.resize(coarse, ((width // cell + 2) * cell, (height // cell + 2) * cell), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    stripes = np.zeros((height, width), np.float32)
    for _ in range(3):
        angle, period, phase = rng.uniform(0, np.pi), rng.uniform(6, 30), rng.uniform(0, 2 * np.pi)
        stripes += np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase)
    return np.clip(0.7 * blobs[:height, :width] + 18 * stripes[..., None], 0, 255).astype(np.uint8)
