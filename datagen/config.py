"""Typed configuration: the CtP generation spec (docs/spec.md) and the YAML/override plumbing.

Both sides of the service import this module: the replica generates from a `GenerationConfig` and the
trainer sends its digest, so a replica never serves samples of a config it was not given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


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


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested dataclass → plain dict (tuples become lists), ready for YAML or JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def to_yaml(cfg: Any) -> str:
    """A config as YAML that loads back as the same config (`--print-config`)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Plain dict → dataclass `cls`, converting nested dataclasses and tuples; unknown keys are errors."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(names)}")
    kwargs = {name: _convert(hints[name], value, f"{cls.__name__}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(hint, value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]  # a single value where a list is expected: data.videos=m.json
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_convert(item, v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(args[0], value, where)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, bool, str) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, returning a new dict."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        path, raw = item.split("=", 1)
        node = data
        *parents, leaf = path.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def preset_names(folder: Path) -> list[str]:
    """The presets in a folder of YAML configs, by name."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def resolve_preset(name_or_path: str, folder: Path) -> Path:
    """A YAML path, or the name of a preset in `folder` (`r3d18_ucf101`) → the file."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = folder / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise ValueError(
        f"config {name_or_path!r} is neither a file nor a preset; presets: {', '.join(preset_names(folder))}"
    )


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults ← YAML file ← command-line overrides, validated into `cls`."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides or []))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file's mapping (empty file: {})."""
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    return loaded


def differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings two config dicts disagree on, as `key: old -> new` (nested keys dotted)."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


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
