"""8-bit planar YCbCr → RGB the way DALI's decoder converts (BT.601, bilinear chroma, rounded to nearest), in
one compiled pass: PyAV's pictures and DALI's then give the same pixels, whichever replica decoded a sample."""

from __future__ import annotations

import cv2
import numba
import numpy as np
from numba.extending import intrinsic

Window = tuple[int, int, int, int]  # rows top..bottom, columns left..right (ends excluded) of a frame


def yuv_to_rgb(
    y: np.ndarray,
    cb: np.ndarray,
    cr: np.ndarray,
    full_range: bool = False,
    out: np.ndarray | None = None,
    window: Window | None = None,
) -> np.ndarray:
    """8-bit planar YCbCr (chroma at any subsampling) → (H, W, 3) uint8 RGB (into `out` if given), the way
    DALI's decoder converts: chroma upsampled bilinearly (pixel centres aligned), BT.601, rounded to nearest.
    With a `window` only its pixels are converted (the same values as in the whole frame); the others of
    `out` are left as they were: a clip's crop often reads half of the frame or less. An `out` of 4
    channels gets RGBX pixels (X = 255), the layout torch's CPU rescale works in.

    The bytes are those of the OpenCV chain this replaced (planes ×16 into uint16, `cv2.resize` of the
    chroma, `cv2.transform`, saturation), so what a key produces did not change: one compiled pass computes
    its arithmetic (`_ycbcr_to_rgb`), and `cv2.merge` interleaves the planes, which compiled loops do not
    vectorise (RGBX words they do). Chroma that is not exactly half (or all) of the picture in each direction, as at odd sizes, is
    upsampled by `cv2.resize` first, as before, since its weights are then not multiples of 1/4."""
    height, width = y.shape
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    elif (
        out.shape not in ((height, width, 3), (height, width, 4)) or out.dtype != np.uint8 or not out.flags.c_contiguous
    ):
        raise ValueError(
            f"out must be a C-contiguous ({height}, {width}, 3 or 4) uint8 array, not {out.dtype} {out.shape}"
        )
    top, bottom, left, right = window or (0, height, 0, width)
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(f"window {window} is not a non-empty part of a {height}x{width} frame")
    gain = 1.0
    if not all(size in (half, 2 * half) for size, half in zip(y.shape, cb.shape)):
        cb, cr = (
            cv2.resize(np.left_shift(c, 4, dtype=np.uint16), (width, height), interpolation=cv2.INTER_LINEAR)
            for c in (cb, cr)
        )
        gain = 1 / 16
    shape = (bottom - top, right - left)
    if out.shape[2] == 4:  # RGBX: one little-endian word per pixel, written by the compiled pass itself
        words = out.view(np.uint32).reshape(height, width)
        _ycbcr_to_rgb(y, cb, cr, _LANES[full_range], np.float32(gain), top, left, *shape, _NO_PLANES, words)
        return out
    planes = np.empty((3, *shape), np.uint8)
    _ycbcr_to_rgb(y, cb, cr, _LANES[full_range], np.float32(gain), top, left, *shape, planes, _NO_WORDS)
    cv2.merge(tuple(planes), dst=out[top:bottom, left:right])
    return out


_NO_PLANES, _NO_WORDS = np.empty((3, 0, 0), np.uint8), np.empty((0, 0), np.uint32)


def _bt601_x16(full_range: bool) -> np.ndarray:
    """3×4 affine map from 16·(Y, Cb, Cr) to RGB: BT.601 for limited (MPEG) or full (JPEG) range."""
    if full_range:
        matrix, offsets = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], [0.0, 128.0, 128.0]
    else:
        matrix, offsets = (
            [[1.164383, 0.0, 1.596027], [1.164383, -0.391762, -0.812968], [1.164383, 2.017232, 0.0]],
            [16.0, 128.0, 128.0],
        )
    m = np.array(matrix)
    return np.concatenate([m / 16, -(m @ np.array(offsets))[:, None]], axis=1)


def _int16_lanes(affine: np.ndarray) -> np.ndarray:
    """The affine map as `cv2.transform` applies it to uint16 pixels: in float32, with −32768 added to the
    offsets so that results fit int16 lanes (which sets where its rounding falls)."""
    lanes = affine.astype(np.float32)
    lanes[:, 3] -= np.float32(32768)
    return lanes


_BT601_X16 = {False: _bt601_x16(False), True: _bt601_x16(True)}
_LANES = {full: _int16_lanes(affine) for full, affine in _BT601_X16.items()}


@intrinsic
def _fma(typingctx, a, b, c):
    """a·b + c rounded once, in float32: what `cv2.transform`'s vector loop computes (`v_muladd`)."""

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return numba.types.float32(numba.types.float32, numba.types.float32, numba.types.float32), codegen


_OPAQUE = np.uint32(255 << 24)  # the spare byte of an RGBX word (little-endian: R is the first byte)


