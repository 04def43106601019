"""Fine-tune, eval and retrieve end to end on the shared footage, classes by folder (hmdb51, kinetics, misc,
ucf101: 12 real MPEG-4 and H.264 videos), with the tiny encoder on 8 frames at 64 px; exact resume;
fine-tuning under torchrun with two gloo ranks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch

from common.configfile import parse_command_line
from tests.service_helpers import REPO
from trainer.cli import build_parser
from trainer.downstream.config import SplitConfig
from trainer.downstream.datasets import label_subset, open_split

CLASS_VIDEOS = {"hmdb51": 4, "kinetics": 3, "misc": 3, "ucf101": 2}


def ctp_train(*argv: str) -> None:
    args = parse_command_line(build_parser(), [str(a) for a in argv])
    args.func(args)


def tiny(videos: Path, out: Path, *overrides: str) -> list[str]:
    return [
        "--config",
        "tiny_cpu",
        f"data.train.videos={videos}",
        f"run.out_dir={out}",
        "run.progress=false",
        *overrides,
    ]


@pytest.fixture(scope="module")
def finetuned(shared_videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finetune")
    ctp_train("finetune", *tiny(shared_videos, out))
    return out / "finetuned.pt"


def test_finetune_trains_validates_and_reports(finetuned):
    summary = json.loads(finetuned.with_suffix(".json").read_text())
    assert summary["init"] == "random" and summary["train_videos"] == 12 and summary["epochs"] == 2
    val = summary["validation"]
    assert val["videos"] == 12 and val["clips_per_video"] == 10 and not val["skipped"]
    assert 0 <= val["top1"] <= 1 and val["top5"] == 1.0  # 4 classes: the true one is always in the top 5
    assert {name: r["videos"] for name, r in val["per_class"].items()} == CLASS_VIDEOS
    assert sum(map(sum, val["confusion"])) == 12

    records = [json.loads(line) for line in (finetuned.parent / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))  # 12 videos, batch 4, 2 epochs
    assert all(math.isfinite(r["loss"]) and 0 <= r["top1"] <= 1 for r in steps)
    # The classifier starts at N(0, 0.001): near-uniform outputs, a cross-entropy of ln 4.
    assert steps[0]["loss"] == pytest.approx(math.log(4), abs=0.02)
    assert [r["epoch"] for r in records if "val_top1" in r] == [1, 2]
    assert [r["epoch"] for r in steps] == [1, 1, 1, 2, 2, 2], "epochs count from 1 in step records too"
    assert list((finetuned.parent / "tensorboard").glob("events.out.tfevents.*"))


def test_a_new_finetune_refuses_the_folder_of_another(finetuned, shared_videos):
    before = finetuned.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already holds a run .*finetuned.pt.*--resume auto"):
        ctp_train("finetune", *tiny(shared_videos, finetuned.parent))  # e.g. the random-init baseline
    assert finetuned.stat().st_mtime_ns == before


def test_eval_scores_the_checkpoint_like_its_validation(finetuned, capsys, caplog):
    with caplog.at_level("INFO", logger="trainer.runtime.progress"):
        ctp_train("eval", "--checkpoint", finetuned, "run.progress=true")  # stderr here is no terminal
    printed = capsys.readouterr().out
    assert "testing: 12 of 12 videos (100%)" in caplog.text, "a log file hears of the progress, not of nothing"
    (result_file,) = finetuned.parent.glob("finetuned.eval.*.json")
    results = json.loads(result_file.read_text())
    validation = json.loads(finetuned.with_suffix(".json").read_text())["validation"]
    for key in ("top1", "top5", "mean_class_accuracy", "per_class", "confusion"):
        assert results[key] == validation[key], key  # the same model, the same 10 clips per video
    assert f"{100 * results['top1']:.2f}" in printed and "per class" in printed
    assert (finetuned.parent / results["confusion_image"]).stat().st_size > 0


def test_retrieval_with_the_finetuned_and_a_random_encoder(finetuned, shared_videos, tmp_path):
    ctp_train("retrieve", "--weights", finetuned)
    (result_file,) = finetuned.parent.glob("finetuned.retrieval.*.json")
    results = json.loads(result_file.read_text())
    assert results["gallery_videos"] == results["query_videos"] == 12
    assert results["feature_size"] == 128 * 1 * 2 * 2  # tiny encoder: 128 × 1 × 4 × 4, max-pooled by (1, 2, 2)
    hits = [results["top_k"][k] for k in ("1", "5", "10", "20", "50")]
    assert hits == sorted(hits) and all(0 <= h <= 1 for h in hits)
    assert hits[-1] == 1.0  # every class has another video: within the whole gallery (itself excluded)

    ctp_train("retrieve", *tiny(shared_videos, tmp_path))  # no weights: the random-init baseline
    (baseline_file,) = tmp_path.glob("random-tiny.retrieval.*.json")
    baseline = json.loads(baseline_file.read_text())
    assert baseline["weights"] == "random tiny" and baseline["top_k"]["50"] == 1.0


def test_resume_continues_exactly_with_a_label_fraction(shared_videos, tmp_path):
    half = ("--label-fraction", "0.5")
    ctp_train("finetune", *half, *tiny(shared_videos, tmp_path / "straight", "run.val_every=0"))
    ctp_train("finetune", *half, *tiny(shared_videos, tmp_path / "resumed", "run.val_every=0", "optim.epochs=1"))
    ctp_train("finetune", *half, "--resume", "auto", *tiny(shared_videos, tmp_path / "resumed", "run.val_every=0"))
    straight = torch.load(tmp_path / "straight" / "finetuned.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "finetuned.pt", weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 2 and straight["step"] == resumed["step"]
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name

    expected = label_subset(open_split(SplitConfig("folder", str(shared_videos))), 0.5, seed=0)
    summary = json.loads((tmp_path / "straight" / "finetuned.json").read_text())
    assert summary["train_videos"] == len(expected) and summary["label_fraction"] == 0.5
    assert Counter(expected.labels) == {0: 2, 1: 2, 2: 2, 3: 1}  # half of 4, 3, 3, 2 (rounded half to even)


def test_finetune_under_torchrun_with_two_gloo_ranks(shared_videos, tmp_path):
    script = tmp_path / "ctp_train.py"
    script.write_text(
        textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.INFO)
        from tests.downstream.test_e2e import ctp_train
        ctp_train(*sys.argv[1:])
    """)
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        str(script),
        "finetune",
        *tiny(shared_videos, tmp_path / "ddp", "optim.epochs=1"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "finetuned.json").read_text())
    assert summary["validation"]["videos"] == 12  # each rank tested 6 videos; rank 0 gathered all
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]  # 6 videos per rank, 2 per rank and step
    assert "2 rank(s)" in done.stderr


