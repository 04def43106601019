"""Batched pixel work: rescale/crop/flip, patch compositing and colour, on any torch device (docs/spec.md).

Clips stay uint8 between stages, so every pass over whole frames moves bytes, not floats. Each stage makes
as few passes as it can: the rescale computes only the part of the resized frame that holds the crop; the
compositing touches only the pixels inside the boxes: every (sample, frame) box of one paste step is
enumerated into one flat list of pixels, which is sampled from the patch's source frame (pixels gathered
as one int32 each), shaped by its alpha and blended in place; brightness and contrast are one lookup table
per frame, after hue/saturation on the clips that drew it. This tensor code is what a GPU runs (one launch
per operation for the whole batch); on the CPU the same stages run as compiled loops (`render_cpu.py`)
on the same host-side parameters, one clip at a time while it is in cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
import torch

from . import render_cpu
from .batch import Batch
from .plan import ELLIPSE, RECTANGLE, RHOMBUS, ClipPlan, PlanBatch, SamplePlan

HARD_EDGE_GAIN = 1e30  # alpha = clamp((0.5 - d) * gain, 0, 1): with this gain exactly (d < 0.5) in float32


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`: on CUDA through pinned memory without blocking the host; on the CPU as is."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def render(plans: Sequence[SamplePlan] | PlanBatch, frames: Sequence[torch.Tensor], crop_size: int) -> Batch:
    """Turn plans and their decoded frames ((T, H, W, 3) uint8 RGB, or RGBX with a 4th channel, one tensor per
    plan) into a Batch."""
    device = frames[0].device
    batch = plans if isinstance(plans, PlanBatch) else PlanBatch.stack(plans)  # host arrays, once per batch
    clips = (render_clips_cpu if device.type == "cpu" else render_clips)(batch, frames, crop_size)
    boxes = to_device(batch.boxes.astype(np.float32), device)
    keys = torch.from_numpy(batch.keys)  # on the host, where they are read
    return Batch(clips, boxes, to_device(batch.visible, device), keys)


def render_clips(plans: PlanBatch, frames: Sequence[torch.Tensor], crop_size: int) -> torch.Tensor:
    """(B, T, S, S, 3) uint8 clips: rescale/crop/flip, paste the patches, apply colour; tensor code."""
    t, s = plans.frame_indices.shape[1], crop_size
    # Pixels are 4 bytes (RGB and a spare byte) while compositing, so that each is one int32 to gather and
    # scatter. One spare row of pixels follows the clean clips: the bilinear taps never index past the end.
    pixels = len(plans) * t * s * s
    buffer = torch.zeros((pixels + s + 1, 4), dtype=torch.uint8, device=frames[0].device)
    clean = buffer[:pixels].view(len(plans), t, s, s, 4)
    for i, (f, plan) in enumerate(zip(frames, plans.samples())):
        clean[i, ..., :3] = _to_uint8(resized_crop(f, plan.clip, s)[:, :3]).permute(0, 2, 3, 1)
    clips = clean.clone()
    composite_patches(clips.view(torch.int32).view(-1), buffer.view(torch.int32).view(-1), plans, t, s)
    return colour(clips, plans.hue_shift, plans.saturation, plans.brightness, plans.contrast)


def render_clips_cpu(plans: PlanBatch, frames: Sequence[torch.Tensor], crop_size: int) -> torch.Tensor:
    """`render_clips` on the CPU: compositing and hue/saturation as compiled loops (`render_cpu.py`), one clip
    at a time (its 0.6 MB stay in cache through the stages), on the same box lists and colour tables: the
    same bytes."""
    n, t, s = len(plans), plans.frame_indices.shape[1], crop_size
    pixels = t * s * s
    clips = np.empty((n, t, s, s, 3), np.uint8)
    # One clip's patch source frames (the others are not read), and spare pixels for the bilinear taps.
    clean = np.zeros((pixels + s + 1, 3), np.uint8)
    steps = [_by_clip(_paste_step_boxes(plans, k, t, s, s), n, pixels) for k in range(plans.boxes.shape[1])]
    tables = brightness_contrast_tables(plans.brightness, plans.contrast)
    for i, (f, plan) in enumerate(zip(frames, plans.samples())):
        out = clips[i]
        crop = _resized_crop_unflipped(f, plan.clip, s).permute(0, 2, 3, 1).numpy()
        if crop.shape[-1] == 4:  # RGBX frames (`Decoder.decode_many(rgbx=True)`): the spare byte dropped
            for frame, rgb in zip(crop, out):
                cv2.cvtColor(frame, cv2.COLOR_RGBA2RGB, dst=rgb)
                if plan.clip.flip:
                    cv2.flip(rgb, 1, dst=rgb)
        elif plan.clip.flip:
            for frame, flipped in zip(crop, out):
                cv2.flip(frame, 1, dst=flipped)  # as it copies (NumPy's strided copy is 10x slower)
        else:
            out[:] = crop
        sources = np.unique(plans.source_frame[i])  # the only frames the patches are sampled from
        clean[:pixels].reshape(out.shape)[sources] = out[sources]
        for ints, floats, shape_ends, bounds in steps:
            if bounds[i + 1] > bounds[i]:
                mine = slice(bounds[i], bounds[i + 1])
                render_cpu.composite(
                    out.reshape(-1, 3), clean, ints[:, mine], floats[:, mine], shape_ends, s, i * pixels
                )
        if plans.hue_shift[i] != 0 or plans.saturation[i] != 1:
            render_cpu.hue_saturation(out.reshape(-1, 3), float(plans.hue_shift[i]), float(plans.saturation[i]))
        apply_tables(torch.from_numpy(out)[None], tables[i : i + 1])
    return torch.from_numpy(clips)


class Framed(Protocol):
    """What `rescale_crop_flip` reads of a plan: its clip's framing (a SamplePlan's, or a downstream clip's)."""

    @property
    def clip(self) -> ClipPlan: ...


