"""Downstream metrics: clip → video aggregation, top-k, per-class accuracy, the confusion matrix (and its
picture) and retrieval hits. Plain tensor functions, checked on hand-made cases in the tests."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

RETRIEVAL_KS = (1, 5, 10, 20, 50)


def aggregate_clips(values: torch.Tensor, owners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the clip rows (N, D) of each owner (N,) → (owners in ascending order (V,), means (V, D))."""
    ids, slot = torch.unique(owners, return_inverse=True)
    sums = torch.zeros(len(ids), values.shape[1], dtype=torch.float64, device=values.device)
    sums.index_add_(0, slot, values.double())
    counts = torch.bincount(slot, minlength=len(ids)).to(sums)
    return ids, (sums / counts[:, None]).to(values.dtype)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Share of rows whose label is among their k highest scores (k capped at the number of classes)."""
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = ranked == labels[:, None]
    return {k: hits[:, :k].any(1).double().mean().item() for k in ks}


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy, count) per true class; accuracy is NaN for a class without test videos."""
    counts = confusion.sum(1)
    accuracy = confusion.diagonal().double() / counts.double()
    return accuracy, counts


def retrieval_hits(queries: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor, gallery_labels: torch.Tensor,
                   ks: Sequence[int] = RETRIEVAL_KS, same: torch.Tensor | None = None) -> dict[int, float]:
    """Share of queries with their class among their k nearest gallery items by cosine distance.

    `same` (Q, G) bool marks pairs that are one video (when the two splits overlap): a video never
    retrieves itself. k is capped at the gallery size.
    """
    similarity = torch.nn.functional.normalize(queries.double(), dim=1) @ torch.nn.functional.normalize(gallery.double(), dim=1).T
    if same is not None:
        similarity = similarity.masked_fill(same, float("-inf"))
    nearest = similarity.topk(min(max(ks), gallery.shape[0]), dim=1).indices
    hits = gallery_labels[nearest] == query_labels[:, None]
    if same is not None:
        hits &= ~same.gather(1, nearest)  # a query whose only candidates are itself hits nothing
    return {k: hits[:, :k].any(1).double().mean().item() for k in ks}


def confusion_image(confusion: torch.Tensor, classes: Sequence[str], max_side: int = 1200) -> Image.Image:
    """Row-normalised confusion matrix as a heat map (white 0 → dark blue 1), true classes down the left
    with their names, predicted classes across; cells are at least 2 px."""
    c = len(classes)
    cell = max(2, min(24, max_side // max(c, 1)))
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp_min(1).double()
    shade = (rates.numpy()[:, :, None] * (np.array([8, 48, 107]) - 255.0) + 255.0).round().astype(np.uint8)
    grid = np.repeat(np.repeat(shade, cell, 0), cell, 1)
    font = ImageFont.load_default()
    label_width = 8 + 6 * max(len(name) for name in classes) if cell >= 10 else 0
    image = Image.new("RGB", (label_width + grid.shape[1] + 1, grid.shape[0] + 1), "white")
    image.paste(Image.fromarray(grid), (label_width, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle([label_width, 0, image.width - 1, image.height - 1], outline=(128, 128, 128))
    if label_width:
        for i, name in enumerate(classes):
            draw.text((2, i * cell + (cell - 10) // 2), name, fill="black", font=font)
    return image
