"""The official CtP lists and Something-Something's annotation files, in miniature in their official formats
(written here): labels, the videos each layout is found as, and every malformed line named by file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.downstream.annotations import SS_CLASSES, SplitFileError, json_entries, read_ctp, read_ssv1, read_ssv2
from trainer.downstream.config import SplitConfig, load_downstream_config
from trainer.downstream.datasets import read_split

SSV1_NAMES = [f"Pushing something from left to right {i}" for i in range(SS_CLASSES)]
SSV1_NAMES[5], SSV1_NAMES[7] = "Pushing something from left to right", "Pushing something from right to left"


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@pytest.fixture()
def ssv1(tmp_path: Path) -> Path:
    """The 20BN release: labels and split CSVs, frame folders `<id>/00001.jpg` (one listed id missing)."""
    root = tmp_path / "ssv1"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "something-something-v1-labels.csv").write_text("\n".join(SSV1_NAMES) + "\n")
    (root / "annotations" / "something-something-v1-train.csv").write_text(
        "100218;Pushing something from left to right\n\n48032;Pushing something from right to left\n7;"
        f"{SSV1_NAMES[0]}\n"
    )
    (root / "annotations" / "something-something-v1-validation.csv").write_text(
        "9;Pushing something from right to left\n"
    )
    touch(*(root / "frames" / i / "00001.jpg" for i in ("100218", "48032", "9")))
    return root


def ss_split(root: Path, fmt: str, subset: str, videos: str = "frames") -> SplitConfig:
    return SplitConfig(fmt, str(root / videos), str(root / "annotations"), subset)


def test_ssv1_from_the_20bn_csvs(ssv1):
    train = read_split(ss_split(ssv1, "ssv1", "train"))
    assert len(train.classes) == 174 and train.classes[5] == "Pushing something from left to right"
    assert [(p.name, label) for p, label in train.entries] == [("100218", 5), ("48032", 7)]
    assert [r.reason for r in train.missing] == ["listed at something-something-v1-train.csv:4 but not found"]
    test = read_split(ss_split(ssv1, "ssv1", "test"))  # the validation split
    assert [(p.name, label) for p, label in test.entries] == [("9", 7)]


def test_ssv1_from_the_official_ctp_jsons_and_zips(tmp_path):
    """The official code's data folder: something-something-v1/{id}/RGB_frames.zip and train.json/val.json
    (labels from 1); class names from the 20BN labels CSV when it lies beside them, numbers otherwise."""
    root = tmp_path / "something-something-v1"
    touch(root / "100218" / "RGB_frames.zip", root / "48032" / "RGB_frames.zip")
    (root / "train.json").write_text(json.dumps([{"name": "100218", "label": 6}, {"name": "48032", "label": 174}]))
    (root / "val.json").write_text('[\n  {"name": "48032", "label": 8}\n]\n')
    train = read_split(SplitConfig("ssv1", str(root), str(root), "train"))
    assert train.classes == tuple(str(i) for i in range(1, 175))
    assert [(p.relative_to(root).as_posix(), label) for p, label in train.entries] == [
        ("100218/RGB_frames.zip", 5),
        ("48032/RGB_frames.zip", 173),
    ]
    (root / "something-something-v1-labels.csv").write_text("\n".join(SSV1_NAMES) + "\n")
    test = read_split(SplitConfig("ssv1", str(root), str(root), "test"))
    assert test.classes[7] == "Pushing something from right to left" and test.entries[0][1] == 7


def write_ssv2(root: Path) -> Path:
    """The 20BN release of V2: labels JSON (name → label), split JSONs with templates and placeholders."""
    annotations = root / "annotations"
    annotations.mkdir(parents=True)
    names = {f"Class {i} of something": str(i) for i in range(SS_CLASSES)}
    names["Putting something on a surface"] = names.pop("Class 3 of something")
    names["Moving something and something closer to each other"] = names.pop("Class 9 of something")
    (annotations / "something-something-v2-labels.json").write_text(json.dumps(names, indent=1))
    train = [
        {
            "id": "78687",
            "label": "putting a pen on a table",
            "template": "Putting [something] on a surface",
            "placeholders": ["a pen"],
        },
        {
            "id": "42326",
            "label": "moving a cup and a plate closer to each other",
            "template": "Moving [something] and [something] closer to each other",
            "placeholders": ["a cup", "a plate"],
        },
    ]
    (annotations / "something-something-v2-train.json").write_text(json.dumps(train, indent=2))
    (annotations / "something-something-v2-validation.json").write_text(json.dumps(train[:1]))
    touch(root / "videos" / "78687.webm", root / "videos" / "42326.webm")
    return root


def test_ssv2_classes_are_templates_without_brackets(tmp_path):
    root = write_ssv2(tmp_path / "ssv2")
    train = read_split(ss_split(root, "ssv2", "train", "videos"))
    assert train.classes[3] == "Putting something on a surface" and len(train.classes) == 174
    assert [(p.name, label) for p, label in train.entries] == [("78687.webm", 3), ("42326.webm", 9)]
    assert [p.name for p, _ in read_split(ss_split(root, "ssv2", "test", "videos")).entries] == ["78687.webm"]


def test_official_ctp_lists_json_and_txt_with_zips_and_rawframes(tmp_path):
    """ucf101/annotations/train_split_1.json with ucf101/zips/{name}.zip; hmdb51's .txt lists likewise."""
    zips = tmp_path / "ucf101" / "zips"
    touch(zips / "v_ApplyEyeMakeup_g08_c01.zip", zips / "v_YoYo_g08_c01.zip")
    (tmp_path / "ucf101" / "rawframes" / "v_YoYo_g09_c01").mkdir(parents=True)
    listing = tmp_path / "train_split_1.json"
    listing.write_text(
        json.dumps([{"name": "v_ApplyEyeMakeup_g08_c01", "label": 1}, {"name": "v_YoYo_g08_c01", "label": 101}])
    )
    train = read_split(SplitConfig("ctp", str(zips), str(listing)))
    assert len(train.classes) == 101 and [label for _, label in train.entries] == [0, 100]
    text = tmp_path / "test_split_1.txt"
    text.write_text("v_YoYo_g09_c01 3\n\nv_Lost_g01_c01 2\n")
    test = read_split(SplitConfig("ctp", str(tmp_path / "ucf101" / "rawframes"), str(text)))
    assert [(p.name, label) for p, label in test.entries] == [("v_YoYo_g09_c01", 2)]
    assert [r.reason for r in test.missing] == ["listed at test_split_1.txt:3 but not found"]


