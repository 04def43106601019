"""docker-compose.yml and .env, checked the way Compose reads them (no Docker engine runs here): against the
Compose specification before and after interpolating .env, the stack the defaults give, no host port clash
under --scale."""

from __future__ import annotations

import json
import subprocess
from urllib.parse import urlsplit

import jsonschema
import pytest

from tests.deploy.compose_files import (
    DOTENV,
    SCHEMA,
    command_argv,
    compose_raw,
    compose_variables,
    compose_with_env,
    host_ports,
    interpolate,
    port_clashes,
    read_dotenv,
)
from tests.service_helpers import REPO


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