@numba.njit(cache=True, nogil=True, inline="always")
def _to_byte(luma, cb, cr, m0, m1, m2, m3):
    """One channel: OpenCV's int16-lane arithmetic (round to nearest even, +32768), saturated to 0…255."""
    value = np.rint(_fma(luma, m0, _fma(cb, m1, _fma(cr, m2, m3)))) + np.float32(32768)
    return np.uint8(min(max(value, np.float32(0)), np.float32(255)))


@numba.njit(cache=True, nogil=True, inline="always")
def _blend(near, far, weight, rest, gain):
    """16·(upsampled chroma) of one pixel: its widened chroma rows `near` and `far` weighted `weight` : `rest`."""
    return gain * (weight * near + rest * far)


@numba.njit(cache=True, nogil=True)
def _double_columns(chroma, out):
    """4·(each chroma row's columns doubled: ¾ near, ¼ far, edges repeated), or 4·chroma where `out` is as wide.
    Done once per chroma row, not once per picture row that blends it: all values are small integers, exact
    in float32, so doing this before the vertical blend gives the same sums as after it."""
    columns = chroma.shape[1]
    for m in range(chroma.shape[0]):
        c, row = chroma[m], out[m]
        if columns == row.shape[0]:
            for k in range(columns):
                row[k] = 4 * np.float32(c[k])
            continue
        last = columns - 1
        row[0] = 4 * np.float32(c[0])
        row[2 * last + 1] = 4 * np.float32(c[last])
        for k in range(1, columns):
            near, before = np.float32(c[k]), np.float32(c[k - 1])
            row[2 * k] = 3 * near + before
            row[2 * k - 1] = 3 * before + near


@numba.njit(cache=True, nogil=True)
def _ycbcr_to_rgb(y, cb, cr, m, gain, top, left, rows, columns, planes, words):
    """RGB planes (3, `rows`, `columns`) of that window at (`top`, `left`) of 8-bit Y and Cb, Cr at full, half
    width or half size (scaled by `gain`); or, where `words` is a whole frame's (H, W) uint32 array, the
    window's pixels as RGBX words in it (X = 255), which vectorise as planes do.

    Chroma rows are widened once (`_double_columns`) and blended vertically (`weight` : 4 − `weight`) in the
    pixel loop, over the window's chroma columns and one more on each side: the upsampled columns at the
    ends, computed as if at the frame's edges, fall outside the window unless they are at them."""
    height, width = y.shape
    half_height, half_width = cb.shape[0] < height, cb.shape[1] < width
    weight = np.float32(3 if half_height else 4)
    rest = np.float32(4) - weight
    r0, r1, r2, r3 = m[0, 0], m[0, 1], m[0, 2], m[0, 3]
    g0, g1, g2, g3 = m[1, 0], m[1, 1], m[1, 2], m[1, 3]
    b0, b1, b2, b3 = m[2, 0], m[2, 1], m[2, 2], m[2, 3]
    if half_width:
        first, stop = max(left // 2 - 1, 0), min((left + columns) // 2 + 2, cb.shape[1])
        start = 2 * first
    else:
        first, stop = left, left + columns
        start = left
    if half_height:
        low, high = max(top // 2 - 1, 0), min((top + rows - 1) // 2 + 2, cb.shape[0])
    else:
        low, high = top, top + rows
    span = 2 * (stop - first) if half_width else stop - first
    blue, red = np.empty((high - low, span), np.float32), np.empty((high - low, span), np.float32)
    _double_columns(cb[low:high, first:stop], blue)
    _double_columns(cr[low:high, first:stop], red)
    offset = left - start  # of the window's first column in `blue` and `red`
    for i in range(top, top + rows):
        near = i // 2 if half_height else i
        far = min(max(near + (1 if i % 2 else -1), 0), cb.shape[0] - 1) if half_height else i
        luma = y[i, left : left + columns]
        u_near, u_far = blue[near - low, offset : offset + columns], blue[far - low, offset : offset + columns]
        v_near, v_far = red[near - low, offset : offset + columns], red[far - low, offset : offset + columns]
        if words.size:
            word = words[i, left : left + columns]
            for j in range(columns):
                value = np.float32(16 * luma[j])
                u = _blend(u_near[j], u_far[j], weight, rest, gain)
                v = _blend(v_near[j], v_far[j], weight, rest, gain)
                red_byte = np.uint32(_to_byte(value, u, v, r0, r1, r2, r3))
                green_byte = np.uint32(_to_byte(value, u, v, g0, g1, g2, g3))
                blue_byte = np.uint32(_to_byte(value, u, v, b0, b1, b2, b3))
                word[j] = red_byte | (green_byte << np.uint32(8)) | (blue_byte << np.uint32(16)) | _OPAQUE
            continue
        r, g, b = planes[0, i - top], planes[1, i - top], planes[2, i - top]
        for j in range(columns):
            value = np.float32(16 * luma[j])
            u = _blend(u_near[j], u_far[j], weight, rest, gain)
            v = _blend(v_near[j], v_far[j], weight, rest, gain)
            r[j] = _to_byte(value, u, v, r0, r1, r2, r3)
            g[j] = _to_byte(value, u, v, g0, g1, g2, g3)
            b[j] = _to_byte(value, u, v, b0, b1, b2, b3)
