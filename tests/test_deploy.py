"""Deployment: docker-compose.yml and .env, the Dockerfile, the Kubernetes manifests, and the programs they run.

No Docker engine or cluster runs here, so the files are checked the way their tools would read them: the
Compose file against the Compose specification (before and after interpolating .env), the manifests
against the Kubernetes API models and against each other, the Dockerfile statically. Every command a
container runs is parsed by the real argument parser of its program (the flags exist, the trainer config
overrides are real keys), every program answers --help, and the deploy/bin gates run against a real
redis-server and a real replica.
"""

from __future__ import annotations

import argparse
import collections
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from tests.service_helpers import RedisServer, ReplicaProcess, free_port, make_videos

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "compose.cpu.yml"  # the CPU override (tests/test_deploy_cpu.py)
DOTENV = REPO / ".env"
SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
K8S = REPO / "deploy" / "k8s"
BIN = REPO / "deploy" / "bin"
VENV_BIN = Path(sys.executable).parent
POD_IP = "10.1.2.3"  # stands in for the downward API's status.podIP


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


# -- Dockerfile ----------------------------------------------------------------------------------------


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


# -- Kubernetes ----------------------------------------------------------------------------------------


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def k8s_objects() -> list[dict]:
    objects = []
    for name in kustomization()["resources"]:
        objects += [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    return objects


def k8s_object(kind: str, name: str) -> dict:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict, name: str) -> dict:
    spec = pod_spec(workload)
    return next(c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name)


def container_env(c: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: ConfigMaps from envFrom, then env."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(k8s_object("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["valueFrom"].get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[var["name"]] = POD_IP
        else:
            env[var["name"]] = ""  # from a Secret
    return env


def expand(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command and args; an undefined reference is left as it is."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg) for arg in argv]


def api_problems(value: Any, type_name: str, where: str) -> list[str]:
    """Where `value` does not fit the Kubernetes API type `type_name` (field names and value types)."""
    import kubernetes.client

    if listed := re.fullmatch(r"[Ll]ist\[(.+)\]", type_name):  # list[X] in older clients, List[X] in newer
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in api_problems(item, listed[1], f"{where}[{i}]")]
    if mapped := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        inner = mapped[1] or mapped[2]
        return [p for key, item in value.items() for p in api_problems(item, inner, f"{where}.{key}")]
    scalars = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "object": object}
    if type_name in scalars:
        wrong = not isinstance(value, scalars[type_name]) or (type_name == "int" and isinstance(value, bool))
        return [f"{where}: expected {type_name}, got {value!r}"] if wrong else []
    model = getattr(kubernetes.client, type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} mapping"]
    fields = {json_name: attribute for attribute, json_name in model.attribute_map.items()}
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{where}: {type_name} has no field {key!r}")
        else:
            problems += api_problems(item, model.openapi_types[fields[key]], f"{where}.{key}")
    return problems


# -- Programs the containers run ----------------------------------------------------------------------


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


# ======================================================================================================
# Compose
# ======================================================================================================


def test_compose_file_validates_against_the_compose_specification():
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    for label, document in (("as written", compose_raw()), ("with .env", compose_with_env())):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
        assert not errors, f"docker-compose.yml ({label}) breaks the Compose specification:\n" + "\n".join(errors)


def test_the_vendored_schema_is_the_shared_one(shared_schemas):
    assert SCHEMA.read_bytes() == (shared_schemas / "compose-spec.json").read_bytes(), (
        "refresh tests/data/compose-spec.json and its README entry"
    )


def test_schema_validation_catches_a_broken_file():
    broken = compose_with_env()
    broken["services"]["datagen"]["deploy"]["resources"]["reservations"]["devices"][0].pop("capabilities")
    broken["services"]["trainer"]["depends_on"]["datagen"]["condition"] = "service_ready"
    errors = list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(broken))
    assert len(errors) == 2


