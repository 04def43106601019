"""Typed config files: a frozen-dataclass schema filled from defaults ← a YAML file or preset ← KEY=VALUE
overrides, every value checked against its type hint (choices are `Literal`s) with the dotted key named.

Generic: it knows no CtP setting. Both packages load through it: datagen its `GenerationConfig`, the trainer its
run configs; and the presets (`PRESETS`) sit here, below both, so `ctp-datagen serve --config r3d18_ucf101`
and `ctp-train pretrain --config r3d18_ucf101` read the same file without datagen reaching into the trainer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# The pretraining presets: a run's generation spec (data.generation, which replicas serve) and its training sections.
PRESETS = Path(__file__).resolve().parent / "presets"
# An override operand: a dotted key of identifiers, `=`, a YAML value (`data.videos=[a, b]`).
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")
# A decimal number with optional exponent and digit separators: 1e-4, 3E5, .5, 1., -2.5e+3, 1_000.
_NUMBER = re.compile(r"[-+]?(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested dataclass → plain dict (tuples become lists), ready for YAML or JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def to_yaml(cfg: Any) -> str:
    """A config as YAML that loads back as the same config (`--print-config`)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Plain dict → dataclass `cls`, converting nested dataclasses and tuples; unknown keys, values of the wrong
    type and choices outside a `Literal` are errors naming the dotted key (`prefix` + field)."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]  # T is any dataclass: unbound
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix.rstrip('.')}: " if prefix else f"{cls.__name__}: "
        raise ValueError(f"{where}unknown option(s) {unknown}; known: {sorted(names)}")
    kwargs = {name: _convert(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    return cls(**kwargs)


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(hint, value, f"{key}.")  # type: ignore[arg-type]  # a type hint: the class, not an instance
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise ValueError(f"{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]  # a single value where a list is expected: data.videos=m.json
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, key) for v in value)
        if args and len(args) != len(value):
            raise ValueError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, key) for a, v in zip(args or [Any] * len(value), value))
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner, *_) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner, value, key)
    if hint in (int, float) and not isinstance(value, bool):
        return _number(hint, value, key)
    if hint in (int, float, bool, str) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ValueError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def _number(hint: type, value: Any, key: str) -> int | float:
    """A number however an ML user spells it: YAML 1.1 reads `1e-4` and `3E5` as strings (it wants `1.0e-4`), and
    an integral float such as `1e3` or `64.0` is a fine int."""
    number = value
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value.strip().replace("_", ""))
    if not isinstance(number, (int, float)):
        raise ValueError(f"{key}: expected {hint.__name__}, got {value!r}")
    if hint is float:
        return float(number)
    if isinstance(number, float) and not number.is_integer():
        raise ValueError(f"{key}: expected int, got {value!r}")
    return int(number)


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """A command line → (the rest, its KEY=VALUE override operands), wherever they stand: both CLIs take
    overrides this one way, before, between or after options and operands."""
    rest: list[str] = []
    overrides: list[str] = []
    for item in argv:
        (overrides if _OVERRIDE.match(item) else rest).append(item)
    return rest, overrides


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parser`'s arguments with the KEY=VALUE overrides taken out first (`split_overrides`) and handed to the
    command as `args.overrides`; a command without that attribute takes none."""
    rest, overrides = split_overrides(argv)
    args = parser.parse_args(rest)
    if overrides:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(overrides)} ({args.command} takes no KEY=VALUE overrides)")
        args.overrides = [*args.overrides, *overrides]
    return args


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


def preset_names(folder: Path = PRESETS) -> list[str]:
    """The presets in a folder of YAML configs, by name."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def resolve_preset(name_or_path: str, folder: Path = PRESETS) -> Path:
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


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file's mapping (empty file: {})."""
    loaded = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    return loaded


def load_config(
    cls: type[T],
    name_or_path: str | Path | None = None,
    overrides: list[str] | None = None,
    folder: Path = PRESETS,
    base: dict[str, Any] | None = None,
) -> T:
    """Defaults (or `base`, e.g. a checkpoint's config) ← a YAML file or a preset of `folder` ← overrides,
    typed into `cls`."""
    data = base or {}
    if name_or_path is not None:
        data = read_yaml(resolve_preset(str(name_or_path), folder))
    return from_dict(cls, apply_overrides(data, overrides or []))


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
