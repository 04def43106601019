"""`ctp-train`: pretraining, tracking evaluation, encoder export and the downstream protocols."""
from __future__ import annotations

import argparse
import logging
import sys

from datagen.service import jsonlog
from trainer import export, pretrain, track_eval
from trainer.downstream import cli as downstream_cli
from trainer.signals import stopped_at_once


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctp-train",
        description="Catch-the-Patch self-supervised video pretraining and its evaluation.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (pretrain, track_eval, export):
        module.add_parser(subparsers)
    downstream_cli.add_parsers(subparsers)
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
    args = parse_args(build_parser(), argv)
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
    print(f"ctp-train {command}: interrupted; the newest checkpoint in run.out_dir is intact (--resume auto)",
          file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
