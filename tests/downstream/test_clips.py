"""Labelled clips: the training draw's statistics and determinism, the static colour jitter's statistics
and pixels, test and retrieval clip placement, pixel correctness against an independent PIL reference
(portrait frames included), and unreadable videos (replaced in training, skipped in test)."""

from __future__ import annotations

import dataclasses

import av
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from datagen.ctp.rng import SampleKey
from datagen.video.decode.decoder import Decoder
from datagen.video.manifest import probe
from trainer.downstream.clips import (
    ClipColour,
    EvalClips,
    TrainClips,
    apply_static_colour,
    eval_clip_indices,
    eval_clip_plan,
    plan_train_clip,
    retrieval_clip_indices,
    short_side_shape,
)
from trainer.downstream.config import ClipsConfig
from trainer.downstream.datasets import LabelledSet

SMALL = ClipsConfig(
    num_frames=8, train_sizes=((85, 64), (96, 72), (107, 80)), test_size=(85, 64), crop_size=64, test_clips=3
)


def test_training_draw_follows_the_recipe():
    cfg = ClipsConfig()  # the official: 16 frames at stride 2, three sizes, flip 0.35, colour jitter 0.2 each
    n = 4000
    plans = [plan_train_clip(SampleKey(5, 1, i), 0, 100, cfg) for i in range(n)]
    indices = np.stack([p.clip.frame_indices for p in plans])
    assert (np.diff(indices, axis=1) == 2).all()
    starts = indices[:, 0]
    assert starts.min() == 0 and starts.max() == 100 - 31  # uniform over every start where the clip fits
    assert abs(starts.mean() - 34.5) < 1.5

    def rate_close(hits: int, p: float) -> bool:  # within 4.5 standard deviations of a binomial
        return abs(hits / n - p) < 4.5 * np.sqrt(p * (1 - p) / n)

    sizes = [p.clip.resized for p in plans]
    for width, height in cfg.train_sizes:
        assert rate_close(sizes.count((height, width)), 1 / 3)
    for p in plans:
        (h, w), (top, left) = p.clip.resized, p.clip.crop
        assert 0 <= top <= h - 112 and 0 <= left <= w - 112
    assert rate_close(sum(p.clip.flip for p in plans), 0.35)
    assert rate_close(sum(p.colour.hue_saturation for p in plans), 0.2)
    assert rate_close(sum(p.colour.brightness != 0 for p in plans), 0.2)
    assert rate_close(sum(p.colour.contrast != 1 for p in plans), 0.2)

    again = plan_train_clip(SampleKey(5, 1, 7), 0, 100, cfg)
    assert np.array_equal(again.clip.frame_indices, plans[7].clip.frame_indices) and again.clip == dataclasses.replace(
        plans[7].clip, frame_indices=again.clip.frame_indices
    )
    other_epoch = [plan_train_clip(SampleKey(5, 2, i), 0, 100, cfg).clip.frame_indices[0] for i in range(50)]
    assert other_epoch != starts[:50].tolist()
    short = plan_train_clip(SampleKey(0, 0, 0), 0, 10, cfg).clip.frame_indices
    assert short.tolist() == [0, 2, 4, 6, 8] + [9] * 11  # a short video's clip is clamped to its last frame


def test_colour_jitter_is_static_per_clip_with_the_official_ranges():
    cfg = ClipsConfig()
    n = 20000
    colours = [plan_train_clip(SampleKey(8, 0, i), 0, 100, cfg).colour for i in range(n)]
    neutral = ClipColour()
    for name, low, high, log in (
        ("brightness", -32, 32, False),
        ("contrast", -0.2, 0.2, True),
        ("hue_shift", -12, 12, False),
        ("saturation", -0.1, 0.1, True),
    ):
        drawn = np.array([getattr(c, name) for c in colours if getattr(c, name) != getattr(neutral, name)])
        drawn = np.log(drawn) if log else drawn
        assert abs(len(drawn) / n - 0.2) < 4.5 * np.sqrt(0.16 / n), name  # each with p 0.2
        assert low <= drawn.min() < low + 0.01 * (high - low) and high - 0.01 * (high - low) < drawn.max() <= high, name
        quartiles = np.quantile(drawn, [0.25, 0.5, 0.75])  # uniform: at 1/4, 1/2, 3/4 of the range
        assert np.abs(quartiles - (low + (high - low) * np.array([0.25, 0.5, 0.75]))).max() < 0.03 * (high - low), name
    both = [c for c in colours if c.brightness != 0]
    assert abs(sum(c.contrast != 1 for c in both) / len(both) - 0.2) < 0.04  # drawn independently


