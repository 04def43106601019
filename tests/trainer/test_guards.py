"""Commands that would destroy a run, or fail only after writing one, refuse first: what a command reads is never
deleted, a resume never continues on another video list, `--resume auto` falls back past a damaged checkpoint
(and says so), and what the datagen replicas would refuse is refused before the run folder is written."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from datagen.generator import Generator
from datagen.service.limits import Limits
from datagen.service.server.servicer import Replica
from datagen.video.manifest import resolve_videos, write_manifest
from trainer.cli import main
from trainer.config import load_train_config
from trainer.pretrain.loop import pretrain
from trainer.runtime.checkpoint import checkpoint_path, list_checkpoints, load_checkpoint, resume_point
from trainer.runtime.metrics_log import read_records

# 6 demo videos x 2 clips = 12 samples = 3 steps of 4, a checkpoint after each.
SHORT = [
    "data.batch_size=4",
    "data.clips_per_video=2",
    "optim.epochs=1",
    "eval.clips=4",
    "eval.every_steps=1000",
    "run.checkpoint_every=1",
    "run.keep_checkpoints=5",
    "run.log_every=1",
    "run.progress=false",
]


@pytest.fixture(autouse=True)
def no_service_in_the_environment(monkeypatch):
    for name in ("CTP_REDIS_URL", "CTP_NAMESPACE", "CTP_DATAGEN_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def manifest(demo_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.json"
    write_manifest(path, resolve_videos([demo_dir]))
    return path


@pytest.fixture(scope="module")
def pretrained(manifest, tmp_path_factory) -> Path:
    """A pretraining run folder stopped after its second step (checkpoints 1 and 2)."""
    out = tmp_path_factory.mktemp("pretrained")
    pretrain(
        load_train_config("tiny_cpu", [f"data.videos=[{manifest}]", f"run.out_dir={out}", *SHORT, "run.stop_at_step=2"])
    )
    return out


def run_copy(pretrained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pretrained, tmp_path / "run"))


def test_finetune_never_deletes_the_checkpoint_it_starts_from_even_with_overwrite(pretrained, tmp_path, capsys):
    run = run_copy(pretrained, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    for overwrite in (["--overwrite"], []):
        args = ["finetune", "--config", "tiny_cpu", "--init", str(run), f"run.out_dir={run}", *overwrite]
        assert main([*args, f"data.train.videos={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert f"{run} holds {run}, which this command reads" in err and "(run.out_dir=...)" in err
        assert "pass --overwrite" not in err  # not offered: it would delete what the command needs
        assert sorted(p.name for p in run.iterdir()) == before


def test_resume_on_a_video_list_edited_in_place_is_refused_naming_counts_and_the_first_difference(manifest, tmp_path):
    own = Path(shutil.copy(manifest, tmp_path / "train.json"))
    cfg = load_train_config("tiny_cpu", [f"data.videos=[{own}]", f"run.out_dir={tmp_path / 'run'}", *SHORT])
    pretrain(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, stop_at_step=1)))
    videos = resolve_videos([own])
    write_manifest(own, videos[:3] + videos[4:])  # the same manifest, one video fewer: data.* did not change
    with pytest.raises(ValueError) as info:
        pretrain(cfg, resume="auto")
    message = str(info.value)
    assert "the video list changed (checkpoint: 6 videos, this run: 5; first difference at #4: " in message
    assert f"checkpoint {videos[3].path} ({videos[3].num_frames} frames), this run {videos[4].path}" in message
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ckpt-00000001.pt"]  # untouched


def test_resume_auto_falls_back_past_a_damaged_newest_checkpoint_and_says_so(pretrained, manifest, tmp_path, caplog):
    run = run_copy(pretrained, tmp_path)
    newest = checkpoint_path(run, 2)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy or a disk that failed
    with caplog.at_level("WARNING", logger="trainer.runtime.checkpoint"):
        assert resume_point(run, "auto", overwrite=False) == checkpoint_path(run, 1)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("--resume auto: skipped ckpt-00000002.pt (") and "kept as ckpt-00000002.pt.damaged" in (
        warning
    )
    assert warning.endswith("resuming from ckpt-00000001.pt at step 1")
    assert (run / "ckpt-00000002.pt.damaged").is_file() and not newest.exists()  # set aside, not deleted

    cfg = load_train_config("tiny_cpu", [f"data.videos=[{manifest}]", f"run.out_dir={run}", *SHORT])
    pretrain(cfg, resume="auto")  # the run goes on from step 1: step 2 again, then step 3
    assert [r["step"] for r in read_records(run) if "loss" in r] == [1, 2, 3]
    assert load_checkpoint(run)["step"] == 3


def test_resume_auto_refuses_a_folder_whose_every_checkpoint_is_damaged(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for step in (1, 2):
        checkpoint_path(run, step).write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match=r"no intact checkpoint in .*ckpt-00000002.pt .*ckpt-00000001.pt"):
        resume_point(run, "auto", overwrite=False)
    assert sorted(p.name for p in run.iterdir()) == ["ckpt-00000001.pt.damaged", "ckpt-00000002.pt.damaged"]


def test_a_batch_the_replicas_refuse_is_refused_before_the_run_folder_is_written(demo_dir, tmp_path, capsys):
    cfg = load_train_config("tiny_cpu", [f"data.videos=[{demo_dir}]"])
    videos = resolve_videos([demo_dir], min_frames=1)
    generation = cfg.data.generation
    replica = Replica(Generator(videos, generation), generation, host="127.0.0.1", limits=Limits(max_batch_size=2))
    replica.start()
    try:
        out = tmp_path / "run"
        args = [f"data.videos=[{demo_dir}]", f"run.out_dir={out}", *SHORT, f"service.addresses=[{replica.address}]"]
        assert main(["pretrain", "--config", "tiny_cpu", *args]) == 2
    finally:
        replica.drain(grace_s=5)
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "ctp-train pretrain: error: data.batch_size=4 (4 per rank) cannot be served: a batch of 4 samples is above "
        "the largest the datagen replicas serve (2; ctp-datagen serve --max-batch-size)"
    )
    assert "Traceback" not in err and "evaluating" not in err  # before the step-0 evaluation
    assert not out.exists()
