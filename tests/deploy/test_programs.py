"""Every command a container runs parses with its program's real argument parser (the flags exist, the trainer
config overrides are real keys), and every program exists in the image and answers --help."""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import os
import subprocess

from tests.deploy.image_files import dockerfile_stages
from tests.deploy.program_parsers import BIN, container_commands, help_command, resolve
from tests.service_helpers import REPO


def test_every_container_command_parses_with_its_programs_real_parser():
    commands = container_commands()
    assert {
        "compose datagen",
        "compose trainer",
        "compose datagen healthcheck",
        "k8s ctp-datagen/datagen",
        "k8s ctp-trainer/trainer",
        "k8s ctp-trainer/wait-for-replicas",
        "Dockerfile CMD",
    } <= commands.keys()
    programs = {program for argv in commands.values() for program in resolve(argv)}
    assert {
        ("ctp-datagen", "serve"),
        ("ctp-train", "pretrain"),
        ("ctp-torchrun",),
        ("ctp-gpu-slot",),
        ("ctp-ready", "replica"),
        ("ctp-ready", "fleet"),
    } <= programs


def test_every_program_exists_in_the_image_and_answers_help():
    programs = {program for argv in container_commands().values() for program in resolve(argv)}
    scripts = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}
    import tomllib

    ours = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    copied = [a for k, a in dockerfile_stages()[1][-1].instructions if k == "COPY" and "deploy/bin/" in a]
    assert copied and copied[0].split()[-1] == "/usr/local/bin/", "deploy/bin must land on the image's PATH"
    for program in sorted(programs):
        name = program[0]
        if (BIN / name).is_file():
            assert os.access(BIN / name, os.X_OK) and (BIN / name).read_text().startswith("#!/usr/bin/env python3\n")
        else:
            assert name in ours or name in scripts, f"{name} is no console script installed with the project"
        result = subprocess.run(help_command(program), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and "usage" in result.stdout.lower(), (
            f"{' '.join(program)} --help:\n{result.stderr[-2000:]}"
        )
