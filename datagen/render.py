"""Batched pixel work: rescale/crop/flip, patch compositing and colour, on any torch device (docs/spec.md).

Compositing touches only the pixels inside the boxes: every (sample, frame) box of one paste step is
enumerated into one flat list of pixels, which is sampled from the patch's source frame, shaped by its
alpha and blended in place. Work is proportional to the patch area, not the frame, and the same code
runs on CUDA and on CPU.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .batch import Batch
from .plan import ELLIPSE, RHOMBUS, SamplePlan


# On a CPU core the per-pixel work is bound by memory traffic: a few clips at a time stay in cache and
# render ~1.4x faster than a whole batch. A GPU takes the whole batch at once.
CPU_CHUNK = 4


def render(plans: Sequence[SamplePlan], frames: Sequence[torch.Tensor], crop_size: int) -> Batch:
    """Turn plans and their decoded frames ((T, H, W, 3) uint8, one tensor per plan) into a Batch."""
    device = frames[0].device
    step = CPU_CHUNK if device.type == "cpu" else len(plans)
    clips = torch.cat([render_clips(plans[i : i + step], frames[i : i + step], crop_size) for i in range(0, len(plans), step)])
    boxes = torch.from_numpy(np.stack([p.patches.boxes for p in plans])).to(device, torch.float32)
    visible = torch.from_numpy(np.stack([p.patches.visible for p in plans])).to(device)
    keys = torch.tensor([tuple(p.key) for p in plans], dtype=torch.int64)  # on the host, where they are read
    return Batch(clips, boxes, visible, keys)


def render_clips(plans: Sequence[SamplePlan], frames: Sequence[torch.Tensor], crop_size: int) -> torch.Tensor:
    """(B, T, S, S, 3) uint8 clips: rescale/crop/flip, paste the patches, apply colour."""
    clean = torch.stack([rescale_crop_flip(f, p, crop_size) for f, p in zip(frames, plans)])  # B,T,S,S,3 f32
    clips = clean.clone()
    composite_patches(clips, clean, plans)
    clips = apply_colour(clips, plans)
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


def composite_patches(clips: torch.Tensor, clean: torch.Tensor, plans: Sequence[SamplePlan]) -> None:
    """Paste every trajectory's patch into `clips` (B, T, S, S, 3) float, in place; patches come from `clean`."""
    b, t, h, w, _ = clips.shape
    flat_out, flat_src = clips.view(-1, 3), clean.view(-1, 3)
    for step in range(plans[0].patches.boxes.shape[0]):
        boxes = _paste_step_boxes(plans, step, t, h, w)
        if boxes is None:
            continue
        ints, floats = boxes[0].to(clips.device), boxes[1].to(clips.device)
        count = ints[:, 2] * ints[:, 3]
        # One row per pixel of every pasted box: the box's parameters and the pixel's place inside it.
        x1, y1, bw, bh, src_base, dst_base = torch.repeat_interleave(ints, count, dim=0).unbind(1)
        sx1, sy1, sx2, sy2, shape, soft, opacity = torch.repeat_interleave(floats, count, dim=0).unbind(1)
        first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        local = torch.arange(first.numel(), device=clips.device) - first
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


def _paste_step_boxes(plans: Sequence[SamplePlan], step: int, t: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per pasted (sample, frame) box of paste step `step`: integer and float parameters, as two tensors."""
    ints, floats = [], []
    for i, plan in enumerate(plans):
        p = plan.patches
        k = p.order[step]
        frames = np.nonzero(p.visible[k])[0]
        box = p.boxes[k, frames]
        j = p.source_frame[k]
        src = np.broadcast_to(p.boxes[k, j], (len(frames), 4))
        ints.append(np.stack([box[:, 0], box[:, 1], box[:, 2] - box[:, 0], box[:, 3] - box[:, 1],
                              np.full(len(frames), (i * t + j) * h * w), (i * t + frames) * h * w], 1))
        floats.append(np.concatenate([src, np.broadcast_to([[p.shape[k], p.soft_start[k]]], (len(frames), 2)),
                                      p.opacity[k, frames, None]], 1))
    ints_np = np.concatenate(ints)
    if not len(ints_np):
        return None
    return torch.from_numpy(ints_np.astype(np.int64)), torch.from_numpy(np.concatenate(floats).astype(np.float32))


def patch_alpha(u: torch.Tensor, v: torch.Tensor, shape: torch.Tensor, soft_start: torch.Tensor) -> torch.Tensor:
    """Alpha at normalised box positions (u, v): the shape's distance d, 1 inside 0.5 (soft from d0 on)."""
    dx, dy = (u - 0.5).abs(), (v - 0.5).abs()
    dist = torch.where(shape == ELLIPSE, torch.hypot(dx, dy), torch.where(shape == RHOMBUS, dx + dy, torch.maximum(dx, dy)))
    soft = ((0.5 - dist) / (0.5 - soft_start).clamp_min(1e-6)).clamp_(0.0, 1.0)
    return torch.where(soft_start >= 0.5, (dist < 0.5).float(), soft)


def _bilinear(flat: torch.Tensor, base: torch.Tensor, y: torch.Tensor, x: torch.Tensor, y_end: torch.Tensor, x_end: torch.Tensor, width: int) -> torch.Tensor:
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
    """Hue/saturation, then per-frame brightness, then contrast, each only on the clips that drew it;
    values are clipped to [0, 255] after each step."""
    device = clips.device

    def where_drawn(drawn: Sequence[bool]) -> torch.Tensor | None:
        chosen = [i for i, d in enumerate(drawn) if d]
        return torch.tensor(chosen, device=device) if chosen else None

    if (idx := where_drawn([p.colour.hue_saturation for p in plans])) is not None:
        hue = torch.tensor([plans[i].colour.hue_shift for i in idx.tolist()], device=device, dtype=torch.float32)
        sat = torch.tensor([plans[i].colour.saturation for i in idx.tolist()], device=device, dtype=torch.float32)
        clips[idx] = shift_hue_saturation(clips[idx], hue, sat).clamp_(0, 255)
    if (idx := where_drawn([bool(p.colour.brightness.any()) for p in plans])) is not None:
        offset = torch.from_numpy(np.stack([plans[i].colour.brightness for i in idx.tolist()])).to(device, torch.float32)
        clips[idx] = (clips[idx] + offset[:, :, None, None, None]).clamp_(0, 255)
    if (idx := where_drawn([bool((p.colour.contrast != 1).any()) for p in plans])) is not None:
        factor = torch.from_numpy(np.stack([plans[i].colour.contrast for i in idx.tolist()])).to(device, torch.float32)
        clips[idx] = adjust_contrast(clips[idx], factor)
    return clips


def adjust_contrast(clips: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale (N, T, H, W, 3) about each frame's mean grey level by factor (N, T). The mean is summed in
    float64 so that it does not depend on how the reduction is split across threads or batch sizes."""
    grey = clips[..., 0] * 0.299 + clips[..., 1] * 0.587 + clips[..., 2] * 0.114
    mean = (grey.sum(dim=(2, 3), dtype=torch.float64) / (grey.shape[2] * grey.shape[3])).float()[:, :, None, None, None]
    return ((clips - mean) * factor[:, :, None, None, None] + mean).clamp_(0, 255)


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
    out = [value - c * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0) for k in (torch.remainder(n + h, 6.0) for n in (5.0, 3.0, 1.0))]
    return torch.stack(out, dim=-1)
