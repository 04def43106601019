"""The Dockerfile, read statically: pinned base images, CUDA variants that pair base, torch and DALI, the tested
releases, a non-root user, dependency layers cached apart from the code, a build context that holds what the
image copies and nothing heavy."""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import re
import subprocess
import sys

from tests.deploy.compose_files import read_dotenv
from tests.deploy.image_files import DOCKERFILE, cuda_variant_stages, dockerfile_stages, dockerignored
from tests.deploy.k8s_files import k8s_object
from tests.deploy.program_parsers import load_script
from tests.service_helpers import REPO


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
        "tests/deploy/test_image.py",
        "datagen/__pycache__/cli.cpython-312.pyc",
    ):
        assert dockerignored(heavy), f"{heavy} would be sent to the Docker daemon"
