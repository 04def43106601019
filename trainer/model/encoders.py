"""Video encoders: torchvision's R3D-18 and R(2+1)D-18 without their classifier, plus a tiny one for CPU.

An encoder is an `nn.Sequential` of `stem, layer1..layer4` taken from the torchvision model, so its
state dict has exactly torchvision's key names and loads into `r3d_18()` / `r2plus1d_18()` once their
`fc` is removed. CtP pretraining runs stage 4 with spatial stride 1 (a 16×112×112 clip gives
512×2×14×14); downstream use switches it back to 2 (512×2×7×7). Strides are not weights, so the same
tensors serve both.
"""

from __future__ import annotations

import typing
from collections import OrderedDict
from typing import cast

from torch import nn
from torchvision.models import video as tv_video
from torchvision.models.video.resnet import BasicBlock, Conv3DSimple

from trainer.config import EncoderName

ENCODERS: tuple[str, ...] = typing.get_args(EncoderName)  # the choices of model.encoder

# Pixels per feature cell in the pretraining variant (stage 4 spatial stride 1).
PRETRAIN_SPATIAL_STRIDE = 8

TINY_WIDTHS = (16, 32, 64, 128)


class Encoder(nn.Sequential):
    """stem → layer1..layer4; returns the final feature map (B, C, T/8, H/s, W/s)."""

    def __init__(self, name: str, modules: OrderedDict[str, nn.Module], out_channels: int) -> None:
        super().__init__(modules)
        self.name = name
        self.out_channels = out_channels


def build_encoder(name: str, pretraining: bool = True) -> Encoder:
    """A freshly initialised encoder; `pretraining` selects stage-4 spatial stride 1 (else the standard 2)."""
    if name == "tiny":
        encoder = _tiny_encoder()
    elif name in ("r3d_18", "r2plus1d_18"):
        model = getattr(tv_video, name)()
        parts = OrderedDict((n, getattr(model, n)) for n in ("stem", "layer1", "layer2", "layer3", "layer4"))
        encoder = Encoder(name, parts, out_channels=512)
    else:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    set_stage4_spatial_stride(encoder, 1 if pretraining else 2)
    return encoder


def set_stage4_spatial_stride(encoder: Encoder, stride: int) -> None:
    """Switch stage 4 between the pretraining (1) and standard (2) spatial stride, in place.

    Only the first block of layer4 downsamples: its spatial convolution (the 3×3×3 one in R3D, the 1×3×3
    one in R(2+1)D) and its 1×1×1 shortcut. Temporal strides are untouched.
    """
    if stride not in (1, 2):
        raise ValueError(f"stage-4 spatial stride must be 1 or 2, got {stride}")
    block = cast(BasicBlock, cast(nn.Sequential, encoder.layer4)[0])  # R(2+1)D's blocks are BasicBlocks too
    spatial_convs = [m for m in block.conv1.modules() if isinstance(m, nn.Conv3d) and m.kernel_size[1] > 1]
    shortcut = block.downsample[0]
    for conv in (*spatial_convs, shortcut):
        conv.stride = (conv.stride[0], stride, stride)


def _tiny_encoder() -> Encoder:
    """An R3D-10 with narrow widths from torchvision's own blocks: same layout and strides, ~1/50 the cost."""
    w1, w2, w3, w4 = TINY_WIDTHS
    stem = nn.Sequential(
        nn.Conv3d(3, w1, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(w1),
        nn.ReLU(inplace=True),
    )
    layers: OrderedDict[str, nn.Module] = OrderedDict(stem=stem, layer1=nn.Sequential(BasicBlock(w1, w1, Conv3DSimple)))
    for i, (cin, cout) in enumerate(((w1, w2), (w2, w3), (w3, w4)), start=2):
        shortcut = nn.Sequential(nn.Conv3d(cin, cout, kernel_size=1, stride=2, bias=False), nn.BatchNorm3d(cout))
        layers[f"layer{i}"] = nn.Sequential(BasicBlock(cin, cout, Conv3DSimple, stride=2, downsample=shortcut))
    encoder = Encoder("tiny", layers, out_channels=w4)
    for m in encoder.modules():  # torchvision's VideoResNet initialisation
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return encoder


def torchvision_model(name: str) -> nn.Module:
    """torchvision's own constructor with `fc` removed: the model an exported encoder loads into strictly."""
    if name not in ("r3d_18", "r2plus1d_18"):
        raise ValueError(f"{name!r} has no torchvision counterpart; export supports r3d_18 and r2plus1d_18")
    model = getattr(tv_video, name)()
    model.fc = nn.Identity()
    return model


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def feature_frames(frames: int) -> int:
    """Length of the encoder's output time axis: stages 2-4 each halve it (kernel 3, padding 1, stride 2)."""
    for _ in range(3):
        frames = (frames + 1) // 2
    return frames
