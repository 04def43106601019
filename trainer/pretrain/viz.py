"""A picture of tracking quality: a few frames of one clip with true (green) and predicted (red) boxes."""

from __future__ import annotations

import torch
from torchvision.utils import draw_bounding_boxes, make_grid

TRUE_COLOUR = (0, 255, 0)
PREDICTED_COLOUR = (255, 0, 0)


def boxes_image(clip: torch.Tensor, true_boxes: torch.Tensor, predicted: torch.Tensor, frames: int = 4) -> torch.Tensor:
    """clip (T, H, W, 3) uint8; boxes (K, T, 4) → a (3, H', W') uint8 strip of `frames` evenly spaced frames."""
    clip, true_boxes, predicted = clip.cpu(), true_boxes.cpu(), predicted.cpu()
    t = clip.shape[0]
    picks = torch.linspace(0, t - 1, min(frames, t)).round().long().tolist()
    k = true_boxes.shape[0]
    tiles = []
    for i in picks:
        boxes = torch.cat([true_boxes[:, i], predicted[:, i]]).float()
        colours = [TRUE_COLOUR] * k + [PREDICTED_COLOUR] * k
        tiles.append(draw_bounding_boxes(clip[i].permute(2, 0, 1), boxes, colors=colours, width=1))
    return make_grid(tiles, nrow=len(tiles), padding=2)