def test_env_documents_every_knob_with_the_compose_default():
    env, used = read_dotenv(), compose_variables()
    assert set(env) == set(used), (
        f"in Compose only: {sorted(set(used) - set(env))}; in .env only: {sorted(set(env) - set(used))}"
    )
    for name, defaults in used.items():
        assert defaults == {env[name]}, f"{name}: Compose defaults {defaults} differ from .env's {env[name]!r}"
    lines = DOTENV.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), f".env: {line.split('=')[0]} has no comment above it"


def test_env_is_committed_not_ignored():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO).returncode == 0
    assert not ignored, ".gitignore hides .env: its documented defaults must be committed"


def test_interpolation_follows_compose_rules():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET:-${SET}y}", env) == "x d  d xy"
    assert interpolate("$$HOME ${SET:+alt} ${EMPTY:+alt} $SET", env) == "$HOME alt  x"
    with pytest.raises(ValueError, match="UNSET"):
        interpolate("${UNSET:?set it}", env)


def test_env_defaults_give_a_gpu_stack_that_waits_for_its_replicas(monkeypatch):
    compose, env = compose_with_env(), read_dotenv()
    services = compose["services"]
    assert set(services) == {"redis", "datagen", "trainer", "tensorboard"}
    datagen, trainer = services["datagen"], services["trainer"]

    gpu = datagen["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and {"gpu", "video"} <= set(gpu["capabilities"]), (
        "NVDEC needs the video capability"
    )
    assert "gpu" in trainer["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"]
    assert int(datagen["deploy"]["replicas"]) == int(env["DATAGEN_REPLICAS"]) >= 1
    assert datagen["ipc"] == trainer["ipc"] == "host", "the shared-memory transport needs one IPC namespace"

    assert datagen["depends_on"]["redis"]["condition"] == "service_healthy"
    assert trainer["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "datagen": {"condition": "service_healthy"},
    }
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]

    serve = command_argv(datagen["command"])
    serve = serve[serve.index("ctp-datagen") :]  # after the ctp-gpu-slot wrapper
    from datagen.cli import build_parser

    serve_args = build_parser().parse_args(serve[1:])
    health = datagen["healthcheck"]["test"]
    assert (
        health[1:3] == ["ctp-ready", "replica"] and health[health.index("--addr") + 1] == f"127.0.0.1:{serve_args.port}"
    )
    redis_url = urlsplit(datagen["environment"]["CTP_REDIS_URL"])
    assert redis_url.hostname in services and (redis_url.port or 6379) == 6379, "replicas register in the redis service"
    assert trainer["environment"]["CTP_REDIS_URL"] == datagen["environment"]["CTP_REDIS_URL"]
    assert trainer["environment"]["CTP_NAMESPACE"] == serve_args.namespace

    from torch.distributed.run import get_args_parser

    from trainer.cli import build_parser as train_parser
    from trainer.config import load_train_config

    torchrun = get_args_parser().parse_args(command_argv(trainer["command"])[1:])
    assert torchrun.nproc_per_node == env["TRAINER_NPROC_PER_NODE"] == "gpu" and torchrun.standalone
    pretrain = train_parser().parse_args(torchrun.training_script_args)
    cfg = load_train_config(pretrain.config, pretrain.overrides)
    assert list(cfg.data.videos) == serve_args.videos, "trainer and replicas must index the same videos (same digest)"
    from datagen.ctp.spec import load_generation

    served = load_generation(serve_args.config, serve_args.overrides)
    assert served == cfg.data.generation, "the replicas must serve the trainer's generation settings (one config)"
    assert cfg.run.out_dir == f"/runs/{env['CTP_RUN_NAME']}" and torchrun.log_dir.startswith(cfg.run.out_dir + "/")
    assert pretrain.resume == "auto"
    from trainer.pretrain.sources import replica_settings

    for name, value in trainer["environment"].items():  # the trainer reads the fleet from its environment
        monkeypatch.setenv(name, str(value))
    fleet = replica_settings(cfg.service)
    assert fleet is not None, "with these variables the trainer would generate in-process instead of using the replicas"
    assert (fleet["redis_url"], fleet["namespace"]) == (datagen["environment"]["CTP_REDIS_URL"], serve_args.namespace)

    for name, service in services.items():
        for volume in service.get("volumes", []):
            if volume["target"] == "/data":
                assert volume["read_only"] is True and volume["source"] == env["CTP_DATA_DIR"], (
                    f"{name}: /data must be read-only"
                )
    runs = {name: v for name, s in services.items() for v in s.get("volumes", []) if v["target"] == "/runs"}
    assert set(runs) == {"trainer", "tensorboard"} and runs["trainer"]["source"] in compose["volumes"]
    assert not runs["trainer"].get("read_only") and runs["tensorboard"]["read_only"]
    assert services["tensorboard"]["profiles"] == ["tensorboard"], "TensorBoard is optional"


