"""Batched pixel work: rescale/crop/flip, patch compositing and colour, on any torch device (docs/spec.md).

Compositing touches only the pixels inside the boxes: every (sample, frame) box of one paste step is
enumerated into one flat list of pixels, which is sampled from the patch's source frame, shaped by its
alpha and blended in place. Work is proportional to the patch area, not the frame, and the same code
runs on CUDA and on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .batch import Batch
from .plan import ELLIPSE, RHOMBUS, PlanBatch, SamplePlan

# On a CPU core the per-pixel work is bound by memory traffic: a few clips at a time stay in cache and
# render ~1.4x faster than a whole batch. A GPU takes the whole batch at once.
CPU_CHUNK = 4


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device`: on CUDA through pinned memory without blocking the host; on the CPU as is."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def render(plans: Sequence[SamplePlan] | PlanBatch, frames: Sequence[torch.Tensor], crop_size: int) -> Batch:
    """Turn plans and their decoded frames ((T, H, W, 3) uint8, one tensor per plan) into a Batch."""
    device = frames[0].device
    batch = plans if isinstance(plans, PlanBatch) else PlanBatch.stack(plans)  # host arrays, once per batch
    step = CPU_CHUNK if device.type == "cpu" else len(batch)
    clips = torch.cat(
        [render_clips(batch[i : i + step], frames[i : i + step], crop_size) for i in range(0, len(batch), step)]
    )
    boxes = to_device(batch.boxes.astype(np.float32), device)
    keys = torch.from_numpy(batch.keys)  # on the host, where they are read
    return Batch(clips, boxes, to_device(batch.visible, device), keys)


def render_clips(plans: PlanBatch, frames: Sequence[torch.Tensor], crop_size: int) -> torch.Tensor:
    """(B, T, S, S, 3) uint8 clips: rescale/crop/flip, paste the patches, apply colour."""
    clean = torch.stack([rescale_crop_flip(f, p, crop_size) for f, p in zip(frames, plans.samples())])  # B,T,S,S,3 f32
    clips = clean.clone()
    composite_patches(clips, clean, plans)
    clips = colour(clips, plans.hue_shift, plans.saturation, plans.brightness, plans.contrast)
    return clips.round_().to(torch.uint8)


def rescale_crop_flip(frames: torch.Tensor, plan: SamplePlan, crop_size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (T, S, S, 3) float32: antialiased bilinear rescale, crop, optional flip."""
    c = plan.clip
    x = frames.permute(0, 3, 1, 2)  # channels-last view: the fast uint8 path on CPU
    if x.device.type != "cpu":
        x = x.float()
    x = F.interpolate(x, size=c.resized, mode="bilinear", antialias=True, align_corners=False)
    top, left = c.crop
    x = x[:, :, top : top + crop_size, left : left + crop_size]
    if c.flip:
        x = x.flip(-1)
    return x.permute(0, 2, 3, 1).float()


def composite_patches(clips: torch.Tensor, clean: torch.Tensor, plans: PlanBatch) -> None:
    """Paste every trajectory's patch into `clips` (B, T, S, S, 3) float, in place; patches come from `clean`."""
    _, t, h, w, _ = clips.shape
    flat_out, flat_src = clips.view(-1, 3), clean.view(-1, 3)
    steps = [_paste_step_boxes(plans, step, t, h, w) for step in range(plans.boxes.shape[1])]
    steps = [s for s in steps if len(s[0])]
    if not steps:
        return
    # All paste steps' parameters travel to the device in one copy each; the sizes are known on the host.
    ints_all = to_device(np.concatenate([s[0] for s in steps]), clips.device)
    floats_all = to_device(np.concatenate([s[1] for s in steps]), clips.device)
    at = 0
    for host_ints, _ in steps:
        rows = slice(at, at + len(host_ints))
        at += len(host_ints)
        ints, floats = ints_all[rows], floats_all[rows]
        host_count = host_ints[:, 2] * host_ints[:, 3]
        total = int(host_count.sum())
        count = ints[:, 2] * ints[:, 3]
        # One row per pixel of every pasted box: the box's parameters and the pixel's place inside it.
        x1, y1, bw, bh, src_base, dst_base = torch.repeat_interleave(ints, count, dim=0, output_size=total).unbind(1)
        sx1, sy1, sx2, sy2, shape, soft, opacity = torch.repeat_interleave(
            floats, count, dim=0, output_size=total
        ).unbind(1)
        first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count, output_size=total)
        local = torch.arange(total, device=clips.device) - first
        py = torch.div(local, bw, rounding_mode="floor")
        px = local - py * bw
        u = (px.float() + 0.5) / bw.float()  # pixel centre, normalised to the box
        v = (py.float() + 0.5) / bh.float()

        alpha = patch_alpha(u, v, shape, soft) * opacity
        sx = torch.clamp(sx1 + u * (sx2 - sx1) - 0.5, sx1, sx2 - 1)
        sy = torch.clamp(sy1 + v * (sy2 - sy1) - 0.5, sy1, sy2 - 1)
        patch = _bilinear(flat_src, src_base, sy, sx, sy2, sx2, w)

        dst = dst_base + (y1 + py) * w + x1 + px
        flat_out.index_copy_(0, dst, torch.lerp(flat_out.index_select(0, dst), patch, alpha.unsqueeze(1)))


