"""PyAV decoding on real footage: exactly the requested frames, seeking from the nearest key frame, and no
picture decoded or packet fed that a clip does not need (B-frames, GOP tails, unreferenced pictures)."""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import torch

from datagen.video.container import VideoInfo
from datagen.video.decode import pyav as pyav_module
from datagen.video.decode.decoder import Decoder
from datagen.video.decode.pyav import PyAVDecoder
from datagen.video.packet_index import PacketIndex
from tests.video.decode_helpers import clip_indices, full_decode


def test_every_shared_video_decodes_exactly_the_requested_frames(shared, caplog):
    """MPEG-4 AVIs (UCF-101, HMDB-51 with broken metadata and packed B-frames), H.264 MP4s, the 48-frame clip;
    every picture where the packet index puts it (none decoded again with every picture)."""
    caplog.set_level(logging.WARNING)
    decoder = Decoder(backend="pyav")
    rng = np.random.default_rng(0)
    assert len(shared) == 12
    for video in shared:
        frames = full_decode(video)
        assert len(frames) == video.num_frames
        for _ in range(4):
            indices = clip_indices(rng, video.num_frames)
            clip = decoder.decode(video, indices)
            assert clip.shape == (len(indices), video.height, video.width, 3) and clip.dtype == torch.uint8
            expected = frames[np.minimum(indices, video.num_frames - 1)]
            assert np.array_equal(clip.numpy(), expected), f"{video.path} {indices}"
    assert not caplog.records, caplog.text


def test_seeking_starts_at_the_nearest_key_frame(shared):
    """A late clip costs one GOP of decoding, not the whole video before it."""
    pyav = PyAVDecoder()
    for name, first in [("v_SoccerJuggling_g23_c01.avi", 200), ("bikes.mp4", 200), ("SOX5yA1l24A.mp4", 300)]:
        video = next(v for v in shared if v.path.endswith(name))
        pyav.frames_decoded = 0
        pyav.decode(video, first + np.arange(16))
        assert 16 <= pyav.frames_decoded < 16 + 70, name


def test_synthetic_open_gop_b_frames_decode_exactly(demo_videos):
    """The demo MPEG-4 files have B-frames shown before their key frame (open GOPs) and several GOPs."""
    pyav = PyAVDecoder()
    for video in demo_videos:
        frames = full_decode(video)
        for start in range(0, video.num_frames, 7):
            indices = np.arange(start, start + 16)
            assert np.array_equal(pyav.decode(video, indices), frames[np.minimum(indices, video.num_frames - 1)])


def b_frames(video: VideoInfo) -> np.ndarray:
    """Which frames are B-frames, by FFmpeg's own account of a full decode."""
    with av.open(video.path, metadata_errors="ignore") as container:
        return np.array([f.pict_type == av.video.frame.PictureType.B for f in container.decode(video=0)])


def test_b_frames_a_clip_does_not_show_are_not_decoded(shared):
    """HMDB-51's packed B-frames: of the pictures from the key frame to the clip's last, exactly the B-frames
    outside the clip are left undecoded, and the clip is still exact (the first test). Counted: every picture
    FFmpeg decoded, so a last frame that is a B-frame adds the reference after it, which it is decoded from;
    a last frame that is a reference adds nothing (the decoder is drained rather than fed one more)."""
    pyav = PyAVDecoder()
    video = next(v for v in shared if v.path.endswith("SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi"))
    bidir = b_frames(video)
    assert 0.3 < bidir.mean() < 0.5
    assert bidir[18] and not bidir[17]
    for indices in (np.arange(10, 70, 4), np.arange(3, 19), np.arange(3, 18), np.array([5, 5, 6])):
        pyav.frames_decoded = 0
        pyav.decode(video, indices)
        span = np.arange(indices.max() + 1)  # this file's only key frame is its first
        shown = np.isin(span, indices)
        assert pyav.frames_decoded == np.count_nonzero(shown | ~bidir[span]) + bidir[span[-1]], indices


def test_gop_tails_a_clip_does_not_need_are_not_fed(shared):
    """Closed GOPs: in each GOP a clip shows frames of, the pictures from its key frame to the clip's last frame
    there are decoded and none after; GOPs it shows nothing of are not decoded at all. UCF-101 (GOPs of 12,
    no B-frames) counted exactly; H.264 with B-frames and IDR key frames (bikes.mp4) exact and cheaper."""
    video = next(v for v in shared if v.path.endswith("v_SoccerJuggling_g23_c01.avi"))
    index = PacketIndex.of(video.path)
    assert index.closed and not index.droppable
    keys = np.flatnonzero(index.key)  # display order is decode order here
    assert np.all(np.diff(keys) == 12)
    frames = full_decode(video)
    for indices in (np.arange(30, 110, 5), np.arange(100, 116), np.array([13, 40, 41, 90, 90])):
        pyav = PyAVDecoder()
        assert np.array_equal(pyav.decode(video, indices), frames[indices]), indices
        gop_start = keys[np.searchsorted(keys, indices, side="right") - 1]
        expected = sum(indices[gop_start == g].max() - g + 1 for g in np.unique(gop_start))
        assert pyav.frames_decoded == expected, indices

    video = next(v for v in shared if v.path.endswith("bikes.mp4"))
    assert PacketIndex.of(video.path).closed
    frames, indices = full_decode(video), np.arange(20, 100, 5)
    counts = []
    for cut in (True, False):
        pyav = PyAVDecoder()
        if not cut:
            pyav._no_skip.add(video.path)
        assert np.array_equal(pyav.decode(video, indices), frames[indices])
        counts.append(pyav.frames_decoded)
    assert counts[0] < counts[1]


