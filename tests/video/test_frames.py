"""Frame sources: namings found or given, numbering from 0 or 1, every kind of bad input reported per video with
its reason; indexing, manifests and digests with frame sources mixed with video files."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from datagen import cli
from datagen.video.container import VideoError, VideoInfo
from datagen.video.frames import (
    FRAME_CODEC,
    FrameSourceError,
    FrameSources,
    Naming,
    detect_naming,
    list_frames,
    probe_frames,
)
from datagen.video.manifest import (
    find_videos,
    index_videos,
    probe,
    read_manifest,
    resolve_videos,
    videos_digest,
    write_manifest,
)
from tests.frame_helpers import OFFICIAL, encode, frame_files, write_folder, write_zip


def test_a_frame_format_is_parsed_as_the_official_code_writes_it():
    assert Naming.parse("img_{:05d}.jpg") == Naming("img_", 5, ".jpg")
    assert Naming.parse("{:05d}.jpg") == Naming("", 5, ".jpg")
    assert Naming.parse("frame{}.jpeg") == Naming("frame", 0, ".jpeg")
    assert Naming.parse("img_{:05d}.jpg").name(7) == "img_00007.jpg"
    for wrong in ("img_%05d.jpg", "img_{:05d}.png", "{}_{}.jpg", "img.jpg", "{:x}.jpg", "{0:5d}.jpg"):
        with pytest.raises(ValueError, match="frame format"):
            Naming.parse(wrong)


def test_a_naming_reads_numbers_only_of_its_own_names():
    naming = Naming("img_", 5, ".jpg")
    assert [naming.number(n) for n in ("img_00012.jpg", "img_0012.jpg", "x_00012.jpg", "img_00012.png")] == [
        12,
        None,
        None,
        None,
    ]
    unpadded = Naming("", 0, ".jpg")
    assert [unpadded.number(n) for n in ("0.jpg", "12.jpg", "012.jpg", "1a.jpg")] == [0, 12, None, None]


def test_the_naming_is_found_from_the_files_img_first():
    # MMAction2 keeps optical flow (x_, y_) beside the RGB frames: img_ wins even when flow has more files
    names = [f"{p}_{i:05d}.jpg" for p in ("x", "y") for i in range(1, 11)] + [f"img_{i:05d}.jpg" for i in range(1, 10)]
    assert detect_naming(names) == Naming("img_", 5, ".jpg")
    assert detect_naming([f"{i:05d}.jpg" for i in range(1, 4)] + ["Thumbs.db", "notes.txt"]) == Naming("", 5, ".jpg")
    assert detect_naming([f"{i}.jpg" for i in range(1, 13)]) == Naming("", 0, ".jpg")
    assert detect_naming(["notes.txt", "cover.jpg"]) is None


def test_frame_i_is_the_ith_picture_of_the_numbering_from_0_or_1(tmp_path):
    one = list_frames(write_folder(tmp_path / "one", {f"img_{i:05d}.jpg": b"x" for i in range(1, 13)}))
    zero = list_frames(write_zip(tmp_path / "zero.zip", {f"{i:05d}.jpg": b"x" for i in reversed(range(12))}))
    unpadded = list_frames(write_folder(tmp_path / "unpadded", {f"{i}.jpg": b"x" for i in range(1, 13)}))
    assert one.names[0] == "img_00001.jpg" and one.names[11] == "img_00012.jpg" and one.kind == "folder"
    assert zero.names[0] == "00000.jpg" and zero.names[11] == "00011.jpg" and zero.kind == "zip"
    assert list(unpadded.names[8:11]) == ["9.jpg", "10.jpg", "11.jpg"]  # by number, not by name


def test_a_zip_with_its_frames_in_a_folder_and_mac_metadata_is_read(tmp_path):
    files = {f"v_x/img_{i:05d}.jpg": b"x" for i in range(1, 6)} | {
        f"__MACOSX/v_x/._img_{i:05d}.jpg": b"" for i in range(1, 6)
    }
    listing = list_frames(write_zip(tmp_path / "v.zip", files))
    assert listing.naming == Naming("v_x/img_", 5, ".jpg") and len(listing.names) == 5


@pytest.fixture
def frames(footage_frames):
    return footage_frames["ucf101"][:24]


def corrupt_crc(path: Path) -> None:
    """Flip a byte inside the stored data of the zip's 5th member: its CRC no longer matches."""
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[4]
    data = bytearray(path.read_bytes())
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


