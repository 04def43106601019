"""Probing and manifests: trustworthy frame counts on real footage, bad files rejected with reasons."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import av
import pytest

from datagen import cli
from datagen.video import manifest as manifest_module
from datagen.video.container import VideoError
from datagen.video.manifest import (
    MANIFEST_VERSION,
    Rejected,
    find_videos,
    index_videos,
    probe,
    read_manifest,
    rejected_list,
    resolve_videos,
    videos_digest,
    write_manifest,
)
from datagen.video.synthetic import synthesize_demo

# From ../shared/videos/README.md: what a full decode gives (container metadata disagrees for HMDB-51).
SHARED = {
    "ucf101/v_SoccerJuggling_g23_c01.avi": ("mpeg4", 320, 240, 29.97, 240),
    "ucf101/v_SoccerJuggling_g24_c01.avi": ("mpeg4", 320, 240, 29.97, 251),
    "hmdb51/hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi": ("mpeg4", 320, 240, 30.0, 83),
    "hmdb51/SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi": ("mpeg4", 320, 240, 30.0, 74),
    "hmdb51/TrumanShow_wave_f_nm_np1_fr_med_26.avi": ("mpeg4", 432, 240, 30.0, 48),
    "hmdb51/RATRACE_wave_f_nm_np1_fr_goo_37.avi": ("mpeg4", 560, 240, 30.0, 72),
    "kinetics/R6llTwEh07w.mp4": ("h264", 340, 256, 30.0, 303),
    "kinetics/SOX5yA1l24A.mp4": ("h264", 340, 256, 29.97, 332),
    "kinetics/WUzgd7C1pWA.mp4": ("h264", 340, 256, 29.97, 327),
    "misc/basketball.mp4": ("h264", 640, 360, 29.97, 333),
    "misc/bikes.mp4": ("h264", 640, 272, 25.0, 250),
    "misc/carphone_pristine.mp4": ("h264", 176, 144, 29.97, 120),
}


def full_decode_count(path) -> int:
    with av.open(str(path), metadata_errors="ignore") as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("name", sorted(SHARED))
def test_probe_of_the_shared_footage_matches_a_full_decode(shared_videos, name):
    codec, width, height, fps, frames = SHARED[name]
    info = probe(shared_videos / name)
    assert (info.codec, info.width, info.height, info.num_frames) == (codec, width, height, frames)
    assert info.fps == pytest.approx(fps, abs=0.01)
    assert info.num_frames == full_decode_count(shared_videos / name)


def test_hmdb_placeholder_chunks_are_not_counted(shared_videos):
    """The HMDB file's container claims one frame more than it holds; the probe must not believe it."""
    path = shared_videos / "hmdb51/hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi"
    with av.open(str(path), metadata_errors="ignore") as container:
        assert container.streams.video[0].frames == 84
    assert probe(path).num_frames == 83


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, demo_dir):
    """Good demo videos next to every kind of bad file a dataset folder can hold."""
    root = tmp_path_factory.mktemp("mixed")
    good = sorted(demo_dir.iterdir())
    for path in good[:3]:
        shutil.copy(path, root / path.name)
    mp4 = next(p for p in good if p.suffix == ".mp4").read_bytes()
    avi = next(p for p in good if p.suffix == ".avi").read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.avi").write_text("these are not the frames you are looking for\n" * 20)
    (root / "cut_header.mp4").write_bytes(mp4[:2000])  # the moov atom is gone: not a container
    (root / "half.avi").write_bytes(avi[: len(avi) // 2])  # a truncated AVI still holds decodable frames
    (root / "README.txt").write_text("not a video extension: never probed")
    (root / "nested").mkdir()
    synthesize_demo(root / "nested", num_videos=1, seconds=0.4, codecs=("h264",))  # 10 frames: too short
    return root


def test_index_accepts_good_videos_and_rejects_bad_ones_with_reasons(mixed_folder):
    videos, rejected = index_videos([mixed_folder], min_frames=16)
    reasons = {r.path.split("/")[-1]: r.reason for r in rejected}
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert reasons["notes.avi"].startswith("not a readable video container")
    assert reasons["cut_header.mp4"].startswith("not a readable video container")
    assert reasons["demo_00_h264.mp4"] == "too short: 10 frames < 16"
    assert len(reasons) == 4
    names = [v.path.split("/")[-1] for v in videos]
    assert names == sorted(names) and "README.txt" not in names
    half = next(v for v in videos if v.path.endswith("half.avi"))
    assert 16 <= half.num_frames < 75 and half.num_frames == full_decode_count(half.path)


@pytest.mark.parametrize("content, reason", [(None, "file not found"), (b"", "empty file (0 bytes)")])
def test_probe_raises_a_clear_error(tmp_path, content, reason):
    path = tmp_path / "clip.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoError) as info:
        probe(path)
    assert info.value.reason == reason and info.value.path == str(path)


def test_manifest_round_trip_keeps_paths_relative_inside_its_folder(mixed_folder, demo_dir, tmp_path):
    videos, rejected = index_videos([mixed_folder])
    outside = resolve_videos([demo_dir])[:1]
    manifest = mixed_folder / "manifest.json"
    write_manifest(manifest, videos + outside, rejected)
    doc = json.loads(manifest.read_text())
    assert doc["format"] == "ctp-video-manifest" and doc["version"] == MANIFEST_VERSION
    assert [v["path"] for v in doc["videos"][:-1]] == [
        Path(v.path).relative_to(mixed_folder).as_posix() for v in videos
    ]
    assert doc["videos"][-1]["path"] == outside[0].path  # outside the manifest's folder: absolute
    moved = tmp_path / "moved"
    shutil.copytree(mixed_folder, moved)  # a dataset folder moves together with its manifest
    back_videos, back_rejected = read_manifest(moved / "manifest.json")
    assert [v.num_frames for v in back_videos] == [v.num_frames for v in videos + outside]
    assert [v.path for v in back_videos] == [str(moved / Path(v.path).relative_to(mixed_folder)) for v in videos] + [
        outside[0].path
    ]
    assert back_rejected == [Rejected(str(moved / Path(r.path).relative_to(mixed_folder)), r.reason) for r in rejected]


def test_read_manifest_refuses_other_files_and_versions(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"videos": []}')
    with pytest.raises(ValueError, match="ctp-datagen index"):
        read_manifest(other)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"format": "ctp-video-manifest", "version": MANIFEST_VERSION + 1, "videos": []}))
    with pytest.raises(ValueError, match="not supported"):
        read_manifest(newer)


