"""Typed downstream configuration (docs/spec.md, "Downstream protocols"): the defaults are the official
CtP fine-tuning and test recipe and VCOP's retrieval protocol.

Loaded like every config of the project: defaults ← preset or YAML file ← `a.b=c` overrides.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from common.configfile import load_config, preset_names
from datagen.ctp.rng import seed_problem
from trainer.config import EncoderName, OptimConfig, Recipe, RunConfig

PRESETS_DIR = Path(__file__).resolve().parent / "configs"
# "": in data.test, data.train's
Format = Literal["ucf101", "hmdb51", "kinetics", "folder", "ctp", "ssv1", "ssv2", ""]


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """One labelled split of one dataset. In `data.test`, empty fields are taken from `data.train`."""

    format: Format = ""
    videos: str = ""  # the folder holding the videos (files, zips or folders of frames)
    # ucf101: ucfTrainTestlist folder; hmdb51: split-file folder; kinetics: the CSV file; ctp: the official
    # list (.json/.txt); ssv1: the folder of its CSVs or of CtP's train.json/val.json; ssv2: the folder of its JSONs
    annotations: str = ""
    # ucf101 / hmdb51 / ssv1 / ssv2 (test: SS's validation split); kinetics, folder, ctp: the file or folder decides
    subset: Literal["train", "test"] = "train"
    split: int = 1  # official split number, 1-3
    manifest: str = ""  # optional `ctp-datagen index` manifest of these videos: skips probing them


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: SplitConfig = SplitConfig(format="folder", subset="train")
    test: SplitConfig = SplitConfig(subset="test")  # validation during fine-tuning; retrieval queries
    label_fraction: float = 1.0  # fine-tune on this share of each class's training videos (nested subsets)
    seed: int = 0
    batch_size: int = 32  # training clips per optimiser step, over all ranks
    prefetch: int = 2  # training batches decoded ahead of the step


@dataclasses.dataclass(frozen=True)
class StaticColourConfig:
    """Static colour jitter of a fine-tuning clip (official RandomBrightness, RandomContrast and
    RandomHueSaturation): one value per clip, each change applied with its own probability."""

    brightness_prob: float = 0.2
    brightness: float = 32.0  # offset from U(-b, b), added to every pixel
    contrast_prob: float = 0.2
    contrast_log: float = 0.2  # gain exp(U(-c, c)) on every pixel
    hue_sat_prob: float = 0.2
    hue_shift: float = 12.0  # U(-h, h) on the 0-180 hue scale
    saturation_log: float = 0.1  # saturation x exp(U(-s, s))


@dataclasses.dataclass(frozen=True)
class ClipsConfig:
    num_frames: int = 16
    frame_stride: int = 2
    # (width, height) choices of a landscape frame; a portrait frame (height > width) takes (height, width)
    train_sizes: tuple[tuple[int, int], ...] = ((149, 112), (171, 128), (192, 144))
    test_size: tuple[int, int] = (171, 128)  # (width, height), swapped likewise for portrait frames
    # Short sides instead (the official GroupScale with an int; Something-Something): the frame rescaled to
    # keep its aspect, the short side one of `train_short_sides` (train) or `test_short_side` (test); () / 0: off.
    train_short_sides: tuple[int, ...] = ()
    test_short_side: int = 0
    crop_size: int = 112
    flip_prob: float = 0.35
    colour: StaticColourConfig = StaticColourConfig()
    test_clips: int = 10  # per test video, one centred in each of 10 equal segments of the start range
    retrieval_stride: int = 1  # VCOP's retrieval clips: num_frames consecutive frames, test_clips per video
    test_batch_videos: int = 4  # videos (of test_clips clips each) per forward pass at test time
    decode_backend: Literal["auto", "dali", "pyav"] = "auto"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    encoder: EncoderName = "r3d_18"
    init: str = ""  # exported encoder or pretraining checkpoint; empty: random initialisation (the baseline)
    dropout: float = 0.5
    # Linear evaluation: the encoder's weights and BatchNorm statistics stay as loaded; only the classifier trains.
    freeze_encoder: bool = False


@dataclasses.dataclass(frozen=True)
class FinetuneOptimConfig(OptimConfig):
    """The paper's fine-tuning schedule: SGD as in pretraining, more weight decay, 150 epochs."""

    weight_decay: float = 5e-4
    epochs: int = 150
    milestones: tuple[int, ...] = (60, 120)
    # The official linear warm-up (mmcv's `warmup='linear'`, Something-Something): the learning rate rises from
    # warmup_ratio x lr to lr over the first warmup_steps steps. 0: none.
    warmup_steps: int = 0
    warmup_ratio: float = 0.1