def rescale_crop_flip(frames: torch.Tensor, plan: Framed, crop_size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (T, S, S, 3) float32: antialiased bilinear rescale, crop, optional flip."""
    return resized_crop(frames, plan.clip, crop_size).permute(0, 2, 3, 1).float()


def resized_crop(frames: torch.Tensor, clip: ClipPlan, crop_size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (T, 3, S, S) view, uint8 on the CPU (its fast path), float elsewhere: the crop of
    the antialiased bilinear rescale to `clip.resized`, flipped if planned. Only the resized rows and columns
    up to the crop's far edges are computed, from the source pixels they read: the same values as
    rescaling the whole frame and cropping."""
    x = _resized_crop_unflipped(frames, clip, crop_size)
    return x.flip(-1) if clip.flip else x


def _resized_crop_unflipped(frames: torch.Tensor, clip: ClipPlan, crop_size: int) -> torch.Tensor:
    x = frames.permute(0, 3, 1, 2)  # channels-last view: the fast uint8 path on CPU
    if x.device.type != "cpu":
        x = x.float()
    (height, width), (top, left) = clip.resized, clip.crop
    rows, cols = top + crop_size, left + crop_size
    source = x[:, :, : _source_extent(rows, x.shape[2], height), : _source_extent(cols, x.shape[3], width)]
    x = torch.ops.aten._upsample_bilinear2d_aa(source, [rows, cols], False, height / x.shape[2], width / x.shape[3])
    return x[:, :, top:, left:]


def source_window(clip: ClipPlan, height: int, width: int, crop_size: int) -> tuple[int, int, int, int]:
    """The pixels of a height×width frame that `resized_crop` reads for the crop's own pixels, as rows
    top..bottom and columns left..right (ends excluded): the decoder need convert no others. The rescaled
    rows and columns before the crop, which are computed and dropped, may read anything."""
    (resized_height, resized_width), (top, left) = clip.resized, clip.crop
    return (
        _source_start(top, height, resized_height),
        _source_extent(top + crop_size, height, resized_height),
        _source_start(left, width, resized_width),
        _source_extent(left + crop_size, width, resized_width),
    )


def _source_start(output: int, size: int, resized: int) -> int:
    """The first source pixel that antialiased-bilinear output `output` of `resized` reads (its support, as
    torch computes it, less one spare pixel against rounding)."""
    scale = size / resized
    return max(int((output + 0.5) * scale - max(scale, 1.0) + 0.5) - 1, 0)


def _source_extent(outputs: int, size: int, resized: int) -> int:
    """Source pixels that the first `outputs` of `resized` antialiased-bilinear outputs read (support clipped
    at the far edge as in the whole frame; one spare pixel against rounding)."""
    scale = size / resized
    return min(size, int((outputs - 0.5) * scale + max(scale, 1.0) + 0.5) + 1)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round half up to uint8 (values already in [0, 255] or clamped here)."""
    if x.dtype == torch.uint8:
        return x
    return x.clamp(0, 255).add_(0.5).to(torch.uint8)


def composite_patches(out: torch.Tensor, source: torch.Tensor, plans: PlanBatch, t: int, size: int) -> None:
    """Paste every trajectory's patch into the clips `out`, in place: (B·T·S·S,) pixels as int32 (RGB and a
    spare byte). `source` holds the clean clips the same way, followed by at least S + 1 spare pixels."""
    w = size
    steps = [_paste_step_boxes(plans, step, t, size, size) for step in range(plans.boxes.shape[1])]
    steps = [s for s in steps if s[0].shape[1]]
    if not steps:
        return
    # All paste steps' parameters travel to the device in one copy each; the sizes are known on the host.
    device = out.device
    ints_all = to_device(np.concatenate([s[0] for s in steps], 1), device)
    floats_all = to_device(np.concatenate([s[1] for s in steps], 1), device)
    at = 0
    for host_ints, _, shape_ends in steps:
        boxes = host_ints.shape[1]
        ints, floats = ints_all[:, at : at + boxes], floats_all[:, at : at + boxes]
        at += boxes
        total = int(shape_ends[-1])
        box = torch.repeat_interleave(torch.arange(boxes, device=device), ints[0], output_size=total)
        src_base, dst_base = ints[1:].index_select(1, box)
        start, bw, ibw, cx, ibh, cy, ax, bx, xmax, ay, by, ymax, gain, half_gain, opacity = floats.index_select(1, box)
        # The pixel's row and column in its box, in float (exact: fewer than 2^24 pixels per step).
        local = torch.arange(total, dtype=torch.float32, device=device).sub_(start)
        py = local.add(0.5).mul_(ibw).floor_()
        px = torch.addcmul(local, py, bw, value=-1)
        # Where in the source box each pixel's centre falls, clamped to the box (pixel centres at .5); the
        # four taps of its bilinear sample (a tap past the box's far edge has weight 0).
        sx = torch.minimum(torch.addcmul(bx, px, ax).clamp_(min=0), xmax)
        sy = torch.minimum(torch.addcmul(by, py, ay).clamp_(min=0), ymax)
        x0, y0 = sx.long(), sy.long()
        fx, fy = sx - x0, sy - y0
        first = src_base + y0 * w + x0
        c00, c01, c10, c11 = _channels(torch.stack([source.index_select(0, first + d) for d in (0, 1, w, w + 1)]))
        patch = torch.lerp(torch.lerp(c00, c01, fx), torch.lerp(c10, c11, fx), fy)  # (4, N) planes

        dist = box_distance(torch.addcmul(cx, px, ibw).abs_(), torch.addcmul(cy, py, ibh).abs_(), shape_ends)
        alpha = torch.addcmul(half_gain, dist, gain, value=-1).clamp_(0, 1).mul_(opacity)
        dst = torch.add(px, py, alpha=w).long().add_(dst_base)
        blended = torch.lerp(_channels(out.index_select(0, dst)), patch, alpha).add_(0.5)
        packed = torch.empty((total, 4), dtype=torch.uint8, device=device)
        out.index_copy_(0, dst, packed.copy_(blended.T).view(torch.int32).view(-1))


def _channels(pixels: torch.Tensor) -> torch.Tensor:
    """(..., N) int32 pixels → (..., 4, N) float planes, one per byte."""
    return pixels.view(torch.uint8).view(*pixels.shape, 4).movedim(-1, -2).float()


def box_distance(dx: torch.Tensor, dy: torch.Tensor, shape_ends: np.ndarray) -> torch.Tensor:
    """The shape's distance d from the box centre (0.5 on its border), in place in `dx`: max(dx, dy) for
    rectangles, hypot for ellipses, dx + dy for rhombi, each on its range of pixels (`_paste_step_boxes`)."""
    rect, ellipse, _ = (int(e) for e in shape_ends)
    torch.maximum(dx[:rect], dy[:rect], out=dx[:rect])
    torch.hypot(dx[rect:ellipse], dy[rect:ellipse], out=dx[rect:ellipse])
    dx[ellipse:].add_(dy[ellipse:])
    return dx


def _paste_step_boxes(plans: PlanBatch, step: int, t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pasted (sample, frame) box of paste step `step`, sorted by patch shape: integer (3, M) and float
    (15, M) parameters and the end of each shape's pixels in the step's flat pixel list (rectangles,
    ellipses, rhombi)."""
    rows = np.arange(len(plans))
    k = plans.order[:, step]
    sample, frame = np.nonzero(plans.visible[rows, k])
    kk = k[sample]
    shape = plans.shape[sample, kk]
    by_shape = np.argsort(shape, kind="stable")
    sample, frame, kk, shape = sample[by_shape], frame[by_shape], kk[by_shape], shape[by_shape]
    x1, y1, x2, y2 = plans.boxes[sample, kk, frame].T.astype(np.int64)
    j = plans.source_frame[sample, kk]
    sx1, sy1, sx2, sy2 = plans.boxes[sample, kk, j].T.astype(np.int64)
    bw, bh, sw, sh = x2 - x1, y2 - y1, sx2 - sx1, sy2 - sy1
    count = bw * bh
    ints = np.stack(
        [
            count,
            (sample * t + j) * h * w + sy1 * w + sx1,  # the source box's top-left pixel
            (sample * t + frame) * h * w + y1 * w + x1,  # the pasted box's top-left pixel
        ]
    )
    ax, ay = sw / bw, sh / bh  # source pixels per box pixel
    soft = plans.soft_start[sample, kk]
    gain = np.where(soft >= 0.5, HARD_EDGE_GAIN, 1 / np.maximum(0.5 - soft, 1e-6))
    floats = np.stack(
        [
            np.cumsum(count) - count,  # the box's first pixel in the step's flat list
            bw,
            1 / bw,
            0.5 / bw - 0.5,  # |px / bw + this| is the pixel centre's distance to the box centre, in widths
            1 / bh,
            0.5 / bh - 0.5,
            ax,
            0.5 * ax - 0.5,  # source x of pixel px, relative to the source box: px * ax + this
            sw - 1,
            ay,
            0.5 * ay - 0.5,
            sh - 1,
            gain,
            0.5 * gain,
            plans.opacity[sample, kk, frame],
        ]
    ).astype(np.float32)
    shape_ends = np.array([count[shape <= s].sum() for s in (RECTANGLE, ELLIPSE, RHOMBUS)])
    return ints, floats, shape_ends


