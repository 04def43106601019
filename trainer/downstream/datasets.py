"""Labelled splits: readers for the official UCF-101 and HMDB-51 split files, Kinetics CSVs and class folders;
the official CtP lists and Something-Something's files are parsed by `annotations.py`.

Reading is strict about the annotation files (a malformed line is an error that names the file and the line)
and lenient about the videos (a listed video that is missing or unreadable is skipped, counted and
reported, as Kinetics downloads always miss some). A video may be a file or a frame source (a zip or a
folder of JPEG frames, `datagen/video/frames.py`): a listed `<class>/<video>.avi` is also found as the official
CtP zip `<video>.zip` or a rawframe folder `<class>/<video>/`. Classes are identified by name; a split's
`classes` tuple fixes their label indices.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datagen.ctp.rng import SUBSET_EPOCH, SampleKey, Stream, generator
from datagen.video.container import VideoInfo
from datagen.video.manifest import VIDEO_EXTENSIONS, Rejected, find_videos, index_videos, read_manifest
from trainer.downstream.annotations import Annotated, SplitFileError, read_ctp, read_ssv1, read_ssv2
from trainer.downstream.config import SplitConfig

log = logging.getLogger(__name__)

SUBSETS = ("train", "test")
HMDB_SUBSET_IDS = {"train": "1", "test": "2"}  # 0: unused in this split
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


@dataclasses.dataclass(frozen=True)
class Listing:
    """What a split file says, with the listed videos located on disk."""

    name: str
    classes: tuple[str, ...]
    entries: tuple[tuple[Path, int], ...]  # (video file, label index), in the split file's order
    missing: tuple[Rejected, ...]  # listed videos not found, each with the line that lists it


@dataclasses.dataclass(frozen=True)
class LabelledSet:
    """The usable videos of a split with their labels; `rejected` says what was skipped and why."""

    name: str
    classes: tuple[str, ...]
    videos: tuple[VideoInfo, ...]
    labels: tuple[int, ...]
    rejected: tuple[Rejected, ...] = ()

    def __len__(self) -> int:
        return len(self.videos)

    def relabel(self, classes: tuple[str, ...]) -> LabelledSet:
        """The same videos labelled by their position in `classes` (a model's classes); unknown ones are errors."""
        position = {name: i for i, name in enumerate(classes)}
        unknown = sorted({self.classes[label] for label in self.labels} - set(position))
        if unknown:
            raise ValueError(
                f"{self.name} has classes the model was not trained on: {unknown[:10]}"
                f"{' ...' if len(unknown) > 10 else ''}"
            )
        return dataclasses.replace(
            self, classes=classes, labels=tuple(position[self.classes[lb]] for lb in self.labels)
        )


def read_split(cfg: SplitConfig) -> Listing:
    """Parse the split's annotation files and locate its videos (no decoding)."""
    videos = Path(cfg.videos)
    if not cfg.videos or not videos.is_dir():
        raise FileNotFoundError(
            f"video folder {cfg.videos!r} does not exist; set data.train.videos (or data.test.videos)"
        )
    if cfg.format in ("ucf101", "hmdb51", "ssv1", "ssv2") and cfg.subset not in SUBSETS:
        raise ValueError(f"{cfg.format} subset must be one of {SUBSETS}, got {cfg.subset!r}")
    if cfg.format == "ucf101":
        return _read_ucf101(videos, _annotations(cfg), cfg.subset, cfg.split)
    if cfg.format == "hmdb51":
        return _read_hmdb51(videos, _annotations(cfg), cfg.subset, cfg.split)
    if cfg.format == "kinetics":
        return _read_kinetics(videos, _annotations(cfg))
    if cfg.format == "folder":
        return _read_folder(videos)
    if cfg.format == "ctp":
        return _locate_named(read_ctp(_annotations(cfg)), videos)
    if cfg.format == "ssv1":
        return _locate_named(read_ssv1(_annotations(cfg), cfg.subset), videos)
    if cfg.format == "ssv2":
        return _locate_named(read_ssv2(_annotations(cfg), cfg.subset), videos)
    raise ValueError(
        f"unknown dataset format {cfg.format!r}; choose ucf101, hmdb51, kinetics, folder, ctp, ssv1 or ssv2"
    )


def _annotations(cfg: SplitConfig) -> Path:
    if not cfg.annotations:
        what = {
            "kinetics": "the Kinetics CSV file",
            "ctp": "the official list, e.g. annotations/train_split_1.json",
            "ssv1": "the folder of its CSVs or of the CtP train.json/val.json",
            "ssv2": "the folder of its JSON files",
        }.get(cfg.format, "the folder of split files")
        raise ValueError(f"{cfg.format} needs `annotations`: {what} (e.g. data.train.annotations=PATH)")
    return Path(cfg.annotations)


def _lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines; CRLF endings (as in the official files) are fine."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def _read_ucf101(videos: Path, annotations: Path, subset: str, split: int) -> Listing:
    """classInd.txt (`<index> <class>`, 1-based), trainlist0N.txt (`<class>/<video> <index>`), testlist0N.txt
    (`<class>/<video>`: the class is the folder)."""
    class_file = annotations / "classInd.txt"
    classes: list[str] = []
    for number, line in _lines(class_file, "UCF-101 class index"):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitFileError(class_file, number, f"expected '<index> <class>', got {line!r}")
        if int(parts[0]) != len(classes) + 1:
            raise SplitFileError(
                class_file, number, f"class indices must run 1, 2, 3, ...; expected {len(classes) + 1}, got {parts[0]}"
            )
        classes.append(parts[1])
    by_folder = {name.lower(): i for i, name in enumerate(classes)}

    list_file = annotations / f"{subset}list{split:02d}.txt"
    fields = 2 if subset == "train" else 1
    form = "'<class>/<video> <index>'" if subset == "train" else "'<class>/<video>'"
    located: list[tuple[str, int, Path, int]] = []
    for number, line in _lines(list_file, f"UCF-101 {subset} list"):
        parts = line.split()
        if len(parts) != fields or "/" not in parts[0]:
            raise SplitFileError(list_file, number, f"expected {form}, got {line!r}")
        folder = parts[0].split("/")[0].lower()
        if folder not in by_folder:
            raise SplitFileError(
                list_file, number, f"class folder {parts[0].split('/')[0]!r} is not in {class_file.name}"
            )
        label = by_folder[folder]
        if fields == 2:
            if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                raise SplitFileError(
                    list_file, number, f"class index {parts[1]!r} is not in 1..{len(classes)} of {class_file.name}"
                )
            if int(parts[1]) - 1 != label:
                raise SplitFileError(
                    list_file,
                    number,
                    f"class index {parts[1]} ({classes[int(parts[1]) - 1]}) "
                    f"disagrees with the folder {parts[0].split('/')[0]!r}",
                )
        located.append((parts[0], label, list_file, number))
    return _locate(f"ucf101 {subset} split {split}", tuple(classes), videos, located)


def _read_hmdb51(videos: Path, annotations: Path, subset: str, split: int) -> Listing:
    """One `<class>_test_split<N>.txt` per class, lines `<video> <0|1|2>` (1 train, 2 test, 0 unused);
    videos live in `<videos>/<class>/<video>`. Label indices follow the sorted class names."""
    suffix = f"_test_split{split}.txt"
    files = sorted(annotations.glob(f"*{suffix}")) if annotations.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"no HMDB-51 split files '<class>{suffix}' in {annotations} (the testTrainMulti_7030_splits folder)"
        )
    classes = tuple(f.name[: -len(suffix)] for f in files)
    # A class is known by a split file of any split or a folder of videos: one without this split's file is left
    # out of it (and the others' label indices shift), which must not pass in silence.
    known = {f.name.rsplit("_test_split", 1)[0] for f in annotations.glob("*_test_split*.txt")}
    known |= {d.name for d in videos.iterdir() if d.is_dir()} if videos.is_dir() else set()
    missing = sorted(known - set(classes))
    if missing:
        log.warning(
            "hmdb51 split %d: no split file '<class>%s' in %s for %d class(es), left out of the split: %s",
            split,
            suffix,
            annotations,
            len(missing),
            ", ".join(missing),
        )
    wanted = HMDB_SUBSET_IDS[subset]
    located: list[tuple[str, int, Path, int]] = []
    for label, (name, split_file) in enumerate(zip(classes, files)):
        for number, line in _lines(split_file, "HMDB-51 split file"):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise SplitFileError(split_file, number, f"expected '<video> <0|1|2>', got {line!r}")
            if parts[1] == wanted:
                located.append((f"{name}/{parts[0]}", label, split_file, number))
    return _locate(f"hmdb51 {subset} split {split}", classes, videos, located)


