"""Split-file readers on the official formats (fixtures written here), malformed lines, label subsets, probing,
and the split config."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from datagen.video.container import VideoInfo
from trainer.downstream.config import SplitConfig, load_downstream_config
from trainer.downstream.datasets import LabelledSet, SplitFileError, label_subset, open_split, read_split


def touch(root: Path, *relative: str) -> None:
    for rel in relative:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")


@pytest.fixture()
def ucf(tmp_path: Path) -> tuple[Path, Path]:
    videos, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    # The official files use CRLF line endings and end with a newline.
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    (lists / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        b"HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n\r\n"
        b"YoYo/v_YoYo_g08_c01.avi 3\r\nYoYo/v_YoYo_g09_c01.avi 3\r\n"
    )
    (lists / "testlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\nYoYo/v_YoYo_g01_c01.avi\r\n"
    )
    touch(
        videos,
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "YoYo/v_YoYo_g08_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "YoYo/v_YoYo_g01_c01.avi",
    )
    return videos, lists  # v_YoYo_g09_c01.avi is listed but missing


def ucf_split(ucf: tuple[Path, Path], subset: str) -> SplitConfig:
    return SplitConfig("ucf101", str(ucf[0]), str(ucf[1]), subset, 1)


def test_ucf101_train_and_test_lists(ucf):
    train = read_split(ucf_split(ucf, "train"))
    assert train.classes == ("ApplyEyeMakeup", "HandstandPushups", "YoYo")
    assert [(p.relative_to(ucf[0]).as_posix(), label) for p, label in train.entries] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0),
        ("HandstandPushups/v_HandStandPushups_g08_c01.avi", 1),
        ("YoYo/v_YoYo_g08_c01.avi", 2),
    ]
    assert len(train.missing) == 1
    assert train.missing[0].path.endswith("v_YoYo_g09_c01.avi") and "trainlist01.txt:5" in train.missing[0].reason
    test = read_split(ucf_split(ucf, "test"))
    assert [label for _, label in test.entries] == [0, 2] and not test.missing


@pytest.mark.parametrize(
    "file, content, where, problem",
    [
        (
            "trainlist01.txt",
            "ApplyEyeMakeup/a.avi 1\nYoYo/b.avi\n",
            "trainlist01.txt:2",
            "expected '<class>/<video> <index>'",
        ),
        ("trainlist01.txt", "YoYo/b.avi 4\n", "trainlist01.txt:1", "class index '4' is not in 1..3"),
        ("trainlist01.txt", "YoYo/b.avi 1\n", "trainlist01.txt:1", "disagrees with the folder 'YoYo'"),
        (
            "trainlist01.txt",
            "YoYo/b.avi 3\nYoYo/b.avi 3\n",
            "trainlist01.txt:2",
            "listed twice (first at trainlist01.txt:1)",
        ),
        ("testlist01.txt", "Juggling/c.avi\n", "testlist01.txt:1", "class folder 'Juggling' is not in classInd.txt"),
        ("testlist01.txt", "YoYo/c.avi 3 extra\n", "testlist01.txt:1", "expected '<class>/<video>'"),
        ("classInd.txt", "1 ApplyEyeMakeup\n3 YoYo\n", "classInd.txt:2", "expected 2, got 3"),
        ("classInd.txt", "1 ApplyEyeMakeup\nYoYo\n", "classInd.txt:2", "expected '<index> <class>'"),
    ],
)
def test_ucf101_malformed_lines_name_file_and_line(ucf, file, content, where, problem):
    (ucf[1] / file).write_text(content)
    subset = "test" if file == "testlist01.txt" else "train"
    with pytest.raises(SplitFileError) as error:
        read_split(ucf_split(ucf, subset))
    message = str(error.value)
    assert message.startswith(str(ucf[1] / where.split(":")[0]) + ":" + where.split(":")[1] + ":"), message
    assert problem in message


def test_missing_annotation_files_are_named(ucf, tmp_path):
    (ucf[1] / "testlist01.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testlist01.txt"):
        read_split(ucf_split(ucf, "test"))
    with pytest.raises(FileNotFoundError, match="trainlist03.txt"):
        read_split(SplitConfig("ucf101", str(ucf[0]), str(ucf[1]), "train", 3))
    with pytest.raises(FileNotFoundError, match="video folder"):
        read_split(SplitConfig("ucf101", str(tmp_path / "nowhere"), str(ucf[1])))
    with pytest.raises(ValueError, match="subset must be one of"):
        read_split(SplitConfig("ucf101", str(ucf[0]), str(ucf[1]), "validation"))
    with pytest.raises(ValueError, match="needs `annotations`"):
        read_split(SplitConfig("hmdb51", str(ucf[0])))


def write_hmdb(tmp_path: Path) -> tuple[Path, Path]:
    videos, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    # Official lines end with a space; files exist for every split number.
    (splits / "wave_test_split1.txt").write_text("w_a.avi 1 \nw_b.avi 2 \nw_c.avi 0 \nw_d.avi 1 \n")
    (splits / "brush_hair_test_split1.txt").write_text("b_a.avi 2 \nb_b.avi 1 \n")
    (splits / "wave_test_split2.txt").write_text("w_a.avi 2 \nw_b.avi 1 \nw_c.avi 1 \nw_d.avi 0 \n")
    (splits / "brush_hair_test_split2.txt").write_text("b_a.avi 1 \nb_b.avi 2 \n")
    touch(
        videos,
        "wave/w_a.avi",
        "wave/w_b.avi",
        "wave/w_c.avi",
        "wave/w_d.avi",
        "brush_hair/b_a.avi",
        "brush_hair/b_b.avi",
    )
    return videos, splits


def test_a_hmdb51_class_without_its_split_file_is_named_in_a_warning(tmp_path, caplog):
    videos, splits = write_hmdb(tmp_path)
    (splits / "wave_test_split2.txt").unlink()  # its folder and its split-1 file remain
    with caplog.at_level("WARNING", logger="trainer.downstream.datasets"):
        listing = read_split(SplitConfig("hmdb51", str(videos), str(splits), "train", 2))
    assert listing.classes == ("brush_hair",)
    assert "hmdb51 split 2: no split file '<class>_test_split2.txt'" in caplog.text and caplog.text.rstrip().endswith(
        "1 class(es), left out of the split: wave"
    )
    caplog.clear()
    read_split(SplitConfig("hmdb51", str(videos), str(splits), "train", 1))
    assert not caplog.records, "a complete split warns of nothing"


def test_hmdb51_split_files(tmp_path):
    videos, splits = write_hmdb(tmp_path)

    def names(subset: str, split: int) -> list[tuple[str, int]]:
        listing = read_split(SplitConfig("hmdb51", str(videos), str(splits), subset, split))
        assert listing.classes == ("brush_hair", "wave")
        return [(p.name, label) for p, label in listing.entries]

    assert names("train", 1) == [("b_b.avi", 0), ("w_a.avi", 1), ("w_d.avi", 1)]
    assert names("test", 1) == [("b_a.avi", 0), ("w_b.avi", 1)]
    assert names("train", 2) == [("b_a.avi", 0), ("w_b.avi", 1), ("w_c.avi", 1)]
    with pytest.raises(FileNotFoundError, match="_test_split3.txt"):
        read_split(SplitConfig("hmdb51", str(videos), str(splits), "train", 3))
    (splits / "wave_test_split1.txt").write_text("w_a.avi 1\nw_b.avi 3\n")
    with pytest.raises(SplitFileError, match=r"wave_test_split1.txt:2: expected '<video> <0\|1\|2>', got 'w_b.avi 3'"):
        read_split(SplitConfig("hmdb51", str(videos), str(splits), "test", 1))


def test_kinetics_csv(tmp_path):
    videos, csv_file = tmp_path / "k400" / "val", tmp_path / "validate.csv"
    csv_file.write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "abseiling,0wR5jVB-WPk,417,427,val,0\n"
        '"passing American football (in game)",R6llTwEh07w,6,16,val,0\n'
        "abseiling,3caPS4FHFF8,36,46,val,0\n"
        "zumba,gone0000000,10,20,val,0\n"
    )
    touch(videos, "abseiling/0wR5jVB-WPk_000417_000427.mp4", "R6llTwEh07w.mp4", "x/3caPS4FHFF8_000036_000046.mkv")
    listing = read_split(SplitConfig("kinetics", str(videos), str(csv_file)))
    assert listing.classes == ("abseiling", "passing American football (in game)", "zumba")
    assert [(p.name, label) for p, label in listing.entries] == [
        ("0wR5jVB-WPk_000417_000427.mp4", 0),
        ("R6llTwEh07w.mp4", 1),
        ("3caPS4FHFF8_000036_000046.mkv", 0),
    ]
    assert [(r.path, r.reason.split(" but")[0]) for r in listing.missing] == [
        ("gone0000000_000010_000020", "listed at validate.csv:5")
    ]

    csv_file.write_text("label,youtube_id,time_start\nabseiling,0wR5jVB-WPk,417\n")
    with pytest.raises(SplitFileError, match=r"validate.csv:1: missing column\(s\) \['time_end'\]"):
        read_split(SplitConfig("kinetics", str(videos), str(csv_file)))
    csv_file.write_text("label,youtube_id,time_start,time_end\nabseiling,0wR5jVB-WPk,417,427\nabseiling,x,soon,427\n")
    with pytest.raises(SplitFileError, match="validate.csv:3: time_start/time_end must be numbers"):
        read_split(SplitConfig("kinetics", str(videos), str(csv_file)))
    csv_file.write_text("label,youtube_id,time_start,time_end\n,0wR5jVB-WPk,417,427\n")
    with pytest.raises(SplitFileError, match="validate.csv:2: empty label"):
        read_split(SplitConfig("kinetics", str(videos), str(csv_file)))


def test_class_folders(tmp_path):
    touch(tmp_path, "jump/a.mp4", "jump/more/b.avi", "run/c.webm", "loose.mp4", "run/notes.txt")
    listing = read_split(SplitConfig("folder", str(tmp_path)))
    assert listing.classes == ("jump", "run")
    assert [(p.name, label) for p, label in listing.entries] == [("a.mp4", 0), ("b.avi", 0), ("c.webm", 1)]
    assert [(Path(r.path).name, r.reason) for r in listing.missing] == [("loose.mp4", "not inside a class folder")]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class folders with videos"):
        read_split(SplitConfig("folder", str(empty)))


def test_open_split_probes_real_videos_and_reports_bad_ones(shared_videos, tmp_path):
    root = tmp_path / "classes"
    for cls, name in [
        ("juggle", "ucf101/v_SoccerJuggling_g23_c01.avi"),
        ("juggle", "ucf101/v_SoccerJuggling_g24_c01.avi"),
        ("wave", "hmdb51/TrumanShow_wave_f_nm_np1_fr_med_26.avi"),
    ]:
        (root / cls).mkdir(parents=True, exist_ok=True)
        os.symlink(shared_videos / name, root / cls / Path(name).name)
    (root / "wave" / "corrupt.avi").write_bytes(b"RIFF\x00\x00garbage" * 50)
    (root / "wave" / "empty.mp4").write_bytes(b"")
    data = open_split(SplitConfig("folder", str(root)))
    assert [Path(v.path).name for v in data.videos] == [
        "v_SoccerJuggling_g23_c01.avi",
        "v_SoccerJuggling_g24_c01.avi",
        "TrumanShow_wave_f_nm_np1_fr_med_26.avi",
    ]
    assert data.labels == (0, 0, 1)
    assert [v.num_frames for v in data.videos] == [240, 251, 48]  # the short video is kept: clips clamp to it
    assert sorted((Path(r.path).name, r.reason.split(" (")[0]) for r in data.rejected) == [
        ("corrupt.avi", "not a readable video container"),
        ("empty.mp4", "empty file"),
    ]


def test_label_subsets_are_stratified_nested_and_keyed():
    labels = tuple([0] * 20 + [1] * 7 + [2] * 1)
    data = LabelledSet(
        "x", ("a", "b", "c"), tuple(VideoInfo(f"v{i}", 50, 25.0, 64, 64, "h264") for i in range(28)), labels
    )
    tenth, half = label_subset(data, 0.1, seed=3), label_subset(data, 0.5, seed=3)
    assert Counter(tenth.labels) == {0: 2, 1: 1, 2: 1}  # at least one video per class
    assert Counter(half.labels) == {0: 10, 1: 4, 2: 1}
    assert {v.path for v in tenth.videos} <= {v.path for v in half.videos}
    assert all(data.labels[int(v.path[1:])] == lb for v, lb in zip(half.videos, half.labels))
    assert label_subset(data, 0.5, seed=3) == half
    assert label_subset(data, 0.5, seed=4).videos != half.videos
    assert label_subset(data, 1.0, seed=3) is data

    relabelled = half.relabel(("c", "b", "a", "z"))
    assert [relabelled.classes[lb] for lb in relabelled.labels] == [half.classes[lb] for lb in half.labels]
    with pytest.raises(ValueError, match=r"classes the model was not trained on: \['c'\]"):
        half.relabel(("a", "b"))


def test_test_split_inherits_the_dataset_and_bad_options_are_named():
    cfg = load_downstream_config(
        "ucf101", ["data.train.videos=/d/UCF-101", "data.train.annotations=/d/lists", "data.test.split=2"]
    )
    assert cfg.test_split == SplitConfig("ucf101", "/d/UCF-101", "/d/lists", "test", 2)
    assert cfg.lr == 0.01 and cfg.optim.milestones == (60, 120) and cfg.clips.test_size == (171, 128)
    other = load_downstream_config("ucf101", ["data.test.format=hmdb51", "data.test.videos=/d/hmdb51"])
    assert (other.test_split.format, other.test_split.videos) == ("hmdb51", "/d/hmdb51")
    with pytest.raises(ValueError, match=r"data.label_fraction must be in \(0, 1\], got 1.5"):
        load_downstream_config("tiny_cpu", ["data.label_fraction=1.5"])
    with pytest.raises(ValueError, match="data.train.format must be one of"):
        load_downstream_config(None, ["data.train.format=ucf"])
    with pytest.raises(ValueError, match="at least clips.crop_size=112"):
        load_downstream_config(None, ["clips.test_size=[100, 128]"])
    with pytest.raises(ValueError, match="neither a file nor a preset; presets: hmdb51, ssv1, ssv2, tiny_cpu, ucf101"):
        load_downstream_config("ucf", [])