@pytest.mark.parametrize("replicas", [1, 4, 16])
def test_scaling_datagen_leaves_no_host_port_clash(replicas: int):
    services = compose_with_env()["services"]
    assert not port_clashes(services, {"datagen": replicas})
    assert not host_ports(services["datagen"]), "replicas are found through Redis; publishing a port would pin one"


def test_the_clash_check_sees_clashes():
    assert port_clashes({"a": {"ports": ["50051:50051"]}}, {"a": 2}) == [
        "a: 2 replicas cannot share host port(s) 50051-50051"
    ]
    assert port_clashes(
        {"a": {"ports": ["127.0.0.1:6006:6006"]}, "b": {"ports": [{"target": 1, "published": "6006"}]}}, {}
    )
    assert port_clashes({"a": {"container_name": "x"}}, {"a": 3})
    assert not port_clashes({"a": {"ports": ["50051", "127.0.0.1::80", "8000-8003:80"]}}, {"a": 4})
    assert port_clashes({"a": {"ports": ["8000-8003:80"]}}, {"a": 5})


# ======================================================================================================
# Dockerfile and build context
# ======================================================================================================


def test_every_base_image_is_pinned():
    global_args, stages = dockerfile_stages()
    names = {s.name for s in stages if s.name}
    assert f"cuda-{global_args['CUDA_VARIANT']}" in names, "the default CUDA_VARIANT has no stage"
    assert read_dotenv()["CUDA_VARIANT"] in cuda_variant_stages(stages)
    for stage in stages:
        if stage.base.startswith("cuda-"):
            assert stage.base in names, f"FROM {stage.base}: no such stage"
            continue
        image, _, digest = stage.base.partition("@")
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert digest.startswith("sha256:") or (tag and tag != "latest"), f"FROM {stage.base} is not pinned"


def test_cuda_variants_pair_base_torch_and_dali():
    variants = cuda_variant_stages(dockerfile_stages()[1])
    assert {v[:4] for v in variants} == {"cu12", "cu13"}, "CUDA 12 and CUDA 13 variants"
    for variant, stage in variants.items():
        cuda_major = re.search(r"nvidia/cuda:(\d+)\.", stage.base)[1]
        assert variant.startswith(f"cu{cuda_major}"), f"{stage.name} is based on CUDA {cuda_major}"
        assert stage.variables["DALI_PACKAGE"] == f"nvidia-dali-cuda{cuda_major}0"
    torch = next(a for k, a in dockerfile_stages()[1][-1].instructions if k == "RUN" and "torch==" in a)
    assert (
        '--index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/${CUDA_VARIANT}}"' in DOCKERFILE.read_text()
    )
    assert "https://download.pytorch.org/whl/" in torch, "torch comes from the index of the CUDA variant by default"


def test_image_installs_the_tested_releases():
    final = dockerfile_stages()[1][-1].variables
    makefile = (REPO / "Makefile").read_text()
    assert (
        f"torch=={final['TORCH_VERSION']} " in makefile and f"torchvision=={final['TORCHVISION_VERSION']}" in makefile
    )
    dali = [d.version for d in importlib.metadata.distributions() if d.metadata["Name"].startswith("nvidia-dali-cuda")]
    assert dali and final["DALI_VERSION"] == dali[0], f"DALI {final['DALI_VERSION']} in the image, {dali} here"


