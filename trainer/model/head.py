"""The CtP prediction head: from clip features and each trajectory's frame-0 box to T·4 box targets."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from trainer.model.encoders import PRETRAIN_SPATIAL_STRIDE


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
        nn.init.zeros_(self.temporal.bias)  # type: ignore[arg-type]  # typed optional; Conv3d has one by default
        for fc in (self.fc1, self.fc2):
            nn.init.normal_(fc.weight, std=0.001)
            nn.init.zeros_(fc.bias)

    def forward(self, features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """features (B, C, T', h, w); queries (B, K, 4) x1, y1, x2, y2 in input pixels → (B, K, T, 4) targets."""
        b, k = queries.shape[:2]
        hidden = torch.relu(self.fc1(self.pool(torch.relu(self.temporal(features)).squeeze(2), queries).flatten(1)))
        return self.fc2(hidden).view(b, k, self.num_frames, 4)

    def pool(self, features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features, (B, K, 4) boxes → (B·K, C, 5, 5) regional features, in float32.

        Boxes and batch indices stay float32 under autocast: in bf16 a box at 64–128 px moves in 0.5 px
        steps and sample index 257 becomes 256, pooling another sample's features. The features are cast up
        for the pooling only (B×C×h×w, small); the MLP after it runs in the autocast dtype again."""
        b, k = queries.shape[:2]
        batch_index = (
            torch.arange(b, device=queries.device, dtype=torch.float32).view(b, 1).expand(b, k).reshape(b * k, 1)
        )
        rois = torch.cat([batch_index, queries.reshape(b * k, 4).float()], dim=1)
        with torch.autocast(features.device.type, enabled=False):
            return roi_align(
                features.float(),
                rois,
                output_size=self.pool_size,
                spatial_scale=self.spatial_scale,
                sampling_ratio=2,
                aligned=True,
            )