def test_colour_jitter_pixels(juggling):
    frames = Decoder("cpu").decode(juggling[0], np.array([0, 40, 80])).float()  # (3, 240, 320, 3) 0-255
    clips = frames[None].repeat(4, 1, 1, 1, 1)
    colours = [
        ClipColour(),
        ClipColour(brightness=20.0),
        ClipColour(contrast=0.8),
        ClipColour(hue_shift=10.0, saturation=1.1),
    ]
    out = apply_static_colour(clips.clone(), colours)
    x = frames.numpy()
    assert torch.equal(out[0], frames)
    assert np.array_equal(out[1].numpy(), np.clip(x + 20, 0, 255))  # the same offset on every frame
    gained = out[2].numpy()
    assert np.allclose(gained, x * np.float32(0.8))  # a gain on every pixel: the frame mean moves with it
    assert np.allclose(gained.mean(axis=(1, 2, 3)), 0.8 * x.mean(axis=(1, 2, 3)), rtol=1e-5)
    # Hue +10 on the 0-180 scale (20 degrees) and saturation ×1.1, against OpenCV's float HSV.
    hsv = np.stack([cv2.cvtColor(f / 255, cv2.COLOR_RGB2HSV) for f in x])
    hsv[..., 0] = np.mod(hsv[..., 0] + 20, 360)
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.1, 0, 1)
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_HSV2RGB) for f in hsv]) * 255
    diff = np.abs(out[3].numpy() - expected)
    assert diff.mean() < 0.05 and diff.max() < 0.5
    # The official order: brightness, then contrast, each clipped (a dark pixel pushed below 0 stays 0).
    both = apply_static_colour(torch.tensor([[[[[10.0, 100.0, 250.0]]]]]), [ClipColour(brightness=-20.0, contrast=1.2)])
    assert both.flatten().tolist() == pytest.approx([0.0, 96.0, 255.0])


def test_test_clips_are_centred_in_equal_segments():
    cfg = ClipsConfig()
    # 100 − 16·2 + 1 = 69 possible starts in 10 segments of 6.9: int(3.45 + 6.9 i)
    starts = eval_clip_indices(100, cfg)[:, 0]
    assert starts.tolist() == [3, 10, 17, 24, 31, 37, 44, 51, 58, 65]
    assert (np.diff(eval_clip_indices(100, cfg), axis=1) == 2).all()
    assert eval_clip_indices(20, cfg).tolist() == [[min(2 * i, 19) for i in range(16)]] * 10


def test_retrieval_clips_are_vcops():
    cfg = ClipsConfig()
    # centres linspace(8, 92, 10) = 8 + 9.33 i, start int(centre − 8); 16 consecutive frames each
    indices = retrieval_clip_indices(100, cfg)
    assert indices[:, 0].tolist() == [0, 9, 18, 28, 37, 46, 56, 65, 74, 84]
    assert (np.diff(indices, axis=1) == 1).all() and indices[-1, -1] == 99
    assert retrieval_clip_indices(240, cfg)[:, 0].tolist() == [0, 24, 49, 74, 99, 124, 149, 174, 199, 224]
    assert retrieval_clip_indices(10, cfg).tolist() == [[min(i, 9) for i in range(16)]] * 10


def reference(frame: torch.Tensor, width: int, height: int, top: int, left: int, size: int, flip: bool) -> np.ndarray:
    """An independent implementation: PIL's antialiased bilinear resize, crop, optional mirror."""
    image = Image.fromarray(frame.numpy()).resize((width, height), Image.BILINEAR)
    out = np.asarray(image)[top : top + size, left : left + size].astype(np.float32)
    return out[:, ::-1] if flip else out