def test_gop_tails_are_fed_where_gops_are_open_or_b_frames_packed(demo_videos, shared, caplog):
    """The demo MPEG-4 files show B-frames decoded after a key frame before it (open GOPs); after a gap in the
    packets FFmpeg outputs packed B-frame AVIs' pictures other than the index expects (HMDB-51's TrumanShow,
    two GOPs): their GOP tails are fed, and a clip across the GOP boundary comes out exact, on the first try."""
    truman = next(v for v in shared if v.path.endswith("TrumanShow_wave_f_nm_np1_fr_med_26.avi"))
    for video in [v for v in demo_videos if v.codec == "mpeg4"] + [truman]:
        assert not PacketIndex.of(video.path).closed, video.path
    caplog.set_level(logging.WARNING)
    indices = np.array([3, 9, 14, 20, 26, 31])
    assert np.array_equal(PyAVDecoder().decode(truman, indices), full_decode(truman)[indices])
    assert not caplog.records, caplog.text


def test_clips_are_read_from_the_file_with_no_container_opened(shared, monkeypatch):
    """Indexed MPEG-4 AVIs and H.264 MP4s: a clip's packets come from one read of the file, given to a decoder
    of their own (no container opened, probed or seeked), and the frames are those of a full decode."""
    videos = [v for v in shared if v.codec in ("mpeg4", "h264")]
    expected = {v.path: full_decode(v) for v in videos}
    pyav = PyAVDecoder()
    for video in videos:
        assert pyav.index.get(video.path).stored is not None, video.path

    def no_container(path, *args):
        raise AssertionError(f"{path} was opened as a container")

    monkeypatch.setattr(pyav_module, "open_video", no_container)
    rng = np.random.default_rng(3)
    for video in videos:
        indices = clip_indices(rng, video.num_frames)
        clip = pyav.decode(video, indices)
        assert np.array_equal(clip, expected[video.path][np.minimum(indices, video.num_frames - 1)]), video.path


def unreferenced(video: VideoInfo) -> np.ndarray:
    """Which frames FFmpeg itself leaves out when told to skip the pictures no other refers to."""
    stamps = {}
    for skip in ("DEFAULT", "NONREF"):
        with av.open(video.path, metadata_errors="ignore") as container:
            container.streams.video[0].codec_context.skip_frame = skip
            stamps[skip] = [f.pts for f in container.decode(video=0)]
    kept = set(stamps["NONREF"])
    return np.array([pts not in kept for pts in stamps["DEFAULT"]])


def test_unreferenced_h264_pictures_a_clip_does_not_show_are_not_decoded(shared):
    """H.264 in MP4 (Kinetics, misc): from the key frame at 0 to the clip's last frame, exactly the pictures
    FFmpeg's own NONREF skipping leaves out, less those the clip shows, go undecoded; the frames are exact."""
    for name in ("bikes.mp4", "R6llTwEh07w.mp4"):
        video = next(v for v in shared if v.path.endswith(name))
        dropped = unreferenced(video)
        assert 0.3 < dropped.mean() < 0.6, name
        indices = np.arange(0, 61, 3)
        counts = []
        for skip in (True, False):
            pyav = PyAVDecoder()
            if not skip:
                pyav._no_skip.add(video.path)
            clip = pyav.decode(video, indices)
            assert np.array_equal(clip, full_decode(video)[indices]), name
            counts.append(pyav.frames_decoded)
        span = np.arange(1, 61)
        assert counts[1] - counts[0] == np.count_nonzero(dropped[span] & ~np.isin(span, indices)), name


def test_a_wrong_packet_index_costs_speed_not_frames(shared, caplog):
    """If the decoder's pictures come out other than where the index says (here: an index that takes P-frames
    for B-frames), the clip is decoded again with every picture, and so is that video from then on."""
    pyav = PyAVDecoder()
    video = next(v for v in shared if v.path.endswith("SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi"))
    index = pyav.index.get(video.path)
    references = [t for i, t in enumerate(index.stamps) if not b_frames(video)[i]]
    wrong = dataclasses.replace(index, droppable={t: index.stamps.index(t) for t in references[1:]})
    pyav.index._indexes[video.path] = wrong
    indices = np.arange(20, 36)
    with caplog.at_level(logging.WARNING):
        clip = pyav.decode(video, indices)
    assert np.array_equal(clip, full_decode(video)[indices])
    assert "decoding its every picture from now on" in caplog.text
    pyav.frames_decoded = 0
    pyav.decode(video, indices)
    assert pyav.frames_decoded == indices.max() + 1


def test_pyav_decodes_the_same_clips_from_several_threads_at_once(shared):
    """decode() runs in the decoder's threads: same pixels as one at a time, every decoded picture counted."""
    rng = np.random.default_rng(7)
    requests = [(video, clip_indices(rng, video.num_frames)) for video in shared[:6]]
    pyav = PyAVDecoder()
    serial = [pyav.decode(*request) for request in requests]
    decoded = pyav.frames_decoded
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda request: pyav.decode(*request), requests * 2))
    assert all(np.array_equal(a, b) for a, b in zip(parallel, serial * 2))
    assert pyav.frames_decoded == 3 * decoded
