"""The command-line options every generating command shares (preview, sample, bench, demo, serve), and the
generator they describe."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Literal

import torch

from . import manifest
from .config import GenerationConfig, apply_overrides, from_dict, read_yaml, resolve_preset, validate_generation

# The trainer's presets, by path (datagen never imports the trainer): `--config r3d18_ucf101` on a replica.
TRAINING_PRESETS = Path(__file__).resolve().parents[1] / "trainer" / "configs"

VIDEOS_HELP = "video files, folders (searched recursively) or manifest JSON files"


def add_generation_args(
    parser: argparse.ArgumentParser, videos: Literal["required", "optional", "positional"] = "required"
) -> None:
    """Inputs, spec config, device and decoder. `videos` is an option (`--videos`), required or not, or the
    command's positional operand (a replica's one argument)."""
    if videos == "positional":
        parser.add_argument("videos", nargs="+", metavar="VIDEOS", help=VIDEOS_HELP)
    else:
        parser.add_argument("--videos", nargs="+", required=videos == "required", metavar="PATH", help=VIDEOS_HELP)
    parser.add_argument(
        "--config",
        metavar="YAML|PRESET",
        help="generation config YAML, or a training preset or YAML (its data.generation section is "
        "used, so replicas serve what the trainer asks for); default: the paper's settings",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set trajectory.num_trajectories=1 (repeatable)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where generation runs (cpu, cuda or cuda:N): cuda when available, else cpu",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "dali", "pyav"),
        help="decoder: auto picks DALI on GPU, DALI-CPU for VP8/VP9/MJPEG and PyAV otherwise",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: half the usable cores, the rest left to the decoder threads)",
    )
    parser.add_argument(
        "--decode-threads",
        type=int,
        default=0,
        help="decoder threads: DALI's and parallel PyAV clips (0: 7 NVDEC engines on CUDA, the usable cores on CPU)",
    )


def default_torch_threads() -> int:
    """Half the cores this process may use: torch's own default (every core) competes with the decoder
    threads and, on a 2-core machine, made generation 5x slower than one thread."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


def generation_config(config: str | None, overrides: list[str]) -> GenerationConfig:
    """`--config` and `--set`: a generation YAML, or a training preset name or YAML (its `data.generation`),
    with the overrides applied to the generation settings; validated."""
    data: dict = {}
    if config is not None:
        path = Path(config) if Path(config).is_file() else resolve_preset(config, TRAINING_PRESETS)
        loaded = read_yaml(path)
        if "data" in loaded or "model" in loaded:  # a training config: only its generation section matters here
            loaded = (loaded.get("data") or {}).get("generation") or {}
        data = loaded
    cfg = from_dict(GenerationConfig, apply_overrides(data, overrides))
    validate_generation(cfg)
    return cfg


def make_generator(args: argparse.Namespace):
    """The generator of the options added by `add_generation_args`."""
    from .decode import Decoder
    from .generator import Generator

    torch.set_num_threads(args.threads or default_torch_threads())
    config = generation_config(args.config, args.overrides)
    videos = manifest.resolve_videos(args.videos, min_frames=1)
    return Generator(
        videos, config, args.device, Decoder(args.device, args.backend, num_threads=args.decode_threads or None)
    )