def test_ucf101_split_files_find_official_zips_and_rawframe_folders(tmp_path):
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    (lists / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nYoYo/v_YoYo_g08_c01.avi 2\n")
    touch(tmp_path / "zips" / "v_ApplyEyeMakeup_g08_c01.zip", tmp_path / "zips" / "v_YoYo_g08_c01.zip")
    (tmp_path / "rawframes" / "YoYo" / "v_YoYo_g08_c01").mkdir(parents=True)
    zipped = read_split(SplitConfig("ucf101", str(tmp_path / "zips"), str(lists)))
    assert [p.name for p, _ in zipped.entries] == ["v_ApplyEyeMakeup_g08_c01.zip", "v_YoYo_g08_c01.zip"]
    raw = read_split(SplitConfig("ucf101", str(tmp_path / "rawframes"), str(lists)))
    assert [p.relative_to(tmp_path).as_posix() for p, _ in raw.entries] == ["rawframes/YoYo/v_YoYo_g08_c01"]


MALFORMED = {
    "ssv1 separator": (
        "ssv1",
        "something-something-v1-train.csv",
        "100218;Pushing something from left to right\n100219,Pushing something from left to right\n",
        r"something-something-v1-train.csv:2: expected '<id>;<class name>', got '100219,Pushing",
    ),
    "ssv1 unknown class": (
        "ssv1",
        "something-something-v1-train.csv",
        "\n100218;Pushing something up\n",
        r"something-something-v1-train.csv:2: class 'Pushing something up' is not in something-something-v1-labels.csv",
    ),
    "ssv1 json label out of range": (
        "ssv1",
        "train.json",
        '[\n {"name": "1", "label": 3},\n {"name": "2", "label": 175}\n]',
        r"train.json:3: class 175 of 2 is not in 1..174",
    ),
    "ssv1 json label 0": (
        "ssv1",
        "train.json",
        '[{"name": "1", "label": 0}]',
        r"train.json:1: a label is a class number from 1, got 0",
    ),
    "ssv1 json syntax": (
        "ssv1",
        "train.json",
        '[\n {"name": "1", "label": 3},\n {"name": "2" "label": 4}\n]',
        r"train.json:3: not valid JSON",
    ),
    "ssv2 unknown template": (
        "ssv2",
        "something-something-v2-train.json",
        '[\n {"id": "1", "template": "Putting [something] on a surface"},\n {"id": "2", "template": "Eating [something]"}\n]',
        r"something-something-v2-train.json:3: template 'Eating \[something\]' is not a class",
    ),
    "ssv2 entry without id": (
        "ssv2",
        "something-something-v2-train.json",
        '[{"template": "Putting [something] on a surface"}]',
        r"something-something-v2-train.json:1: expected",
    ),
    "ssv2 not a list": (
        "ssv2",
        "something-something-v2-train.json",
        '{"id": "1"}',
        r"something-something-v2-train.json:1: expected a JSON list",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_annotation_files_are_named_by_file_and_line(ssv1, tmp_path, case):
    fmt, name, content, message = MALFORMED[case]
    root = ssv1 if fmt == "ssv1" else write_ssv2(tmp_path / "ssv2")
    (root / "annotations" / name).write_text(content)
    if name == "train.json":
        (root / "annotations" / "something-something-v1-train.csv").unlink()
    with pytest.raises(SplitFileError, match=message):
        read_split(ss_split(root, fmt, "train", "frames" if fmt == "ssv1" else "videos"))


def test_missing_files_say_what_is_expected(ssv1, tmp_path):
    (ssv1 / "annotations" / "something-something-v1-train.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"expected something-something-v1-train.csv \(20BN\) or train.json"):
        read_ssv1(ssv1 / "annotations", "train")
    (ssv1 / "annotations" / "something-something-v1-labels.csv").write_text("one\ntwo\n")
    with pytest.raises(SplitFileError, match="labels.csv:1: expected 174 distinct class names"):
        read_ssv1(ssv1 / "annotations", "test")
    with pytest.raises(FileNotFoundError, match="something-something-v2-labels.json not found"):
        read_ssv2(tmp_path, "train")
    with pytest.raises(ValueError, match="needs `annotations`: the folder of its JSON files"):
        read_split(SplitConfig("ssv2", str(ssv1), "", "train"))
    with pytest.raises(ValueError, match=r"is a \.json or \.txt file"):
        read_ctp(tmp_path / "list.csv")


def test_json_entries_know_their_lines(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"a": 1},\n\n  {"b": [1,\n 2]}, 3\n]')
    assert json_entries(path) == [(2, {"a": 1}), (4, {"b": [1, 2]}), (5, 3)]
    path.write_text('[{"a": 1}')
    with pytest.raises(SplitFileError, match="a.json:1: the JSON list is not closed"):
        json_entries(path)


def test_the_ss_presets_are_the_official_protocol():
    for name in ("ssv1", "ssv2"):
        cfg = load_downstream_config(name)
        c = cfg.clips
        assert (c.num_frames, c.frame_stride, c.flip_prob, c.test_clips) == (32, 1, 0.0, 1)
        assert (c.train_short_sides, c.test_short_side, c.crop_size) == ((112, 128, 144), 128, 112)
        assert (cfg.optim.lr, cfg.optim.epochs, cfg.optim.milestones) == (0.01, 90, (40, 60, 80))
        assert (cfg.optim.warmup_steps, cfg.optim.warmup_ratio, cfg.optim.weight_decay) == (1000, 0.1, 5e-4)
        assert cfg.data.train.format == name and cfg.test_split.subset == "test"