def test_image_runs_as_a_non_root_user():
    users = [arguments for keyword, arguments in dockerfile_stages()[1][-1].instructions if keyword == "USER"]
    assert users, "the final stage never leaves root"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root") and user.isdigit(), (
        f"USER {users[-1]}: numeric and non-root (runAsNonRoot checks it)"
    )
    assert (
        int(user) == k8s_object("Deployment", "ctp-datagen")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    )


def test_dependency_layers_are_cached_apart_from_the_code():
    steps = dockerfile_stages()[1][-1].instructions
    first = lambda predicate: next(i for i, step in enumerate(steps) if predicate(*step))  # noqa: E731
    torch_layer = first(lambda k, a: k == "RUN" and "torch==" in a)
    manifest_copy = first(lambda k, a: k == "COPY" and "pyproject.toml" in a)
    requirements = first(lambda k, a: k == "RUN" and "pip install -r" in a)
    code = first(lambda k, a: k == "COPY" and re.search(r"\b(datagen|trainer|protos)\b", a))
    assert torch_layer < manifest_copy < requirements < code
    assert "pip install --no-deps" in next(a for k, a in steps[code:] if k == "RUN")


def test_requirements_split_covers_pyproject():
    import tomllib

    split = load_script(REPO / "deploy" / "requirements.py")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    from_pypi = split.requirements(REPO / "pyproject.toml")
    cuda_specific = [r for r in declared if r not in from_pypi]
    assert {split.name(r) for r in cuda_specific} == {"torch", "torchvision", "nvidia-dali-cuda130"}
    assert "grpcio-health-checking" in {split.name(r) for r in from_pypi}
    installs = " ".join(a for k, a in dockerfile_stages()[1][-1].instructions if k == "RUN")
    assert "torch==" in installs and "torchvision==" in installs and "${DALI_PACKAGE}==" in DOCKERFILE.read_text()
    printed = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "requirements.py"), str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert printed == from_pypi


def test_build_context_holds_what_the_image_copies_and_nothing_heavy():
    for keyword, arguments in dockerfile_stages()[1][-1].instructions:
        if keyword != "COPY" or "--from" in arguments:
            continue
        for source in [w for w in arguments.split() if not w.startswith("--")][:-1]:
            assert (REPO / source).exists(), f"COPY {source}: no such path"
            assert not dockerignored(source.rstrip("/")), f"COPY {source}: .dockerignore leaves it out of the context"
    for heavy in (
        "data/ucf101/x.avi",
        "runs/ctp/ckpt-00000001.pt",
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "out/demo/grid.png",
        "tests/test_deploy.py",
        "datagen/__pycache__/cli.cpython-312.pyc",
    ):
        assert dockerignored(heavy), f"{heavy} would be sent to the Docker daemon"


# ======================================================================================================
# Kubernetes
# ======================================================================================================


def test_manifests_fit_the_kubernetes_api():
    pytest.importorskip("kubernetes", reason="the Kubernetes API models come with the kubernetes client (dev extra)")
    problems = []
    for obj in k8s_objects():
        model = f"{obj['apiVersion'].split('/')[-1].capitalize()}{obj['kind']}"
        problems += api_problems(obj, model, f"{obj['kind']}/{obj['metadata']['name']}")
    assert not problems, "\n".join(problems)
    assert api_problems({"spec": {"replica": 2}}, "V1Deployment", "x") == [
        "x.spec: V1DeploymentSpec has no field 'replica'"
    ]