def _paste_step_boxes(plans: PlanBatch, step: int, t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pasted (sample, frame) box of paste step `step`: integer and float parameters, as two host arrays."""
    rows = np.arange(len(plans))
    k = plans.order[:, step]
    sample, frame = np.nonzero(plans.visible[rows, k])
    kk = k[sample]
    box = plans.boxes[sample, kk, frame]
    j = plans.source_frame[sample, kk]
    src = plans.boxes[sample, kk, j]
    ints = np.stack(
        [
            box[:, 0],
            box[:, 1],
            box[:, 2] - box[:, 0],
            box[:, 3] - box[:, 1],
            (sample * t + j) * h * w,
            (sample * t + frame) * h * w,
        ],
        1,
    ).astype(np.int64)
    floats = np.concatenate(
        [
            src,
            plans.shape[sample, kk, None],
            plans.soft_start[sample, kk, None],
            plans.opacity[sample, kk, frame, None],
        ],
        1,
    ).astype(np.float32)
    return ints, floats


def patch_alpha(u: torch.Tensor, v: torch.Tensor, shape: torch.Tensor, soft_start: torch.Tensor) -> torch.Tensor:
    """Alpha at normalised box positions (u, v): the shape's distance d, 1 inside 0.5 (soft from d0 on)."""
    dx, dy = (u - 0.5).abs(), (v - 0.5).abs()
    dist = torch.where(
        shape == ELLIPSE, torch.hypot(dx, dy), torch.where(shape == RHOMBUS, dx + dy, torch.maximum(dx, dy))
    )
    soft = ((0.5 - dist) / (0.5 - soft_start).clamp_min(1e-6)).clamp_(0.0, 1.0)
    return torch.where(soft_start >= 0.5, (dist < 0.5).float(), soft)


def _bilinear(
    flat: torch.Tensor,
    base: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    y_end: torch.Tensor,
    x_end: torch.Tensor,
    width: int,
) -> torch.Tensor:
    """Bilinear samples of (N, 3) pixels at (y, x), never reading past the source box's far edges."""
    y0, x0 = y.floor(), x.floor()
    fy, fx = (y - y0).unsqueeze(1), (x - x0).unsqueeze(1)
    row0 = base + y0.long() * width
    row1 = base + torch.minimum(y0 + 1, y_end - 1).long() * width
    x0l, x1l = x0.long(), torch.minimum(x0 + 1, x_end - 1).long()

    def at(index: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, index)

    top = torch.lerp(at(row0 + x0l), at(row0 + x1l), fx)
    bottom = torch.lerp(at(row1 + x0l), at(row1 + x1l), fx)
    return torch.lerp(top, bottom, fy)


def apply_colour(clips: torch.Tensor, plans: Sequence[SamplePlan]) -> torch.Tensor:
    """`colour` with each plan's ColourPlan."""
    return colour(
        clips,
        np.array([p.colour.hue_shift for p in plans]),
        np.array([p.colour.saturation for p in plans]),
        np.stack([p.colour.brightness for p in plans]),
        np.stack([p.colour.contrast for p in plans]),
    )


def colour(
    clips: torch.Tensor, hue: np.ndarray, sat: np.ndarray, brightness: np.ndarray, contrast: np.ndarray
) -> torch.Tensor:
    """Hue/saturation (N,) on the clips that drew it, then per-frame brightness offsets (N, T), then
    per-frame contrast gains (N, T): every pixel times the factor, as the official `DynamicContrast` (the
    frame's mean moves with it); values are clipped to [0, 255] after each step. Offsets of 0 and gains
    of 1 change nothing, so brightness and contrast run on every clip as one per-frame affine pass."""
    device = clips.device
    drawn = np.nonzero((hue != 0) | (sat != 1))[0]
    if len(drawn):
        idx = to_device(drawn, device)
        params = to_device(np.stack([hue[drawn], sat[drawn]]).astype(np.float32), device)
        clips[idx] = shift_hue_saturation(clips[idx], params[0], params[1]).clamp_(0, 255)
    if (brightness != 0).any() or (contrast != 1).any():
        params = to_device(np.stack([brightness, contrast]).astype(np.float32), device)[..., None, None, None]
        clips.add_(params[0]).clamp_(0, 255).mul_(params[1]).clamp_(max=255)
    return clips


def shift_hue_saturation(rgb: torch.Tensor, hue: torch.Tensor, sat: torch.Tensor) -> torch.Tensor:
    """Shift hue by `hue` (0-180 scale, as OpenCV) and scale saturation, per sample; rgb (N, ..., 3) 0-255."""
    view = (-1,) + (1,) * (rgb.dim() - 2)
    r, g, b = rgb.unbind(-1)
    value, _ = rgb.max(-1)
    chroma = value - rgb.min(-1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h = torch.where(value == r, (g - b) / safe, torch.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(chroma > 0, h, torch.zeros_like(h))  # hue in sextants [−1, 5)
    h = torch.remainder(h + hue.view(view) / 30.0, 6.0)  # 180 units = 6 sextants
    s = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), torch.zeros_like(value))
    s = (s * sat.view(view)).clamp(0.0, 1.0)
    c = value * s
    # HSV → RGB: each channel n ∈ {5, 3, 1} is v − c·clamp(min(k, 4 − k), 0, 1) with k = (n + h) mod 6.
    out = [
        value - c * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
        for k in (torch.remainder(n + h, 6.0) for n in (5.0, 3.0, 1.0))
    ]
    return torch.stack(out, dim=-1)
