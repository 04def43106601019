"""The unit that leaves a datagen replica: uint8 clips with their trajectory targets."""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Batch:
    """B generated samples. Clips stay uint8 until the trainer normalises them on its own device."""

    clips: torch.Tensor  # (B, T, H, W, 3) uint8 RGB
    boxes: torch.Tensor  # (B, K, T, 4) float32 x1, y1, x2, y2 in output-frame pixels
    visible: torch.Tensor  # (B, K, T) bool: False where MRM left the patch out (the box is still a target)
    keys: torch.Tensor  # (B, 3) int64 (seed, epoch, index), always on the host

    def __post_init__(self) -> None:
        # Keys are bookkeeping read on the host every step (`.tolist()`); on a GPU that read would be a sync.
        self.keys = self.keys.cpu()

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.clips, self.boxes, self.visible, self.keys

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """The clips, boxes and visibility on `device`; the keys stay on the host."""
        clips, boxes, visible = (t.to(device, non_blocking=non_blocking) for t in (self.clips, self.boxes, self.visible))
        return Batch(clips, boxes, visible, self.keys)

    @staticmethod
    def cat(batches: list["Batch"]) -> "Batch":
        return Batch(*(torch.cat(ts) for ts in zip(*(b.tensors() for b in batches))))
