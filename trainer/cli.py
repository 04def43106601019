"""`ctp-train`: pretraining, tracking evaluation, encoder export and the downstream protocols."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from datagen.configfile import parse_command_line, split_overrides, to_yaml
from datagen.service import jsonlog
from trainer.signals import stopped_at_once

# Each command's one-line help. Only the command being run is imported: torch and friends take seconds to load,
# which `ctp-train --help` need not wait for.
COMMANDS = {
    "pretrain": "CtP self-supervised pretraining of a video encoder",
    "track-eval": "tracking mIoU of a pretrained checkpoint on generated clips",
    "export": "write a checkpoint's encoder as a torchvision state dict",
    "finetune": "fine-tune an encoder for action recognition (UCF-101, HMDB-51, Kinetics, class folders)",
    "eval": "10-clip video-level top-1/top-5 of a fine-tuned checkpoint, per-class accuracy, confusion matrix",
    "retrieve": "VCOP video retrieval: top-k of data.test queries against the data.train gallery",
}
# The commands whose parsers are still their modules' `add_parser` (pretrain's and finetune's are below).
MODULE_PARSERS = {
    "track-eval": "trainer.track_eval",
    "export": "trainer.export",
    "eval": "trainer.downstream.evaluate",
    "retrieve": "trainer.downstream.retrieve",
}


def build_parser(full: tuple[str, ...] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The parser: the `full` commands' own subparsers, the others one-line entries."""
    parser = argparse.ArgumentParser(
        prog="ctp-train",
        description="Catch-the-Patch self-supervised video pretraining and its evaluation.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if name not in full:
            subparsers.add_parser(name, help=help_text, add_help=False)
        elif name in MODULE_PARSERS:
            importlib.import_module(MODULE_PARSERS[name]).add_parser(subparsers)
        else:
            PARSERS[name](subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in split_overrides(argv)[0] if not a.startswith("-")), None)
    args = parse_command_line(build_parser((command,) if command in COMMANDS else ()), argv)
    jsonlog.setup_plain()
    try:
        args.func(args)
    except Exception as exc:
        if stopped_at_once():  # a second Ctrl-C: whatever it broke, stop without a traceback
            return _interrupted(args.command)
        from trainer.remote import NoReplicaError  # imported already by any command that can raise it

        if not isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, ConnectionError, NoReplicaError)):
            raise
        print(f"ctp-train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(args.command)
    return 0


def _interrupted(command: str) -> int:
    print(
        f"ctp-train {command}: interrupted; the newest checkpoint in run.out_dir is intact (--resume auto)",
        file=sys.stderr,
    )
    return 130


def _run_options(p: argparse.ArgumentParser, example: str) -> None:
    """What pretraining and fine-tuning runs take alike: where to continue from, overwriting, the resolved config,
    and KEY=VALUE overrides (anywhere on the line: `datagen.configfile.parse_command_line`)."""
    p.add_argument(
        "--resume",
        default=None,
        metavar="auto|CKPT",
        help="continue a run: `auto` takes the newest checkpoint in run.out_dir, if any; or a checkpoint file or "
        "run folder (default: a new run)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the checkpoints and metrics of a run already in run.out_dir first (default: refuse)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {example}")


def _pretrain_parser(subparsers: argparse._SubParsersAction) -> None:
    from trainer.config import presets

    p = subparsers.add_parser(
        "pretrain",
        help=COMMANDS["pretrain"],
        description="Pretrain an encoder with Catch-the-Patch on clips generated in-process from video files. "
        "Configuration: a preset or YAML file, then KEY=VALUE overrides (YAML values), e.g. "
        "`ctp-train pretrain --config tiny_cpu data.videos=[out/demo] optim.epochs=5`.",
        epilog=f"presets: {', '.join(presets())}",
    )
    p.add_argument("--config", default=None, help="preset name or YAML file (default: built-in defaults)")
    _run_options(p, "data.batch_size=64")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> None:
    from trainer.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    from trainer.distributed import Ranks
    from trainer.pretrain import pretrain

    score = pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    if score is not None and Ranks.from_env().is_main:
        print(
            f"tracking mIoU {score.miou:.4f}  first-box baseline {score.baseline_miou:.4f}  "
            f"({score.clips} held-out clips)  run: {cfg.run.out_dir}"
        )


def _finetune_parser(subparsers: argparse._SubParsersAction) -> None:
    from trainer.downstream.config import presets

    p = subparsers.add_parser(
        "finetune",
        help=COMMANDS["finetune"],
        description="Fine-tune a classifier on data.train from an exported encoder or a pretraining checkpoint "
        "(--init; without it: random initialisation, the baseline), validating on data.test every run.val_every "
        "epochs. The defaults are the paper's recipe. Run under torchrun for DDP. Example: `ctp-train finetune "
        "--config ucf101 --init r3d18_ctp.pth data.train.videos=/data/UCF-101 data.train.annotations=/data/ucfTrainTestlist`.",
        epilog=f"presets: {', '.join(presets())}",
    )
    p.add_argument("--config", default=None, help="preset or YAML file (default: the paper's recipe)")
    p.add_argument(
        "--init",
        default=None,
        metavar="WEIGHTS",
        help="exported encoder, pretraining checkpoint or run folder (its newest checkpoint; sets model.init; "
        "default: random initialisation)",
    )
    p.add_argument(
        "--label-fraction",
        type=float,
        default=None,
        metavar="F",
        help="train on this share of each class's labelled videos, e.g. 0.1 (sets data.label_fraction)",
    )
    _run_options(p, "optim.epochs=50")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> None:
    from trainer.downstream.config import load_downstream_config

    overrides = list(args.overrides)
    if args.init is not None:
        overrides.append(f"model.init={json.dumps(args.init)}")  # a quoted YAML string
    if args.label_fraction is not None:
        overrides.append(f"data.label_fraction={args.label_fraction}")
    cfg = load_downstream_config(args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    from trainer.downstream.finetune import finetune

    finetune(cfg, resume=args.resume, overwrite=args.overwrite)


PARSERS = {"pretrain": _pretrain_parser, "finetune": _finetune_parser}


if __name__ == "__main__":
    sys.exit(main())
