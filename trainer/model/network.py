"""The pretraining network: uint8 clips in, trajectory targets out (encoder + CtP head)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from trainer.model.encoders import build_encoder, feature_frames
from trainer.model.head import CtPHead

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalise(clips: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 RGB → (B, 3, T, H, W) float, ImageNet mean/std, on the clips' device.

    The permuted view is already in channels_last_3d order, so keeping that layout costs no copy.
    """
    mean, inv_std = _mean_inv_std(clips.device)
    x = ((clips.float() - mean) * inv_std).permute(0, 4, 1, 2, 3)
    return x.contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)


@functools.cache
def _mean_inv_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation constants on `device`, made once: a tensor built from a list every step is a
    blocking host-to-device copy on CUDA. Made outside inference mode, so that autograd may use them later."""
    with torch.inference_mode(False):
        mean = torch.tensor(MEAN, device=device).view(1, 1, 1, 1, 3) * 255
        return mean, 1 / (torch.tensor(STD, device=device).view(1, 1, 1, 1, 3) * 255)


class CtPNetwork(nn.Module):
    """Encoder followed by the CtP head; only `encoder` is kept after pretraining."""

    def __init__(self, encoder_name: str, num_frames: int, head_hidden: int = 512) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder_name, pretraining=True)
        self.head = CtPHead(self.encoder.out_channels, feature_frames(num_frames), num_frames, hidden=head_hidden)

    def forward(self, clips: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """clips (B, 3, T, H, W) normalised; queries (B, K, 4) frame-0 boxes → (B, K, T, 4) targets."""
        return self.head(self.encoder(clips), queries)
