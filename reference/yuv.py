"""PyAV's YCbCr->RGB conversion as it was before the compiled pass: the OpenCV chain, kept as the oracle the
tests compare `yuv_to_rgb` with and the baseline bench/decode_bench.py measures it against."""

from __future__ import annotations

import cv2
import numpy as np

from datagen.video.decode.yuv import _BT601_X16


def opencv_yuv_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, full_range: bool = False) -> np.ndarray:
    """The conversion before the compiled pass: planes ×16 into uint16, chroma `cv2.resize`d, merged,
    `cv2.transform`ed and saturated to uint8, a fresh array at each step."""
    height, width = y.shape
    planes = [np.left_shift(y, 4, dtype=np.uint16)]
    planes += [
        cv2.resize(np.left_shift(c, 4, dtype=np.uint16), (width, height), interpolation=cv2.INTER_LINEAR)
        for c in (cb, cr)
    ]
    return cv2.convertScaleAbs(cv2.transform(cv2.merge(planes), _BT601_X16[full_range]))
