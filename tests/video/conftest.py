"""Fixtures of the video tests: the shared footage, probed once per module."""

from __future__ import annotations

import pytest

from datagen.video.container import VideoInfo
from datagen.video.manifest import resolve_videos


@pytest.fixture(scope="module")
def shared(shared_videos) -> list[VideoInfo]:
    return resolve_videos([shared_videos], min_frames=1)
