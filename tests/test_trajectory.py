"""Statistics of generated trajectories and patch plans over thousands of samples (docs/spec.md)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from datagen.config import GenerationConfig, TrajectoryConfig
from datagen.keyframes import ACCELERATE, DECELERATE, UNIFORM, draw_keyframes, interpolate
from datagen.plan import plan_patches
from datagen.rng import SampleKey, Stream, generator
from datagen.trajectory import draw_trajectory

T, W = 16, 112
CFG = TrajectoryConfig()


@pytest.fixture(scope="module")
def trajectories():
    rng = generator(SampleKey(7, 0, 0), Stream.TRAJECTORY)
    return [draw_trajectory(rng, CFG, T, W, W) for _ in range(4000)]


def binomial_ok(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_boxes_are_whole_pixels_inside_the_frame(trajectories):
    boxes = np.stack([t.boxes for t in trajectories])
    assert np.array_equal(boxes, np.round(boxes))
    assert (boxes[..., :2] >= 0).all() and (boxes[..., 2:] <= W).all()
    assert (boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all()
    # Rounding moves each edge by at most half a pixel from the exact box.
    exact = np.stack([np.concatenate([t.centres - t.sizes / 2, t.centres + t.sizes / 2], 1) for t in trajectories])
    assert np.abs(boxes - np.clip(exact, 0, W)).max() <= 0.5 + 1e-9


def test_centre_speed_is_limited(trajectories):
    speed = np.abs(np.diff(np.stack([t.centres for t in trajectories]), axis=1))  # N, T-1, 2
    half_size_change = np.abs(np.diff(np.stack([t.sizes for t in trajectories]), axis=1)) / 2
    # Easing at most doubles the per-frame speed of a segment (u² has slope 2 at its end); clamping the
    # box into the frame can add no more than the half-size change of that frame.
    assert (speed <= np.maximum(2 * CFG.max_speed, half_size_change) + 1e-9).all()
    assert speed.mean() <= CFG.max_speed / 2 + 0.2  # E|U(-3Δ, 3Δ)|/Δ = 1.5 px/frame, less with clamping
    assert speed.max() > CFG.max_speed  # accelerating segments really exceed the mean speed
    rounded = np.stack([(t.boxes[:, :2] + t.boxes[:, 2:]) / 2 for t in trajectories])
    assert (np.abs(np.diff(rounded, axis=1)) <= np.maximum(2 * CFG.max_speed, half_size_change) + 1.0 + 1e-9).all()


def test_size_change_is_limited(trajectories):
    log_ratio = np.abs(np.diff(np.log(np.stack([t.sizes for t in trajectories])), axis=1))
    assert (log_ratio <= 2 * CFG.max_scale_rate + 1e-9).all()
    assert log_ratio.mean() <= CFG.max_scale_rate / 2 + 1e-3
    assert log_ratio.max() > CFG.max_scale_rate


def test_first_box_comes_from_the_anchor_set(trajectories):
    jitter = math.exp(CFG.size_jitter) + 1e-9
    hits = np.zeros(len(CFG.anchor_scales))
    for t in trajectories:
        aw, ah = t.first_size
        matches = [
            i for i, s in enumerate(CFG.anchor_scales) for r in CFG.aspect_ratios
            if 1 / jitter <= aw / (s * math.sqrt(r)) <= jitter and 1 / jitter <= ah / (s / math.sqrt(r)) <= jitter
        ]
        assert matches, f"first size {aw:.1f}×{ah:.1f} is not a jittered anchor"
        hits[min(matches)] += 1
        w0, h0 = t.sizes[0]
        assert w0 == pytest.approx(min(max(aw, 1), W - 1)) and h0 == pytest.approx(min(max(ah, 1), W - 1))
    # The largest scale (64) is never confused with a smaller one: its share is ~1/6.
    assert binomial_ok(int(hits[-1]), len(trajectories), 1 / 6)


def test_inner_keyframe_counts(trajectories):
    counts = np.bincount([len(t.centre_keyframes) - 2 for t in trajectories] + [len(t.size_keyframes) - 2 for t in trajectories], minlength=3)
    n = counts.sum()
    for c, p in zip(counts, CFG.inner_keyframe_probs):
        assert binomial_ok(int(c), int(n), p), (counts, CFG.inner_keyframe_probs)
    for t in trajectories:
        assert t.centre_keyframes[0] == 0 and t.centre_keyframes[-1] == T - 1


def test_keyframe_jitter_stays_within_its_reach():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(2000):
        kf = draw_keyframes(rng, T, (0.0, 0.0, 1.0))  # always two inner ticks at 5 and 10, reach ±1
        assert len(kf) == 4
        seen.update((kf[1:3] - np.array([5, 10])).tolist())
    assert seen == {-1, 0, 1}


@pytest.mark.parametrize("easing", [UNIFORM, ACCELERATE, DECELERATE])
def test_interpolation_hits_keyframes_and_is_monotonic(easing):
    kf = np.array([0, 6, 15])
    values = np.array([0.0, 12.0, 30.0])
    out = interpolate(kf, values, np.array([easing, easing]), T)
    assert np.allclose(out[kf], values)
    assert (np.diff(out) >= 0).all()
    first = np.diff(out[:7])
    if easing == ACCELERATE:
        assert (np.diff(first) > 0).all()
    elif easing == DECELERATE:
        assert (np.diff(first) < 0).all()
    else:
        assert np.allclose(first, 2.0)


def test_mrm_visibility_and_patch_choices():
    cfg = GenerationConfig()
    plans = [plan_patches(SampleKey(3, 1, i), cfg, 0) for i in range(3000)]
    visible = np.stack([p.visible for p in plans])  # N, K, T
    source = np.stack([p.source_frame for p in plans])
    assert visible[:, :, 0].all()
    assert np.take_along_axis(visible, source[:, :, None], axis=2).all()
    eligible = np.ones_like(visible)
    eligible[:, :, 0] = False
    np.put_along_axis(eligible, source[:, :, None], False, axis=2)
    hidden = int((~visible & eligible).sum())
    assert binomial_ok(hidden, int(eligible.sum()), cfg.patch.invisible_prob)

    shapes = np.bincount(np.concatenate([p.shape for p in plans]), minlength=3)
    for c, p in zip(shapes, cfg.patch.shape_probs):
        assert binomial_ok(int(c), int(shapes.sum()), p)
    soft = np.concatenate([p.soft_start for p in plans])
    assert binomial_ok(int((soft < 0.5).sum()), len(soft), cfg.patch.soft_edge_prob)
    assert soft[soft < 0.5].min() >= 0.30 and soft[soft < 0.5].max() <= 0.45
    opacity = np.stack([p.opacity for p in plans])
    assert opacity.min() >= 0.8 and opacity.max() <= 1.0 and opacity.std() > 0.01

    for p in plans[:200]:  # larger trajectories (mean area) are pasted first
        area = ((p.boxes[..., 2] - p.boxes[..., 0]) * (p.boxes[..., 3] - p.boxes[..., 1])).mean(1)
        assert (np.diff(area[p.order]) <= 0).all()
