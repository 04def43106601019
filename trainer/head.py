"""The CtP prediction head: from clip features and each trajectory's frame-0 box to T·4 box targets."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from trainer.models import PRETRAIN_SPATIAL_STRIDE


class CtPHead(nn.Module):
    """Temporal conv over the whole remaining time axis → RoIAlign at the query box → two-layer MLP.

    The conv squeezes time (the ResNet-bottleneck motivation in the paper); each query box pools a 5×5
    regional feature from which the MLP regresses the whole trajectory relative to that box.
    """

    def __init__(
        self,
        in_channels: int,
        feature_frames: int,
        num_frames: int,
        hidden: int = 512,
        pool_size: int = 5,
        spatial_scale: float = 1.0 / PRETRAIN_SPATIAL_STRIDE,
    ) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.pool_size = pool_size
        self.spatial_scale = spatial_scale
        self.temporal = nn.Conv3d(in_channels, in_channels, kernel_size=(feature_frames, 1, 1))
        self.fc1 = nn.Linear(in_channels * pool_size * pool_size, hidden)
        self.fc2 = nn.Linear(hidden, num_frames * 4)
        nn.init.kaiming_normal_(self.temporal.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.temporal.bias)
        for fc in (self.fc1, self.fc2):
            nn.init.normal_(fc.weight, std=0.001)
            nn.init.zeros_(fc.bias)

    def forward(self, features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """features (B, C, T', h, w); queries (B, K, 4) x1, y1, x2, y2 in input pixels → (B, K, T, 4) targets."""
        b, k = queries.shape[:2]
        squeezed = torch.relu(self.temporal(features)).squeeze(2)  # (B, C, h, w)
        # Boxes and batch indices stay float32 under autocast: bf16 has 0.5 px steps at 64-128 px, and indices
        # above 256 would round to another sample. RoIAlign pools in float32 (as torchvision's autocast does).
        batch_index = torch.arange(b, device=queries.device, dtype=torch.float32).repeat_interleave(k, output_size=b * k)
        rois = torch.cat([batch_index[:, None], queries.reshape(b * k, 4).float()], dim=1)
        pooled = roi_align(
            squeezed.float(),
            rois,
            output_size=self.pool_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=2,
            aligned=True,
        )
        hidden = torch.relu(self.fc1(pooled.flatten(1)))
        return self.fc2(hidden).view(b, k, self.num_frames, 4)
