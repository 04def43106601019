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
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


def per_class_accuracy(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(accuracy, count) per true class; accuracy is NaN for a class without test videos."""
    counts = confusion.sum(1)
    accuracy = confusion.diagonal().double() / counts.double()
    return accuracy, counts


def retrieval_hits(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = RETRIEVAL_KS,
    same: torch.Tensor | None = None,
) -> dict[int, float]:
    """Share of queries with their class among their k nearest gallery items by cosine distance.

    `same` (Q, G) bool marks pairs that are one video (when the two splits overlap): a video never
    retrieves itself. k is capped at the gallery size.
    """
    similarity = (
        torch.nn.functional.normalize(queries.double(), dim=1)
        @ torch.nn.functional.normalize(gallery.double(), dim=1).T
    )
    if same is not None:
        similarity = similarity.masked_fill(same, float("-inf"))
    nearest = similarity.topk(min(max(ks), gallery.shape[0]), dim=1).indices
    hits = gallery_labels[nearest] == query_labels[:, None]
    if same is not None:
        hits &= ~same.gather(1, nearest)  # a query whose only candidates are itself hits nothing
    return {k: hits[:, :k].any(1).double().mean().item() for k in ks}


def confusion_image(confusion: torch.Tensor, classes: Sequence[str], max_side: int = 1200) -> Image.Image:
    """Row-normalised confusion matrix as a heat map (white 0 → dark blue 1): "index name" of the true classes
    down the left, predicted class indices across the top, a colour bar with its scale on the right. Up to
    ALL_LABELLED classes (UCF-101, HMDB-51) every class is labelled, in cells of at least 12 px, taller than the
    ~11 px text; with more, every k-th is, so labels never overlap; cells are at least 2 px. The grid's top-left
    corner and cell size are in `image.info["grid"]`."""
    c = len(classes)
    cell = max(2, min(24, max_side // max(c, 1)))
    if c <= ALL_LABELLED:
        cell = max(cell, 12)
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp_min(1).double()
    shade = _shade(rates.numpy())
    grid = np.repeat(np.repeat(shade, cell, 0), cell, 1)
    font = ImageFont.load_default()
    every = -(-12 // cell)  # label every k-th class: text is about 11 px tall
    shown = range(0, c, every)
    names = {i: f"{i} {classes[i]}" for i in shown}
    left = 6 + int(max(font.getlength(t) for t in names.values()))
    top = 6 + int(max(font.getlength(str(i)) for i in shown)) + 14  # rotated indices under a caption
    bar_x = left + grid.shape[1] + 12
    bar_h = max(grid.shape[0], 60)
    width = max(bar_x + 16 + 6 + int(font.getlength("1.0")) + 4, left + int(font.getlength(_CAPTION)) + 4)
    image = Image.new("RGB", (width, top + bar_h + 7), "white")  # room for the "0.0" tick
    image.paste(Image.fromarray(grid), (left, top))
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, left + grid.shape[1], top + grid.shape[0]], outline=(128, 128, 128))
    draw.text((left, 1), _CAPTION, fill="black", font=font)
    for i, name in names.items():
        draw.text((2, top + i * cell + (cell - 11) // 2), name, fill="black", font=font)
    strip = Image.new("RGB", (top - 14, grid.shape[1]), "white")  # column indices, drawn as rows, then rotated
    strip_draw = ImageDraw.Draw(strip)
    for i in shown:
        strip_draw.text((2, i * cell + (cell - 11) // 2), str(i), fill="black", font=font)
    image.paste(strip.rotate(90, expand=True), (left, 14))
    ramp = np.linspace(1.0, 0.0, bar_h)[:, None].repeat(16, 1)  # 1 at the top
    image.paste(Image.fromarray(_shade(ramp)), (bar_x, top))
    draw.rectangle([bar_x, top, bar_x + 16, top + bar_h], outline=(128, 128, 128))
    for value in (1.0, 0.5, 0.0):
        y = top + round((1 - value) * (bar_h - 1))
        draw.line([bar_x + 16, y, bar_x + 19, y], fill="black")
        draw.text((bar_x + 21, min(max(y - 5, top), top + bar_h - 11)), f"{value:.1f}", fill="black", font=font)
    image.info["grid"] = (left, top, cell)
    return image


_CAPTION = "rows: true class, columns: predicted (share of the row)"
ALL_LABELLED = 128  # classes: a confusion image labels each of them


def _shade(rates: np.ndarray) -> np.ndarray:
    """Rates in [0, 1] as RGB: white 0 → dark blue 1."""
    return (rates[..., None] * (np.array([8, 48, 107]) - 255.0) + 255.0).round().astype(np.uint8)
