"""Compositing and hue/saturation on a CPU core as compiled loops (numba): one pass, no temporaries.

`render.py`'s tensor code makes one device launch per operation, which is what a GPU wants; on a CPU core
the same operations are ~45 passes over memory for compositing alone and ~35 for the hue shift. These
kernels do the per-pixel arithmetic of the tensor code in one loop over the pixels it touches, in float32,
in the same order and with a·b + c contracted into one FMA as torch's vectorised CPU kernels do, on the
same host-side parameters (compositing's box lists, `render._paste_step_boxes`): the same bytes
(`tests/ctp/test_render_cpu.py`). Compiled once per machine (numba's cache beside this module, or in the
user's cache directory when that is read-only); `nogil`, so a replica's decode thread runs alongside.
"""

from __future__ import annotations

import math

import numba
import numpy as np

HALF = np.float32(0.5)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
MAX_BYTE = np.float32(255.0)
TWO = np.float32(2.0)
FOUR = np.float32(4.0)
SEXTANTS = np.float32(6.0)
TINY = np.float32(1e-12)


@numba.njit(inline="always")
def _lerp(a, b, w):
    """torch.lerp's formula (exact at both ends); both sides computed, then one chosen, so that it compiles
    to a select rather than a branch that a pixel's random weight would mispredict half the time."""
    d = b - a
    low, high = a + w * d, b - d * (ONE - w)
    return low if w < HALF else high


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def composite(
    out: np.ndarray,
    clean: np.ndarray,
    ints: np.ndarray,
    floats: np.ndarray,
    shape_ends: np.ndarray,
    width: int,
    offset: int,
) -> None:
    """Paste one paste step's boxes into `out` (P, 3) uint8 pixels, sampling the patches bilinearly from
    `clean` (the same layout, followed by at least width + 1 spare pixels): `render.composite_patches`'s
    arithmetic per pixel, with its box list (`render._paste_step_boxes`: ints (3, M), floats (15, M), the
    end of each shape's pixels), whose pixel offsets are `offset` more than in `out` and `clean`.

    A box row's patch pixels lerp between two source rows, each first interpolated across (`_across`): a
    source row is interpolated once, not once for each box row that reads it (patches are resized by a few
    per cent, so consecutive box rows mostly read consecutive source rows). Alpha is computed a row at a
    time, one loop per shape, and every pixel is blended (alpha 0 leaves it as it is), without branches."""
    rect_end, ellipse_end = shape_ends[0], shape_ends[1]
    x0 = np.empty(width, np.int64)  # per column of a box: its source tap, tap weight and distance
    fx = np.empty(width, np.float32)
    dx = np.empty(width, np.float32)
    alpha = np.empty(width, np.float32)
    rows = np.empty((2, 3, width), np.float32)  # source rows y0 and y0 + 1 interpolated across, as planes
    for m in range(ints.shape[1]):
        count, src_base, dst_base = ints[0, m], ints[1, m] - offset, ints[2, m] - offset
        start, bw, ibw, cx, ibh, cy = floats[0, m], floats[1, m], floats[2, m], floats[3, m], floats[4, m], floats[5, m]
        ax, bx, xmax, ay, by, ymax = (
            floats[6, m],
            floats[7, m],
            floats[8, m],
            floats[9, m],
            floats[10, m],
            floats[11, m],
        )
        gain, half_gain, opacity = floats[12, m], floats[13, m], floats[14, m]
        shape = 0 if start < rect_end else (1 if start < ellipse_end else 2)
        box_w = int(bw)
        for px in range(box_w):
            fpx = np.float32(px)
            sx = min(max(bx + fpx * ax, ZERO), xmax)
            x0[px] = int(sx)
            fx[px] = sx - np.float32(x0[px])
            dx[px] = abs(cx + fpx * ibw)
        held, upper = -2, 0  # the source row interpolated in rows[upper]; the next one is in the other
        for py in range(count // box_w):
            fpy = np.float32(py)
            sy = min(max(by + fpy * ay, ZERO), ymax)
            y0 = int(sy)
            fy = sy - np.float32(y0)
            dy = abs(cy + fpy * ibh)
            if y0 != held:
                if y0 == held + 1:  # the lower row becomes the upper one
                    upper = 1 - upper
                else:
                    _across(rows[upper], clean, src_base + y0 * width, x0, fx, box_w)
                _across(rows[1 - upper], clean, src_base + (y0 + 1) * width, x0, fx, box_w)
                held = y0
            if shape == 0:
                for px in range(box_w):
                    alpha[px] = min(max(half_gain - max(dx[px], dy) * gain, ZERO), ONE) * opacity
            elif shape == 1:
                for px in range(box_w):
                    alpha[px] = min(max(half_gain - np.float32(math.hypot(dx[px], dy)) * gain, ZERO), ONE) * opacity
            else:
                for px in range(box_w):
                    alpha[px] = min(max(half_gain - (dx[px] + dy) * gain, ZERO), ONE) * opacity
            dst = dst_base + py * width
            above, below = rows[upper], rows[1 - upper]
            for px in range(box_w):
                a = alpha[px]
                for c in range(3):
                    patch = _lerp(above[c, px], below[c, px], fy)
                    out[dst + px, c] = np.uint8(_lerp(np.float32(out[dst + px, c]), patch, a) + HALF)


@numba.njit(inline="always")
def _across(row, clean, base, x0, fx, box_w):
    """Source row `base` of `clean` at the box's columns: each pixel lerped between its two taps (planes)."""
    for px in range(box_w):
        first, w = base + x0[px], fx[px]
        for c in range(3):
            row[c, px] = _lerp(np.float32(clean[first, c]), np.float32(clean[first + 1, c]), w)


HUE_BLOCK = 1024  # pixels per block of the hue kernel: its planes stay in L1


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def hue_saturation(pixels: np.ndarray, hue: float, saturation: float) -> None:
    """Shift the hue and scale the saturation of (P, 3) uint8 RGB pixels in place, rounding half up:
    `render.shift_hue_saturation`'s arithmetic per pixel. A block at a time, split into float planes, so
    that the arithmetic runs on contiguous arrays and vectorises (7x faster than on the RGB triples)."""
    shift = np.float32(hue) / np.float32(30.0)
    sat = np.float32(saturation)
    flat = pixels.reshape(-1)
    planes = np.empty((3, HUE_BLOCK), np.float32)
    shifted = np.empty((3, HUE_BLOCK), np.float32)
    for first in range(0, pixels.shape[0], HUE_BLOCK):
        n = min(HUE_BLOCK, pixels.shape[0] - first)
        for j in range(n):
            for c in range(3):
                planes[c, j] = flat[3 * (first + j) + c]
        for j in range(n):
            r, g, b = planes[0, j], planes[1, j], planes[2, j]
            # Selects, not branches or calls, so that the loop vectorises.
            top = r if r > g else g
            value = top if top > b else b
            low = r if r < g else g
            chroma = value - (low if low < b else b)
            h = (g - b) if value == r else ((b - r) + TWO * chroma if value == g else (r - g) + FOUR * chroma)
            h = h / (chroma if chroma > TINY else TINY) + shift
            scaled = chroma * sat
            c_new = scaled if scaled < value else value
            for c in range(3):
                # torch.remainder(k, 6) for k in [-1.4, 10.4): fmod is k or k − 6 (exact), moved to [0, 6).
                k = h + np.float32(5 - 2 * c)
                k = k + SEXTANTS if k < ZERO else (k - SEXTANTS if k >= SEXTANTS else k)
                ramp = k if k < FOUR - k else FOUR - k
                v = value - c_new * (ZERO if ramp < ZERO else (ONE if ramp > ONE else ramp))
                shifted[c, j] = (ZERO if v < ZERO else (MAX_BYTE if v > MAX_BYTE else v)) + HALF
        for j in range(n):
            for c in range(3):
                flat[3 * (first + j) + c] = np.uint8(shifted[c, j])
