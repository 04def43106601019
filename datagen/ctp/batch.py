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
    keys: torch.Tensor  # (B, 3) int64 (seed, epoch, index), on the host

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.clips, self.boxes, self.visible, self.keys

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Clips, boxes and visibility on `device`; the keys stay on the host, where they are read (on a GPU,
        reading them there would wait for the device every step)."""
        clips, boxes, visible = (
            t.to(device, non_blocking=non_blocking) for t in (self.clips, self.boxes, self.visible)
        )
        return Batch(clips, boxes, visible, self.keys.cpu())

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        return Batch(*(torch.cat(ts) for ts in zip(*(b.tensors() for b in batches))))
