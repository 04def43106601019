"""Annotation files of the official CtP code and of Something-Something: parsed strictly, every error with its
file and line. The videos they name are located on disk by `datasets.py`.

- `ctp`: the official code's lists, one per split: a JSON list of `{"name": ..., "label": ...}`
  (`JsonClsDataSource`) or lines `<name> <label>` (`TxtClsDataSource`); labels from 1. No class names: a
  class is its number ("1", "2", …).
- `ssv1`: Something-Something V1, 174 classes. The 20BN release: `something-something-v1-labels.csv` (one class
  name a line, in label order) and `something-something-v1-{train,validation}.csv` (`<id>;<class name>`);
  or the official CtP code's `train.json` / `val.json` (`ctp` lists; names from the labels CSV if it lies
  beside them).
- `ssv2`: Something-Something V2, 174 classes: `something-something-v2-labels.json` (class name → label) and
  `something-something-v2-{train,validation}.json` (`{"id", "label", "template", "placeholders"}`); an entry's
  class is its template without the brackets ("Putting [something] on a surface" → "Putting something on a
  surface"), as 20BN defines it; its `label` field names the objects and is not the class.

The test subset of either release is its validation split (its test split has no labels).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SS_CLASSES = 174  # both releases of Something-Something
SS_SPLIT_FILES = {"train": "train", "test": "validation"}  # the 20BN file of each subset
OFFICIAL_SPLIT_FILES = {"train": "train.json", "test": "val.json"}  # the official CtP code's SS-V1 lists


class SplitFileError(ValueError):
    """A malformed annotation file; the message starts with `file:line:`."""

    def __init__(self, path: Path, line: int, problem: str):
        super().__init__(f"{path}:{line}: {problem}")


@dataclasses.dataclass(frozen=True)
class Annotated:
    """What an annotation file lists: the classes (label order) and each video with its label, file and line."""

    name: str
    classes: tuple[str, ...]
    entries: tuple[tuple[str, int, Path, int], ...]  # (video name, label index, file, line)


def json_entries(path: Path) -> list[tuple[int, Any]]:
    """(line, element) of a JSON file holding a list, each element with the line it starts on."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found")
    text = path.read_text(encoding="utf-8-sig")
    decoder = json.JSONDecoder()
    at = len(text) - len(text.lstrip())
    if not text[at : at + 1] == "[":
        raise SplitFileError(path, text.count("\n", 0, at) + 1, "expected a JSON list of videos")
    at += 1
    entries: list[tuple[int, Any]] = []
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        if at >= len(text) or text[at] == "]":
            break
        try:
            value, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise SplitFileError(path, exc.lineno, f"not valid JSON ({exc.msg})") from None
        entries.append((text.count("\n", 0, at) + 1, value))
        at = end
    if at >= len(text):
        raise SplitFileError(path, text.count("\n") + 1, "the JSON list is not closed")
    return entries


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]


def read_ctp(path: Path, num_classes: int | None = None, classes: tuple[str, ...] = ()) -> Annotated:
    """An official CtP list (.json or .txt), labels from 1 (to `num_classes`, or the largest seen); the classes
    are named `classes` if given, else by their numbers."""
    listed: list[tuple[str, int, int]] = []  # (name, label from 1, line)
    if path.suffix == ".json":
        for line, entry in json_entries(path):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "label" not in entry:
                raise SplitFileError(
                    path, line, f'expected {{"name": <video>, "label": <class from 1>}}, got {entry!r}'
                )
            listed.append((entry["name"], _label(entry["label"], path, line), line))
    elif path.suffix == ".txt":
        for line, text in _lines(path):
            parts = text.split()
            if len(parts) != 2:
                raise SplitFileError(path, line, f"expected '<video> <class from 1>', got {text!r}")
            listed.append((parts[0], _label(parts[1], path, line), line))
    else:
        raise ValueError(f"{path}: an official CtP annotation list is a .json or .txt file")
    count = num_classes or len(classes) or max((label for _, label, _ in listed), default=0)
    for name, label, line in listed:
        if label > count:
            raise SplitFileError(path, line, f"class {label} of {name} is not in 1..{count}")
    names = classes or tuple(str(i) for i in range(1, count + 1))
    return Annotated(f"ctp {path.name}", names, tuple((n, label - 1, path, line) for n, label, line in listed))