def test_finetune_on_something_something_v1_in_the_official_ctp_layout(footage_frames, tmp_path):
    """The ssv1 preset on a miniature official data folder (zips {id}/RGB_frames.zip and 20BN frame folders,
    train.json/val.json), at a CPU's size: short sides, one centre test clip, the linear warm-up in the log."""
    from tests.frame_helpers import frame_files, write_folder, write_zip

    root = tmp_path / "something-something-v1"
    frames = footage_frames["ucf101"]
    for k, video in enumerate(("100218", "48032", "7", "9")):
        write_zip(root / video / "RGB_frames.zip", frame_files(frames[10 * k : 10 * k + 20], "{:05d}.jpg"))
    for k, video in enumerate(("11", "12")):
        write_folder(root / video, frame_files(frames[5 + 20 * k : 25 + 20 * k], "{:05d}.jpg"))
    labels = [1, 2, 1, 174]
    (root / "train.json").write_text(
        json.dumps([{"name": v, "label": lb} for v, lb in zip(("100218", "48032", "7", "9"), labels)])
    )
    (root / "val.json").write_text(json.dumps([{"name": "11", "label": 2}, {"name": "12", "label": 174}]))
    out = tmp_path / "run"
    ctp_train(
        "finetune",
        "--config",
        "ssv1",
        f"data.train.videos={root}",
        f"data.train.annotations={root}",
        "model.encoder=tiny",
        "clips.num_frames=8",
        "clips.crop_size=64",
        "clips.train_short_sides=[64,72,80]",
        "clips.test_short_side=72",
        "data.batch_size=2",
        "optim.epochs=2",
        "optim.milestones=[]",
        "optim.warmup_steps=2",
        "run.device=cpu",
        "run.log_every=1",
        "run.val_every=1",
        "run.progress=false",
        f"run.out_dir={out}",
    )
    summary = json.loads((out / "finetuned.json").read_text())
    assert summary["train_videos"] == 4 and summary["validation"]["videos"] == 2
    assert summary["validation"]["clips_per_video"] == 1 and not summary["validation"]["skipped"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "loss" in r]
    base = 0.01 * 2 / 32
    assert lrs == pytest.approx([0.1 * base, 0.55 * base, base, base])  # warmed up over 2 steps, then the schedule
