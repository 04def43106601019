"""Decode classes and their routes: the frame comparison tells a few levels of colour from a shifted or wrong
frame, and the decoder's first contact with a class probes it for real — DALI-CPU against PyAV here — and
routes a class whose frames differ (a fault injected into DALI) to PyAV, loudly."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from datagen.video.container import VideoDecodeError
from datagen.video.decode.decoder import Decoder
from datagen.video.decode.routes import DecodeClass, compare_frames, probe_indices, reference_indices
from datagen.video.manifest import resolve_videos
from datagen.video.packet_index import PacketIndex
from datagen.video.synthetic import synthesize_demo


@pytest.fixture(scope="module")
def dali_cpu_videos(tmp_path_factory):
    """One video of each codec DALI-CPU decodes (VP9, VP8, MJPEG), and an H.264 one it does not."""
    out = tmp_path_factory.mktemp("dali-cpu")
    return resolve_videos([str(p) for p in synthesize_demo(out, 4, 2.0, codecs=("vp9", "vp8", "mjpeg", "h264"))])


def reference(decoder: Decoder, video, indices):
    around = reference_indices(indices, video.num_frames)
    return decoder.pyav.decode(video, around), around


def test_the_comparison_passes_colour_rounding_and_fails_shifted_or_wrong_frames(shared_videos):
    video = resolve_videos([shared_videos / "hmdb51"])[0]
    decoder = Decoder("cpu", "pyav")
    indices = probe_indices(video.num_frames)
    frames, around = reference(decoder, video, indices)
    exact = decoder.pyav.decode(video, indices)
    assert compare_frames(exact, indices, frames, around).ok
    noisy = np.clip(exact.astype(np.int16) + np.random.default_rng(0).integers(-2, 3, exact.shape), 0, 255)
    rounding = compare_frames(noisy.astype(np.uint8), indices, frames, around)
    assert rounding.ok and rounding.max_diff == 2 and rounding.equal == 0
    shifted = compare_frames(decoder.pyav.decode(video, indices + 1), indices, frames, around)
    assert not shifted.ok and len(shifted.misplaced) > len(indices) // 2, shifted.summary()
    wrong = compare_frames(decoder.pyav.decode(video, indices[::-1]), indices, frames, around)  # far frames
    assert not wrong.ok and wrong.min_psnr < 25, wrong.summary()
    assert not compare_frames(exact[:0], indices[:0], frames, around).ok  # nothing compared is no pass


def test_decode_classes_tell_apart_what_changes_a_decoders_behaviour(shared_videos):
    classes = {}
    for video in resolve_videos([shared_videos]):
        classes.setdefault(DecodeClass.of(video, PacketIndex.of(video.path)).label, []).append(video.path)
    assert set(classes) == {
        "mpeg4/avi/yuv420p/packed-B/reordered, unordered stamps",  # HMDB-51
        "mpeg4/avi/yuv420p/in order",  # UCF-101
        "h264/mov/yuv420p/reordered",  # Kinetics, misc
    }, classes


def test_the_first_clip_of_each_class_is_a_probe_that_routes_it(dali_cpu_videos, caplog):
    """DALI-CPU against PyAV on VP9, VP8 and MJPEG: each class is probed once, on its first clip, verified and
    left with DALI; the H.264 video is not DALI-CPU's and is never probed."""
    decoder = Decoder("cpu", verify=True)
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING, logger="datagen.video.decode.decoder"):
        for _ in range(2):
            requests = [(v, rng.integers(0, v.num_frames, 16)) for v in dali_cpu_videos]
            for (video, indices), clip in zip(requests, decoder.decode_many(requests)):
                assert isinstance(clip, torch.Tensor)
                truth = Decoder("cpu", "pyav").decode(video, indices)
                assert (clip.int() - truth.int()).abs().max() <= 1
    routes = {cls.codec: route for cls, route in decoder.routes.items()}
    assert set(routes) == {"vp9", "vp8", "mjpeg"}
    assert all(r.backend == "dali" and r.verified and "frames equal" in r.reason for r in routes.values()), routes
    assert decoder.stats["probes"] == 3 and decoder.stats["probe_failures"] == 0
    assert not caplog.records


