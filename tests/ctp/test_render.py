"""Pixel correctness of rescale/crop/flip, compositing and colour (docs/spec.md)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datagen.ctp.plan import ELLIPSE, RECTANGLE, ClipPlan, ColourPlan, PatchPlan, SamplePlan, plan_patches, plan_sample
from datagen.ctp.render import colour, render, rescale_crop_flip, resized_crop, shift_hue_saturation, source_window
from datagen.ctp.rng import SampleKey
from datagen.ctp.spec import GenerationConfig

T, S = 16, 112


def smooth_frames(seed: int, height: int = S, width: int = S) -> np.ndarray:
    """Textured frames with structure at several scales, so that resampling errors would show."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (T, height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
    frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_CUBIC) for f in coarse])
    return np.clip(frames.astype(np.int16) + rng.integers(-20, 21, frames.shape), 0, 255).astype(np.uint8)


def neutral_colour() -> ColourPlan:
    return ColourPlan(0.0, 1.0, np.zeros(T), np.ones(T))


def identity_clip() -> ClipPlan:
    return ClipPlan(np.arange(T), (S, S), (0, 0), False)


def one_patch_plan(
    boxes: np.ndarray, visible: np.ndarray, source: int, shape: int = RECTANGLE, soft: float = 0.5, opacity: float = 1.0
) -> SamplePlan:
    patches = PatchPlan(
        boxes[None],
        visible[None],
        np.array([source]),
        np.array([shape]),
        np.array([soft]),
        np.full((1, T), opacity),
        np.array([0]),
    )
    return SamplePlan(SampleKey(0, 0, 0), 0, 0, identity_clip(), patches, neutral_colour())


@pytest.fixture(scope="module")
def trajectory_boxes() -> np.ndarray:
    return plan_patches(SampleKey(1, 2, 3), GenerationConfig(), 0).boxes[0]


def test_opaque_rectangle_is_the_source_crop_resized(trajectory_boxes):
    frames = smooth_frames(0)
    boxes = trajectory_boxes
    visible = np.ones(T, dtype=bool)
    visible[[4, 9]] = False
    source = 7
    out = render([one_patch_plan(boxes, visible, source)], [torch.from_numpy(frames)], S).clips[0].numpy()
    sx1, sy1, sx2, sy2 = boxes[source].astype(int)
    crop = frames[source, sy1:sy2, sx1:sx2]
    for t in range(T):
        x1, y1, x2, y2 = boxes[t].astype(int)
        inside = np.zeros((S, S), dtype=bool)
        inside[y1:y2, x1:x2] = True
        if not visible[t]:
            assert np.array_equal(out[t], frames[t]), "an invisible frame must equal the frame without the patch"
            continue
        expected = cv2.resize(crop, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
        diff = np.abs(out[t, y1:y2, x1:x2].astype(int) - expected.astype(int))
        assert diff.max() <= 2, f"frame {t}: patch differs from the resized crop by {diff.max()}"
        assert np.array_equal(out[t][~inside], frames[t][~inside]), "pixels outside the box changed"


def test_alpha_shapes_soft_edges_and_opacity():
    frames = smooth_frames(1)
    box = np.tile(np.array([20.0, 30.0, 80.0, 70.0]), (T, 1))  # 60 × 40, the same in every frame
    visible = np.ones(T, dtype=bool)
    src = torch.from_numpy(frames)
    patch = frames[0, 30:70, 20:80].astype(np.float64)  # source frame 0, same box: the patch is its own crop

    rect = render([one_patch_plan(box, visible, 0, RECTANGLE, opacity=0.8)], [src], S).clips[0].numpy()
    t = 5
    expected = np.round(0.2 * frames[t, 30:70, 20:80] + 0.8 * patch)
    assert np.abs(rect[t, 30:70, 20:80] - expected).max() <= 1

    ellipse = render([one_patch_plan(box, visible, 0, ELLIPSE, soft=0.3)], [src], S).clips[0].numpy()
    # Centre (d < d0): the patch; box corner (d > 0.5): the background; in between: a blend.
    assert np.abs(ellipse[t, 48:52, 48:52].astype(int) - patch[18:22, 28:32]).max() <= 1
    assert np.array_equal(ellipse[t, 30:33, 20:23], frames[t, 30:33, 20:23])
    # Everywhere in the box: alpha = clamp((0.5 − d)/(0.5 − d0), 0, 1) with d the normalised radius.
    v, u = np.meshgrid((np.arange(40) + 0.5) / 40, (np.arange(60) + 0.5) / 60, indexing="ij")
    alpha = np.clip((0.5 - np.hypot(u - 0.5, v - 0.5)) / (0.5 - 0.3), 0, 1)[..., None]
    expected = np.round(frames[t, 30:70, 20:80] * (1 - alpha) + patch * alpha)
    assert np.abs(ellipse[t, 30:70, 20:80] - expected).max() <= 1
    assert 0.1 < alpha.mean() < 0.9


def test_rescale_crop_flip_matches_pil():
    frames = smooth_frames(2, 240, 320)
    plan = SamplePlan(SampleKey(0, 0, 0), 0, 0, ClipPlan(np.arange(T), (128, 171), (9, 40), True), None, None)  # type: ignore[arg-type]
    out = rescale_crop_flip(torch.from_numpy(frames), plan, S).round().to(torch.uint8).numpy()
    for t in (0, 15):
        ref = np.asarray(Image.fromarray(frames[t]).resize((171, 128), Image.BILINEAR))[9:121, 40:152, :][:, ::-1]
        assert np.abs(out[t].astype(int) - ref.astype(int)).max() <= 2


def test_hue_saturation_matches_opencv():
    rgb = smooth_frames(3)[:2]
    hue, sat = 10.0, 1.1
    ours = shift_hue_saturation(torch.from_numpy(rgb).float()[None], torch.tensor([hue]), torch.tensor([sat]))[0]
    hsv = cv2.cvtColor(rgb.reshape(-1, S, 3), cv2.COLOR_RGB2HSV).astype(np.float64)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue, 180)
    hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0, 255)
    ref = cv2.cvtColor(np.round(hsv).astype(np.uint8), cv2.COLOR_HSV2RGB).reshape(rgb.shape)
    err = np.abs(ours.round().numpy() - ref.astype(np.float64))
    assert np.percentile(err, 99) <= 4 and err.mean() < 1.0  # OpenCV quantises H to 2° and S, V to 1/255
    identity = shift_hue_saturation(torch.from_numpy(rgb).float()[None], torch.tensor([0.0]), torch.tensor([1.0]))[0]
    assert torch.allclose(identity, torch.from_numpy(rgb).float(), atol=1e-3)


