"""The command table both CLIs (`ctp-datagen`, `ctp-train`) are built from: every command listed with its one
line of help, and only the command being run given its full subparser, whose builder imports what it needs, so
that `--help` answers without importing torch (tests/test_cli_help.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection, Mapping

from common.env import describe

Builder = Callable[[argparse._SubParsersAction], None]  # adds one command's subparser


def command_parser(
    prog: str, description: str, commands: Mapping[str, str], builders: Mapping[str, Builder], full: Collection[str]
) -> argparse.ArgumentParser:
    """The parser: the `full` commands' own subparsers (from `builders`), the others one-line entries."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=describe(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in commands.items():
        if name in full:
            builders[name](sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser
