"""Box targets relative to the query box, the CtP smooth-L1 loss, and the IoU of decoded trajectories.

Boxes are (x1, y1, x2, y2) in output-frame pixels. The target of frame i relative to the frame-0 box is
((cx_i − cx_0)/σx, (cy_i − cy_0)/σy, log(w_i/w_0)/σw, log(h_i/h_0)/σh) with σ = (0.8, 0.8, 0.04, 0.04)
and sizes clamped to at least 1 px (docs/spec.md).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

SCALES = (0.8, 0.8, 0.04, 0.04)
MIN_SIZE = 1.0


def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = (boxes[..., 2:] - boxes[..., :2]).clamp(min=MIN_SIZE)
    return centre, size


def _scales(like: torch.Tensor) -> torch.Tensor:
    return _scales_on(like.device, like.dtype)


@functools.cache
def _scales_on(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Made once per device and dtype: built from a list every step it would be a blocking copy on CUDA.
    Made outside inference mode: a cached inference tensor could never again be saved for backward."""
    with torch.inference_mode(False):
        return torch.tensor(SCALES, dtype=dtype, device=device)


def encode(boxes: torch.Tensor) -> torch.Tensor:
    """(..., T, 4) boxes → (..., T, 4) targets relative to frame 0 of each trajectory."""
    centre, size = _centre_size(boxes)
    delta = torch.cat([centre - centre[..., :1, :], torch.log(size / size[..., :1, :])], dim=-1)
    return delta / _scales(delta)


def decode(targets: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """(..., T, 4) targets and (..., 4) query boxes → (..., T, 4) boxes, the inverse of `encode`."""
    centre0, size0 = _centre_size(query[..., None, :])
    delta = targets * _scales(targets)
    centre = centre0 + delta[..., :2]
    size = size0 * torch.exp(delta[..., 2:])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


class Loss(NamedTuple):
    total: torch.Tensor
    centre: torch.Tensor
    size: torch.Tensor


def ctp_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> Loss:
    """Smooth-L1 (β = 1) over (..., T, 4) targets, summed over coordinates, weighted per (trajectory, frame).

    The sum is divided by the total weight, i.e. the number of weighted (trajectory, frame) pairs when
    weights are 0/1, so the loss does not depend on batch size, K or T. `total = centre + size`.
    """
    if weights is None:
        weights = torch.ones(target.shape[:-1], dtype=target.dtype, device=target.device)
    per_coord = F.smooth_l1_loss(predicted.float(), target.float(), beta=1.0, reduction="none")
    weighted = per_coord * weights[..., None].to(per_coord.dtype)
    count = weights.sum().clamp(min=torch.finfo(per_coord.dtype).tiny)
    centre = weighted[..., :2].sum() / count
    size = weighted[..., 2:].sum() / count
    return Loss(centre + size, centre, size)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of two (..., 4) box tensors of the same shape."""
    lo = torch.maximum(a[..., :2], b[..., :2])
    hi = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=torch.finfo(inter.dtype).tiny)


def first_box_baseline(boxes: torch.Tensor) -> torch.Tensor:
    """The trivial tracker: the frame-0 box for every frame of each (..., T, 4) trajectory."""
    return boxes[..., :1, :].expand_as(boxes)
