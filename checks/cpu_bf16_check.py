"""Are bf16 3D-convolution gradients right on this CPU? The evidence behind refusing run.precision=bf16 on CPU.

For the 3×3×3 convolutions of the encoders at the feature-map shapes they meet, the weight and input gradients of
one bf16 backward pass are compared with float64 ones computed from the same bf16-rounded values. bf16 rounding
alone stays below ~1 % of the largest gradient; torch 2.14.1's oneDNN (3.12) on an AVX512-BF16 CPU returns garbage
weight gradients whenever the map has 2 frames, as R3D-18's layer4 has at 16 input frames.

    python -m checks.cpu_bf16_check
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.tables import format_table

# (batch, channels, frames, height, width): the tiny CPU encoder's and R3D-18's stages at 16 input frames.
SHAPES = [(8, 64, 4, 8, 8), (8, 128, 2, 4, 4), (2, 64, 2, 4, 4), (8, 256, 4, 14, 14), (8, 512, 2, 7, 7)]
TOLERANCE = 0.05  # of the largest exact gradient: bf16 rounding gives ~0.3 %


def relative_errors(shape: tuple[int, ...], channels_last: bool) -> tuple[float, float]:
    """(weight, input) gradient error of one bf16 conv3d backward, relative to the largest exact gradient."""
    channels = shape[1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).bfloat16()
    w = (torch.randn(channels, channels, 3, 3, 3, generator=g) * 0.05).bfloat16()
    dy = torch.randn(shape, generator=g).bfloat16()
    exact_x, exact_w = x.double().requires_grad_(True), w.double().requires_grad_(True)
    F.conv3d(exact_x, exact_w, padding=1).backward(dy.double())
    if channels_last:
        x, w, dy = (t.contiguous(memory_format=torch.channels_last_3d) for t in (x, w, dy))
    x, w = x.requires_grad_(True), w.requires_grad_(True)
    F.conv3d(x, w, padding=1).backward(dy)
    errors = []
    for got, exact in ((w.grad, exact_w.grad), (x.grad, exact_x.grad)):
        assert got is not None and exact is not None
        errors.append(((got.double() - exact).abs().max() / exact.abs().max()).item())
    return errors[0], errors[1]


def main() -> int:
    torch.set_num_threads(1)
    onednn = next((line.strip() for line in torch.__config__.show().splitlines() if "MKL-DNN" in line), "no oneDNN")
    print(f"torch {torch.__version__}: {onednn}")
    rows, wrong = [], 0
    for shape in SHAPES:
        for channels_last in (False, True):
            weight, input_ = relative_errors(shape, channels_last)
            bad = not (weight < TOLERANCE and input_ < TOLERANCE)
            wrong += bad
            layout = "channels_last_3d" if channels_last else "NCDHW"
            rows.append((shape, layout, f"{weight:.3g}", f"{input_:.3g}", "WRONG" if bad else "ok"))
    header = ("shape (N, C, T, H, W)", "layout", "weight grad", "input grad", "verdict")
    print(format_table(rows, header, align="<<>><"))
    print(f"{wrong} of {2 * len(SHAPES)} wrong (error > {TOLERANCE:.0%} of the largest gradient)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
