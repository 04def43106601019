"""`ctp-datagen prepare`: short GOPs at CtP's size, every frame kept, sources untouched, resumable."""
from __future__ import annotations

import hashlib

import numpy as np

from datagen.cli import main
from datagen.decode import PacketIndex, PyAVDecoder
from datagen.manifest import resolve_videos


def test_prepare_reencodes_for_random_access_and_resumes(demo_dir, demo_videos, tmp_path, capsys):
    digests = {v.path: hashlib.sha256(open(v.path, "rb").read()).hexdigest() for v in demo_videos}
    out = tmp_path / "prepared"
    argv = ["prepare", str(demo_dir), "--out", str(out), "--short-side", "120", "--gop", "8", "--workers", "2"]
    assert main(argv) == 0
    assert "encoded 6, skipped 0" in capsys.readouterr().out
    prepared = resolve_videos([str(out / "manifest.json")])
    assert [v.num_frames for v in prepared] == [v.num_frames for v in demo_videos]  # frame i stays frame i
    for before, after in zip(demo_videos, prepared):
        assert (after.codec, after.height, after.width) == ("h264", 120, 160)
        index = PacketIndex.of(after.path)
        assert np.array_equal(np.flatnonzero(index.key), np.arange(0, after.num_frames, 8))
        a = PyAVDecoder().decode(before, np.arange(40, 56)).mean(axis=(1, 2, 3))
        b = PyAVDecoder().decode(after, np.arange(40, 56)).mean(axis=(1, 2, 3))
        assert np.abs(a - b).max() < 4  # the same pictures, smaller
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    assert main(argv) == 0
    assert "encoded 0, skipped 6" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == stamps
    assert digests == {v.path: hashlib.sha256(open(v.path, "rb").read()).hexdigest() for v in demo_videos}
