"""Typed configuration: the CtP generation spec (docs/spec.md), its checks and where it is read from.

Both sides of the service import this module: the replica generates from a `GenerationConfig` and the
trainer sends its digest, so a replica never serves samples of a config it was not given. The file and
override plumbing is generic: `common.configfile`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from common.configfile import apply_overrides, from_dict, read_yaml, resolve_preset, to_dict


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    num_frames: int = 16
    strides: tuple[int, ...] = (1, 2, 3, 4, 5)
    stride_jitter: bool = True  # with stride s > 1 each index gets a jitter from [0, s-1]
    short_sides: tuple[int, ...] = (112, 128, 144)
    crop_size: int = 112
    flip_prob: float = 0.5


@dataclasses.dataclass(frozen=True)
class TrajectoryConfig:
    num_trajectories: int = 3
    anchor_scales: tuple[float, ...] = (16, 24, 28, 32, 48, 64)
    aspect_ratios: tuple[float, ...] = (0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0)
    size_jitter: float = 0.18  # w, h each multiplied by exp(U(-j, j))
    inner_keyframe_probs: tuple[float, ...] = (0.5, 0.3, 0.2)  # P(n = 0, 1, 2 inner key frames)
    max_speed: float = 3.0  # centre motion, px per frame per axis
    max_scale_rate: float = 0.025  # log size change per frame
    interpolation_probs: tuple[float, float, float] = (0.7, 0.15, 0.15)  # uniform, accelerate, decelerate
    shared_keyframes: bool = True  # a clip's trajectories share key frames and easings (official); False: each its own


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    shape_probs: tuple[float, float, float] = (0.5, 0.35, 0.15)  # rectangle, ellipse, rhombus
    soft_edge_prob: float = 0.5
    soft_edge_start: tuple[float, float] = (0.30, 0.45)  # d0 ~ U(a, b); the border is at 0.5
    opacity: tuple[float, float] = (0.8, 1.0)
    invisible_prob: float = 0.2  # masked region model (MRM)
    large_first: bool = True


@dataclasses.dataclass(frozen=True)
class ColourConfig:
    hue_sat_prob: float = 0.25
    hue_shift: float = 12.0  # on the 0-180 hue scale
    saturation_log: float = 0.1
    brightness_prob: float = 0.5
    brightness: float = 30.0
    contrast_prob: float = 0.5
    contrast_log: float = 0.12
    inner_keyframe_probs: tuple[float, ...] = (0.7, 0.3)  # of the brightness and contrast curves
    interpolation_probs: tuple[float, float, float] = (0.7, 0.15, 0.15)  # their easing, as trajectories' (official)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Everything that decides a sample besides its key and the video list."""

    clip: ClipConfig = ClipConfig()
    trajectory: TrajectoryConfig = TrajectoryConfig()
    patch: PatchConfig = PatchConfig()
    colour: ColourConfig = ColourConfig()
    # Bumped whenever the same key would give a different sample (2: official key frames, jitter, contrast;
    # 3: uint8 between render stages, rounded half up, brightness and contrast as one affine).
    version: int = 3

    def digest(self) -> str:
        """A short stable hash: replicas and trainers agree on a config by comparing digests."""
        blob = json.dumps(to_dict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def upgrade_generation(data: dict[str, Any]) -> dict[str, Any]:
    """A generation config as an older release saved it (a checkpoint), in today's fields and with the same
    samples: before `colour.interpolation_probs` existed, colour curves eased as trajectories do."""
    colour = data.get("colour", {})
    if "interpolation_probs" in colour:
        return data
    easing = data.get("trajectory", {}).get("interpolation_probs", list(TrajectoryConfig.interpolation_probs))
    return {**data, "colour": {**colour, "interpolation_probs": easing}}


def validate_generation(cfg: GenerationConfig, prefix: str = "") -> None:
    """Refuse impossible generation settings at load time, naming the key, its value and the allowed range
    (instead of a numpy or torch error from deep inside the first sample)."""
    c, t, p, k = cfg.clip, cfg.trajectory, cfg.patch, cfg.colour
    errors: list[str] = []

    def need(ok: bool, key: str, value: Any, allowed: str) -> None:
        if not ok:
            errors.append(f"{prefix}{key}={json.dumps(value)}: {allowed}")

    def share(key: str, value: float) -> None:
        need(0 <= value <= 1, key, value, "must be a probability in [0, 1]")

    def probabilities(key: str, values: tuple[float, ...]) -> None:
        need(
            bool(values) and min(values) >= 0 and abs(sum(values) - 1) < 1e-6,
            key,
            list(values),
            "must be non-negative probabilities summing to 1",
        )

    def positive(key: str, values: tuple[float, ...]) -> None:
        need(bool(values) and min(values) > 0, key, list(values), "must be a non-empty list of values > 0")

    def interval(key: str, values: tuple[float, float], low: float, high: float) -> None:
        need(low <= values[0] <= values[1] <= high, key, list(values), f"must be [a, b] with {low} <= a <= b <= {high}")

    need(c.num_frames >= 1, "clip.num_frames", c.num_frames, "must be >= 1")
    positive("clip.strides", c.strides)
    need(all(isinstance(s, int) for s in c.strides), "clip.strides", list(c.strides), "must be whole frame steps")
    need(c.crop_size >= 1, "clip.crop_size", c.crop_size, "must be >= 1")
    need(
        bool(c.short_sides) and min(c.short_sides) >= c.crop_size,
        "clip.short_sides",
        list(c.short_sides),
        f"must be a non-empty list, each >= clip.crop_size={c.crop_size} (the crop is cut from the resized frame)",
    )
    share("clip.flip_prob", c.flip_prob)
    need(
        t.num_trajectories >= 1,
        "trajectory.num_trajectories",
        t.num_trajectories,
        "must be >= 1 (the patches to catch)",
    )
    positive("trajectory.anchor_scales", t.anchor_scales)
    positive("trajectory.aspect_ratios", t.aspect_ratios)
    for key in ("size_jitter", "max_speed", "max_scale_rate"):
        need(getattr(t, key) >= 0, f"trajectory.{key}", getattr(t, key), "must be >= 0")
    probabilities("trajectory.inner_keyframe_probs", t.inner_keyframe_probs)
    probabilities("trajectory.interpolation_probs", t.interpolation_probs)
    probabilities("patch.shape_probs", p.shape_probs)
    share("patch.soft_edge_prob", p.soft_edge_prob)
    share("patch.invisible_prob", p.invisible_prob)
    interval("patch.soft_edge_start", p.soft_edge_start, 0.0, 0.5)
    interval("patch.opacity", p.opacity, 0.0, 1.0)
    for key in ("hue_sat_prob", "brightness_prob", "contrast_prob"):
        share(f"colour.{key}", getattr(k, key))
    for key in ("hue_shift", "saturation_log", "brightness", "contrast_log"):
        need(getattr(k, key) >= 0, f"colour.{key}", getattr(k, key), "must be >= 0")
    probabilities("colour.inner_keyframe_probs", k.inner_keyframe_probs)
    probabilities("colour.interpolation_probs", k.interpolation_probs)
    if errors:
        raise ValueError("invalid generation config: " + "; ".join(errors))


def load_generation(config: str | Path | None = None, overrides: list[str] | None = None) -> GenerationConfig:
    """The generation spec of a generation YAML, or of a training preset or YAML (its `data.generation`, so
    replicas serve what the trainer asks for), with `clip.num_frames=8`-style overrides (a training config's
    `data.generation.clip.num_frames=8` is taken as well); validated."""
    data: dict[str, Any] = {}
    if config is not None:
        data = read_yaml(resolve_preset(str(config)))
        if "data" in data or "model" in data:  # a training config: only its generation section matters here
            data = (data.get("data") or {}).get("generation") or {}
        data.pop("replica", None)  # a replica's runtime settings (datagen.service.server.settings)
    prefix = "data.generation."
    relative = [item.removeprefix(prefix) for item in overrides or []]
    cfg = from_dict(GenerationConfig, apply_overrides(data, relative))
    validate_generation(cfg)
    return cfg
