"""The downstream subcommands of `ctp-train`: finetune, eval and retrieve (one module each)."""
from __future__ import annotations

import argparse

from trainer.downstream import evaluate, finetune, retrieve


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    for module in (finetune, evaluate, retrieve):
        module.add_parser(subparsers)