BAD_SOURCES = {
    "a gap in the numbering": (
        lambda files: {k: v for k, v in files.items() if not "img_00007.jpg" <= k <= "img_00010.jpg"},
        "frames missing from its numbering: 4 of 24, img_00007.jpg–img_00010.jpg",
    ),
    "a numbering that starts late": (
        lambda files: {k: v for k, v in files.items() if k > "img_00002.jpg"},
        "frames missing from its numbering: 2 of 24, img_00001.jpg–img_00002.jpg",
    ),
    "a PNG in a frame's place": (
        lambda files: files | {"img_00005.jpg": cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()},
        "unreadable frames: 1 of 24 (img_00005.jpg: not a JPEG (a PNG image))",
    ),
    "a PNG named as a PNG": (
        lambda files: {k: v for k, v in files.items() if k != "img_00005.jpg"} | {"img_00005.png": b"\x89PNG"},
        "frames missing from its numbering: 1 of 24, img_00005.jpg (img_00005.png is there: not a JPEG frame)",
    ),
    "a truncated frame": (
        lambda files: files | {"img_00009.jpg": files["img_00009.jpg"][:3000]},
        "unreadable frames: 1 of 24 (img_00009.jpg: truncated JPEG (no end-of-image marker))",
    ),
    "an empty frame": (
        lambda files: files | {"img_00003.jpg": b"", "img_00004.jpg": b"GIF89a"},
        "unreadable frames: 2 of 24 (img_00003.jpg: empty file (0 bytes); img_00004.jpg: not a JPEG (a GIF image))",
    ),
    "a frame of another size": (
        lambda files: files | {"img_00011.jpg": encode(np.zeros((240, 432, 3), np.uint8))},
        "unreadable frames: 1 of 24 (img_00011.jpg: a 432x240 picture where img_00001.jpg is 320x240)",
    ),
    "no frames at all": (
        lambda files: {"readme.txt": b"hello"},
        "no JPEG frames (names like img_00001.jpg or 00001.jpg)",
    ),
}


@pytest.mark.parametrize("kind", ["zip", "folder"])
@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_frame_sources_are_refused_with_the_frame_and_the_reason(frames, tmp_path, kind, case):
    change, reason = BAD_SOURCES[case]
    files = change(frame_files(frames))
    path = write_zip(tmp_path / "v.zip", files) if kind == "zip" else write_folder(tmp_path / "v", files)
    with pytest.raises(VideoError) as caught:
        probe(path)
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert caught.value.path == str(path)


def test_zips_that_are_empty_damaged_or_no_zips_are_refused(frames, tmp_path):
    empty = write_zip(tmp_path / "empty.zip", {})
    damaged = write_zip(tmp_path / "damaged.zip", frame_files(frames))
    corrupt_crc(damaged)
    not_a_zip = tmp_path / "not.zip"
    not_a_zip.write_bytes(b"PK but not really")
    reasons = {}
    for path in (empty, damaged, not_a_zip):
        with pytest.raises(VideoError) as caught:
            probe(path)
        reasons[path.name] = caught.value.reason
    assert reasons["empty.zip"] == "empty zip: no frames"
    assert reasons["damaged.zip"].startswith("unreadable frames: 1 of 24 (img_00005.jpg cannot be read (Bad CRC-32")
    assert reasons["not.zip"].startswith("not a readable zip (")


def test_probe_reads_count_size_and_naming(frames, tmp_path):
    zipped = probe(write_zip(tmp_path / "v.zip", frame_files(frames)))
    folder = probe(write_folder(tmp_path / "f", frame_files(frames[:20], "{:05d}.jpg", start=0)))
    assert zipped == VideoInfo(str(tmp_path / "v.zip"), 24, 0.0, 320, 240, FRAME_CODEC, OFFICIAL)
    assert folder == VideoInfo(str(tmp_path / "f"), 20, 0.0, 320, 240, FRAME_CODEC, "{:05d}.jpg")
    listing, header = probe_frames(tmp_path / "v.zip")
    assert (header.sampling, header.coding) == ("4:2:0", "baseline") and listing.names[-1] == "img_00024.jpg"


def test_a_given_frame_format_overrides_the_one_found(frames, tmp_path):
    files = frame_files(frames[:20]) | frame_files(frames[:18], "{:05d}.jpg")
    path = write_folder(tmp_path / "both", files)
    assert probe(path).frame_fmt == OFFICIAL and probe(path).num_frames == 20
    assert probe(path, "{:05d}.jpg").num_frames == 18


def test_opened_sources_read_the_frames_bytes_and_name_the_unreadable_one(frames, tmp_path):
    files = frame_files(frames)
    stored = write_zip(tmp_path / "v.zip", files)
    deflated = tmp_path / "deflated.zip"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.extra = b"\x55\x54\x05\x00\x01\x00\x00\x00\x00"  # a local extra field, as Info-ZIP writes
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)
    for path in (stored, deflated):
        source = FrameSources(capacity=1).get(str(path))
        assert source.read(0) == files["img_00001.jpg"] and source.read(23) == files["img_00024.jpg"]
    corrupt_crc(stored)
    reopened = FrameSources().get(str(stored))
    assert reopened.read(4) != files["img_00005.jpg"]  # served by offset: the decoder meets the damage
    with pytest.raises(FrameSourceError, match=r"img_00005.jpg cannot be read \(Bad CRC-32"):
        reopened.read(4, check=True)  # as the index reads