def _read_kinetics(videos: Path, csv_file: Path) -> Listing:
    """A Kinetics annotation CSV (`label,youtube_id,time_start,time_end[,split,...]`). Videos are found by file
    name anywhere under the folder: `<youtube_id>_<start:06d>_<end:06d>.<ext>` or `<youtube_id>.<ext>`."""
    if not csv_file.is_file():
        raise FileNotFoundError(f"Kinetics CSV {csv_file} not found")
    by_stem: dict[str, Path] = {}
    for path in find_videos(videos):
        by_stem.setdefault(path.stem, path)
    rows: list[tuple[str, Path | None, str, str]] = []  # label, file, clip name, where
    with csv_file.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing_columns = [c for c in KINETICS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing_columns:
            raise SplitFileError(
                csv_file,
                1,
                f"missing column(s) {missing_columns}; expected a header "
                f"'{','.join(KINETICS_COLUMNS)}[,split]', got {reader.fieldnames}",
            )
        for row in reader:
            where = f"{csv_file.name}:{reader.line_num}"
            label, youtube_id = (row["label"] or "").strip(), (row["youtube_id"] or "").strip()
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise SplitFileError(
                    csv_file,
                    reader.line_num,
                    f"time_start/time_end must be numbers, got {row['time_start']!r}, {row['time_end']!r}",
                ) from None
            if not label or not youtube_id:
                raise SplitFileError(
                    csv_file,
                    reader.line_num,
                    "empty label or youtube_id (a test CSV without labels cannot be used for labelled evaluation)",
                )
            clip = f"{youtube_id}_{start:06d}_{end:06d}"
            rows.append((label, by_stem.get(clip) or by_stem.get(youtube_id), clip, where))
    classes = tuple(sorted({label for label, *_ in rows}))
    index = {name: i for i, name in enumerate(classes)}
    entries = tuple((path, index[label]) for label, path, _, _ in rows if path is not None)
    missing = tuple(
        Rejected(clip, f"listed at {where} but no video file under {videos}")
        for _, path, clip, where in rows
        if path is None
    )
    return Listing(f"kinetics {csv_file.stem}", classes, entries, missing)


def _read_folder(videos: Path) -> Listing:
    """`<videos>/<class>/**/<video>`: the first-level folder names the class (sorted names give the indices)."""
    files = find_videos(videos)
    by_class: dict[str, list[Path]] = {}
    loose: list[Rejected] = []
    for path in files:
        parts = path.relative_to(videos).parts
        if len(parts) < 2:
            loose.append(Rejected(str(path), "not inside a class folder"))
        else:
            by_class.setdefault(parts[0], []).append(path)
    if not by_class:
        raise ValueError(f"no class folders with videos in {videos}; expected {videos}/<class>/<video>")
    classes = tuple(sorted(by_class))
    entries = tuple((path, label) for label, name in enumerate(classes) for path in by_class[name])
    return Listing(f"folder {videos}", classes, entries, tuple(loose))


def _locate(name: str, classes: tuple[str, ...], videos: Path, listed: list[tuple[str, int, Path, int]]) -> Listing:
    """Check the listed relative paths (with the file and line listing them) under `videos`; duplicates are
    malformed, absent files are `missing`."""
    seen: dict[str, str] = {}
    entries, missing = [], []
    for relative, label, file, line in listed:
        where = f"{file.name}:{line}"
        if relative in seen:
            raise SplitFileError(file, line, f"{relative} is listed twice (first at {seen[relative]})")
        seen[relative] = where
        path = videos / relative
        # a `ctp-datagen prepare` copy (.mp4), a rawframe folder, an official CtP zip (flat, as ucf101/zips)
        stem = path.with_suffix("")
        found = _first(path, path.with_suffix(".mp4"), stem, stem.with_suffix(".zip"), videos / f"{stem.name}.zip")
        if found is not None:
            entries.append((found, label))
        else:
            missing.append(Rejected(str(path), f"listed at {where} but not found"))
    return Listing(name, classes, tuple(entries), tuple(missing))


def _first(*candidates: Path) -> Path | None:
    """The first candidate that is a file, or a folder (a frame source)."""
    return next((p for p in candidates if p.is_file() or p.is_dir()), None)


def _locate_named(annotated: Annotated, videos: Path) -> Listing:
    """Find each listed name under `videos` as the official CtP code's zip (`<name>.zip`, or
    `<name>/RGB_frames.zip` as its Something-Something V1), a frame folder `<name>/`, or a video file
    `<name>.<ext>` (Something-Something V2's `.webm`)."""
    suffixes = [".webm", *sorted(VIDEO_EXTENSIONS - {".webm"})]
    listed = []
    for relative, label, file, line in annotated.entries:
        base = videos / relative
        found = _first(base / "RGB_frames.zip", base.with_name(base.name + ".zip"), base) or _first(
            *(base.with_name(base.name + s) for s in suffixes)
        )
        listed.append((str((found or base).relative_to(videos)), label, file, line))
    return _locate(annotated.name, annotated.classes, videos, listed)


def open_split(cfg: SplitConfig, workers: int = 8, progress: bool = False) -> LabelledSet:
    """Read a split and probe its videos (or take them from `cfg.manifest`); unusable ones are reported."""
    listing = read_split(cfg)
    known: dict[str, VideoInfo] = {}
    if cfg.manifest:
        manifest_videos, _ = read_manifest(cfg.manifest)
        known = {str(Path(v.path).resolve()): v for v in manifest_videos}
    to_probe = [path for path, _ in listing.entries if str(path.resolve()) not in known]
    probed, rejected = index_videos(to_probe, min_frames=1, progress=progress, workers=workers)
    known.update((str(Path(v.path).resolve()), v) for v in probed)
    usable = [(known[key], label) for path, label in listing.entries if (key := str(path.resolve())) in known]
    rejected_all = listing.missing + tuple(rejected)
    if rejected_all:
        log.warning(
            "%s: skipping %d of %d listed videos, e.g. %s: %s",
            listing.name,
            len(rejected_all),
            len(listing.entries) + len(listing.missing),
            rejected_all[0].path,
            rejected_all[0].reason,
        )
    if not usable:
        raise ValueError(
            f"{listing.name}: none of the {len(listing.entries) + len(listing.missing)} listed videos is "
            f"usable under {cfg.videos} (first problem: {rejected_all[0].reason if rejected_all else 'empty list'})"
        )
    return LabelledSet(
        listing.name, listing.classes, tuple(v for v, _ in usable), tuple(lb for _, lb in usable), rejected_all
    )


def label_subset(data: LabelledSet, fraction: float, seed: int) -> LabelledSet:
    """Keep `fraction` of each class's videos (rounded, at least one), in the split's order.

    Each class is ordered by a permutation keyed on (seed, class), so for one seed a smaller fraction is
    always a subset of a larger one: points on a data-efficiency curve differ only by the added labels.
    """
    if fraction >= 1:
        return data
    labels = np.asarray(data.labels)
    keep: list[int] = []
    for label in np.unique(labels).tolist():
        members = np.flatnonzero(labels == label)
        order = generator(SampleKey(seed, SUBSET_EPOCH, label), Stream.PERMUTATION).permutation(len(members))
        keep += members[order[: max(1, round(fraction * len(members)))]].tolist()
    chosen = sorted(keep)
    return dataclasses.replace(
        data,
        name=f"{data.name} ({fraction:.0%} of labels)",
        videos=tuple(data.videos[i] for i in chosen),
        labels=tuple(data.labels[i] for i in chosen),
    )