def _by_clip(
    step: tuple[np.ndarray, np.ndarray, np.ndarray], clips: int, pixels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A paste step's box list (`_paste_step_boxes`) ordered by clip (`pixels` per clip), with each clip's
    range of boxes: `bounds[i]` … `bounds[i + 1]`."""
    ints, floats, shape_ends = step
    clip = ints[2] // pixels
    order = np.argsort(clip, kind="stable")
    bounds = np.searchsorted(clip[order], np.arange(clips + 1))
    return np.ascontiguousarray(ints[:, order]), np.ascontiguousarray(floats[:, order]), shape_ends, bounds


def colour(
    clips: torch.Tensor, hue: np.ndarray, sat: np.ndarray, brightness: np.ndarray, contrast: np.ndarray
) -> torch.Tensor:
    """(N, T, H, W, C ≥ 3) contiguous uint8 clips, changed in place → (N, T, H, W, 3): hue/saturation (N,) on the
    clips that drew it, then per-frame brightness offsets b (N, T), then per-frame contrast gains c (N, T):
    every pixel times the gain, as the official `DynamicContrast` (the frame's mean moves with it), values
    clipped to [0, 255] after each step and rounded half up. On uint8 pixels brightness and contrast are
    one 256-entry lookup table per frame (`brightness_contrast_tables`)."""
    drawn = np.nonzero((hue != 0) | (sat != 1))[0]
    if len(drawn):
        idx = to_device(drawn, clips.device)
        params = to_device(np.stack([hue[drawn], sat[drawn]]).astype(np.float32), clips.device)
        shifted = shift_hue_saturation(clips[idx][..., :3].float(), params[0], params[1])
        clips[idx, ..., :3] = _to_uint8(shifted)
    if (brightness != 0).any() or (contrast != 1).any():
        apply_tables(clips, brightness_contrast_tables(brightness, contrast))
    return clips[..., :3].contiguous()


def brightness_contrast_tables(brightness: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """(N, T, 256) uint8: round(clip(clip(v + b, 0, 255) · c, 0, 255)) for every byte v, per frame."""
    v = np.arange(256.0)
    y = np.clip(np.clip(v + brightness[..., None], 0, 255) * contrast[..., None], 0, 255)
    return np.floor(y + 0.5).astype(np.uint8)


def apply_tables(clips: torch.Tensor, tables: np.ndarray) -> None:
    """Map every byte of frame (n, t) of `clips` (N, T, ...) uint8 through `tables[n, t]`, in place: on the
    CPU with OpenCV's lookup (frames whose table is the identity are skipped), elsewhere a gather."""
    if clips.device.type == "cpu":
        frames = clips.numpy()
        identity = np.arange(256, dtype=np.uint8)
        for n, t in zip(*np.nonzero((tables != identity).any(-1))):
            cv2.LUT(frames[n, t], tables[n, t], dst=frames[n, t])
        return
    n, t = tables.shape[:2]
    flat = clips.view(n * t, -1)
    flat.copy_(torch.gather(to_device(tables, clips.device).view(n * t, 256), 1, flat.long()))


def shift_hue_saturation(rgb: torch.Tensor, hue: torch.Tensor, sat: torch.Tensor) -> torch.Tensor:
    """Shift hue by `hue` (0-180 scale, as OpenCV) and scale saturation, per sample; rgb (N, ..., 3) 0-255.
    Value v is kept; chroma c = v·s becomes min(c·sat, v); each channel is v − c·f(hue) (HSV → RGB)."""
    view = (-1,) + (1,) * (rgb.dim() - 2)
    r, g, b = rgb.movedim(-1, 0).contiguous()  # one contiguous plane per channel
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    # Hue in sextants [−1, 5) (0 where there is no chroma: the numerator is 0 then), shifted: 180 units = 6.
    h = torch.where(
        value == r, g - b, torch.where(value == g, torch.add(b - r, chroma, alpha=2), (r - g).add_(chroma, alpha=4))
    )
    h = h.div_(chroma.clamp_min(1e-12)).add_(hue.view(view) / 30.0)
    c = torch.minimum(chroma.mul_(sat.view(view)), value)
    # HSV → RGB: channel n ∈ {5, 3, 1} is v − c·clamp(min(k, 4 − k), 0, 1) with k = (n + h) mod 6.
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h + n, 6.0)
        out.append(torch.addcmul(value, c, torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0), value=-1))
    return torch.stack(out, dim=-1)
