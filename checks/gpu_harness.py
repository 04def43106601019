"""The GPU check's harness: sections in order of value under one deadline, each in a process group of its own.

A lent GPU gives 15 minutes in all, so the check (checks/gpu_check.py lists the sections, checks/gpu_*.py hold
them) has one deadline and its sections run in order of value, each in a child process of its own process
group with the smaller of its own cap and the time left; a section that overruns is killed with everything
it started, and the next one runs. Its JSON is rewritten after every section and, inside a section, after
every measurement (`Context.record`), so whatever ran survives a kill. A section that is killed is reported
as such ("timed out"), never as a wrong result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.atomic import write_atomic
from common.tables import format_table

PRESET = "r3d18_ucf101"  # the training preset the sections pretrain and fine-tune with


@dataclasses.dataclass
class Context:
    """What a section child is given, and where it writes what it measured as it goes."""

    videos: list[str]
    batch_size: int
    result_file: Path
    scratch: Path  # a folder for run outputs (not brought back)
    out: Path  # what is brought back from the device machine ($OUT): logs worth reading
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    summary: list[list[str]] = dataclasses.field(default_factory=list)

    def record(self, key: str, value: Any, *rows: tuple[str, str, str]) -> None:
        """Keep a measurement (and its summary rows) on disk at once: a later kill loses nothing before it."""
        self.result[key] = value
        self.summary.extend(list(r) for r in rows)
        write_atomic(self.result_file, json.dumps({"result": self.result, "summary": self.summary}, default=str))
        print(f"   {key}: {json.dumps(value, default=str)[:400]}", flush=True)

    def manifest(self) -> list:
        from datagen.video.manifest import resolve_videos

        return resolve_videos(self.videos)


@dataclasses.dataclass
class Section:
    name: str
    cap_s: float
    run: Callable[[Context], None]


def commit() -> str:
    if shutil.which("git"):
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    packed = Path(".devpack/commit")  # written by checks/gpu_pack.sh: the device machine may have no git
    return packed.read_text().strip() if packed.exists() else "unknown"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_section(sec: Section, index: int, child_args: Sequence[str], budget: float, out: Path) -> dict[str, Any]:
    """The section in a child of its own process group, killed with all it started at the budget."""
    result_file = out / f".section-{index}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "checks.gpu_check", "--section", sec.name, "--result", str(result_file)]
    start = time.monotonic()
    child = subprocess.Popen([*command, *child_args], start_new_session=True)
    try:
        code: int | str = child.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        code = f"timed out at its budget of {budget:.0f} s"
    finally:
        kill_group(child)
    outcome = json.loads(result_file.read_text()) if result_file.exists() else {"result": {}, "summary": []}
    outcome.update(seconds=round(time.monotonic() - start, 1), budget_s=round(budget), exit=code)
    result_file.unlink(missing_ok=True)
    return outcome


def kill_group(child: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.1)
    child.wait()


def orchestrate(
    sections: Sequence[Section], deadline: float, out: Path, child_args: Sequence[str], only: Sequence[str] = ()
) -> dict[str, Any]:
    """Run the sections (those whose name holds a word of `only`, and the first, always) within `deadline`."""
    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "deadline_s": deadline,
        "caps_s": {s.name: s.cap_s for s in sections},
        "sections": {},
    }

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(f"gpu_check: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        for index, sec in enumerate(sections):
            if only and index and not any(w in sec.name for w in only):
                continue
            left = deadline - (time.monotonic() - start) - 2
            if left < 8:
                print(f"\n== {sec.name}: skipped, {left:.0f} s left", flush=True)
                report["sections"][sec.name] = {"exit": "skipped", "summary": [[sec.name, "SKIPPED", "deadline"]]}
                continue
            print(f"\n== {sec.name} ({min(sec.cap_s, left):.0f} s of {left:.0f} s left)", flush=True)
            outcome = run_section(sec, index, child_args, min(sec.cap_s, left), out)
            if outcome["exit"] != 0:
                verdict = "FAILED" if isinstance(outcome["exit"], int) else "TIMED OUT"
                outcome["summary"].append([sec.name, verdict, str(outcome.get("error", outcome["exit"]))[:60]])
            report["sections"][sec.name] = outcome
            write_report(report, out)
    finally:
        report["seconds"] = round(time.monotonic() - start, 1)
        write_report(report, out)
        print_table(report)
    return report


def write_report(report: dict[str, Any], out: Path) -> None:
    write_atomic(out / "gpu_check.json", json.dumps(report, indent=2, default=str))


def print_table(report: dict[str, Any]) -> None:
    rows = [row for outcome in report["sections"].values() for row in outcome.get("summary", [])]
    if not rows:
        return
    print("\n" + format_table(rows, ("check", "result", "target"), align="<<<"))
    print(f"({report.get('seconds', '?')} s of a {report['deadline_s']} s deadline)", flush=True)


def run_child(sections: Sequence[Section], name: str, ctx: Context) -> None:
    """One section, in this process: its measurements go to the result file as they are taken."""
    sec = next(s for s in sections if s.name == name)
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    write_atomic(ctx.result_file, json.dumps({"result": {}, "summary": []}))
    try:
        sec.run(ctx)
    except Exception as exc:
        traceback.print_exc()
        saved = json.loads(ctx.result_file.read_text())
        saved.update(error=f"{type(exc).__name__}: {exc}"[:2000], traceback=traceback.format_exc()[-4000:])
        write_atomic(ctx.result_file, json.dumps(saved, default=str))
        sys.exit(1)
