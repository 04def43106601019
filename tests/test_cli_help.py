"""`ctp-train --help` answers without importing torch (seconds of start-up); a command's own help still works."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_top_level_help_imports_no_torch():
    out = run("import sys\nfrom trainer.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
              "print('TORCH', 'torch' in sys.modules)")
    assert "pretrain" in out and "finetune" in out and "retrieve" in out
    assert "TORCH False" in out


def test_a_commands_help_lists_its_options():
    out = run("from trainer.cli import main\ntry:\n    main(['export', '--help'])\nexcept SystemExit:\n    pass")
    assert "--checkpoint" in out and "--out" in out
