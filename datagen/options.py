"""The command-line options every generating command shares (preview, sample, bench, demo, serve), and the
generator they describe."""

from __future__ import annotations

import argparse
import os
from typing import Literal

from common.configfile import preset_names

from .ctp.spec import load_generation

VIDEOS_HELP = (
    "video files, frame sources (zips or folders of JPEG frames), folders of them (searched recursively) or "
    "manifest JSON files"
)


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
        f"used, so replicas serve what the trainer asks for; presets: {', '.join(preset_names())}); "
        "default: the paper's settings. KEY=VALUE operands anywhere on the line override its values, "
        "e.g. trajectory.num_trajectories=1 (or data.generation.trajectory.num_trajectories=1)",
    )
    parser.set_defaults(overrides=[])  # KEY=VALUE operands (common.configfile.parse_command_line)
    parser.add_argument(
        "--device",
        default="auto",
        help="where generation runs: cpu, cuda, cuda:N, or auto (cuda when available, else cpu)",
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
    parser.add_argument(
        "--no-render-check",
        dest="render_check",
        action="store_false",
        help="on CUDA, generate even when the device's CtP renderer fails its start-up comparison with the CPU "
        "kernels (the samples would differ from a CPU replica's; see `ctp-datagen verify`)",
    )


def default_torch_threads() -> int:
    """Half the cores this process may use: torch's own default (every core) competes with the decoder
    threads and, on a 2-core machine, made generation 5x slower than one thread."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


def make_generator(args: argparse.Namespace, self_check: bool | None = None):
    """The generator of the options added by `add_generation_args`; on CUDA (or with `self_check`) it checks
    itself before it returns (`datagen.verify.startup_check`)."""
    import torch

    from .generator import Generator
    from .video import manifest
    from .video.decode.decoder import Decoder

    torch.set_num_threads(args.threads or default_torch_threads())
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    config = load_generation(args.config, args.overrides)
    videos = manifest.resolve_videos(args.videos, min_frames=1)
    decoder = Decoder(args.device, args.backend, num_threads=args.decode_threads or None)
    return Generator(videos, config, args.device, decoder, self_check, args.render_check)
