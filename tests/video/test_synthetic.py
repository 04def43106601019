"""Demo footage: real codecs, deterministic content, moving textured objects over a panning background."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from datagen.video.decode.pyav import PyAVDecoder
from datagen.video.manifest import probe
from datagen.video.synthetic import render_scene, synthesize_demo


def test_default_set_is_real_video_in_three_codecs(demo_dir, demo_videos):
    names = sorted(p.name for p in demo_dir.iterdir())
    assert names == [
        "demo_00_vp9.webm",
        "demo_01_mpeg4.avi",
        "demo_02_h264.mp4",
        "demo_03_vp9.webm",
        "demo_04_mpeg4.avi",
        "demo_05_h264.mp4",
    ]
    assert [v.codec for v in demo_videos] == ["vp9", "mpeg4", "h264"] * 2
    assert all((v.num_frames, v.width, v.height, v.fps) == (75, 320, 240, 25.0) for v in demo_videos)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_decoded_frames_show_the_rendered_scene(demo_videos, index):
    """The encoder kept the picture: every decoded frame is close to the frame that was rendered."""
    rendered = render_scene(np.random.default_rng([0, index]), 75, 320, 240)  # video `index` of seed 0
    decoded = PyAVDecoder().decode(demo_videos[index], np.arange(75)).astype(np.float64)
    mse = ((decoded - rendered) ** 2).mean(axis=(1, 2, 3))
    assert 10 * np.log10(255**2 / mse.max()) > 28  # PSNR in dB, worst frame
    shifted = ((decoded[1:] - rendered[:-1]) ** 2).mean()
    assert shifted > 4 * mse.mean()  # and it is this frame, not its neighbour


def test_scene_is_deterministic_and_moves():
    a = render_scene(np.random.default_rng([7, 0]), 20, 96, 64)
    assert np.array_equal(a, render_scene(np.random.default_rng([7, 0]), 20, 96, 64))
    assert not np.array_equal(a, render_scene(np.random.default_rng([7, 1]), 20, 96, 64))
    changed = (np.abs(a[1:].astype(int) - a[:-1]).sum(-1) > 0).mean(axis=(1, 2))
    assert changed.min() > 0.05  # objects and background move in every frame
    assert a.std() > 30  # textured, not flat


def test_missing_encoders_are_skipped_and_the_rest_is_written(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        paths = synthesize_demo(tmp_path, num_videos=2, seconds=0.8, codecs=("no-such-codec", "vp9"))
    assert [p.name for p in paths] == ["demo_01_vp9.webm"]
    assert "no no-such-codec encoder" in caplog.text
    assert probe(paths[0]).num_frames == 20


def test_odd_sizes_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="must be even"):
        synthesize_demo(tmp_path, size=(321, 240))
