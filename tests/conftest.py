"""Fixtures shared by the whole suite: the real footage in ../shared/videos and the synthetic demo set."""

from __future__ import annotations

from pathlib import Path

import pytest

from datagen.demo import synthesize_demo
from datagen.manifest import VideoInfo, resolve_videos

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos"


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """The recorded test footage (MPEG-4 AVIs from UCF-101/HMDB-51, H.264 MP4s); never copied into the repo."""
    if not (SHARED_VIDEOS / "README.md").is_file():
        pytest.skip(f"real test footage not found at {SHARED_VIDEOS} (a checkout without the shared volume)")
    return SHARED_VIDEOS


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo set (VP9, MPEG-4 and H.264 files), synthesised once per session."""
    out = tmp_path_factory.mktemp("demo-videos")
    synthesize_demo(out)
    return out


@pytest.fixture(scope="session")
def demo_videos(demo_dir: Path) -> list[VideoInfo]:
    return resolve_videos([demo_dir])
