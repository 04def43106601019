"""The decoder façade: `auto` routes each codec to a backend that decodes it on the device, a video DALI fails
on goes to PyAV, bad videos are reported in place, and frames land on the requested device and shape."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from datagen.generator import Generator
from datagen.video.container import VideoDecodeError, VideoInfo
from datagen.video.decode.decoder import Decoder, auto_backend
from datagen.video.manifest import probe
from tests.video.decode_helpers import full_decode


def test_auto_routes_each_codec_to_a_backend_that_decodes_it_on_the_device(demo_videos):
    """On CUDA, AV1 (no NVDEC AV1 on Hopper) and MJPEG (rejected by DALI 2.4's mixed decoder) go to PyAV; a
    video of a DALI codec goes to DALI unless its decode class is routed elsewhere; one that cannot even be
    indexed goes to PyAV, which says what is wrong with it."""
    codecs = ("vp9", "vp8", "mjpeg", "h264", "mpeg4", "hevc", "av1", "mpeg2video")
    assert [auto_backend(c, "cpu") for c in codecs] == ["dali"] * 3 + ["pyav"] * 5
    assert [auto_backend(c, "cuda") for c in codecs] == ["dali", "dali", "pyav", "dali", "dali", "dali", "pyav", "pyav"]

    def video(codec: str) -> VideoInfo:
        return VideoInfo(f"clip.{codec}", 100, 25.0, 320, 240, codec)

    cpu, gpu = Decoder("cpu"), Decoder("cuda", verify=False)  # no GPU needed to choose
    assert all(cpu.backend_for(video(c)) == "pyav" for c in codecs)  # no such files
    for real in demo_videos:
        assert cpu.backend_for(real) == auto_backend(real.codec, "cpu"), real.path
        assert gpu.backend_for(real) == auto_backend(real.codec, "cuda"), real.path
    assert (
        Decoder("cuda", "dali").backend_for(video("av1")) == "dali"
    )  # forced: what DALI claims, e.g. to probe a new GPU
    assert Decoder("cpu", "pyav").backend_for(video("vp9")) == "pyav"
    with pytest.raises(VideoDecodeError, match="DALI cannot decode h264 on cpu.*use backend 'pyav'"):
        Decoder("cpu", "dali").backend_for(video("h264"))
    with pytest.raises(ValueError, match="unknown decode backend"):
        Decoder("cpu", "ffmpeg")


def test_a_video_dali_fails_on_is_decoded_by_pyav_and_not_quarantined(demo_videos, caplog):
    """DALI-CPU cannot decode H.264: routed to DALI anyway, it fails as a GPU decode might, and PyAV steps in."""
    h264 = next(v for v in demo_videos if v.codec == "h264")
    decoder = Decoder("cpu", dali_codecs={"h264"}, batch_size=4)
    requests = [(h264, np.arange(0, 32, 2)), (h264, np.array([70, 3, 3, 10_000]))]
    with caplog.at_level(logging.WARNING, logger="datagen.video.decode.decoder"):
        clips = decoder.decode_many(requests)
    pyav = Decoder(backend="pyav").decode_many(requests)
    assert all(torch.equal(a, b) for a, b in zip(clips, pyav))
    assert decoder.stats["dali_fallbacks"] == 2
    warnings = [r.getMessage() for r in caplog.records if "decoding it with PyAV" in r.getMessage()]
    assert (
        len(warnings) == 1 and h264.path in warnings[0] and "DALI failed" in warnings[0]
    )  # once per video, with the reason

    generator = Generator([h264], device="cpu", decoder=decoder)
    batch = generator.generate([(0, 0, i) for i in range(3)])
    assert generator.bad_videos == {} and generator.stats["decode_failures"] == 0 and len(batch) == 3


@pytest.fixture(scope="module")
def bad_videos(demo_videos, tmp_path_factory) -> list[VideoInfo]:
    """Broken files posing as each demo video (same metadata), so both backends meet them."""
    root = tmp_path_factory.mktemp("bad")
    vp9, h264 = (next(v for v in demo_videos if v.codec == c) for c in ("vp9", "h264"))
    content = {
        "zero.webm": b"",
        "text.webm": b"no video here\n" * 100,
        "cut.webm": open(vp9.path, "rb").read()[:600],
        "zero.mp4": b"",
        "text.mp4": b"no video here\n" * 100,
        "cut.mp4": open(h264.path, "rb").read()[:2000],
    }
    bad = []
    for name, data in content.items():
        (root / name).write_bytes(data)
        bad.append(dataclasses.replace(vp9 if name.endswith(".webm") else h264, path=str(root / name)))
    bad.append(dataclasses.replace(vp9, path=str(root / "missing.webm")))
    return bad


def test_bad_videos_are_reported_in_place_and_good_ones_still_decode(demo_videos, bad_videos):
    decoder = Decoder(batch_size=4)
    good = demo_videos[:3]
    requests = [(v, np.arange(16)) for v in [good[0], *bad_videos[:4], good[1], *bad_videos[4:], good[2]]]
    results = decoder.decode_many(requests)
    errors = [r for r in results if isinstance(r, VideoDecodeError)]
    assert [e.path for e in errors] == [v.path for v in bad_videos]
    assert all(e.reason for e in errors)
    assert {e.path.split("/")[-1]: e.reason for e in errors}["zero.mp4"] == "empty file (0 bytes)"
    clips = [r for r in results if isinstance(r, torch.Tensor)]
    assert len(clips) == 3
    for video, clip in zip(good, clips):
        assert torch.equal(clip, decoder.decode(video, np.arange(16)))  # the DALI pipeline recovered
    with pytest.raises(VideoDecodeError):
        decoder.decode(bad_videos[0], np.arange(4))


def test_a_truncated_video_clamps_to_its_last_decodable_frame(shared, tmp_path):
    """Metadata probed before the file was cut: frames past the cut repeat the last one that decodes."""
    video = next(v for v in shared if v.path.endswith("v_SoccerJuggling_g23_c01.avi"))
    cut = tmp_path / "cut.avi"
    data = open(video.path, "rb").read()
    cut.write_bytes(data[: len(data) // 3])
    stale = dataclasses.replace(video, path=str(cut))
    truth = full_decode(probe(cut))
    clip = Decoder(backend="pyav").decode(stale, np.array([0, len(truth) - 1, len(truth) + 5, 239]))
    assert np.array_equal(clip.numpy(), truth[[0, -1, -1, -1]])
    past = Decoder(backend="pyav").decode(stale, np.array([len(truth) + 5, 239, len(truth) + 5]))  # none decodes
    assert np.array_equal(past.numpy(), truth[[-1, -1, -1]])


def test_frames_land_on_the_requested_device_with_the_requested_shape(demo_videos):
    decoder = Decoder("cpu")
    video = demo_videos[0]
    assert decoder.decode(video, np.array([], dtype=np.int64)).shape == (0, video.height, video.width, 3)
    clip = decoder.decode(video, np.array([3, 3, 0, 10_000]))
    assert clip.device.type == "cpu" and clip.shape == (4, 240, 320, 3)
    assert torch.equal(clip[0], clip[1]) and torch.equal(clip[3], decoder.decode(video, [video.num_frames - 1])[0])
