"""`--help` of every command answers at once: building the parsers imports no torch (seconds on a cold cache).
Checked in a fresh interpreter each, on sys.modules, not on time."""

import subprocess
import sys

import pytest

from datagen.cli import COMMANDS as DATAGEN_COMMANDS
from trainer.cli import COMMANDS as TRAIN_COMMANDS

PROBE = """
import contextlib, io, sys
from {package}.cli import build_parser, main
build_parser()  # every command's parser
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    main({argv!r})
assert "usage:" in out.getvalue(), out.getvalue()
print(sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision", "nvidia.dali"))))
"""


@pytest.mark.parametrize(
    "package, argv",
    [("datagen", ["--help"]), ("trainer", ["--help"])]
    + [("datagen", [c, "--help"]) for c in DATAGEN_COMMANDS]
    + [("trainer", [c, "--help"]) for c in TRAIN_COMMANDS],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_help_imports_no_torch(package, argv):
    code = PROBE.format(package=package, argv=argv)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{package} {' '.join(argv)} imported {result.stdout.strip()}"
