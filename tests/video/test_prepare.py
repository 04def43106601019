"""`ctp-datagen prepare` on real footage: same frames and timestamps, key frames every G, resumable, sources
untouched, corrupt files reported, and a manifest the other commands accept."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import av
import pytest

from datagen import cli
from datagen.video.container import open_video
from datagen.video.manifest import probe, read_manifest
from datagen.video.prepare import Settings, check_settings, prepare
from trainer.downstream.config import SplitConfig
from trainer.downstream.datasets import read_split

GOP = 8  # not the default, so the test sees the option applied
SOURCES = {  # a UCF-101-like tree: class folders, MPEG-4 AVIs (one with placeholder frames), an H.264 MP4
    "SoccerJuggling/v_SoccerJuggling_g23_c01.avi": "ucf101/v_SoccerJuggling_g23_c01.avi",
    "Wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi": "hmdb51/TrumanShow_wave_f_nm_np1_fr_med_26.avi",
    "Wave/carphone.mp4": "misc/carphone_pristine.mp4",
}


@pytest.fixture(scope="module")
def dataset(shared_videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name, shared in SOURCES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shared_videos / shared, src / name)
    (src / "Wave" / "broken.avi").write_bytes(b"RIFF" + bytes(range(256)) * 40)
    return src


def fingerprint(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def prepared(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    before = fingerprint(dataset)
    out = tmp_path_factory.mktemp("prepared")
    report = prepare([dataset], out, Settings(short_side=144, gop=GOP), workers=2)
    return out, report, before


def test_sources_untouched_and_tree_mirrored(dataset: Path, prepared) -> None:
    out, report, before = prepared
    assert fingerprint(dataset) == before
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4")) == sorted(
        str(Path(n).with_suffix(".mp4")) for n in SOURCES
    )
    assert report["counts"] == {"done": 3, "skipped": 0, "kept": 0, "rejected": 1}
    assert report["bytes_after"] > 0 and report["bytes_before"] == sum((dataset / n).stat().st_size for n in SOURCES)


def test_corrupt_source_reported_in_manifest(dataset: Path, prepared) -> None:
    out, _, _ = prepared
    videos, rejected = read_manifest(out / "manifest.json")
    assert [Path(r.path) for r in rejected] == [dataset / "Wave" / "broken.avi"]
    assert "not a readable video container" in rejected[0].reason
    assert len(videos) == 3 and "broken.avi" in (out / "prepare.log").read_text()


def frame_times(path: Path) -> list[float]:
    with open_video(path) as container:
        return [float(f.time) for f in container.decode(video=0)]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_same_frames_timestamps_short_side_and_gop(dataset: Path, prepared, name: str) -> None:
    out, _, _ = prepared
    source, copy = dataset / name, out / Path(name).with_suffix(".mp4")
    src_info, info = probe(source), probe(copy)
    assert info.num_frames == src_info.num_frames and info.codec == "h264"
    src_times, times = sorted(frame_times(source)), frame_times(copy)  # some AVIs' decoders swap B-frame times
    assert len(times) == len(src_times) == info.num_frames
    start = src_times[0] - times[0]  # MP4 may shift the first timestamp; the spacing must be the source's
    assert max(abs(a - b - start) for a, b in zip(src_times, times)) < 1 / src_info.fps
    assert min(info.width, info.height) == min(144, src_info.width, src_info.height)
    assert abs(info.width / info.height - src_info.width / src_info.height) < 0.03
    with av.open(str(copy)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        assert stream.codec_context.pix_fmt == "yuv420p" and not container.streams.audio
    keys = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert keys == list(range(0, len(packets), GOP))


def test_copies_are_tuned_for_fast_decoding(prepared) -> None:
    # x264 records its options in the stream: no CABAC and no deblocking filter (tune=fastdecode).
    out, _, _ = prepared
    for copy in out.rglob("*.mp4"):
        options = copy.read_bytes().split(b"options: ", 1)[1][:2000]
        assert b"cabac=0" in options and b"deblock=0" in options, copy


def test_a_folder_prepared_before_the_tune_existed_is_not_resumed_with_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "prepare.json").write_text('{"short_side": 144, "gop": 16, "crf": 18}\n')  # an older prepare.json
    with pytest.raises(ValueError, match="tune=''"):
        check_settings(out, Settings())
    check_settings(out, Settings(tune=""))  # the same encoding: resumable


def test_resume_skips_finished_and_redoes_half_written(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare([dataset / "Wave"], out, Settings(gop=GOP), workers=1)
    finished, redone = out / "carphone.mp4", out / "TrumanShow_wave_f_nm_np1_fr_med_26.mp4"
    stamp = finished.stat().st_mtime_ns
    redone.unlink()
    part = redone.with_name(f".{redone.name}.part")
    part.write_bytes(b"\x00\x00\x00\x18ftypmp42 half written")  # what a killed encode leaves behind
    report = prepare([dataset / "Wave"], out, Settings(gop=GOP), workers=1)
    assert report["counts"] == {"done": 1, "skipped": 1, "kept": 0, "rejected": 1}
    assert finished.stat().st_mtime_ns == stamp and not part.exists()
    assert probe(redone).num_frames == probe(dataset / "Wave" / "TrumanShow_wave_f_nm_np1_fr_med_26.avi").num_frames
    with pytest.raises(ValueError, match="prepared with"):
        prepare([dataset / "Wave"], out, Settings(gop=GOP * 2), workers=1)


def test_manifest_accepted_by_sample_and_split_files_resolve(prepared, tmp_path: Path) -> None:
    out, _, _ = prepared
    npz = tmp_path / "s.npz"
    assert (
        cli.main(
            [
                "sample",
                "--videos",
                str(out / "manifest.json"),
                "--num",
                "4",
                "--batch-size",
                "4",
                "--device",
                "cpu",
                "--backend",
                "pyav",
                "--out",
                str(npz),
            ]
        )
        == 0
    )
    assert npz.is_file()
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 SoccerJuggling\n2 Wave\n")
    (lists / "trainlist01.txt").write_text("SoccerJuggling/v_SoccerJuggling_g23_c01.avi 1\nWave/carphone.mp4 2\n")
    listing = read_split(SplitConfig(format="ucf101", videos=str(out), annotations=str(lists), subset="train"))
    assert [p.relative_to(out).as_posix() for p, _ in listing.entries] == [
        "SoccerJuggling/v_SoccerJuggling_g23_c01.mp4",
        "Wave/carphone.mp4",
    ]
    assert not listing.missing


def test_cli_reports_size_and_time(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert (
        cli.main(["prepare", str(dataset / "SoccerJuggling"), "--out", str(out), "--gop", "4", "--workers", "1"]) == 0
    )
    text = capsys.readouterr().out
    assert "1 encoded, 0 already done, 0 frame sources kept as they are, 0 rejected in" in text and "MiB ->" in text
    assert json.loads((out / "prepare.json").read_text())["gop"] == 4


def test_out_inside_or_equal_to_source(dataset: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(dataset / "Wave", src)
    with pytest.raises(ValueError, match="is the source folder"):
        prepare([src], src)
    assert not (src / "prepare.json").exists()
    prepare([src], src / "prepared", Settings(gop=GOP), workers=1)
    report = prepare([src], src / "prepared", Settings(gop=GOP), workers=1)  # its own outputs are not sources
    assert report["counts"] == {"done": 0, "skipped": 2, "kept": 0, "rejected": 1}


def test_frame_sources_are_kept_where_they_are_and_listed(dataset: Path, footage_frames, tmp_path: Path) -> None:
    """JPEG frames are random access already: `prepare` lists a zip or frame folder among the copies, untouched."""
    from tests.frame_helpers import frame_files, write_zip

    src = tmp_path / "src"
    shutil.copytree(dataset / "SoccerJuggling", src / "SoccerJuggling")
    zipped = write_zip(src / "Zips" / "v_x.zip", frame_files(footage_frames["ucf101"][:20]))
    report = prepare([src], tmp_path / "out", Settings(gop=GOP), workers=1)
    assert report["counts"] == {"done": 1, "skipped": 0, "kept": 1, "rejected": 0}
    videos, _ = read_manifest(tmp_path / "out" / "manifest.json")
    assert sorted(Path(v.path).name for v in videos) == ["v_SoccerJuggling_g23_c01.mp4", "v_x.zip"]
    assert Path(next(v.path for v in videos if v.codec == "jpeg-frames")) == zipped
    assert not list((tmp_path / "out").rglob("v_x*"))
