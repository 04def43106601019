"""`ctp-train --help` answers without importing torch (seconds of start-up); a command's own help still works."""

import subprocess
import sys

from tests.service_helpers import REPO


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_top_level_help_imports_no_torch():
    out = run(
        "import sys\nfrom trainer.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules)"
    )
    assert "pretrain" in out and "finetune" in out and "retrieve" in out
    assert "TORCH False" in out


def test_a_commands_help_lists_its_options():
    out = run("from trainer.cli import main\ntry:\n    main(['export', '--help'])\nexcept SystemExit:\n    pass")
    assert "--checkpoint" in out and "--out" in out


def test_every_option_has_a_help_text():
    import argparse

    from datagen.cli import build_parser as datagen_parser
    from trainer.cli import build_parser as train_parser

    missing = []
    for program, parser in (("ctp-train", train_parser()), ("ctp-datagen", datagen_parser())):
        (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for name, sub in commands.choices.items():
            missing += [f"{program} {name} {a.option_strings or a.dest}" for a in sub._actions if a.help is None]
    assert not missing
