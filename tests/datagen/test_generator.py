"""The determinism contract and the handling of unreadable videos, end to end through real decoding."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.configfile import from_dict, to_dict
from datagen.ctp.plan import plan_sample
from datagen.ctp.rng import SampleKey
from datagen.ctp.spec import GenerationConfig, upgrade_generation
from datagen.generator import Generator
from datagen.quarantine import QuarantinedVideos
from datagen.video.decode.decoder import Decoder
from datagen.video.manifest import resolve_videos

KEYS = [(11, 2, i) for i in range(6)]


def assert_same_samples(a, b) -> None:
    assert torch.equal(a.keys, b.keys)
    assert torch.equal(a.boxes, b.boxes)
    assert torch.equal(a.visible, b.visible)
    assert torch.equal(a.clips, b.clips)


@pytest.fixture(scope="module")
def reference_batch(demo_videos):
    return Generator(demo_videos).generate(KEYS)


def test_a_sample_does_not_depend_on_its_batch(demo_videos, reference_batch):
    generator = Generator(demo_videos)
    shuffled = [KEYS[i] for i in (4, 1, 5, 0, 3, 2)]
    other = generator.generate([*shuffled, (11, 3, 0)])
    order = torch.tensor([3, 1, 5, 4, 0, 2])  # position of KEYS[i] in `shuffled`
    for i in range(len(KEYS)):
        j = int(order[i])
        assert torch.equal(other.clips[j], reference_batch.clips[i])
        assert torch.equal(other.boxes[j], reference_batch.boxes[i])
        assert torch.equal(other.visible[j], reference_batch.visible[i])
    single = generator.generate([KEYS[2]])
    assert torch.equal(single.clips[0], reference_batch.clips[2])


def test_different_keys_give_different_samples(reference_batch):
    clips, boxes = reference_batch.clips, reference_batch.boxes
    for i in range(1, len(KEYS)):
        assert not torch.equal(boxes[0], boxes[i])
        assert not torch.equal(clips[0], clips[i])


def test_same_samples_in_another_process_with_another_thread_count(demo_dir, reference_batch, tmp_path):
    out = tmp_path / "samples.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "datagen.cli",
            "sample",
            "--videos",
            str(demo_dir),
            "--device",
            "cpu",
            "--seed",
            "11",
            "--epoch",
            "2",
            "--num",
            str(len(KEYS)),
            "--batch-size",
            "4",
            "--out",
            str(out),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    torch.set_num_threads(2)
    data = np.load(out)
    assert data["clips"].shape == tuple(reference_batch.clips.shape) and data["clips"].dtype == np.uint8
    assert np.array_equal(data["keys"], reference_batch.keys.numpy())
    assert np.array_equal(data["boxes"], reference_batch.boxes.numpy())
    assert np.array_equal(data["visible"], reference_batch.visible.numpy())
    assert np.array_equal(data["clips"], reference_batch.clips.numpy())


def test_config_changes_change_samples_but_not_other_streams(demo_videos, reference_batch):
    cfg = GenerationConfig()
    one = dataclasses.replace(cfg, colour=dataclasses.replace(cfg.colour, brightness_prob=1.0))
    batch = Generator(demo_videos, one).generate(KEYS)
    assert torch.equal(batch.boxes, reference_batch.boxes), "colour settings must not move trajectories"
    assert not torch.equal(batch.clips, reference_batch.clips)


def test_unreadable_videos_are_quarantined_and_replaced_deterministically(demo_videos, tmp_path):
    # Copy the demo set, index it, then break one file: the manifest still lists it as good.
    videos = []
    for v in demo_videos:
        dst = tmp_path / Path(v.path).name
        shutil.copy(v.path, dst)
        videos.append(dataclasses.replace(v, path=str(dst)))
    broken = videos[1]
    Path(broken.path).write_bytes(Path(broken.path).read_bytes()[:300])

    generator = Generator(videos)
    keys = [(5, 0, i) for i in range(generator.epoch_length * 2)]
    batch = generator.generate(keys)
    assert len(batch) == len(keys), "a bad video must not cost a sample"
    assert set(generator.bad_videos) == {broken.path}
    assert generator.bad_videos[broken.path]  # the decoder's reason is kept for status and Redis
    assert generator.stats["decode_failures"] >= 1
    assert generator.stats["replaced_samples"] >= 2  # the epoch visits the broken video twice

    # Any other replica that knows the same quarantine gives exactly the same replacement samples.
    other = Generator(videos)
    other.mark_bad(broken.path, "told by the control plane")
    assert_same_samples(other.generate(keys), batch)
    assert other.stats["decode_failures"] == 0


def test_every_video_bad_is_a_clear_error(demo_videos):
    generator = Generator(demo_videos[:1])
    generator.mark_bad(demo_videos[0].path)
    with pytest.raises(RuntimeError, match="quarantined"):
        generator.generate([(0, 0, 0)])


def test_generation_on_the_shared_footage(shared_videos):
    videos = resolve_videos([shared_videos])
    generator = Generator(videos)
    batch = generator.generate([(0, 0, i) for i in range(len(videos))])
    assert generator.stats["decode_failures"] == 0
    assert batch.clips.shape[0] == len(videos)
    # Real footage has texture: no clip is flat, and composited clips are not all-black.
    assert (batch.clips.float().std(dim=(1, 2, 3, 4)) > 10).all()


class WholeRGBFrames(Generator):
    """Decodes whole RGB frames, as before the decoder converted only the crop's window, as RGBX."""

    renders_rgbx = False

    def _window(self, plan, video):
        return None


