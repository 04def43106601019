"""Frame sources behind the decoder façade: exact frames from zips and folders by every route, mixed with video
files in one request; first-contact probes that route a class DALI decodes wrongly to the CPU; bad frames
quarantined with the reason and nothing lost; a sample a pure function of its key whatever decoded it."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from datagen.generator import Generator
from datagen.verify import check_decoding
from datagen.video.container import VideoDecodeError
from datagen.video.decode.dali_images import DaliJpegDecoder
from datagen.video.decode.decoder import Decoder
from datagen.video.decode.frame_decoder import JPEG_BACKEND
from datagen.video.decode.routes import compare_frames, reference_indices
from datagen.video.frames import FRAME_CODEC
from datagen.video.manifest import probe
from tests.frame_helpers import frame_files, opencv_decode, write_folder, write_zip

INDICES = np.array([5, 3, 3, 0, 40, 23, 1000])  # repeats, out of order, past the end (the last frame)


@pytest.fixture
def sources(footage_frames, tmp_path):
    """The first 24 UCF-101 frames as an official zip (from 1) and the HMDB-51 ones as a folder (from 0)."""
    zipped = frame_files(footage_frames["ucf101"][:24])
    folder = frame_files(footage_frames["hmdb51"], "{:05d}.jpg", start=0)
    return {
        "zip": (probe(write_zip(tmp_path / "v.zip", zipped)), [zipped[f"img_{i + 1:05d}.jpg"] for i in range(24)]),
        "folder": (probe(write_folder(tmp_path / "f", folder)), [folder[f"{i:05d}.jpg"] for i in range(30)]),
    }


def expected(files: list[bytes], indices: np.ndarray) -> np.ndarray:
    """OpenCV's decode of the files the indices name (clamped to the last)."""
    return np.stack([opencv_decode(files[min(i, len(files) - 1)]) for i in indices])


@pytest.mark.parametrize("backend", ["auto", "pyav", "dali"])
@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_every_route_decodes_exactly_the_frames_of_the_numbering(sources, backend, kind):
    video, files = sources[kind]
    decoder = Decoder("cpu", backend, num_threads=2)
    assert decoder.backend_for(video) == ("dali" if backend == "dali" else JPEG_BACKEND)
    clip = decoder.decode(video, INDICES)
    assert clip.shape == (len(INDICES), video.height, video.width, 3)
    assert np.array_equal(clip.numpy(), expected(files, INDICES))


def test_frame_i_of_a_zip_is_frame_i_of_the_video_it_was_extracted_from(sources, footage_frames):
    video, _ = sources["zip"]
    indices = np.arange(2, 22, 3)
    around = reference_indices(indices, 24)
    comparison = compare_frames(
        Decoder("cpu").decode(video, indices).numpy(), indices, footage_frames["ucf101"][around], around
    )
    assert comparison.ok and not comparison.misplaced, comparison.summary()  # JPEG's loss, no shift


def test_frame_sources_and_video_files_mix_in_one_request(sources, shared_videos):
    avi = probe(shared_videos / "ucf101/v_SoccerJuggling_g23_c01.avi")
    requests = [(sources["zip"][0], INDICES), (avi, INDICES[:4]), (sources["folder"][0], INDICES[::-1])]
    for dali in (frozenset(), {FRAME_CODEC}):  # frames by libjpeg-turbo, then by DALI-CPU
        decoder = Decoder("cpu", num_threads=2, dali_codecs=dali)
        many = decoder.decode_many(requests, rgbx=True)
        for (video, indices), clip in zip(requests, many):
            alone = Decoder("cpu", "pyav", num_threads=1).decode(video, indices)
            assert isinstance(clip, torch.Tensor)
            assert torch.equal(clip[..., :3], alone), (dali, video.path)  # DALI's clips stay RGB
    assert decoder.frames_decoded >= 2 * 6


def test_the_first_clip_of_a_frame_class_is_a_probe_that_routes_it(sources, caplog):
    """DALI-CPU's image decoder stands in for nvJPEG here: each class (zip/folder, subsampling, coding) is
    probed once against libjpeg-turbo, verified, and decoded by DALI from then on."""
    decoder = Decoder("cpu", "auto", num_threads=2, dali_codecs={FRAME_CODEC}, verify=True)
    for kind in ("zip", "folder"):
        video, files = sources[kind]
        assert np.array_equal(decoder.decode(video, INDICES).numpy(), expected(files, INDICES))
    labels = {cls.label: route for cls, route in decoder.routes.items()}
    assert set(labels) == {"jpeg-frames/zip/4:2:0/baseline", "jpeg-frames/folder/4:2:0/baseline"}
    assert all(r.backend == "dali" and r.verified and "frames equal" in r.reason for r in labels.values())
    assert decoder.stats["probes"] == 2 and decoder.stats["probe_failures"] == 0
    checks = check_decoding(decoder, [v for v, _ in sources.values()])
    assert [c.verdict for c in checks] == ["PASS", "PASS"]
    cpu = check_decoding(Decoder("cpu"), [sources["zip"][0]])
    assert (cpu[0].backend, cpu[0].verdict) == (JPEG_BACKEND, "reference")


