"""Frame sources made by the tests from the shared footage (never committed): official CtP zips and rawframe
folders of JPEGs, and OpenCV's decode of a JPEG as the independent reference of what its pixels are."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

OFFICIAL = "img_{:05d}.jpg"
ENCODINGS = {  # OpenCV encoder flags of what JPEG frames come as
    "4:2:0": (),
    "4:2:2": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422),
    "4:4:4": (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
    "progressive": (cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "quality 75": (cv2.IMWRITE_JPEG_QUALITY, 75),
}


def encode(frame: np.ndarray, *flags: int) -> bytes:
    """An RGB frame as JPEG bytes (OpenCV's encoder, quality 95 unless `flags` say otherwise)."""
    image = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR) if frame.ndim == 3 else frame
    ok, data = cv2.imencode(".jpg", image, list(flags))
    assert ok
    return data.tobytes()


def opencv_decode(data: bytes) -> np.ndarray:
    """The reference pixels of a JPEG: OpenCV's `imdecode` (its own libjpeg-turbo build), as RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def frame_files(frames: Sequence[np.ndarray], fmt: str = OFFICIAL, start: int = 1) -> dict[str, bytes]:
    """File name → JPEG bytes of each frame, numbered from `start`."""
    return {fmt.format(start + i): encode(f) for i, f in enumerate(frames)}


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    """A zip of the files (stored, as the official extraction tools write them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_folder(path: Path, files: dict[str, bytes]) -> Path:
    """A rawframe folder of the files."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path
