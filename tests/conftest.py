"""Fixtures shared by the whole suite: the shared volume beside the checkout (../shared: real footage,
reference schemas) and the synthetic demo set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from datagen.video.container import VideoInfo
from datagen.video.manifest import resolve_videos
from datagen.video.synthetic import synthesize_demo

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def from_shared(path: Path) -> Path:
    """`path`, a file of the shared volume. A checkout without the volume skips the test that needs it; CI
    (CI=true), which always has the volume beside its clone, fails it instead: a test that did not run must
    not pass as green."""
    if not path.exists():
        why = f"{path} not found (a checkout without the shared volume ../shared)"
        if in_ci():
            pytest.fail(f"{why}: CI must have it", pytrace=False)
        pytest.skip(why)
    return path


@pytest.fixture(scope="session", autouse=True)
def packet_index_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Packet indexes kept on disk (datagen/video/packet_index.py) go to a folder of the session's, not the user's
    cache; processes the tests start inherit it."""
    folder = tmp_path_factory.mktemp("cache")
    os.environ["CTP_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """The recorded test footage (MPEG-4 AVIs from UCF-101/HMDB-51, H.264 MP4s); never copied into the repo."""
    return from_shared(SHARED / "videos" / "README.md").parent


@pytest.fixture(scope="session")
def shared_schemas() -> Path:
    """Reference schemas (the Compose specification) that tests/data vendors a copy of."""
    return from_shared(SHARED / "schemas")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo set (VP9, MPEG-4 and H.264 files), synthesised once per session."""
    out = tmp_path_factory.mktemp("demo-videos")
    synthesize_demo(out)
    return out


@pytest.fixture(scope="session")
def demo_videos(demo_dir: Path) -> list[VideoInfo]:
    return resolve_videos([demo_dir])


@pytest.fixture(scope="session")
def footage_frames(shared_videos: Path) -> dict[str, np.ndarray]:
    """The first frames of two shared videos as PyAV decodes them, (N, H, W, 3) RGB: the pictures the frame
    source tests encode as JPEG (320x240 and 432x240)."""
    from datagen.video.decode.pyav import PyAVDecoder
    from datagen.video.manifest import probe

    decoder = PyAVDecoder()
    out = {}
    for name, count in (
        ("ucf101/v_SoccerJuggling_g23_c01.avi", 60),
        ("hmdb51/TrumanShow_wave_f_nm_np1_fr_med_26.avi", 30),
    ):
        out[name.split("/")[0]] = decoder.decode(probe(shared_videos / name), np.arange(count))
    return out
