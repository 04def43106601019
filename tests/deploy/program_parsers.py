"""The programs the containers run: their real argument parsers, loaded without running them, and the commands
Compose and the manifests give them."""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.compose_files import command_argv, compose_with_env
from tests.deploy.image_files import dockerfile_stages
from tests.deploy.k8s_files import container_env, expand, k8s_objects, kustomization, pod_spec
from tests.service_helpers import REPO

BIN = REPO / "deploy" / "bin"
VENV_BIN = Path(sys.executable).parent


def load_script(path: Path) -> ModuleType:
    """A deploy/ script (those in bin/ have no .py suffix) loaded as a module, not run."""
    loader = importlib.machinery.SourceFileLoader(path.stem.replace("-", "_"), str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def parse(parser: argparse.ArgumentParser, argv: list[str], what: str) -> argparse.Namespace:
    """The parsed arguments, or the test fails with what the program rejected."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{what}: the program rejects {shlex.join(argv)} (exit {exc.code}; its message is above)")


def resolve(argv: list[str]) -> Iterator[tuple[str, ...]]:
    """Parse a container command with its programs' real parsers; yield each (program, subcommand) it runs."""
    program, rest = argv[0], argv[1:]
    where = shlex.join(argv)
    if rest == ["--help"]:
        yield (program,)
    elif program == "ctp-datagen":
        from datagen.cli import build_parser

        args = parse(build_parser(), rest, where)
        yield program, args.command
    elif program == "ctp-train":
        from trainer.cli import build_parser
        from trainer.config import load_train_config

        args = parse(build_parser(), rest, where)
        if args.command == "pretrain":
            load_train_config(args.config, args.overrides)  # the preset exists, the overrides are real keys
        yield program, args.command
    elif program in ("torchrun", "ctp-torchrun"):  # ctp-torchrun takes torchrun's arguments (trainer.runtime.launch)
        from torch.distributed.run import get_args_parser

        args = parse(get_args_parser(), rest, where)
        assert args.no_python, f"{where}: run the ctp-train console script with --no-python"
        yield (program,)
        yield from resolve([args.training_script, *args.training_script_args])
    elif program in ("ctp-ready", "ctp-gpu-slot"):
        args = parse(load_script(BIN / program).build_parser(), rest, where)
        yield (program, args.check) if program == "ctp-ready" else (program,)
        command = [word for word in getattr(args, "command", []) if word != "--"]
        if command:
            yield from resolve(command)
    elif program == "tensorboard":
        yield (program,)
    else:
        pytest.fail(
            f"{where}: {program} is neither a console script of the project or its dependencies nor in deploy/bin"
        )


def container_commands() -> dict[str, list[str]]:
    """Every command the ctp-video image runs, from the Dockerfile, Compose (with .env) and Kubernetes."""
    commands: dict[str, list[str]] = {}
    for keyword, arguments in dockerfile_stages()[1][-1].instructions:
        if keyword in ("CMD", "ENTRYPOINT"):
            commands[f"Dockerfile {keyword}"] = json.loads(arguments)
    services = compose_with_env()["services"]
    for name, service in services.items():
        if service["image"] != services["datagen"]["image"]:
            continue  # redis: the official image's own programs
        commands[f"compose {name}"] = command_argv(service["command"])
        test = service.get("healthcheck", {}).get("test")
        if test:
            assert test[0] == "CMD", f"compose {name}: health checks run without a shell"
            commands[f"compose {name} healthcheck"] = test[1:]
    for workload in k8s_objects():
        if workload["kind"] not in ("Deployment", "Job"):
            continue
        spec = pod_spec(workload)
        for c in spec.get("initContainers", []) + spec["containers"]:
            if not c["image"].startswith(kustomization()["images"][0]["name"] + ":"):
                continue
            env = container_env(c)
            commands[f"k8s {workload['metadata']['name']}/{c['name']}"] = expand(c["command"] + c.get("args", []), env)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    commands[f"k8s {workload['metadata']['name']}/{c['name']} {probe}"] = expand(
                        c[probe]["exec"]["command"], env
                    )
    return commands


def help_command(program: tuple[str, ...]) -> list[str]:
    if (BIN / program[0]).is_file():
        return [sys.executable, str(BIN / program[0]), *program[1:], "--help"]
    return [str(VENV_BIN / program[0]), *program[1:], "--help"]
