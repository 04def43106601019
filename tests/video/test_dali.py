"""DALI fed clip segments: the segment of every real video numbers its pictures as they are shown (checked
with FFmpeg, since NVDEC is not here), DALI-CPU returns PyAV's frames, and a segment is only what a clip
needs."""

from __future__ import annotations

import dataclasses
import io

import av
import numpy as np
import pytest
import torch

from datagen.video.bitstream import vop_types
from datagen.video.decode.dali import FRAME_MS, clip_segment
from datagen.video.decode.decoder import Decoder
from datagen.video.decode.pyav import frame_to_rgb
from datagen.video.manifest import resolve_videos
from datagen.video.packet_index import PacketIndex
from tests.video.decode_helpers import clip_indices, full_decode


def test_every_shared_video_segment_numbers_its_pictures_as_they_are_shown(shared):
    """DALI's GPU decoder numbers a file's frames by sorting its packets' timestamps, and gives each picture
    NVDEC decodes the timestamp of the packet it came from (one picture per packet). HMDB-51's packed-B AVIs
    carry timestamps out of display order (and two pictures in some packets), so fed as they are, most frames
    would be wrong. A segment's packets hold one picture each, and the k-th smallest timestamp is the k-th
    of its frames; decoded by FFmpeg, the picture of the packet stamped for frame f is PyAV's frame f. Every
    shared video, clips across the middle and the end, segments trimmed or whole."""
    packed = 0
    rng = np.random.default_rng(5)
    for video in shared:
        index = PacketIndex.of(video.path)
        full = full_decode(video)
        n = video.num_frames
        if index.traits.packed:
            packed += 1
            assert index.timestamps_in_display_order is False  # the container's own stamps would mislead DALI
            wrong = np.argsort(index.timestamps) != index.frame_packet
            assert wrong.mean() > 0.5, video.path
        clips = [np.clip(n // 2 - 16 + 2 * np.arange(16), 0, n - 1), np.arange(n - 12, n), clip_indices(rng, n)]
        for indices in clips:
            needed = np.unique(np.clip(indices, 0, n - 1))
            for trim in (True, False):
                segment = clip_segment(video.path, index, needed, trim)
                with av.open(io.BytesIO(segment.data.tobytes())) as container:
                    packets = [p for p in container.demux(container.streams.video[0]) if p.size]
                    if video.codec == "mpeg4":
                        assert all(len(vop_types(bytes(p))) == 1 for p in packets), video.path
                    stamps = np.sort([p.pts for p in packets])
                    assert np.array_equal(stamps, segment.frames * FRAME_MS), video.path
                    assert np.isin(needed, segment.frames).all()
                with av.open(io.BytesIO(segment.data.tobytes())) as container:
                    shown = {f.pts // FRAME_MS: frame_to_rgb(f, video) for f in container.decode(video=0)}
                for f in needed.tolist():
                    assert np.array_equal(shown[f], full[f]), (video.path, f, trim)
    assert packed == 4


def test_trimmed_segments_leave_out_what_the_clip_does_not_need(shared):
    """UCF-101 (closed GOPs of 12, no B-frames): a strided clip's trimmed segment holds, in each GOP it shows
    frames of, the pictures from the key frame to its last frame there, as PyAV decodes; the whole segment
    runs from the first key frame to the last frame. Kinetics H.264 (40 % unreferenced pictures): smaller."""
    video = next(v for v in shared if v.path.endswith("v_SoccerJuggling_g23_c01.avi"))
    index = PacketIndex.of(video.path)
    keys = np.flatnonzero(index.key)
    needed = np.arange(30, 110, 5)
    trimmed, whole = (clip_segment(video.path, index, needed, trim) for trim in (True, False))
    gop_start = keys[np.searchsorted(keys, needed, side="right") - 1]
    expected = np.concatenate([np.arange(g, needed[gop_start == g].max() + 1) for g in np.unique(gop_start)])
    assert np.array_equal(trimmed.frames, expected)
    assert np.array_equal(whole.frames, np.arange(gop_start[0], needed[-1] + 1))

    video = next(v for v in shared if v.path.endswith("R6llTwEh07w.mp4"))
    index = PacketIndex.of(video.path)
    trimmed, whole = (clip_segment(video.path, index, needed, trim) for trim in (True, False))
    assert np.isin(needed, trimmed.frames).all() and len(trimmed.frames) < 0.8 * len(whole.frames)


def test_what_cannot_be_fed_to_dali_is_said(shared):
    video = next(v for v in shared if v.codec == "mpeg4" and "hmdb" in v.path)
    index = PacketIndex.of(video.path)
    with pytest.raises(Exception, match="not where its container says"):
        clip_segment(video.path, dataclasses.replace(index, stored=None), np.arange(4))
    unparsed = dataclasses.replace(index, stamps=[], frame_packet=np.zeros(0, np.int64), droppable={})
    with pytest.raises(Exception, match="packed B-frames in a pattern"):
        clip_segment(video.path, unparsed, np.arange(4))


def test_dali_cpu_returns_the_frames_pyav_returns_on_vp9(demo_videos):
    vp9 = [v for v in demo_videos if v.codec == "vp9"]
    assert len(vp9) == 2
    rng = np.random.default_rng(1)
    requests = [(v, clip_indices(rng, v.num_frames)) for v in vp9 for _ in range(3)]
    dali = Decoder(backend="dali", batch_size=4).decode_many(requests)
    pyav = Decoder(backend="pyav").decode_many(requests)
    for (_, indices), a, b in zip(requests, dali, pyav):
        assert a.shape == b.shape == (len(indices), 240, 320, 3)
        difference = (a.int() - b.int()).abs()
        assert difference.max() <= 1 and difference.float().mean() < 0.05
    neighbours = (pyav[0][1:].int() - pyav[0][:-1].int()).abs().float().mean()
    assert neighbours > 2  # the tolerance above is far below what one frame of motion changes


def test_dali_repeats_its_last_frame_past_its_own_frame_count(demo_videos):
    """The manifest may count more frames than the container header DALI reads: those indices must repeat
    the last real frame (as PyAV does), not come back black."""
    vp9 = next(v for v in demo_videos if v.codec == "vp9")
    overcounted = dataclasses.replace(vp9, num_frames=vp9.num_frames + 10)
    last = vp9.num_frames - 1
    clip = Decoder(backend="dali").decode(overcounted, np.array([last, last + 1, last + 6, 0]))
    assert clip[0].float().mean() > 20
    assert torch.equal(clip[1], clip[0]) and torch.equal(clip[2], clip[0])
    assert not torch.equal(clip[3], clip[0])


def test_dali_decodes_only_the_segment_a_clip_needs(tmp_path):
    """Late clips in an 8-second VP9 file: DALI is fed from the key frame before each clip, so it decodes
    about as many pictures as PyAV's seek (not every frame from the start), and the same pixels."""
    from datagen.video.synthetic import synthesize_demo

    video = resolve_videos([str(p) for p in synthesize_demo(tmp_path, num_videos=1, seconds=8, codecs=("vp9",))])[0]
    assert video.num_frames == 200
    rng = np.random.default_rng(3)
    requests = [(video, clip_indices(rng, video.num_frames)) for _ in range(6)] + [
        (video, np.array([190, 150, 150, 199]))
    ]
    dali, pyav = Decoder(backend="dali", batch_size=4), Decoder(backend="pyav")
    for (_, indices), a, b in zip(requests, dali.decode_many(requests), pyav.decode_many(requests)):
        assert a.shape == b.shape == (len(indices), 240, 320, 3)
        assert (a.int() - b.int()).abs().max() <= 1
    late = [int(np.clip(i, 0, 199).max()) + 1 for _, i in requests]  # what a decode from frame 0 costs
    assert dali.dali.frames_decoded <= 1.2 * pyav.pyav.frames_decoded < 0.6 * sum(late)
