"""deploy/Dockerfile and .dockerignore read as the builder reads them: instructions, stages with their ARGs
substituted, and what the build context holds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from tests.service_helpers import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Dockerfile substitution: $NAME, ${NAME} and ${NAME:-default} (an unknown NAME is left as written)."""

    def value(m: re.Match) -> str:
        if m[2] is not None:  # ${NAME:-default}: the default when unset or empty
            return variables.get(m[1]) or substitute(m[2], variables)
        return variables.get(m[1], m[0])

    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}?", value, text)


class Stage:
    def __init__(self, base: str, name: str | None):
        self.base, self.name = base, name
        self.variables: dict[str, str] = {}
        self.instructions: list[tuple[str, str]] = []


def dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the build stages, with ARG and ENV values known in each."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            words = [w for w in arguments.split() if not w.startswith("--")]
            stages.append(Stage(substitute(words[0], global_args), words[2] if len(words) > 2 else None))
            continue
        target = stages[-1].variables if stages else global_args
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            target[name] = substitute(default, target)
        elif keyword == "ENV":
            for name, value in re.findall(r"(\w+)=(\S+)", arguments):
                target[name] = substitute(value, target)
        if stages:
            stages[-1].instructions.append((keyword, substitute(arguments, target)))
    return global_args, stages


def cuda_variant_stages(stages: list[Stage]) -> dict[str, Stage]:
    return {s.name.removeprefix("cuda-"): s for s in stages if s.name and s.name.startswith("cuda-")}


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the repo) out of the build context: last match wins."""
    ignored = False
    for rule in DOCKERIGNORE.read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(_glob(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


def _glob(path: str, pattern: str) -> bool:
    """Go's filepath.Match per path segment, plus ** for any number of segments (Docker's rules)."""
    regex = (
        re.escape(pattern)
        .replace(r"\*\*/", "(?:.*/)?")
        .replace(r"\*\*", ".*")
        .replace(r"\*", "[^/]*")
        .replace(r"\?", "[^/]")
    )
    return re.fullmatch(regex, path) is not None
