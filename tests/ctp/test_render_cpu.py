"""The CPU kernels give the bytes of the tensor code they replace (datagen/ctp/render_cpu.py, render.py)."""

from __future__ import annotations

import numpy as np
import torch

from datagen.ctp import render_cpu as cpu_kernels
from datagen.ctp.plan import PlanBatch, plan_batch
from datagen.ctp.render import _to_uint8, render, render_clips, render_clips_cpu, shift_hue_saturation
from datagen.ctp.spec import GenerationConfig

T, S = 16, 112


def random_frames(seed: int, n: int, height: int, width: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    return [torch.from_numpy(rng.integers(0, 256, (T, height, width, 3), dtype=np.uint8)) for _ in range(n)]


def planned(n: int, height: int, width: int) -> PlanBatch:
    keys = np.array([(3, 1, i) for i in range(n)])
    zeros = np.zeros(n, np.int64)
    return plan_batch(keys, list(range(n)), zeros, [300] * n, [height] * n, [width] * n, GenerationConfig())


def test_cpu_render_gives_the_bytes_of_the_tensor_code():
    # The default spec (all three shapes, soft and hard edges, opacity, MRM, colour) on noise, the hardest
    # case for rounding. Byte for byte: both sides compute in float32 in the same order and contract
    # a·b + c into one FMA, as torch's vectorised CPU kernels do (every x86-64 CPU with FMA).
    plans = planned(12, 240, 320)
    assert plans.hue_shift.any() and (plans.shape == 1).any() and (plans.shape == 2).any()
    assert (plans.soft_start < 0.5).any() and (plans.brightness != 0).any() and not plans.visible.all()
    frames = random_frames(0, 12, 240, 320)
    ours, tensor = render_clips_cpu(plans, frames, S), render_clips(plans, frames, S)
    assert torch.equal(ours, tensor), (ours.int() - tensor.int()).abs().max()


def test_render_on_the_cpu_returns_the_kernels_clips_in_a_batch():
    plans = planned(3, 144, 176)
    frames = random_frames(1, 3, 144, 176)
    batch = render(plans, frames, S)
    assert torch.equal(batch.clips, render_clips_cpu(plans, frames, S))
    assert batch.clips.shape == (3, T, S, S, 3) and batch.clips.dtype == torch.uint8


def test_hue_kernel_equals_the_tensor_hue_shift_byte_for_byte():
    # Greys (no chroma), primaries, saturated and random pixels; shifts both ways, saturation up and down,
    # a pixel count that is not a multiple of the kernel's block.
    rng = np.random.default_rng(2)
    special = np.array([[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255]])
    pixels = np.concatenate([special, rng.integers(0, 256, (cpu_kernels.HUE_BLOCK * 3 + 17, 3))]).astype(np.uint8)
    for hue, sat in ((11.7, 1.1), (-12.0, 0.905), (0.3, 1.0), (-4.2, 1.105)):
        expected = _to_uint8(
            shift_hue_saturation(torch.from_numpy(pixels).float()[None], torch.tensor([hue]), torch.tensor([sat]))[0]
        )
        ours = pixels.copy()
        cpu_kernels.hue_saturation(ours, hue, sat)
        assert np.array_equal(ours, expected.numpy()), (hue, sat, np.abs(ours.astype(int) - expected.numpy()).max())


def test_a_clip_is_the_same_alone_and_in_a_batch():
    # The kernels read each clip's own boxes from the batch's box lists: a clip rendered alone and as the
    # last of a batch has the same bytes.
    plans = planned(4, 240, 320)
    frames = random_frames(3, 4, 240, 320)
    together = render_clips_cpu(plans, frames, S)
    alone = render_clips_cpu(plans[3:4], frames[3:], S)
    assert torch.equal(together[3], alone[0])