def test_resolve_videos_merges_files_folders_and_manifests_in_path_order(mixed_folder, demo_dir, tmp_path, caplog):
    videos, rejected = index_videos([mixed_folder])
    write_manifest(tmp_path / "m.json", videos[:2], rejected)
    single = sorted(demo_dir.iterdir())[-1]
    with caplog.at_level(logging.WARNING):
        resolved = resolve_videos([str(single), str(tmp_path / "m.json"), str(mixed_folder)])
    assert [v.path for v in resolved] == sorted({v.path for v in videos} | {str(single)})
    assert "empty file (0 bytes)" in caplog.text
    with pytest.raises(ValueError, match="no usable videos"):
        resolve_videos([str(mixed_folder / "empty.mp4")])


def test_index_command_writes_the_manifest_and_prints_a_summary(mixed_folder, tmp_path, capsys):
    out = tmp_path / "index.json"
    assert cli.main(["index", str(mixed_folder), "--out", str(out), "--min-frames", "16", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    videos, rejected = read_manifest(out)
    assert len(videos) == 4 and len(rejected) == 4
    assert "empty file" in printed and "too short" in printed and "not a readable video container" in printed
    assert printed.splitlines()[-2].split()[-1] == "8"  # the total row
    listed = {
        line.split(": ", 1)[0].strip().split("/")[-1]: line.split(": ", 1)[1]
        for line in printed.splitlines()
        if line.startswith("  ")
    }
    assert listed["notes.avi"].startswith("not a readable video container")  # a text file named like a video
    assert listed["empty.mp4"] == "empty file (0 bytes)" and set(listed) == {
        "notes.avi",
        "empty.mp4",
        "cut_header.mp4",
        "demo_00_h264.mp4",
    }


def test_a_long_rejected_list_is_cut_and_points_to_the_manifest():
    text = rejected_list([Rejected(f"/d/v{i}.mp4", "empty file (0 bytes)") for i in range(25)], "m.json", limit=20)
    assert text.splitlines()[0] == "rejected 25 file(s):" and "/d/v19.mp4: empty file" in text and "v20.mp4" not in text
    assert text.splitlines()[-1] == '  ... and 5 more, see the manifest m.json ("rejected")'


def test_index_keeps_linked_paths_as_given_and_a_folder_equals_its_manifest(demo_dir, tmp_path, capsys):
    """Class folders of symbolic links into one pool: each link is a video of its class, as in the containers."""
    pool = sorted(demo_dir.iterdir())[:3]
    dataset = tmp_path / "dataset"
    for label in ("jump", "run"):
        (dataset / label).mkdir(parents=True)
        for i, target in enumerate(pool):
            (dataset / label / f"{label}_{i}{target.suffix}").symlink_to(target)
    out = dataset / "train.json"
    assert cli.main(["index", str(dataset), "--out", str(out)]) == 0
    stored = [v["path"] for v in json.loads(out.read_text())["videos"]]
    assert stored == [f"{label}/{label}_{i}{t.suffix}" for label in ("jump", "run") for i, t in enumerate(pool)]
    from_manifest, from_folder = resolve_videos([str(out)]), resolve_videos([str(dataset)])
    assert [v.path for v in from_manifest] == [v.path for v in from_folder] == [str(dataset / p) for p in stored]
    assert videos_digest(from_manifest) == videos_digest(from_folder), "trainer and replicas agree either way"


@pytest.mark.parametrize("make, message", [(None, "no such file or folder"), ("empty", "no video file in")])
def test_index_of_a_wrong_path_or_an_empty_folder_says_so_and_writes_nothing(tmp_path, capsys, make, message):
    root = tmp_path / "videos"
    if make:
        root.mkdir()
        (root / "readme.txt").write_text("no videos here")
    out = tmp_path / "index.json"
    assert cli.main(["index", str(root), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_index_keeps_the_manifest_a_run_of_unusable_videos_would_empty(tmp_path, demo_dir, capsys):
    out = tmp_path / "index.json"
    assert cli.main(["index", str(demo_dir), "--out", str(out)]) == 0
    before = out.read_text()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mp4").write_bytes(b"not a video")
    assert cli.main(["index", str(broken), "--out", str(out)]) == 1
    assert "no usable video among 1" in capsys.readouterr().err and out.read_text() == before


def test_short_videos_and_progress_are_the_same_for_index_as_for_pretraining(mixed_folder, monkeypatch, caplog):
    """One minimum for every command (a 10-frame video is usable: its last frame repeats), and in a log file
    plain progress lines instead of a bar's carriage returns."""
    monkeypatch.setattr(manifest_module, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="datagen.video.manifest"):
        videos, _ = index_videos([mixed_folder], progress=True)
    assert {Path(v.path).name for v in videos} >= {"demo_00_h264.mp4"}, "the 10-frame video is kept"
    assert [v.path for v in videos] == [v.path for v in resolve_videos([mixed_folder])]
    total = len(find_videos(mixed_folder))
    assert f"probed {total} of {total} videos" in caplog.messages