def test_find_videos_finds_zips_frame_folders_and_video_files_in_a_dataset_tree(frames, shared_videos, tmp_path):
    files = frame_files(frames[:16])
    write_folder(tmp_path / "a" / "v1", files)
    write_zip(tmp_path / "a" / "v2.zip", files)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "v3.avi").write_bytes((shared_videos / "ucf101/v_SoccerJuggling_g23_c01.avi").read_bytes())
    (tmp_path / "b" / "cover.jpg").write_bytes(files["img_00001.jpg"])  # not numbered: not a frame
    assert find_videos(tmp_path) == [tmp_path / "a" / "v1", tmp_path / "a" / "v2.zip", tmp_path / "b" / "v3.avi"]
    assert find_videos(tmp_path / "a" / "v1") == [tmp_path / "a" / "v1"]  # a frame folder given is itself


@pytest.fixture
def mixed(frames, shared_videos, tmp_path):
    """A dataset folder of a video file, a zip, a frame folder, and a zip with a gap."""
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    video = root / "videos" / "v_SoccerJuggling_g23_c01.avi"
    video.write_bytes((shared_videos / "ucf101" / video.name).read_bytes())
    write_zip(root / "zips" / "good.zip", frame_files(frames))
    write_folder(root / "rawframes" / "good", frame_files(frames[:20]))
    write_zip(root / "zips" / "gap.zip", {k: v for k, v in frame_files(frames).items() if k != "img_00012.jpg"})
    return root


def test_index_takes_frame_sources_mixed_with_videos_and_reports_each(mixed, tmp_path, capsys):
    manifest = tmp_path / "m.json"
    assert cli.main(["index", str(mixed), "--out", str(manifest), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{mixed / 'zips' / 'gap.zip'}: frames missing from its numbering: 1 of 24, img_00012.jpg" in out
    assert "jpeg-frames (img_{:05d}.jpg)" in out and "mpeg4" in out
    videos, rejected = read_manifest(manifest)
    assert [(Path(v.path).name, v.codec, v.num_frames, v.frame_fmt) for v in videos] == [
        ("good", FRAME_CODEC, 20, OFFICIAL),
        ("v_SoccerJuggling_g23_c01.avi", "mpeg4", 240, ""),
        ("good.zip", FRAME_CODEC, 24, OFFICIAL),
    ]
    assert [Path(r.path).name for r in rejected] == ["gap.zip"]
    entries = json.loads(manifest.read_text())["videos"]
    assert "frame_fmt" not in entries[1] and entries[0]["frame_fmt"] == OFFICIAL  # video files' entries unchanged
    assert resolve_videos([manifest]) == resolve_videos([mixed])  # the manifest and a fresh probe agree


def test_frame_sources_count_in_the_digest_and_video_files_keep_theirs(mixed, tmp_path):
    videos, _ = index_videos([mixed])
    old_rule = hashlib.sha256(json.dumps([[v.path, v.num_frames] for v in videos[1:2]]).encode()).hexdigest()[:16]
    assert videos_digest(videos[1:2]) == old_rule  # a list of video files has the digest it had
    renamed = [VideoInfo(**(videos[0].fields() | {"frame_fmt": "{:05d}.jpg"}))]
    assert videos_digest(videos[:1]) != videos_digest(renamed)
    write_manifest(tmp_path / "m.json", videos)
    assert read_manifest(tmp_path / "m.json")[0] == videos


def test_generating_commands_take_frame_sources_mixed_with_video_files(mixed, tmp_path):
    """`--videos` of every generating command resolves as `index` does: a zip, a frame folder and an AVI."""
    out = tmp_path / "s.npz"
    videos = [str(mixed / "zips" / "good.zip"), str(mixed / "rawframes" / "good"), str(mixed / "videos")]
    assert cli.main(["sample", "--videos", *videos, "--device", "cpu", "--num", "6", "--out", str(out)]) == 0
    again = tmp_path / "again.npz"
    assert cli.main(["sample", "--videos", *videos, "--device", "cpu", "--num", "6", "--out", str(again)]) == 0
    first, second = np.load(out), np.load(again)
    assert first["clips"].shape == (6, 16, 112, 112, 3)
    assert np.array_equal(first["clips"], second["clips"]) and np.array_equal(first["boxes"], second["boxes"])


def test_pretraining_takes_the_official_zips(mixed, tmp_path):
    """`ctp-train pretrain data.videos=[...]` on official-style zips and a frame folder, one short epoch."""
    from trainer.config import load_train_config
    from trainer.pretrain.loop import pretrain
    from trainer.runtime.metrics_log import read_records

    videos = f"data.videos=[{mixed / 'zips' / 'good.zip'},{mixed / 'rawframes'}]"
    run = [videos, f"run.out_dir={tmp_path / 'run'}", "data.batch_size=2", "data.clips_per_video=2", "optim.epochs=1"]
    pretrain(load_train_config("tiny_cpu", [*run, "eval.clips=2", "run.progress=false", "run.log_every=1"]))
    steps = [r for r in read_records(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(np.isfinite(r["loss"]) for r in steps)
