"""Typed downstream configuration (docs/spec.md, "Downstream protocols"): the defaults are the official
CtP fine-tuning and test recipe and VCOP's retrieval protocol.

Loaded like every config of the project: defaults ← preset or YAML file ← `a.b=c` overrides.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from datagen.config import apply_overrides, from_dict, load_config, preset_names, resolve_preset

PRESETS_DIR = Path(__file__).resolve().parent / "configs"
FORMATS = ("ucf101", "hmdb51", "kinetics", "folder")


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """One labelled split of one dataset. In `data.test`, empty fields are taken from `data.train`."""

    format: str = ""  # ucf101 | hmdb51 | kinetics | folder
    videos: str = ""  # the folder holding the videos
    annotations: str = ""  # ucf101: ucfTrainTestlist folder; hmdb51: split-file folder; kinetics: the CSV file
    subset: str = "train"  # ucf101 / hmdb51: train | test (kinetics and folder: the file or folder decides)
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
    crop_size: int = 112
    flip_prob: float = 0.35
    colour: StaticColourConfig = StaticColourConfig()
    test_clips: int = 10  # per test video, one centred in each of 10 equal segments of the start range
    retrieval_stride: int = 1  # VCOP's retrieval clips: num_frames consecutive frames, test_clips per video
    test_batch_videos: int = 4  # videos (of test_clips clips each) per forward pass at test time
    decode_backend: str = "auto"  # auto | dali | pyav


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    encoder: str = "r3d_18"  # r3d_18 | r2plus1d_18 | tiny
    init: str = ""  # exported encoder or pretraining checkpoint; empty: random initialisation (the baseline)
    dropout: float = 0.5


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.01  # for `base_batch_size` clips; scaled linearly with data.batch_size
    base_batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 150
    milestones: tuple[int, ...] = (60, 120)
    gamma: float = 0.1
    grad_clip: float = 40.0


@dataclasses.dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/finetune"
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each rank's cuda:LOCAL_RANK)
    # auto: bf16 autocast on CUDA (for speed), else fp32. The paper and the official code train in fp32:
    # set fp32 to reproduce them exactly.
    precision: str = "auto"  # auto | fp32 | bf16
    channels_last: bool | None = None  # None: on CUDA only
    sync_batchnorm: bool = True  # across ranks, when distributed on CUDA
    val_every: int = 10  # epochs between validations on data.test (0: never); also after the last epoch
    log_every: int = 10  # steps
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    clips: ClipsConfig = ClipsConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()

    @property
    def lr(self) -> float:
        return self.optim.lr * self.data.batch_size / self.optim.base_batch_size

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
    if base is not None and name_or_path is None:
        cfg = from_dict(DownstreamConfig, apply_overrides(base, overrides or []))
    else:
        cfg = load_config(
            DownstreamConfig, resolve_preset(name_or_path, PRESETS_DIR) if name_or_path else None, overrides
        )
    validate(cfg)
    return cfg


def validate(cfg: DownstreamConfig) -> None:
    c, d = cfg.clips, cfg.data
    checks = [
        (
            cfg.data.train.format in FORMATS,
            f"data.train.format must be one of {FORMATS}, got {cfg.data.train.format!r}",
        ),
        (cfg.test_split.format in FORMATS, f"data.test.format must be one of {FORMATS}, got {cfg.data.test.format!r}"),
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
        (c.test_clips >= 1 and c.test_batch_videos >= 1, "clips.test_clips and clips.test_batch_videos must be >= 1"),
        (cfg.optim.epochs >= 1, f"optim.epochs must be >= 1, got {cfg.optim.epochs}"),
        (
            cfg.run.precision in ("auto", "fp32", "bf16"),
            f"run.precision must be auto, fp32 or bf16, got {cfg.run.precision!r}",
        ),
    ]
    errors = [message for ok, message in checks if not ok]
    if errors:
        raise ValueError("invalid config: " + "; ".join(errors))
