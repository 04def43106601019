"""PyAV's colour conversion: BT.601 with bilinear chroma, the bytes of the OpenCV chain it replaced
(reference/yuv.py), windows and preallocated frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datagen.video.decode.yuv import yuv_to_rgb
from reference.yuv import opencv_yuv_to_rgb


def test_colour_conversion_is_bt601_with_bilinear_chroma():
    """Against a plain float implementation of the formula, on random planes of every 8-bit layout."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 256, (6, 10), dtype=np.uint8)
    for chroma_shape in [(3, 5), (6, 5), (6, 10)]:  # 4:2:0, 4:2:2, 4:4:4
        cb, cr = (rng.integers(0, 256, chroma_shape, dtype=np.uint8) for _ in range(2))
        up = [
            torch.nn.functional.interpolate(
                torch.tensor(c, dtype=torch.float64)[None, None], size=y.shape, mode="bilinear", align_corners=False
            )[0, 0].numpy()
            for c in (cb, cr)
        ]
        for full, offset, matrix in [
            (False, 16, [[1.164383, 0, 1.596027], [1.164383, -0.391762, -0.812968], [1.164383, 2.017232, 0]]),
            (True, 0, [[1, 0, 1.402], [1, -0.344136, -0.714136], [1, 1.772, 0]]),
        ]:
            ycc = np.stack([y.astype(np.float64) - offset, up[0] - 128, up[1] - 128], -1)
            expected = np.clip(np.rint(ycc @ np.array(matrix).T), 0, 255)
            difference = np.abs(yuv_to_rgb(y, cb, cr, full_range=full).astype(int) - expected)
            assert difference.max() <= 1 and (difference > 0).mean() < 0.01  # rounding exact halves may differ


def padded_planes(rng: np.random.Generator, height: int, width: int, down: int, across: int, pad: int):
    """Random Y, Cb, Cr as PyAV hands them over: views into rows `pad` bytes longer (its line_size)."""

    def plane(rows: int, columns: int) -> np.ndarray:
        return rng.integers(0, 256, (rows, columns + pad), dtype=np.uint8)[:, :columns]

    chroma = (-(-height // down), -(-width // across))
    return plane(height, width), plane(*chroma), plane(*chroma)


def test_colour_conversion_gives_the_bytes_of_the_opencv_chain_it_replaced():
    """4:2:0, 4:2:2, 4:4:0 and 4:4:4, even and odd sizes, both ranges, padded rows, byte for byte: what a key
    produces does not change. (Pixel counts here are multiples of 32: all in OpenCV's vector loop.)"""
    rng = np.random.default_rng(4)
    for height, width in [(240, 320), (144, 256), (33, 32), (32, 33), (31, 64), (2, 16)]:
        for down, across in [(2, 2), (1, 2), (2, 1), (1, 1)]:
            for pad in (0, 13):
                y, cb, cr = padded_planes(rng, height, width, down, across, pad)
                for full in (False, True):
                    expected = opencv_yuv_to_rgb(y, cb, cr, full_range=full)
                    assert np.array_equal(yuv_to_rgb(y, cb, cr, full_range=full), expected), (height, width, down)


def test_colour_conversion_where_opencv_ends_in_scalar_code():
    """OpenCV converts a picture's last H·W mod 16 (AVX2) or 32 (AVX-512) pixels in scalar code that rounds
    differently, so its bytes there depend on the machine; ours round them as its vector loop does."""
    rng = np.random.default_rng(5)
    for height, width in [(101, 99), (15, 17), (7, 9), (3, 5), (1, 1)]:
        for down, across in [(2, 2), (1, 2), (1, 1)]:
            y, cb, cr = padded_planes(rng, height, width, down, across, 3)
            for full in (False, True):
                ours = yuv_to_rgb(y, cb, cr, full_range=full).reshape(-1, 3).astype(int)
                expected = opencv_yuv_to_rgb(y, cb, cr, full_range=full).reshape(-1, 3)
                vector = height * width - height * width % 32
                assert np.array_equal(ours[:vector], expected[:vector]) and np.abs(ours - expected).max() <= 1


def test_a_window_is_converted_to_the_pixels_of_the_whole_frame():
    """Windows anywhere (edges, single pixels) at every chroma layout and odd sizes, into RGB and RGBX frames;
    nothing else is written."""
    rng = np.random.default_rng(4)
    for height, width in [(240, 320), (25, 37), (24, 36)]:
        y = rng.integers(0, 256, (height, width), dtype=np.uint8)
        for chroma in [((height + 1) // 2, (width + 1) // 2), (height, (width + 1) // 2), (height, width), (9, 13)]:
            cb, cr = (rng.integers(0, 256, chroma, dtype=np.uint8) for _ in range(2))
            whole = yuv_to_rgb(y, cb, cr)
            for _ in range(40):
                top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
                bottom, right = int(rng.integers(top + 1, height + 1)), int(rng.integers(left + 1, width + 1))
                for channels in (3, 4):  # RGB, RGBX
                    out = np.zeros((height, width, channels), np.uint8)
                    yuv_to_rgb(y, cb, cr, out=out, window=(top, bottom, left, right))
                    assert np.array_equal(out[top:bottom, left:right, :3], whole[top:bottom, left:right])
                    assert (out[top:bottom, left:right, 3:] == 255).all()
                    out[top:bottom, left:right] = 0
                    assert not out.any()


def test_conversion_writes_into_the_frame_it_is_given():
    """PyAV's frames go straight into their slot of the clip: no per-frame array, no stacking."""
    y, cb, cr = padded_planes(np.random.default_rng(6), 24, 32, 2, 2, 8)
    clip = np.zeros((3, 24, 32, 3), np.uint8)
    frame = yuv_to_rgb(y, cb, cr, out=clip[1])
    assert np.shares_memory(frame, clip) and np.array_equal(clip[1], opencv_yuv_to_rgb(y, cb, cr))
    assert not clip[[0, 2]].any()
    with pytest.raises(ValueError, match="C-contiguous"):
        yuv_to_rgb(y, cb, cr, out=np.zeros((24, 64, 3), np.uint8)[:, ::2])  # cv2.merge: an obscure error
