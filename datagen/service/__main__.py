"""`python -m datagen.service serve|status|pull` (the same subcommands as `ctp-datagen`)."""
import argparse
import sys

from .cli import add_parsers

parser = argparse.ArgumentParser(prog="python -m datagen.service")
add_parsers(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args()
sys.exit(args.func(args))