@dataclasses.dataclass(frozen=True)
class FinetuneRunConfig(RunConfig):
    out_dir: str = "runs/finetune"
    val_every: int = 10  # epochs between validations on data.test (0: never); also after the last epoch


@dataclasses.dataclass(frozen=True)
class DownstreamConfig(Recipe):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    clips: ClipsConfig = ClipsConfig()
    optim: FinetuneOptimConfig = FinetuneOptimConfig()
    run: FinetuneRunConfig = FinetuneRunConfig()

    @property
    def test_split(self) -> SplitConfig:
        """`data.test` with its empty fields filled from `data.train`."""
        train, test = self.data.train, self.data.test
        return dataclasses.replace(
            test,
            **{f: getattr(train, f) for f in ("format", "videos", "annotations", "manifest") if not getattr(test, f)},
        )


def presets() -> list[str]:
    return preset_names(PRESETS_DIR)


def load_downstream_config(
    name_or_path: str | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> DownstreamConfig:
    """Defaults (or `base`, e.g. a checkpoint's config) ← preset or YAML file ← overrides, validated."""
    cfg = load_config(DownstreamConfig, name_or_path or None, overrides, PRESETS_DIR, base)
    validate(cfg)
    return cfg


def validate(cfg: DownstreamConfig) -> None:
    c, d = cfg.clips, cfg.data
    checks = [
        (
            bool(d.train.format),
            "data.train.format must be one of ucf101, hmdb51, kinetics, folder, ctp, ssv1, ssv2; got ''",
        ),
        (0 < d.label_fraction <= 1, f"data.label_fraction must be in (0, 1], got {d.label_fraction}"),
        (d.batch_size >= 1, f"data.batch_size must be >= 1, got {d.batch_size}"),
        (
            c.num_frames >= 1 and c.frame_stride >= 1 and c.retrieval_stride >= 1,
            "clips.num_frames, clips.frame_stride and clips.retrieval_stride must be >= 1",
        ),
        (
            all(min(s) >= c.crop_size for s in (*c.train_sizes, c.test_size)),
            f"clips.train_sizes and clips.test_size must be at least clips.crop_size={c.crop_size} on both sides",
        ),
        (len(c.train_sizes) >= 1, "clips.train_sizes needs at least one (width, height)"),
        (
            all(s >= c.crop_size for s in c.train_short_sides)
            and (c.test_short_side == 0 or c.test_short_side >= c.crop_size),
            f"clips.train_short_sides and clips.test_short_side must be at least clips.crop_size={c.crop_size}",
        ),
        (
            0 <= cfg.optim.warmup_ratio <= 1 and cfg.optim.warmup_steps >= 0,
            "optim.warmup_steps must be >= 0 and optim.warmup_ratio in [0, 1]",
        ),
        (c.test_clips >= 1 and c.test_batch_videos >= 1, "clips.test_clips and clips.test_batch_videos must be >= 1"),
        (cfg.optim.epochs >= 1, f"optim.epochs must be >= 1, got {cfg.optim.epochs}"),
        (not seed_problem(d.seed), seed_problem(d.seed, "data.seed") or ""),
    ]
    errors = [message for ok, message in checks if not ok]
    if errors:
        raise ValueError("invalid config: " + "; ".join(errors))
