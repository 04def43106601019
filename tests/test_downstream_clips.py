"""Labelled clips: the training draw's statistics and determinism, evaluation clip placement, pixel
correctness against an independent PIL reference, and unreadable videos (replaced in training, skipped in test)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from datagen.decode import Decoder
from datagen.manifest import probe
from datagen.rng import SampleKey
from trainer.downstream.clips import EvalClips, TrainClips, eval_clip_indices, plan_train_clip
from trainer.downstream.config import ClipsConfig
from trainer.downstream.datasets import LabelledSet

SMALL = ClipsConfig(num_frames=8, train_sizes=((85, 64), (96, 72), (107, 80)), test_size=(85, 64), crop_size=64, test_clips=3)


def test_training_draw_follows_the_recipe():
    cfg = ClipsConfig()  # the paper's: 16 frames at stride 2, three sizes, flip 0.35, colour jitter 0.2 each
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
    assert rate_close(sum(bool(p.colour.brightness.any()) for p in plans), 0.2)
    assert rate_close(sum(bool((p.colour.contrast != 1).any()) for p in plans), 0.2)

    again = plan_train_clip(SampleKey(5, 1, 7), 0, 100, cfg)
    assert np.array_equal(again.clip.frame_indices, plans[7].clip.frame_indices) and again.clip == dataclasses.replace(
        plans[7].clip, frame_indices=again.clip.frame_indices)
    other_epoch = [plan_train_clip(SampleKey(5, 2, i), 0, 100, cfg).clip.frame_indices[0] for i in range(50)]
    assert other_epoch != starts[:50].tolist()
    short = plan_train_clip(SampleKey(0, 0, 0), 0, 10, cfg).clip.frame_indices
    assert short.tolist() == [0, 2, 4, 6, 8] + [9] * 11  # a short video's clip is clamped to its last frame


def test_evaluation_clips_are_evenly_spaced():
    cfg = ClipsConfig()
    starts = eval_clip_indices(100, cfg)[:, 0]
    assert starts.tolist() == [0, 8, 15, 23, 31, 38, 46, 54, 61, 69]  # linspace(0, 100 - 31, 10), rounded
    assert (np.diff(eval_clip_indices(100, cfg), axis=1) == 2).all()
    assert eval_clip_indices(20, cfg).tolist() == [[min(2 * i, 19) for i in range(16)]] * 10


def reference(frame: torch.Tensor, width: int, height: int, top: int, left: int, size: int, flip: bool) -> np.ndarray:
    """An independent implementation: PIL's antialiased bilinear resize, crop, optional mirror."""
    image = Image.fromarray(frame.numpy()).resize((width, height), Image.BILINEAR)
    out = np.asarray(image)[top : top + size, left : left + size].astype(np.float32)
    return out[:, ::-1] if flip else out


@pytest.fixture(scope="module")
def juggling(shared_videos):
    return [probe(shared_videos / "ucf101" / name) for name in ("v_SoccerJuggling_g23_c01.avi", "v_SoccerJuggling_g24_c01.avi")]


def test_evaluation_clip_pixels(juggling):
    data = LabelledSet("two", ("a", "b"), tuple(juggling), (1, 0))
    batch = EvalClips(data, SMALL, torch.device("cpu")).generate([SampleKey(0, 0, 1), SampleKey(0, 0, 0)])
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
    key = next(k for k in (SampleKey(3, 0, i) for i in range(200))
               if (p := clips.plan(k)).clip.flip and not p.colour.hue_saturation and not p.colour.brightness.any()
               and (p.colour.contrast == 1).all())
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
    out = evaluation.generate([SampleKey(0, 0, i) for i in range(3)])
    assert out.videos.tolist() == [0, 0, 0, 2, 2, 2]
    assert [r.path for r in evaluation.skipped] == [str(corrupt)]
