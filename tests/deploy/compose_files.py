"""docker-compose.yml and .env read as Compose reads them: .env, interpolation by Compose's rules, the
merged file, the commands it runs, and the host ports published under --scale."""

from __future__ import annotations

import collections
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.service_helpers import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "compose.cpu.yml"  # the CPU override (tests/deploy/test_cpu_hosts.py)
DOTENV = REPO / ".env"
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"


# -- Compose: .env and interpolation ------------------------------------------------------------------


def read_dotenv(path: Path = DOTENV) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped. Anything else is an error, not a guess."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=([^\"'#]*)", line)
        assert match, f"{path.name}:{number}: expected KEY=VALUE without quotes or inline comment: {line!r}"
        values[match[1]] = match[2]
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: $$, $NAME, ${NAME}, ${NAME[:]-default}, ${NAME[:]?error}, ${NAME[:]+alt}."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_substitute(text[i + 2 : end], env))
            i = end + 1
        elif match := re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1 :]):
            out.append(env.get(match[0], ""))
            i += 1 + len(match[0])
        else:
            raise ValueError(f"invalid interpolation at {text[i:]!r}")
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth, i = 1, start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed ${{ in {text!r}")


def _substitute(expression: str, env: Mapping[str, str]) -> str:
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])(.*))?", expression, re.S)
    if not match:
        raise ValueError(f"invalid interpolation ${{{expression}}}")
    name, colon, operator, argument = match.groups()
    value = env.get(name)
    missing = value is None or (colon == ":" and value == "")
    if operator is None:
        return value or ""
    if operator == "-":
        return interpolate(argument, env) if missing else value
    if operator == "?":
        if missing:
            raise ValueError(f"required variable {name} is missing: {argument}")
        return value
    return "" if missing else interpolate(argument, env)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


def compose_raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_with_env() -> dict:
    """The Compose file as `docker compose` sees it next to the committed .env."""
    return interpolate_tree(compose_raw(), read_dotenv())


def compose_variables() -> dict[str, set[str | None]]:
    """Every variable the Compose files read, with the inline defaults they give it (None: no default)."""
    found: dict[str, set[str | None]] = collections.defaultdict(set)
    for name, operator, default in re.findall(
        r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}", COMPOSE_FILE.read_text() + COMPOSE_CPU.read_text()
    ):
        found[name].add(default if operator in (":-", "-") else None)
    return dict(found)


def command_argv(command: str | list[str]) -> list[str]:
    """Compose runs a string command split shell-style, without a shell."""
    return shlex.split(command) if isinstance(command, str) else list(command)


# -- Compose: published ports under --scale ---------------------------------------------------------


def host_ports(service: dict) -> list[tuple[str, int, int]]:
    """(host IP, first, last) host ports a service publishes; ports that Docker picks are left out."""
    bound = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            host_ip, published = port.get("host_ip", "0.0.0.0"), str(port.get("published", ""))
        else:
            parts = str(port).split("/")[0].split(":")
            host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
            published = parts[-2] if len(parts) >= 2 else ""
        if published:
            first, _, last = published.partition("-")
            bound.append((host_ip or "0.0.0.0", int(first), int(last or first)))
    return bound


def port_clashes(services: dict[str, dict], scale: Mapping[str, int]) -> list[str]:
    """What stops `docker compose up --scale ...` from starting every container of every service."""
    problems, taken = [], []
    for name, service in services.items():
        replicas = scale.get(name, int(service.get("deploy", {}).get("replicas", 1)))
        if replicas > 1 and "container_name" in service:
            problems.append(
                f"{name}: container_name {service['container_name']!r} cannot be given to {replicas} containers"
            )
        for host_ip, first, last in host_ports(service):
            if replicas > last - first + 1:
                problems.append(f"{name}: {replicas} replicas cannot share host port(s) {first}-{last}")
            for other, other_ip, other_first, other_last in taken:
                same_ip = "0.0.0.0" in (host_ip, other_ip) or host_ip == other_ip
                if same_ip and first <= other_last and other_first <= last:
                    problems.append(
                        f"{name} and {other} both publish host port(s) {max(first, other_first)}-{min(last, other_last)}"
                    )
            taken.append((name, host_ip, first, last))
    return problems
