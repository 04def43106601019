"""Print the runtime requirements of pyproject.toml that the image installs from PyPI, one per line.

torch, torchvision and NVIDIA DALI are left out: deploy/Dockerfile installs them from the indexes of its
CUDA variant, where PyPI's defaults would bring the wrong CUDA build. Reading pyproject.toml alone lets
the dependency layer be built, and cached, before any code is copied into the image.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

CUDA_SPECIFIC = ("torch", "torchvision", "nvidia-dali-*")  # package names; * matches a CUDA suffix


def name(requirement: str) -> str:
    """The normalised project name of a PEP 508 requirement ("Foo_bar>=1; marker" -> "foo-bar")."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def is_cuda_specific(requirement: str) -> bool:
    project = name(requirement)
    return any(project == p or (p.endswith("*") and project.startswith(p[:-1])) for p in CUDA_SPECIFIC)


def requirements(pyproject: Path) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [r for r in dependencies if not is_cuda_specific(r)]


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("pyproject.toml"))))