def test_a_dali_decoder_that_returns_the_wrong_frames_is_caught_and_its_class_routed_to_the_cpu(
    sources, monkeypatch, caplog
):
    original = DaliJpegDecoder.decode

    def shifted(self, pictures, targets):  # each frame gets the next one's picture
        return original(self, [*pictures[1:], *pictures[-1:]], targets)

    monkeypatch.setattr(DaliJpegDecoder, "decode", shifted)
    decoder = Decoder("cpu", "auto", num_threads=2, dali_codecs={FRAME_CODEC}, verify=True)
    video, files = sources["zip"]
    with caplog.at_level(logging.WARNING, logger="datagen.video.decode.decoder"):
        clip = decoder.decode(video, INDICES)
    assert np.array_equal(clip.numpy(), expected(files, INDICES))  # decoded by libjpeg-turbo after the probe
    ((cls, route),) = decoder.routes.items()
    assert route.backend == JPEG_BACKEND and route.verified and "misplaced" in route.reason
    assert f"decode class {cls.label} goes to libjpeg-turbo on cpu: " in caplog.text and video.path in caplog.text
    assert [c.verdict for c in check_decoding(decoder, [video])] == ["FAIL"]


def test_a_corrupt_frame_is_reported_with_its_name_and_its_samples_replaced(sources, tmp_path, footage_frames):
    files = frame_files(footage_frames["ucf101"][:24])
    data = bytearray(files["img_00006.jpg"])
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff\xd3" * 32
    bad = probe(write_zip(tmp_path / "bad.zip", files | {"img_00006.jpg": bytes(data)}))  # index reads headers only
    with pytest.raises(VideoDecodeError, match=r"img_00006\.jpg: corrupt JPEG"):
        Decoder("cpu").decode(bad, np.array([4, 5, 6]))
    assert Decoder("cpu").decode(bad, np.array([4, 6])).shape[0] == 2  # the other frames are fine
    generator = Generator([bad, sources["zip"][0]], device="cpu")
    batch = generator.generate([(0, 0, i) for i in range(32)])
    assert len(batch) == 32 and generator.stats["replaced_samples"] >= 1
    assert "img_00006.jpg" in generator.bad_videos[str(tmp_path / "bad.zip")]


def test_a_source_changed_since_indexing_fails_with_what_to_do(sources, tmp_path):
    video, _ = sources["folder"]
    (tmp_path / "f" / "00029.jpg").unlink()
    with pytest.raises(VideoDecodeError, match="holds 29 frames where its manifest says 30: index it again"):
        Decoder("cpu").decode(video, np.array([0]))


def test_a_sample_is_a_function_of_its_key_whatever_decoded_its_frames(sources, tmp_path, shared_videos):
    """Frame sources are videos like any other: DALI's decode and libjpeg-turbo's give the same batch, and the
    official zip of a video gives the video's samples up to JPEG's loss (the same plans, boxes and masks)."""
    videos = [v for v, _ in sources.values()]
    keys = [(3, 1, i) for i in range(8)]
    on_cpu = Generator(videos, device="cpu").generate(keys)
    by_dali = Generator(videos, device="cpu", decoder=Decoder("cpu", "dali")).generate(keys)
    assert torch.equal(on_cpu.clips, by_dali.clips) and torch.equal(on_cpu.boxes, by_dali.boxes)
    avi = probe(shared_videos / "ucf101/v_SoccerJuggling_g23_c01.avi")
    frames = Decoder("cpu", "pyav").decode(avi, np.arange(avi.num_frames)).numpy()
    zipped = probe(write_zip(tmp_path / "official.zip", frame_files(frames)))
    from_video, from_zip = (Generator([v], device="cpu").generate(keys) for v in (avi, zipped))
    assert torch.equal(from_video.boxes, from_zip.boxes) and torch.equal(from_video.visible, from_zip.visible)
    diff = (from_video.clips.float() - from_zip.clips.float()).abs()
    assert diff.mean() < 2.0, diff.mean()  # JPEG at quality 95, then rescaled: about a level
