"""The `ctp-datagen` commands users run: sample, preview, bench, config overrides and errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common.configfile import load_config
from datagen.cli import main
from datagen.ctp.spec import GenerationConfig


def test_sample_exports_the_documented_arrays(demo_dir, tmp_path):
    out = tmp_path / "s.npz"
    assert (
        main(
            [
                "sample",
                "--videos",
                str(demo_dir),
                "--device",
                "cpu",
                "--num",
                "3",
                "--seed",
                "4",
                "--epoch",
                "1",
                "--start",
                "10",
                "trajectory.num_trajectories=2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = np.load(out)
    assert data["clips"].shape == (3, 16, 112, 112, 3) and data["clips"].dtype == np.uint8
    assert data["boxes"].shape == (3, 2, 16, 4) and data["boxes"].dtype == np.float32
    assert data["visible"].shape == (3, 2, 16) and data["visible"].dtype == bool
    assert data["keys"].tolist() == [[4, 1, 10], [4, 1, 11], [4, 1, 12]] and data["keys"].dtype == np.int64


def test_preview_draws_boxes_in_trajectory_colours(demo_dir, tmp_path):
    assert main(["preview", "--videos", str(demo_dir), "--device", "cpu", "--num", "2", "--out", str(tmp_path)]) == 0
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    assert grid.shape == (2 * (224 + 2), 8 * (224 + 2), 3)
    for colour in [(255, 64, 64), (64, 220, 64), (64, 128, 255)]:  # one per trajectory
        assert (grid == colour).all(-1).sum() > 100, f"no box drawn in {colour}"
    gif = Image.open(tmp_path / "clips.gif")
    assert gif.n_frames == 16


def test_bench_prints_a_table(demo_dir, capsys):
    assert main(["bench", "--videos", str(demo_dir), "--device", "cpu", "--batch-size", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for stage in ("decode", "generate", "end to end"):
        assert stage in out


def test_bench_writes_the_json_fields_and_fits_threads_to_the_machine(demo_dir, tmp_path, capsys):
    import json
    import os

    from datagen.options import default_torch_threads

    out = tmp_path / "bench.json"
    bench = ["bench", "--videos", str(demo_dir), "--device", "cpu", "--batch-size", "2", "--repeats", "1"]
    assert main([*bench, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result) >= {"decode", "generate", "end_to_end", "host_ms_per_sample", "device", "threads", "backend"}
    assert set(result["decode"]) >= {"clips_per_s", "frames_decoded_per_clip"}
    assert result["generate"]["clips_per_s"] > 0 and result["end_to_end"]["clips_per_s"] > 0
    assert result["decode"]["frames_decoded_per_clip"] >= 16 and result["host_ms_per_sample"] > 0
    assert (result["device"], result["backend"]) == ("cpu", "auto")
    cores = len(os.sched_getaffinity(0))
    assert result["threads"] == default_torch_threads() == max(1, cores // 2) < max(cores, 2)  # not torch's every core
    assert main([*bench, "--threads", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["threads"] == 1


def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "gen.yaml"
    path.write_text("clip:\n  num_frames: 8\n  strides: [1, 2]\npatch:\n  invisible_prob: 0.0\n")
    cfg = load_config(GenerationConfig, path, ["trajectory.num_trajectories=1", "clip.crop_size=96"])
    assert cfg.clip.num_frames == 8 and cfg.clip.strides == (1, 2) and cfg.clip.crop_size == 96
    assert cfg.patch.invisible_prob == 0.0 and cfg.trajectory.num_trajectories == 1
    assert cfg.digest() != GenerationConfig().digest()
    with pytest.raises(ValueError, match="unknown option"):
        load_config(GenerationConfig, None, ["trajectory.num_trajectorys=1"])
    with pytest.raises(ValueError, match="expected int"):
        load_config(GenerationConfig, None, ["clip.num_frames=many"])


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["sample", "--videos", str(tmp_path), "--num", "1", "--out", str(tmp_path / "x.npz")]) == 2
    assert "no usable videos" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["index", "--help"]])
def test_help_answers_without_loading_torch_or_the_decoders(argv):
    """`ctp-datagen --help` took 2-4 s loading torch, PyAV, gRPC and numba it does not use; only the command
    being run loads its modules (status: Redis, index: PyAV and the frame sources' NumPy), never torch for a
    help text."""
    heavy = ("torch", "numba", "grpc", "nvidia.dali") + (() if "index" in argv else ("numpy",))
    code = (
        "import sys\nfrom datagen.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:]