def test_kustomization_lists_every_manifest_and_renders():
    listed = set(kustomization()["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: the kustomize rendering is not checked")
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert len(objects) == len(k8s_objects())
    image = kustomization()["images"][0]
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ctp-video"
        if obj["kind"] in ("Deployment", "Job") and obj["metadata"]["name"] != "ctp-redis":
            for c in pod_spec(obj).get("initContainers", []) + pod_spec(obj)["containers"]:
                assert c["image"] == f"{image['newName']}:{image['newTag']}"


def test_images_agree_across_manifests_and_compose():
    image, env = kustomization()["images"][0], read_dotenv()
    assert (image["name"], image["newTag"]) == (env["CTP_IMAGE"], env["CUDA_VARIANT"])
    compose = compose_with_env()["services"]
    for obj in k8s_objects():
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for c in pod_spec(obj).get("initContainers", []) + pod_spec(obj)["containers"]:
            if obj["metadata"]["name"] == "ctp-redis":
                assert c["image"] == compose["redis"]["image"] and c["args"] == compose["redis"]["command"]
            else:
                assert c["image"] == compose["datagen"]["image"] == f"{image['name']}:{image['newTag']}"


def test_ports_agree():
    from datagen.cli import build_parser

    datagen = k8s_object("Deployment", "ctp-datagen")
    c = container(datagen, "datagen")
    serve = build_parser().parse_args(expand(c["command"], container_env(c))[1:])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": serve.port, "metrics": serve.metrics_port}
    assert serve.advertise == f"{POD_IP}:{serve.port}", "replicas must register the address clients can reach"
    assert datagen["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(serve.metrics_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = c[probe]["exec"]["command"]
        assert (
            command[:2] == ["ctp-ready", "replica"]
            and command[command.index("--addr") + 1] == f"127.0.0.1:{serve.port}"
        )
    service = k8s_object("Service", "ctp-datagen")
    assert {p["name"]: (p["port"], ports[p["targetPort"]]) for p in service["spec"]["ports"]} == {
        "grpc": (serve.port, serve.port),
        "metrics": (serve.metrics_port, serve.metrics_port),
    }
    compose_serve = command_argv(compose_with_env()["services"]["datagen"]["command"])
    assert compose_serve[compose_serve.index("--port") + 1] == str(serve.port)

    redis_container = container(k8s_object("Deployment", "ctp-redis"), "redis")
    redis_service = k8s_object("Service", "ctp-redis")
    redis_port = {p["name"]: p["containerPort"] for p in redis_container["ports"]}[
        redis_service["spec"]["ports"][0]["targetPort"]
    ]
    url = urlsplit(container_env(c)["CTP_REDIS_URL"])
    assert (url.hostname, url.port) == ("ctp-redis", redis_service["spec"]["ports"][0]["port"]) and redis_port == 6379

    for service in (o for o in k8s_objects() if o["kind"] == "Service"):
        selected = [
            w
            for w in k8s_objects()
            if w["kind"] in ("Deployment", "Job")
            and service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"


def test_autoscaler_targets_datagen_on_a_metric_replicas_export():
    from datagen.service.server.metrics import ReplicaMetrics

    hpa = k8s_object("HorizontalPodAutoscaler", "ctp-datagen")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ctp-datagen"}
    exported = {metric.name for metric in ReplicaMetrics().registry.collect()}
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom and set(custom) <= exported, f"{custom} are not among the replica's metrics {sorted(exported)}"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_environment_agrees():
    from common.env import DATAGEN_TOKEN, REDIS_URL

    REDIS_ENV, TOKEN_ENV = REDIS_URL.name, DATAGEN_TOKEN.name
    datagen = k8s_object("Deployment", "ctp-datagen")
    trainer = k8s_object("Job", "ctp-trainer")
    containers = [container(datagen, "datagen"), container(trainer, "trainer"), container(trainer, "wait-for-replicas")]
    for c in containers:
        env = container_env(c)
        unresolved = [a for a in expand(c["command"], env) if "$(" in a]
        assert not unresolved, f"{c['name']}: {unresolved} name no variable of the container"
        assert {REDIS_ENV, TOKEN_ENV, "CTP_NAMESPACE", "CTP_VIDEOS"} <= env.keys(), c["name"]
        token = next(v for v in c["env"] if v["name"] == TOKEN_ENV)["valueFrom"]["secretKeyRef"]
        assert token == {"name": "ctp-datagen-token", "key": "token", "optional": True}
    assert len({json.dumps(c["envFrom"]) for c in containers}) == 1, "datagen and trainer read one ConfigMap"
    config, env = k8s_object("ConfigMap", "ctp-config")["data"], read_dotenv()
    shared = config.keys() & env.keys()
    assert shared >= {"CTP_NAMESPACE", "CTP_VIDEOS", "CTP_RUN_NAME", "TRAINER_CONFIG"}
    assert {k: config[k] for k in shared - {REDIS_ENV}} == {k: env[k] for k in shared - {REDIS_ENV}}
    for workload in (datagen, trainer):
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        mounts = [m for c in pod_spec(workload)["containers"] for m in c["volumeMounts"] if m["mountPath"] == "/data"]
        assert mounts and all(m["readOnly"] for m in mounts)
        assert volumes[mounts[0]["name"]]["persistentVolumeClaim"] == {"claimName": "ctp-data", "readOnly": True}
        assert config["CTP_VIDEOS"].startswith("/data")


def test_trainer_job_meets_through_c10d_rendezvous(monkeypatch):
    from torch.distributed.run import get_args_parser

    from trainer.cli import build_parser
    from trainer.config import load_train_config
    from trainer.pretrain.sources import replica_settings

    job, service = k8s_object("Job", "ctp-trainer"), k8s_object("Service", "ctp-trainer")
    spec, c = job["spec"], container(job, "trainer")
    torchrun = get_args_parser().parse_args(expand(c["command"], container_env(c))[1:])
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == int(torchrun.nnodes)
    host, _, port = torchrun.rdzv_endpoint.partition(":")
    subdomain = pod_spec(job)["subdomain"]
    assert host == f"{job['metadata']['name']}-0.{subdomain}" and subdomain == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert int(port) == service["spec"]["ports"][0]["port"] == c["ports"][0]["containerPort"]
    assert (
        torchrun.rdzv_backend == "c10d"
        and torchrun.nproc_per_node == "gpu"
        and "nvidia.com/gpu" in c["resources"]["limits"]
    )
    pretrain = build_parser().parse_args(torchrun.training_script_args)
    datagen = container(k8s_object("Deployment", "ctp-datagen"), "datagen")
    videos = expand(datagen["command"], container_env(datagen))[2]
    assert f"data.videos=[{videos}]" in expand(pretrain.overrides, container_env(c))
    for name, value in container_env(c).items():  # the trainer reads the fleet from its environment
        monkeypatch.setenv(name, value)
    fleet = replica_settings(load_train_config(pretrain.config, expand(pretrain.overrides, container_env(c))).service)
    serve = expand(datagen["command"], container_env(datagen))
    assert fleet is not None and fleet["redis_url"] == container_env(datagen)["CTP_REDIS_URL"]
    assert fleet["namespace"] == serve[serve.index("--namespace") + 1]
    from datagen.cli import build_parser as datagen_parser
    from datagen.ctp.spec import load_generation

    served = load_generation(datagen_parser().parse_args(serve[1:]).config)
    assert served == load_train_config(pretrain.config).data.generation, "replicas serve the trainer's generation"
    wait = container(job, "wait-for-replicas")["command"]
    assert wait[:2] == ["ctp-ready", "fleet"], "the trainer starts once a replica serves"


def test_trainer_job_outlives_lost_drained_and_stopped_pods():
    from torch.distributed.run import get_args_parser

    from trainer.runtime.launch import SHARED_STORE_ENV, store_host_conf
    from trainer.runtime.signals import STOPPED_EXIT

    job = k8s_object("Job", "ctp-trainer")
    spec, c = job["spec"], container(job, "trainer")
    command = expand(c["command"], container_env(c))
    assert command[0] == "ctp-torchrun", "torchrun exits 1 for a stopped run and races for the store's host"
    assert container_env(c)[SHARED_STORE_ENV] == "1", "a restarted pod deadlocks the rendezvous otherwise"
    torchrun = get_args_parser().parse_args(command[1:])
    host = torchrun.rdzv_endpoint.partition(":")[0]
    assert host.startswith(f"{job['metadata']['name']}-0."), "the store is on pod 0"
    assert "is_host=true" in store_host_conf(torchrun, "0") and "is_host=false" in store_host_conf(torchrun, "1")
    # podFailurePolicy needs restartPolicy Never; with it, neither a disruption nor a stopped run is a failure.
    assert pod_spec(job)["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert {
        "action": "Ignore",
        "onExitCodes": {"containerName": c["name"], "operator": "In", "values": [STOPPED_EXIT]},
    } in rules
    assert all(rule["action"] == "Ignore" for rule in rules), "nothing here is a reason to fail the whole Job"
    assert spec["backoffLimit"] >= 2 * spec["completions"]
    assert pod_spec(job)["terminationGracePeriodSeconds"] > 30, "torchrun gives its workers 30 s after SIGTERM"


def test_every_torchrun_start_is_one_that_survives_a_lost_node():
    """Containers and the documented multi-node commands start torchrun through ctp-torchrun, which sets
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (tests/test_trainer_launch.py): with plain torchrun, a restarted node
    deadlocks the rendezvous (torch >= 2.5, pytorch/pytorch#135712) and a stopped run exits as a crash."""
    for where, argv in container_commands().items():
        assert ("torchrun",) not in set(resolve(argv)), f"{where}: run ctp-torchrun, not torchrun"
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for path in docs:
        for line in path.read_text().splitlines():
            multinode = re.search(r"--nnodes[= ](\S+)", line) and not re.search(r"--nnodes[= ]1\b", line)
            if multinode and re.search(r"(?<![\w-])torchrun\b", line):
                pytest.fail(f"{path.name}: a multi-node command runs torchrun, not ctp-torchrun: {line.strip()}")


# ======================================================================================================
# The programs the containers run
# ======================================================================================================


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


# ======================================================================================================
# deploy/bin against a real Redis and a real replica
# ======================================================================================================

TOKEN = "deploy-test-token"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[ReplicaProcess]:
    work = tmp_path_factory.mktemp("replica")
    (work / "token").write_text(TOKEN)
    process = ReplicaProcess(
        work,
        make_videos(work / "videos", count=2),
        redis_url=redis_server.url,
        namespace="deploy",
        extra=["--token-file", str(work / "token")],
    )
    yield process
    process.stop()


def run_script(name: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """A deploy/bin script with only the settings given in `env` (none inherited from this shell)."""
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("CTP_DATAGEN_TOKEN", "CTP_REDIS_URL", "CUDA_VISIBLE_DEVICES")
    }
    return subprocess.run(
        [sys.executable, str(BIN / name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**inherited, **(env or {})},
    )


def test_ready_replica_is_the_gate_a_health_check_needs(replica: ReplicaProcess):
    assert (
        run_script("ctp-ready", "replica", "--addr", replica.address, env={"CTP_DATAGEN_TOKEN": TOKEN}).returncode == 0
    )
    refused = run_script("ctp-ready", "replica", "--addr", replica.address)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    dead = run_script("ctp-ready", "replica", "--addr", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert dead.returncode == 1 and "UNAVAILABLE" in dead.stderr


def test_ready_fleet_starts_the_trainer_only_with_enough_replicas(replica: ReplicaProcess, redis_server: RedisServer):
    env = {"CTP_DATAGEN_TOKEN": TOKEN, "CTP_REDIS_URL": redis_server.url}
    started = run_script(
        "ctp-ready", "fleet", "--namespace", "deploy", "--", sys.executable, "-c", "print('trainer started')", env=env
    )
    assert started.returncode == 0 and started.stdout == "trainer started\n" and replica.address in started.stderr
    short = run_script(
        "ctp-ready",
        "fleet",
        "--namespace",
        "deploy",
        "--min-replicas",
        "2",
        "--timeout",
        "1",
        "--",
        sys.executable,
        "-c",
        "print('trainer started')",
        env=env,
    )
    assert short.returncode == 1 and not short.stdout and "1 of 1 registered replicas serving, 2 needed" in short.stderr
    no_redis = run_script(
        "ctp-ready", "fleet", "--redis", f"redis://127.0.0.1:{free_port()}/0", "--timeout", "1", env=env
    )
    assert no_redis.returncode == 1 and "does not answer" in no_redis.stderr


# A stand-in replica: says which GPU it was given, then serves until SIGTERM (it drains and exits 0).
REPLICA = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (print('drained', flush=True), sys.exit(0)))\n"
    "print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'), flush=True)\n"
    "time.sleep(120)\n"
)


def start_slot_replica(redis_url: str, *options: str) -> tuple[subprocess.Popen, str]:
    """ctp-gpu-slot running a stand-in replica in its own session; (process, the GPU it printed)."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("CTP_REDIS_URL", "CUDA_VISIBLE_DEVICES")}
    process = subprocess.Popen(
        [
            sys.executable,
            str(BIN / "ctp-gpu-slot"),
            "--namespace",
            "leases",
            *options,
            "--",
            sys.executable,
            "-c",
            REPLICA,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**inherited, "CTP_REDIS_URL": redis_url},
        start_new_session=True,
    )
    return process, process.stdout.readline().strip()


def test_gpu_slot_leases_follow_replicas_that_stop_restart_or_die(redis_server: RedisServer):
    import redis

    client = redis.Redis.from_url(redis_server.url)
    a, gpu_a = start_slot_replica(redis_server.url, "--gpus", "2", "--lease-ttl", "1.5")
    b, gpu_b = start_slot_replica(redis_server.url, "--gpus", "2", "--lease-ttl", "1.5")
    assert (gpu_a, gpu_b) == ("0", "1")
    time.sleep(2.5)  # past the TTL: only renewal keeps both leases
    assert [client.zcard(f"leases:datagen:gpu-lease:{g}") for g in "01"] == [1, 1]

    b.send_signal(signal.SIGTERM)  # scaled down: the replica drains, the lease goes back at once
    assert b.wait(30) == 0 and b.stdout.read().strip() == "drained"
    assert client.zcard("leases:datagen:gpu-lease:1") == 0
    c, gpu_c = start_slot_replica(redis_server.url, "--gpus", "2", "--lease-ttl", "1.5")
    assert gpu_c == "1"  # a round-robin counter would have stacked this restart on GPU 0 with replica a

    os.killpg(c.pid, signal.SIGKILL)  # died without a word: its lease outlives it by at most the TTL
    c.wait(30)
    d, gpu_d = start_slot_replica(redis_server.url, "--gpus", "2", "--lease-ttl", "1.5")
    assert gpu_d == "0"  # c's lease still counts: GPU 1 looks taken, the tie goes to the first
    time.sleep(2)
    e, gpu_e = start_slot_replica(redis_server.url, "--gpus", "2", "--lease-ttl", "1.5")
    assert gpu_e == "1"  # expired: GPU 1 has the fewest live leases again
    for process in (a, d, e):
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    assert [client.zcard(f"leases:datagen:gpu-lease:{g}") for g in "01"] == [0, 0]


def test_gpu_slot_passes_the_replicas_exit_status_and_runs_unpinned_without_need(redis_server: RedisServer):
    show = ["--", sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"]
    redis_env = {"CTP_REDIS_URL": redis_server.url}
    chosen = run_script("ctp-gpu-slot", "--namespace", "slots", *show, env={**redis_env, "CUDA_VISIBLE_DEVICES": "4,6"})
    assert chosen.stdout.strip() == "4" and "leased GPU 4 (of 4,6; 1 replica(s) on it now" in chosen.stderr
    failing = run_script(
        "ctp-gpu-slot", "--gpus", "2", "--", sys.executable, "-c", "raise SystemExit(3)", env=redis_env
    )
    assert failing.returncode == 3
    alone = run_script("ctp-gpu-slot", "--gpus", "2", *show)
    assert alone.stdout.strip() == "unset" and "no Redis" in alone.stderr
    none_needed = run_script("ctp-gpu-slot", *show, env={**redis_env, "CUDA_VISIBLE_DEVICES": "2"})
    assert none_needed.stdout.strip() == "2" and "1 GPU(s) visible" in none_needed.stderr
    down = run_script("ctp-gpu-slot", "--gpus", "2", *show, env={"CTP_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert down.returncode == 1 and "cannot take a GPU lease" in down.stderr and not down.stdout