@pytest.fixture(scope="module")
def juggling(shared_videos):
    return [
        probe(shared_videos / "ucf101" / name)
        for name in ("v_SoccerJuggling_g23_c01.avi", "v_SoccerJuggling_g24_c01.avi")
    ]


def test_evaluation_clip_pixels(juggling):
    data = LabelledSet("two", ("a", "b"), tuple(juggling), (1, 0))
    batch = EvalClips(data, SMALL, torch.device("cpu")).for_videos([1, 0])
    assert batch.clips.shape == (6, 8, 64, 64, 3) and batch.clips.dtype == torch.uint8
    assert batch.videos.tolist() == [1, 1, 1, 0, 0, 0] and batch.labels.tolist() == [0, 0, 0, 1, 1, 1]
    indices = eval_clip_indices(juggling[1].num_frames, SMALL)
    frames = Decoder("cpu").decode(juggling[1], indices.reshape(-1)).view(3, 8, 240, 320, 3)
    for clip in (0, 2):
        for t in (0, 7):
            expected = reference(frames[clip, t], 85, 64, 0, 10, 64, flip=False)
            diff = np.abs(batch.clips[clip, t].numpy().astype(np.float32) - expected)
            assert diff.mean() < 0.1 and diff.max() <= 2, (clip, t, diff.mean(), diff.max())


def test_training_clip_pixels_and_determinism(juggling):
    data = LabelledSet("two", ("a", "b"), tuple(juggling), (0, 1))
    clips = TrainClips(data, SMALL, torch.device("cpu"))
    # A key with a flip and no colour change, so the pixels are geometry only.
    key = next(
        k
        for k in (SampleKey(3, 0, i) for i in range(200))
        if (p := clips.plan(k)).clip.flip and p.colour == ClipColour()
    )
    plan = clips.plan(key)
    batch = clips.generate([key, SampleKey(3, 0, 1), SampleKey(3, 1, 0)])
    assert batch.labels.tolist() == [data.labels[v] for v in batch.videos.tolist()]
    assert batch.videos[0].item() == plan.video
    frames = Decoder("cpu").decode(data.videos[plan.video], plan.clip.frame_indices)
    (height, width), (top, left) = plan.clip.resized, plan.clip.crop
    for t in range(8):
        expected = reference(frames[t], width, height, top, left, 64, flip=True)
        diff = np.abs(batch.clips[0, t].numpy().astype(np.float32) - expected)
        assert diff.mean() < 0.1 and diff.max() <= 2

    alone = TrainClips(data, SMALL, torch.device("cpu")).generate([SampleKey(3, 1, 0)])
    assert torch.equal(alone.clips[0], batch.clips[2])  # a clip does not depend on its batch
    assert not torch.equal(batch.clips[1], batch.clips[2])


def test_unreadable_videos_are_replaced_in_training_and_skipped_in_testing(juggling, tmp_path):
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 40)
    fake = dataclasses.replace(juggling[0], path=str(corrupt))
    data = LabelledSet("three", ("a", "b", "c"), (juggling[0], fake, juggling[1]), (0, 1, 2))
    keys = [SampleKey(9, 0, i) for i in range(3)]  # one epoch: each video once, the corrupt one included
    clips = TrainClips(data, SMALL, torch.device("cpu"))
    batch = clips.generate(keys)
    assert set(clips.bad_videos) == {str(corrupt)} and clips.stats["decode_failures"] == 1
    assert 1 not in batch.videos.tolist()
    assert batch.labels.tolist() == [data.labels[v] for v in batch.videos.tolist()]
    # Another process that already knows the bad video makes the same replacement.
    other = TrainClips(data, SMALL, torch.device("cpu"))
    other.bad_videos[str(corrupt)] = "known"
    assert torch.equal(other.generate(keys).clips, batch.clips)

    evaluation = EvalClips(data, SMALL, torch.device("cpu"))
    out = evaluation.for_videos(range(3))
    assert out.videos.tolist() == [0, 0, 0, 2, 2, 2]
    assert [r.path for r in evaluation.skipped] == [str(corrupt)]


