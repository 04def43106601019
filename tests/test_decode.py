"""Decoding: exact frames on real footage, DALI-CPU equal to PyAV, backend choice, bad videos reported."""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
import torch

from datagen import decode as decode_module
from datagen.decode import (
    Decoder,
    PyAVDecoder,
    VideoDecodeError,
    auto_backend,
    frame_to_rgb,
    yuv_to_rgb,
)
from datagen.generator import Generator
from datagen.manifest import VideoInfo, probe, resolve_videos
from datagen.packet_index import PacketIndex
from reference.yuv import opencv_yuv_to_rgb


def full_decode(video: VideoInfo) -> np.ndarray:
    """Every frame in decoder output order, converted with the decoder's own colour conversion."""
    with av.open(video.path, metadata_errors="ignore") as container:
        return np.stack([frame_to_rgb(frame, video) for frame in container.decode(video=0)])


def clip_indices(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """A CtP-like clip (stride, jitter, clamping past the end) plus a shuffled copy with repeats."""
    stride = int(rng.integers(1, 6))
    start = int(rng.integers(0, num_frames))
    clip = start + np.arange(16) * stride + rng.integers(0, stride, 16)
    return np.concatenate([clip, rng.permutation(clip)[:5]])


@pytest.fixture(scope="module")
def shared(shared_videos) -> list[VideoInfo]:
    return resolve_videos([shared_videos], min_frames=1)


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

    monkeypatch.setattr(decode_module, "open_video", no_container)
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


def test_colour_conversion_is_bt601_with_bilinear_chroma():
    """Against a plain float implementation of the formula, on random planes of every 8-bit layout."""
    rng = np.random.default_rng(2)
    y = rng.integers(0, 256, (6, 10), dtype=np.uint8)
    for chroma_shape in [(3, 5), (6, 5), (6, 10)]:  # 4:2:0, 4:2:2, 4:4:4
        cb, cr = (rng.integers(0, 256, chroma_shape, dtype=np.uint8) for _ in range(2))
        up = [
            torch.nn.functional.interpolate(
                torch.tensor(c, dtype=torch.float64)[None, None], size=y.shape, mode="bilinear", align_corners=False
            )[0, 0].numpy()
            for c in (cb, cr)
        ]
        for full, offset, matrix in [
            (False, 16, [[1.164383, 0, 1.596027], [1.164383, -0.391762, -0.812968], [1.164383, 2.017232, 0]]),
            (True, 0, [[1, 0, 1.402], [1, -0.344136, -0.714136], [1, 1.772, 0]]),
        ]:
            ycc = np.stack([y.astype(np.float64) - offset, up[0] - 128, up[1] - 128], -1)
            expected = np.clip(np.rint(ycc @ np.array(matrix).T), 0, 255)
            difference = np.abs(yuv_to_rgb(y, cb, cr, full_range=full).astype(int) - expected)
            assert difference.max() <= 1 and (difference > 0).mean() < 0.01  # rounding exact halves may differ


def padded_planes(rng: np.random.Generator, height: int, width: int, down: int, across: int, pad: int):
    """Random Y, Cb, Cr as PyAV hands them over: views into rows `pad` bytes longer (its line_size)."""

    def plane(rows: int, columns: int) -> np.ndarray:
        return rng.integers(0, 256, (rows, columns + pad), dtype=np.uint8)[:, :columns]

    chroma = (-(-height // down), -(-width // across))
    return plane(height, width), plane(*chroma), plane(*chroma)


def test_colour_conversion_gives_the_bytes_of_the_opencv_chain_it_replaced():
    """4:2:0, 4:2:2, 4:4:0 and 4:4:4, even and odd sizes, both ranges, padded rows, byte for byte: what a key
    produces does not change. (Pixel counts here are multiples of 32: all in OpenCV's vector loop.)"""
    rng = np.random.default_rng(4)
    for height, width in [(240, 320), (144, 256), (33, 32), (32, 33), (31, 64), (2, 16)]:
        for down, across in [(2, 2), (1, 2), (2, 1), (1, 1)]:
            for pad in (0, 13):
                y, cb, cr = padded_planes(rng, height, width, down, across, pad)
                for full in (False, True):
                    expected = opencv_yuv_to_rgb(y, cb, cr, full_range=full)
                    assert np.array_equal(yuv_to_rgb(y, cb, cr, full_range=full), expected), (height, width, down)


def test_colour_conversion_where_opencv_ends_in_scalar_code():
    """OpenCV converts a picture's last H·W mod 16 (AVX2) or 32 (AVX-512) pixels in scalar code that rounds
    differently, so its bytes there depend on the machine; ours round them as its vector loop does."""
    rng = np.random.default_rng(5)
    for height, width in [(101, 99), (15, 17), (7, 9), (3, 5), (1, 1)]:
        for down, across in [(2, 2), (1, 2), (1, 1)]:
            y, cb, cr = padded_planes(rng, height, width, down, across, 3)
            for full in (False, True):
                ours = yuv_to_rgb(y, cb, cr, full_range=full).reshape(-1, 3).astype(int)
                expected = opencv_yuv_to_rgb(y, cb, cr, full_range=full).reshape(-1, 3)
                vector = height * width - height * width % 32
                assert np.array_equal(ours[:vector], expected[:vector]) and np.abs(ours - expected).max() <= 1


def test_a_window_is_converted_to_the_pixels_of_the_whole_frame():
    """Windows anywhere (edges, single pixels) at every chroma layout and odd sizes, into RGB and RGBX frames;
    nothing else is written."""
    rng = np.random.default_rng(4)
    for height, width in [(240, 320), (25, 37), (24, 36)]:
        y = rng.integers(0, 256, (height, width), dtype=np.uint8)
        for chroma in [((height + 1) // 2, (width + 1) // 2), (height, (width + 1) // 2), (height, width), (9, 13)]:
            cb, cr = (rng.integers(0, 256, chroma, dtype=np.uint8) for _ in range(2))
            whole = yuv_to_rgb(y, cb, cr)
            for _ in range(40):
                top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
                bottom, right = int(rng.integers(top + 1, height + 1)), int(rng.integers(left + 1, width + 1))
                for channels in (3, 4):  # RGB, RGBX
                    out = np.zeros((height, width, channels), np.uint8)
                    yuv_to_rgb(y, cb, cr, out=out, window=(top, bottom, left, right))
                    assert np.array_equal(out[top:bottom, left:right, :3], whole[top:bottom, left:right])
                    assert (out[top:bottom, left:right, 3:] == 255).all()
                    out[top:bottom, left:right] = 0
                    assert not out.any()


def test_conversion_writes_into_the_frame_it_is_given():
    """PyAV's frames go straight into their slot of the clip: no per-frame array, no stacking."""
    y, cb, cr = padded_planes(np.random.default_rng(6), 24, 32, 2, 2, 8)
    clip = np.zeros((3, 24, 32, 3), np.uint8)
    frame = yuv_to_rgb(y, cb, cr, out=clip[1])
    assert np.shares_memory(frame, clip) and np.array_equal(clip[1], opencv_yuv_to_rgb(y, cb, cr))
    assert not clip[[0, 2]].any()
    with pytest.raises(ValueError, match="C-contiguous"):
        yuv_to_rgb(y, cb, cr, out=np.zeros((24, 64, 3), np.uint8)[:, ::2])  # cv2.merge: an obscure error


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
    with caplog.at_level(logging.WARNING, logger="datagen.decode"):
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