def test_converting_only_the_crops_source_window_as_rgbx_changes_no_byte(shared_videos):
    """On the CPU the decoder converts only the part of each frame the crop reads (the rest is left unset),
    into RGBX pixels: batches from the real footage are the bytes of whole RGB frames, over every short side,
    crop and flip drawn."""
    videos = resolve_videos([shared_videos])
    windowed, whole = Generator(videos), WholeRGBFrames(videos)
    assert windowed.renders_rgbx
    keys = [(3, 0, i) for i in range(4 * len(videos))]
    a, b = windowed.generate(keys), whole.generate(keys)
    assert torch.equal(a.clips, b.clips) and torch.equal(a.boxes, b.boxes)


def test_what_a_key_produces_is_named_by_the_config_digest():
    # Version 1 (per-trajectory key frames, closed tick jitter, contrast about the mean grey) had this digest;
    # replicas of it must never serve a trainer of today's generation, and vice versa.
    # Version 2 (float pixels from the rescale to the end, one rounding) had the second.
    cfg = GenerationConfig()
    assert cfg.digest() not in ("de2206d1701890c0", "ea6aa1407df6e901")
    assert dataclasses.replace(cfg, version=cfg.version + 1).digest() != cfg.digest()
    own = dataclasses.replace(cfg, trajectory=dataclasses.replace(cfg.trajectory, shared_keyframes=False))
    assert own.digest() != cfg.digest()


def test_colour_curves_ease_by_their_own_probabilities_not_the_trajectories():
    def plans(cfg):
        return [plan_sample(SampleKey(3, 0, i), 0, 300, 240, 320, cfg) for i in range(48)]

    def curves(ps):
        return np.stack([np.concatenate([p.colour.brightness, p.colour.contrast]) for p in ps])

    def boxes(ps):
        return np.stack([p.patches.boxes for p in ps])

    base = GenerationConfig()
    assert base.colour.interpolation_probs == base.trajectory.interpolation_probs  # the official easing
    easing = (0.1, 0.45, 0.45)
    moved = dataclasses.replace(base, trajectory=dataclasses.replace(base.trajectory, interpolation_probs=easing))
    own = dataclasses.replace(base, colour=dataclasses.replace(base.colour, interpolation_probs=easing))
    reference, by_trajectory, by_colour = plans(base), plans(moved), plans(own)
    assert np.array_equal(curves(by_trajectory), curves(reference))  # the trajectories' easing moved boxes only
    assert not np.array_equal(boxes(by_trajectory), boxes(reference))
    assert not np.array_equal(curves(by_colour), curves(reference))  # the colour's own moves its curves only
    assert np.array_equal(boxes(by_colour), boxes(reference))
    assert len({base.digest(), moved.digest(), own.digest()}) == 3


def test_a_checkpoints_generation_config_from_before_colour_owned_its_easing_keeps_its_samples():
    cfg = GenerationConfig()
    old = to_dict(cfg)
    del old["colour"]["interpolation_probs"]
    assert upgrade_generation(old) == to_dict(cfg)
    old["trajectory"]["interpolation_probs"] = [0.2, 0.4, 0.4]  # its colour curves eased like this too
    upgraded = from_dict(GenerationConfig, upgrade_generation(old))
    assert upgraded.colour.interpolation_probs == (0.2, 0.4, 0.4) == upgraded.trajectory.interpolation_probs
    assert upgrade_generation(to_dict(cfg)) == to_dict(cfg)  # today's configs pass unchanged


def test_quarantined_videos_plan_through_the_subclass_alone(demo_videos):
    class Positions(QuarantinedVideos):  # the one extension point: `_plan`, no callback besides
        def _plan(self, key, position, video, attempt):
            return (position, attempt)

    chooser = Positions(demo_videos, Decoder("cpu", "pyav"))
    first = chooser.plan(SampleKey(1, 0, 0))
    chooser.mark_bad(demo_videos[first[0]].path, "test")
    assert chooser.plan(SampleKey(1, 0, 0))[1] > 0  # a quarantined video: the key's next attempts
    with pytest.raises(TypeError, match="abstract"):
        QuarantinedVideos(demo_videos, Decoder("cpu", "pyav"))