def test_retrieval_clip_pixels_are_consecutive_frames(juggling):
    data = LabelledSet("one", ("a",), (juggling[0],), (0,))
    batch = EvalClips(data, SMALL, torch.device("cpu"), indices=retrieval_clip_indices).for_videos([0])
    indices = retrieval_clip_indices(juggling[0].num_frames, SMALL)
    assert (np.diff(indices, axis=1) == 1).all()
    frames = Decoder("cpu").decode(juggling[0], indices.reshape(-1)).view(3, 8, 240, 320, 3)
    for clip, t in ((0, 0), (1, 5), (2, 7)):
        expected = reference(frames[clip, t], 85, 64, 0, 10, 64, flip=False)
        diff = np.abs(batch.clips[clip, t].numpy().astype(np.float32) - expected)
        assert diff.mean() < 0.1 and diff.max() <= 2, (clip, t)


@pytest.fixture(scope="module")
def portrait(juggling, tmp_path_factory):
    """A 240×320 (W×H) video: the juggling frames transposed."""
    path = tmp_path_factory.mktemp("portrait") / "portrait.avi"
    frames = Decoder("cpu").decode(juggling[0], np.arange(40)).transpose(1, 2).contiguous().numpy()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 240, 320, "yuvj420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return probe(path)


def test_portrait_frames_keep_their_aspect(portrait):
    assert (portrait.width, portrait.height) == (240, 320)
    data = LabelledSet("portrait", ("a",), (portrait,), (0,))
    clips = TrainClips(data, SMALL, torch.device("cpu"))
    shapes = {clips.plan(SampleKey(1, 0, i)).clip.resized for i in range(60)}
    assert shapes == {(85, 64), (96, 72), (107, 80)}  # (height, width): the train sizes transposed
    for plan in (clips.plan(SampleKey(1, 0, i)) for i in range(60)):
        (height, width), (top, left) = plan.clip.resized, plan.clip.crop
        assert 0 <= top <= height - 64 and 0 <= left <= width - 64
    assert clips.generate([SampleKey(1, 0, 0)]).clips.shape == (1, 8, 64, 64, 3)

    batch = EvalClips(data, SMALL, torch.device("cpu")).for_videos([0])
    indices = eval_clip_indices(portrait.num_frames, SMALL)
    frames = Decoder("cpu").decode(portrait, indices.reshape(-1)).view(3, 8, 320, 240, 3)
    for clip, t in ((0, 0), (2, 7)):
        expected = reference(frames[clip, t], 64, 85, 10, 0, 64, flip=False)  # 64 wide, 85 high, centre crop
        diff = np.abs(batch.clips[clip, t].numpy().astype(np.float32) - expected)
        assert diff.mean() < 0.1 and diff.max() <= 2, (clip, t)


def test_short_sides_keep_the_aspect_as_the_official_group_scale():
    """Something-Something's recipe rescales the short side (GroupScale given an int): each side rounded."""
    assert short_side_shape(128, (240, 320)) == (128, 171)  # 170.67
    assert short_side_shape(112, (100, 176)) == (112, 197)  # an SS-V1 frame: 100 px high
    assert short_side_shape(144, (320, 240)) == (192, 144)  # portrait
    cfg = ClipsConfig(
        num_frames=32,
        frame_stride=1,
        train_short_sides=(112, 128, 144),
        test_short_side=128,
        flip_prob=0.0,
        test_clips=1,
    )
    plans = [plan_train_clip(SampleKey(1, 0, i), 0, 50, cfg, frame_size=(100, 176)) for i in range(300)]
    assert {p.clip.resized for p in plans} == {(112, 197), (128, 225), (144, 253)}
    assert not any(p.clip.flip for p in plans)
    assert all((np.diff(p.clip.frame_indices) == 1).all() and p.clip.frame_indices[-1] <= 49 for p in plans)
    assert all(p.clip.crop[0] + 112 <= p.clip.resized[0] and p.clip.crop[1] + 112 <= p.clip.resized[1] for p in plans)
    test = eval_clip_plan(cfg, frame_size=(100, 176))
    assert (test.resized, test.crop, test.flip) == ((128, 225), (8, 56), False)
    assert eval_clip_indices(50, cfg).tolist() == [list(range(9, 41))]  # one clip, centred (the official sampler)