def test_brightness_and_contrast_per_frame():
    frames = smooth_frames(4)
    box = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (T, 1))
    base = one_patch_plan(box, np.ones(T, dtype=bool), 0)
    brightness, contrast = np.linspace(-30, 30, T), np.exp(np.linspace(-0.12, 0.12, T))
    plan = SamplePlan(base.key, 0, 0, base.clip, base.patches, ColourPlan(0.0, 1.0, brightness, contrast))
    out = render([plan], [torch.from_numpy(frames)], S).clips[0].numpy().astype(np.float64)
    for t in (0, 8, 15):
        composited = frames[t].astype(np.float64)
        composited[0, 0] = frames[0, 0, 0]  # the 1-px patch cut from frame 0
        expected = np.clip(np.clip(composited + brightness[t], 0, 255) * contrast[t], 0, 255)
        assert np.abs(out[t] - expected).max() <= 1.0


def test_contrast_is_a_gain_that_moves_the_frame_mean():
    # Worked by hand: grey 100 and 250 under gain 1.1 become 110 and 255 (clipped); gain 0.9 gives 90 and 225.
    frames = np.zeros((T, S, S, 3), dtype=np.uint8)
    frames[:, :, : S // 2] = 100
    frames[:, :, S // 2 :] = 250
    box = np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (T, 1))  # a 1-px patch of the same frame: no visible change
    base = one_patch_plan(box, np.ones(T, dtype=bool), 0)
    contrast = np.where(np.arange(T) % 2 == 0, 1.1, 0.9)
    plan = SamplePlan(base.key, 0, 0, base.clip, base.patches, ColourPlan(0.0, 1.0, np.zeros(T), contrast))
    out = render([plan], [torch.from_numpy(frames)], S).clips[0].numpy()
    assert (out[0, :, : S // 2] == 110).all() and (out[0, :, S // 2 :] == 255).all()
    assert (out[1, :, : S // 2] == 90).all() and (out[1, :, S // 2 :] == 225).all()


def test_a_generated_batch_has_the_promised_layout():
    cfg = GenerationConfig()
    frames = torch.from_numpy(smooth_frames(5, 240, 320))
    plans = [plan_sample(SampleKey(0, 0, i), 0, T, 240, 320, cfg) for i in range(4)]
    batch = render(plans, [frames] * 4, S)
    assert batch.clips.shape == (4, T, S, S, 3) and batch.clips.dtype == torch.uint8
    assert batch.boxes.shape == (4, 3, T, 4) and batch.boxes.dtype == torch.float32
    assert batch.visible.shape == (4, 3, T) and batch.visible.dtype == torch.bool
    assert batch.keys.tolist() == [[0, 0, i] for i in range(4)]


@pytest.mark.parametrize(
    "size, resized, crop",
    [
        ((240, 320), (128, 171), (9, 40)),
        ((272, 640), (112, 264), (0, 152)),
        ((144, 176), (144, 176), (20, 3)),
        ((100, 90), (160, 144), (48, 32)),
        ((256, 340), (144, 191), (32, 79)),
    ],
)
def test_the_rescale_computes_only_the_crop_and_equals_the_whole_frame_rescaled(size, resized, crop):
    # Downscales and upscales, crops touching each edge: the same bytes as rescaling the whole frame.
    frames = torch.from_numpy(smooth_frames(5, *size)[:3])
    plan = ClipPlan(np.arange(3), resized, crop, False)
    whole = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2), size=resized, mode="bilinear", antialias=True)
    top, left = crop
    assert torch.equal(resized_crop(frames, plan, S), whole[:, :, top : top + S, left : left + S])
    flipped = resized_crop(frames, dataclasses.replace(plan, flip=True), S)
    assert torch.equal(flipped, whole[:, :, top : top + S, left : left + S].flip(-1))


def test_brightness_and_contrast_are_one_table_per_frame_rounded_half_up():
    # Worked by hand: x = 100, b = -30, c = 0.5 → 35; x = 20, b = -30 → 0 (clipped before the gain); x = 250,
    # b = 30, c = 0.5 → 127.5 → 128 (clipped to 255 before the gain, then rounded half up).
    clips = torch.tensor([100, 20, 250], dtype=torch.uint8).view(1, 1, 1, 3, 1).expand(1, 2, 1, 3, 3).contiguous()
    brightness, contrast = np.array([[-30.0, 30.0]]), np.array([[0.5, 0.5]])
    out = colour(clips, np.zeros(1), np.ones(1), brightness, contrast)
    assert out.dtype == torch.uint8
    assert out[0, 0, 0, :, 0].tolist() == [35, 0, 110] and out[0, 1, 0, :, 0].tolist() == [65, 25, 128]


def test_the_source_window_holds_every_pixel_the_crop_reads():
    """Pixels outside `source_window` (which the decoder leaves unconverted) do not reach the crop, set to 0 or
    255, in the uint8 rescale the CPU runs and in float as on a GPU; and the window is well short of the frame."""
    rng = np.random.default_rng(11)
    areas = []
    for height, width in [(240, 320), (240, 560), (240, 432), (257, 341), (100, 90), (144, 176)]:
        frames = torch.from_numpy(smooth_frames(7, height, width)[:2])
        for _ in range(12):
            short = int(rng.choice([112, 128, 144, 200]))
            scale = short / min(height, width)
            resized = (max(short, round(height * scale)), max(short, round(width * scale)))
            top, left = (int(rng.integers(0, r - S + 1)) for r in resized)
            crop = (int(rng.choice([0, resized[0] - S, top])), int(rng.choice([0, resized[1] - S, left])))
            plan = ClipPlan(np.arange(2), resized, crop, bool(rng.integers(2)))
            r0, r1, c0, c1 = source_window(plan, height, width, S)
            assert 0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width
            areas.append((r1 - r0) * (c1 - c0) / (height * width))
            inside = torch.zeros(height, width, 1, dtype=torch.bool)
            inside[r0:r1, c0:c1] = True
            expected = resized_crop(frames, plan, S)
            whole = torch.nn.functional.interpolate(
                frames.permute(0, 3, 1, 2).float(), size=resized, mode="bilinear", antialias=True
            )[:, :, crop[0] : crop[0] + S, crop[1] : crop[1] + S]
            for fill in (0, 255):
                masked = torch.where(inside, frames, fill).to(torch.uint8)
                assert torch.equal(resized_crop(masked, plan, S), expected), (height, width, plan)
                floats = torch.nn.functional.interpolate(
                    masked.permute(0, 3, 1, 2).float(), size=resized, mode="bilinear", antialias=True
                )[:, :, crop[0] : crop[0] + S, crop[1] : crop[1] + S]
                assert torch.equal(floats, whole), (height, width, plan)
    assert np.mean(areas) < 0.7
