"""The GPU check's harness on a CPU: one deadline, results kept after every section, children killed with
everything they started. (Its measurements need a GPU; here every CUDA section fails fast, as it must.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from checks import gpu_check, gpu_harness
from tests.service_helpers import REPO as ROOT


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_a_section_is_killed_with_the_processes_it_started():
    script = "import subprocess, sys, time; p = subprocess.Popen(['sleep', '120']); print(p.pid, flush=True); time.sleep(120)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    grandchild = int(child.stdout.readline())
    assert alive(grandchild)
    gpu_harness.kill_group(child)
    time.sleep(0.2)
    assert child.returncode is not None and not alive(grandchild)


# Without CUDA every section fails fast; the environment section still imports torch and DALI, which took over its
# share of a 20 s deadline once at a load average of 10.
DEADLINE = 40


def test_the_check_keeps_its_deadline_and_reports_every_section(tmp_path: Path):
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "checks.gpu_check",
            "--videos",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path),
            "--deadline",
            str(DEADLINE),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""},
    )
    seconds = time.monotonic() - start
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    names = [s.name for s in gpu_check.SECTIONS]
    assert list(report["sections"]) == names  # each section, in order of value, ran, failed or was skipped
    assert seconds < DEADLINE + 10 and report["seconds"] <= DEADLINE + 2
    env = report["sections"]["environment"]
    assert env["result"]["environment"]["torch"] and env["exit"] == 1  # recorded before it failed: no CUDA here
    assert "no CUDA device" in env["error"]
    assert sum(s.get("seconds", 0) for s in report["sections"].values()) <= DEADLINE
    table = done.stdout.rstrip()  # the table, last
    assert "libnvcuvid" in table and table.endswith(f"s of a {DEADLINE:.1f} s deadline)")
    assert not list(tmp_path.glob(".section-*.json"))  # per-section scratch files are folded into the report
