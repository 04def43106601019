"""`ctp-train`: pretraining, tracking evaluation, encoder export and the downstream protocols."""

from __future__ import annotations

import argparse
import importlib
import sys

from datagen.service import jsonlog
from trainer.signals import stopped_at_once

# Each command's module and one-line help. Only the command being run is imported: torch and friends take
# seconds to load, which `ctp-train --help` need not wait for.
COMMANDS = {
    "pretrain": ("trainer.pretrain", "CtP self-supervised pretraining of a video encoder"),
    "track-eval": ("trainer.track_eval", "tracking mIoU of a pretrained checkpoint on generated clips"),
    "export": ("trainer.export", "write a checkpoint's encoder as a torchvision state dict"),
    "finetune": (
        "trainer.downstream.finetune",
        "fine-tune an encoder for action recognition (UCF-101, HMDB-51, Kinetics, class folders)",
    ),
    "eval": (
        "trainer.downstream.evaluate",
        "10-clip video-level top-1/top-5 of a fine-tuned checkpoint, per-class accuracy, confusion matrix",
    ),
    "retrieve": (
        "trainer.downstream.retrieve",
        "VCOP video retrieval: top-k of data.test queries against the data.train gallery",
    ),
}


def build_parser(full: tuple[str, ...] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The parser: the `full` commands' own subparsers (their modules imported), the others one-line entries."""
    parser = argparse.ArgumentParser(
        prog="ctp-train",
        description="Catch-the-Patch self-supervised video pretraining and its evaluation.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name in full:
            importlib.import_module(module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Options and KEY=VALUE overrides in any order: overrides after an option are overrides too."""
    args, rest = parser.parse_known_args(argv)
    strays = [item for item in rest if item.startswith("-") or "=" not in item]
    if strays or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(strays or rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = parse_args(build_parser((command,) if command in COMMANDS else ()), argv)
    jsonlog.setup_plain()
    try:
        args.func(args)
    except Exception as exc:
        if stopped_at_once():  # a second Ctrl-C: whatever it broke, stop without a traceback
            return _interrupted(args.command)
        from datagen.service.fleet import NoReplicaError  # imported already by any command that can raise it

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


if __name__ == "__main__":
    sys.exit(main())