class ShiftedDali:
    """A fault injected into DALI: every clip comes back one frame late, as a wrong timestamp order would make
    it (the frames are real, only misplaced: no error is raised)."""

    def __init__(self, decoder: Decoder, only_trimmed: bool = False):
        self.real = decoder.dali.decode_batch
        self.only_trimmed = only_trimmed
        self.calls = 0

    def __call__(self, requests, trim=None, mapper=map):
        self.calls += 1
        trims = trim or [True] * len(requests)
        shifted = [
            (v, np.minimum(np.asarray(i) + 1, v.num_frames - 1) if t or not self.only_trimmed else i)
            for (v, i), t in zip(requests, trims)
        ]
        return self.real(shifted, trim, mapper)


def test_a_backend_that_returns_shifted_frames_is_caught_and_its_class_routed_to_pyav(dali_cpu_videos, caplog):
    vp9 = next(v for v in dali_cpu_videos if v.codec == "vp9")
    decoder = Decoder("cpu", verify=True)
    fault = ShiftedDali(decoder)
    decoder.dali.decode_batch = fault  # type: ignore[method-assign]
    indices = np.arange(20, 36)
    with caplog.at_level(logging.WARNING, logger="datagen.video.decode.decoder"):
        clip = decoder.decode(vp9, indices)
    assert torch.equal(clip, Decoder("cpu", "pyav").decode(vp9, indices))  # PyAV's frames, not the shifted ones
    ((cls, route),) = decoder.routes.items()
    assert cls.codec == "vp9" and route.backend == "pyav" and route.verified
    assert "misplaced" in route.reason and fault.calls == 1  # VP9 is not parsed: one kind of segment to try
    (warning,) = [r.getMessage() for r in caplog.records]
    assert cls.label in warning and "PyAV" in warning and "min PSNR" in warning and vp9.path in warning
    assert decoder.stats["probe_failures"] == 1
    decoder.decode(vp9, indices)
    assert fault.calls == 1  # routed: DALI is not asked again


def test_a_fault_only_in_trimmed_segments_falls_back_to_whole_segments(shared_videos):
    """Where the display order is known (Kinetics H.264 here, with DALI routed to a backend that decodes it),
    a class whose trimmed segments come out wrong is tried with whole segments before PyAV."""
    video = next(v for v in resolve_videos([shared_videos / "kinetics"]))
    decoder = Decoder("cpu", verify=True, dali_codecs={"h264"})
    pyav = Decoder("cpu", "pyav")

    def decode_batch(requests, trim=None, mapper=map):  # "DALI": PyAV, shifted where segments are trimmed
        return [
            pyav.decode(v, np.minimum(np.asarray(i) + 1, v.num_frames - 1) if t else i)
            for (v, i), t in zip(requests, trim or [True] * len(requests))
        ]

    decoder.dali.decode_batch = decode_batch  # type: ignore[method-assign]
    route = decoder.probe(video)
    assert route.backend == "dali" and not route.trim and route.verified
    assert route.name == "dali (whole segments)"


def test_a_class_dali_cannot_be_fed_goes_to_pyav_without_a_probe(shared_videos, monkeypatch, caplog):
    """Packed B-frames the index cannot parse: DALI would number them wrongly, so PyAV decodes them."""
    import dataclasses

    hmdb = resolve_videos([shared_videos / "hmdb51"])[0]
    decoder = Decoder("cpu", verify=True, dali_codecs={"mpeg4"})
    index = decoder.pyav.index.get(hmdb.path)
    unparsed = dataclasses.replace(index, stamps=[], frame_packet=np.zeros(0, np.int64), droppable={})
    monkeypatch.setattr(decoder.pyav.index, "get", lambda path: unparsed)
    with caplog.at_level(logging.WARNING, logger="datagen.video.decode.decoder"):
        assert decoder.backend_for(hmdb) == "pyav"
    assert decoder.stats["probes"] == 0 and "packed B-frames" in caplog.text


def test_a_probe_of_a_video_pyav_cannot_decode_routes_nothing_to_dali(tmp_path):
    broken = tmp_path / "broken.webm"
    broken.write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 64)
    from datagen.video.container import VideoInfo

    video = VideoInfo(str(broken), 30, 25.0, 320, 240, "vp9")
    with pytest.raises(VideoDecodeError):
        Decoder("cpu", verify=True).decode(video, np.arange(4))
