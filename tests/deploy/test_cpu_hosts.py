"""Deployment on hosts as users have them: compose.cpu.yml (no NVIDIA runtime), Docker Engine 20.10 (no
start_interval), no registry to pull a Dockerfile frontend from, package indexes as build arguments, the cache
volume the app user can write, TensorBoard on localhost, and a trainer stop that is not a crash.

The Compose stack itself runs in `make compose-smoke` (deploy/compose_smoke.py), outside CI's budget.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.compose_files import (
    COMPOSE_CPU,
    COMPOSE_FILE,
    command_argv,
    compose_raw,
    compose_with_env,
    host_ports,
    interpolate_tree,
    read_dotenv,
)
from tests.deploy.image_files import DOCKERFILE, dockerfile_instructions, dockerfile_stages
from tests.deploy.program_parsers import resolve
from tests.service_helpers import REPO


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads an override file: `!reset` and `!override` mark how a value merges."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[str, object]:
    if isinstance(node, yaml.SequenceNode):
        return node.tag, loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return node.tag, loader.construct_mapping(node, deep=True)
    return node.tag, loader.construct_scalar(node)  # type: ignore[arg-type]


for tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(tag, _tagged)


def cpu_override() -> dict:
    return interpolate_tree(yaml.load(COMPOSE_CPU.read_text(), ComposeLoader), read_dotenv())


def test_cpu_override_runs_the_gpu_commands_but_for_device_and_process_count():
    gpu, cpu = compose_with_env()["services"], cpu_override()["services"]
    serve = command_argv(gpu["datagen"]["command"])
    serve = serve[serve.index("ctp-datagen") :]  # without ctp-gpu-slot: no GPU to lease
    serve[serve.index("--device") + 1] = "cpu"
    assert command_argv(cpu["datagen"]["command"]) == serve
    train = command_argv(gpu["trainer"]["command"])
    nproc = next(i for i, a in enumerate(train) if a.startswith("--nproc-per-node="))
    train[nproc] = f"--nproc-per-node={read_dotenv()['TRAINER_CPU_PROCS']}"
    assert command_argv(cpu["trainer"]["command"]) == train
    for name in ("datagen", "trainer"):
        assert cpu[name]["deploy"]["resources"]["reservations"]["devices"] == ("!reset", []), name
        assert list(resolve(command_argv(cpu[name]["command"]))), name  # every program parses its arguments
    kind, limits = cpu["trainer"]["ulimits"]
    assert kind == "!override" and "memlock" not in limits and limits.items() <= gpu["trainer"]["ulimits"].items()


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="no docker compose CLI here (CI has none; `make compose-smoke` runs the stack where one is)",
)
def test_docker_compose_merges_the_cpu_override_as_intended():
    """`docker compose config` (the CLI alone, no engine) merges the files as `up` would."""
    env = {**os.environ, "COMPOSE_PROJECT_NAME": "ctp-config-check"}
    merged = json.loads(
        subprocess.run(
            ["docker", "compose", "-f", COMPOSE_FILE.name, "-f", COMPOSE_CPU.name, "config", "--format", "json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,  # the CLI once spun here for minutes (docker-cli-plugin-metadata): fail, don't hang
        ).stdout
    )
    services = merged["services"]
    for name in ("datagen", "trainer"):
        assert not services[name].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    assert "memlock" not in services["trainer"]["ulimits"] and services["trainer"]["ulimits"]["stack"]
    assert "ctp-gpu-slot" not in services["datagen"]["command"] and "cpu" in services["datagen"]["command"]
    assert "--nproc-per-node=1" in services["trainer"]["command"]


def test_nothing_needs_an_engine_newer_than_20_10_or_a_registry():
    assert "start_interval" not in json.dumps(compose_raw()), "healthcheck start_interval needs Docker Engine 25"
    first = DOCKERFILE.read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first), "a `# syntax=` line makes BuildKit pull its frontend image"


def test_package_indexes_and_base_image_are_build_arguments_compose_passes():
    runtime = dockerfile_stages()[1][-1]
    declared = {a.partition("=")[0] for k, a in runtime.instructions if k == "ARG"}
    build_args = compose_raw()["x-ctp-image"]["build"]["args"]
    assert {"PIP_INDEX_URL", "TORCH_INDEX_URL", "DALI_INDEX_URL", "CUDA_VARIANT"} <= declared & build_args.keys()
    global_args = dockerfile_stages()[0]
    assert "BASE_IMAGE" in global_args and "BASE_IMAGE" in build_args, "the base image is a build argument too"
    assert all(
        "${BASE_IMAGE:-nvidia/cuda:" in a for k, a in dockerfile_instructions() if k == "FROM" and " AS cuda-" in a
    )
    runs = " ".join(a for k, a in dockerfile_instructions() if k == "RUN")
    assert not re.search(r"index-url\s+\"?https?://", runs), "an index in a RUN line: a build argument cannot move it"


def test_the_app_user_owns_every_cache_path_the_image_makes():
    """Docker copies the image's /cache into a new cache volume, owners included: whatever a build step writes
    there as root, the replicas (uid 10001) can never write again, and numba recompiles at every start."""
    steps = dockerfile_stages()[1][-1].instructions
    user_at = max(i for i, (k, _) in enumerate(steps) if k == "USER")
    runs_code = [i for i, (k, a) in enumerate(steps) if k == "RUN" and re.search(r"\bctp-(datagen|train)\b", a)]
    assert runs_code and min(runs_code) > user_at, "steps that run the project's code must run as the app user"
    final = dockerfile_stages()[1][-1].variables
    setup = next(a for k, a in steps if k == "RUN" and "useradd" in a)
    cache, numba = final["CTP_CACHE_DIR"], final["NUMBA_CACHE_DIR"]
    assert numba.startswith(cache + "/") and f"mkdir -p /data /runs {numba}" in setup
    assert re.search(rf"chown -R \S+ /runs {cache}\b", setup), "the app user owns the cache tree"


def test_tensorboard_is_published_on_this_host_only():
    (bound,) = host_ports(compose_with_env()["services"]["tensorboard"])
    assert bound[0] == "127.0.0.1"


def test_ctp_torchrun_ends_a_stopped_run_with_75_and_no_traceback(tmp_path: Path):
    """torchrun answers SIGTERM (`docker compose stop`) with a traceback and exit status 1, like a crash;
    ctp-torchrun (trainer.runtime.launch) with one line and 75, "stopped, not finished"."""
    from trainer.runtime.signals import STOPPED_EXIT

    worker = tmp_path / "worker.py"
    worker.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('worker: checkpoint written', flush=True), sys.exit(0)))\n"
        "print('worker: training', flush=True)\n"
        "time.sleep(120)\n"
    )
    results = {}
    for launcher in ("torchrun", "ctp-torchrun"):
        program = (
            [sys.executable, "-m", "trainer.runtime.launch"]
            if launcher == "ctp-torchrun"
            else [str(Path(sys.executable).parent / "torchrun")]
        )
        process = subprocess.Popen(
            [*program, "--standalone", "--nproc-per-node=1", "--log-dir", str(tmp_path / launcher), "--tee=3",
             str(worker)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:  # the worker runs: stop the launcher as `docker stop` does
            if "worker: training" in line:
                break
        process.send_signal(signal.SIGTERM)
        output = process.stdout.read()
        results[launcher] = (process.wait(timeout=60), output)
    code, output = results["torchrun"]
    assert code == 1 and "Traceback" in output, "torchrun itself: a stop looks like a crash"
    code, output = results["ctp-torchrun"]
    assert code == STOPPED_EXIT and "Traceback" not in output, output
    assert "worker: checkpoint written" in output and "ctp-torchrun: stopped by SIGTERM" in output


def test_the_dataset_folder_is_never_committed():
    done = subprocess.run(["git", "check-ignore", "-q", "data/ucf101/videos/v_x.avi"], cwd=REPO)
    assert done.returncode == 0, ".gitignore must keep ./data (the dataset Compose mounts) out of git"