def _label(value: object, path: Path, line: int) -> int:
    """A label from 1, as an int or a string of digits."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise SplitFileError(path, line, f"a label is a class number from 1, got {value!r}")
    return int(text)


def read_ssv1(annotations: Path, subset: str) -> Annotated:
    """Something-Something V1 from a folder holding the 20BN CSVs or the CtP JSONs, or from one of those files."""
    folder = annotations if annotations.is_dir() else annotations.parent
    labels = folder / "something-something-v1-labels.csv"
    if annotations.is_dir():
        split = folder / f"something-something-v1-{SS_SPLIT_FILES[subset]}.csv"
        if not split.is_file() and (folder / OFFICIAL_SPLIT_FILES[subset]).is_file():
            split = folder / OFFICIAL_SPLIT_FILES[subset]
        elif not split.is_file():
            raise FileNotFoundError(
                f"no Something-Something V1 {subset} list in {folder}: expected {split.name} (20BN) or "
                f"{OFFICIAL_SPLIT_FILES[subset]} (the official CtP code's)"
            )
    else:
        split = annotations
    classes = _ssv1_classes(labels) if labels.is_file() else ()
    if split.suffix == ".json":
        listed = read_ctp(split, SS_CLASSES, classes)
        return dataclasses.replace(listed, name=f"ssv1 {split.name}")
    if not classes:
        raise FileNotFoundError(f"{labels} not found: the class names of {split.name}")
    index = {name: i for i, name in enumerate(classes)}
    entries = []
    for line, text in _lines(split):
        video, sep, label = text.partition(";")
        if not sep or not video.strip():
            raise SplitFileError(split, line, f"expected '<id>;<class name>', got {text!r}")
        if label.strip() not in index:
            raise SplitFileError(split, line, f"class {label.strip()!r} is not in {labels.name}")
        entries.append((video.strip(), index[label.strip()], split, line))
    return Annotated(f"ssv1 {split.name}", classes, tuple(entries))


def _ssv1_classes(path: Path) -> tuple[str, ...]:
    classes = tuple(text for _, text in _lines(path))
    if len(classes) != SS_CLASSES or len(set(classes)) != SS_CLASSES:
        raise SplitFileError(path, 1, f"expected {SS_CLASSES} distinct class names, one a line; got {len(classes)}")
    return classes


def read_ssv2(annotations: Path, subset: str) -> Annotated:
    """Something-Something V2 from the folder holding its JSON files (or the split's JSON file, the labels
    JSON beside it)."""
    folder = annotations if annotations.is_dir() else annotations.parent
    split = folder / f"something-something-v2-{SS_SPLIT_FILES[subset]}.json" if annotations.is_dir() else annotations
    labels = folder / "something-something-v2-labels.json"
    if not labels.is_file():
        raise FileNotFoundError(f"{labels} not found: the class names of Something-Something V2")
    try:
        mapping = json.loads(labels.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise SplitFileError(labels, exc.lineno, f"not valid JSON ({exc.msg})") from None
    if not isinstance(mapping, dict) or sorted(map(_number, mapping.values())) != list(range(SS_CLASSES)):
        raise SplitFileError(labels, 1, f'expected {{"<class name>": "<label>", ...}} with labels 0..{SS_CLASSES - 1}')
    classes = tuple(sorted(mapping, key=lambda name: int(mapping[name])))
    index = {name: i for i, name in enumerate(classes)}
    entries = []
    for line, entry in json_entries(split):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), (str, int)) or "template" not in entry:
            raise SplitFileError(split, line, f'expected {{"id": ..., "template": ..., ...}}, got {str(entry)[:120]}')
        name = str(entry["template"]).replace("[", "").replace("]", "")
        if name not in index:
            raise SplitFileError(split, line, f"template {entry['template']!r} is not a class of {labels.name}")
        entries.append((str(entry["id"]), index[name], split, line))
    return Annotated(f"ssv2 {split.name}", classes, tuple(entries))


def _number(value: object) -> int:
    text = str(value)
    return int(text) if text.isdigit() else -1
