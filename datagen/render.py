"""Batched pixel work: rescale/crop/flip, patch compositing and colour, on any torch device (DESIGN §2).

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


def render(plans: Sequence[SamplePlan], frames: Sequence[torch.Tensor], crop_size: int) -> Batch:
    """Turn plans and their decoded frames ((T, H, W, 3) uint8, one tensor per plan) into a Batch."""
    device = frames[0].device
    clean = torch.stack([rescale_crop_flip(f, p, crop_size) for f, p in zip(frames, plans)])  # B,T,S,S,3 f32
    clips = clean.clone()
    composite_patches(clips, clean, plans)
    clips = apply_colour(clips, plans)
    clips = clips.clamp_(0, 255).round_().to(torch.uint8)
    boxes = torch.from_numpy(np.stack([p.patches.boxes for p in plans])).to(device, torch.float32)
    visible = torch.from_numpy(np.stack([p.patches.visible for p in plans])).to(device)
    keys = torch.tensor([tuple(p.key) for p in plans], dtype=torch.int64, device=device)
    return Batch(clips, boxes, visible, keys)


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
    device = clips.device
    num_traj = plans[0].patches.boxes.shape[0]
    flat_out, flat_src = clips.view(-1, 3), clean.view(-1, 3)
    for step in range(num_traj):
        traj = [p.patches.order[step] for p in plans]
        boxes = np.stack([p.patches.boxes[k] for p, k in zip(plans, traj)])  # B, T, 4
        src_frame = np.array([p.patches.source_frame[k] for p, k in zip(plans, traj)])
        src_box = boxes[np.arange(b), src_frame]  # B, 4
        visible = np.stack([p.patches.visible[k] for p, k in zip(plans, traj)])
        opacity = np.stack([p.patches.opacity[k] for p, k in zip(plans, traj)])
        shape = np.array([p.patches.shape[k] for p, k in zip(plans, traj)])
        soft = np.array([p.patches.soft_start[k] for p, k in zip(plans, traj)])

        # One entry per (sample, frame) box that is pasted; invisible frames are skipped outright.
        bi, ti = np.nonzero(visible)
        box = torch.from_numpy(boxes[bi, ti]).to(device)
        sbox = torch.from_numpy(src_box[bi]).to(device)
        bw, bh = (box[:, 2] - box[:, 0]).long(), (box[:, 3] - box[:, 1]).long()
        count = bw * bh
        owner = torch.repeat_interleave(torch.arange(len(bi), device=device), count)
        local = torch.arange(owner.numel(), device=device) - (torch.cumsum(count, 0) - count)[owner]
        bw_o = bw[owner]
        py, px = local // bw_o, local % bw_o

        # Normalised position inside the box (pixel centres), the alpha shape and the source sample point.
        u = (px + 0.5) / bw_o
        v = (py + 0.5) / bh[owner]
        dx, dy = (u - 0.5).abs(), (v - 0.5).abs()
        shape_o = torch.from_numpy(shape[bi]).to(device)[owner]
        dist = torch.where(shape_o == ELLIPSE, torch.hypot(dx, dy), torch.where(shape_o == RHOMBUS, dx + dy, torch.maximum(dx, dy)))
        d0 = torch.from_numpy(soft[bi]).to(device)[owner]
        hard = (dist < 0.5).to(dist.dtype)
        alpha = torch.where(d0 >= 0.5, hard, ((0.5 - dist) / (0.5 - d0).clamp_min(1e-6)).clamp(0.0, 1.0))
        alpha = (alpha * torch.from_numpy(opacity[bi, ti]).to(device)[owner]).float().unsqueeze(1)

        sb = sbox[owner]
        sx = (sb[:, 0] + u * (sb[:, 2] - sb[:, 0]) - 0.5).clamp(sb[:, 0], sb[:, 2] - 1)
        sy = (sb[:, 1] + v * (sb[:, 3] - sb[:, 1]) - 0.5).clamp(sb[:, 1], sb[:, 3] - 1)
        src_base = (torch.from_numpy(bi * t + src_frame[bi]).to(device)[owner]) * (h * w)
        patch = _bilinear(flat_src, src_base, sy, sx, sb, w)

        dst = (torch.from_numpy(bi * t + ti).to(device)[owner]) * (h * w) + (box[owner, 1].long() + py) * w + box[owner, 0].long() + px
        under = flat_out[dst]
        flat_out[dst] = under + (patch - under) * alpha


def _bilinear(flat: torch.Tensor, base: torch.Tensor, y: torch.Tensor, x: torch.Tensor, box: torch.Tensor, width: int) -> torch.Tensor:
    """Bilinear samples of (N, 3) pixels at (y, x), staying inside each source box (the patch is its crop)."""
    y0, x0 = y.floor(), x.floor()
    fy, fx = (y - y0).float().unsqueeze(1), (x - x0).float().unsqueeze(1)
    y0, x0 = y0.long(), x0.long()
    y1 = torch.minimum(y0 + 1, box[:, 3].long() - 1)
    x1 = torch.minimum(x0 + 1, box[:, 2].long() - 1)
    top = flat[base + y0 * width + x0] * (1 - fx) + flat[base + y0 * width + x1] * fx
    bottom = flat[base + y1 * width + x0] * (1 - fx) + flat[base + y1 * width + x1] * fx
    return top * (1 - fy) + bottom * fy


def apply_colour(clips: torch.Tensor, plans: Sequence[SamplePlan]) -> torch.Tensor:
    """Hue/saturation (where drawn), then per-frame brightness and contrast; clipped after each step."""
    device = clips.device
    hs = [i for i, p in enumerate(plans) if p.colour.hue_saturation]
    if hs:
        idx = torch.tensor(hs, device=device)
        hue = torch.tensor([plans[i].colour.hue_shift for i in hs], device=device, dtype=torch.float32)
        sat = torch.tensor([plans[i].colour.saturation for i in hs], device=device, dtype=torch.float32)
        clips[idx] = shift_hue_saturation(clips[idx], hue, sat)
    brightness = torch.from_numpy(np.stack([p.colour.brightness for p in plans])).to(device, torch.float32)
    contrast = torch.from_numpy(np.stack([p.colour.contrast for p in plans])).to(device, torch.float32)
    clips = (clips + brightness[:, :, None, None, None]).clamp_(0, 255)
    # Contrast pivots on each frame's mean grey level; accumulated in float64 so the result does not
    # depend on how the reduction is split across threads or batch sizes.
    grey = (clips.double() * clips.new_tensor([0.299, 0.587, 0.114], dtype=torch.float64)).sum(-1)
    mean = grey.mean(dim=(2, 3)).float()[:, :, None, None, None]
    factor = contrast[:, :, None, None, None]
    return ((clips - mean) * factor + mean).clamp_(0, 255)


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
