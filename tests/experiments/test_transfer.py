"""The transfer experiment's pipeline (experiments/transfer, --quick): disjoint source material, fine-tuning that
starts from the pretrained encoder (or, for scratch, from the seed's fresh init), and the report's shape."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from datagen.video.decode.pyav import PyAVDecoder
from datagen.video.manifest import probe
from experiments.transfer import arms, dataset, experiment
from experiments.transfer.dataset import Scene
from experiments.transfer.plan import ARMS, QUICK
from experiments.transfer.report import summarise, verdict
from trainer.export import encoder_state_dict
from trainer.model.encoders import build_encoder
from trainer.runtime.checkpoint import latest_checkpoint, read_state


@pytest.fixture(scope="module", autouse=True)
def log_levels_kept():
    """`experiment.main()` quiets the trainer's and datagen's loggers, as a command may; the tests that run after
    these (tests/trainer reads the trainer's INFO lines) get the levels back."""
    loggers = [logging.getLogger(name) for name in ("trainer", "datagen")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("transfer")
    experiment.main(
        ["--quick", "--work", str(work), "--out", str(work / "transfer.json"), "--image", str(work / "t.png")]
    )
    return work, json.loads((work / "transfer.json").read_text())


def _conv_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith("weight") and v.dim() == 5}


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


def test_splits_share_no_source_material(quick):
    work, _ = quick
    index = json.loads((work / "videos" / "sources.json").read_text())
    by_split: dict[str, set] = {}
    for v in index["videos"]:
        by_split.setdefault(v["split"], set()).add(tuple(v["seed"]))
    assert set(by_split) == set(dataset.SPLITS)
    seeds = [s for split in by_split.values() for s in split]
    assert len(seeds) == len(set(seeds)) == len(index["videos"])  # every video its own seed, no split shares one
    # and the pixels differ: no first frame of one split appears in another
    first = {}
    for v in index["videos"]:
        info = probe(work / "videos" / v["path"])
        first.setdefault(v["split"], []).append(PyAVDecoder().decode(info, np.arange(1))[0].astype(np.int16))
    for i, a in enumerate(dataset.SPLITS):
        for b in dataset.SPLITS[i + 1 :]:
            assert min(np.abs(x - y).mean() for x in first[a] for y in first[b]) > 10
    # the labelled splits are balanced class folders; the pool has no labels
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (work / "videos" / split).iterdir() if p.is_dir()) == sorted(dataset.CLASSES)
    assert all(v["class"] is None for v in index["videos"] if v["split"] == "pool")


def _tuned_encoder(work: Path, arm: str, kind: str = "finetune") -> dict[str, torch.Tensor]:
    """The conv weights of `arm`'s fine-tuned encoder at fraction 1, seed 0 (its run folder holds the split and lr)."""
    (checkpoint,) = (work / kind).glob(f"*/{arm}/lr*/1/seed0/finetuned.pt")
    state = read_state(checkpoint)["model"]
    return _conv_weights({k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")})


def test_finetuning_starts_from_the_pretrained_encoder(quick):
    """After a few small SGD steps the fine-tuned encoder lies near its init: the pretrained weights for the CtP
    arms (not the fresh init fine-tuning would otherwise have), the seed's fresh init for scratch."""
    work, _ = quick
    torch.manual_seed(0)  # what FineTuner seeds with data.seed=0 before building the encoder
    fresh = _conv_weights(build_encoder("tiny", pretraining=False).state_dict())
    for arm in ("ctp_full", "ctp_simple"):
        pretrained = _conv_weights(encoder_state_dict(read_state(latest_checkpoint(work / "pretrain" / arm))))
        tuned = _tuned_encoder(work, arm)
        assert _distance(tuned, pretrained) < 0.05 * _distance(tuned, fresh), arm
    tuned = _tuned_encoder(work, "scratch")
    assert _distance(tuned, fresh) < 0.05 * _distance(tuned, pretrained)


def test_the_linear_probe_keeps_each_arms_encoder_as_it_was(quick):
    # --linear-probe trains only the classifier: the pretrained encoder comes out exactly as it went in (the
    # pretrainings of the fixture's run are reused).
    work, _ = quick
    out = ["--out", str(work / "probe.json"), "--image", str(work / "probe.png")]
    experiment.main(["--quick", "--linear-probe", "--arms", "scratch", "ctp_simple", "--work", str(work), *out])
    pretrained = _conv_weights(encoder_state_dict(read_state(latest_checkpoint(work / "pretrain" / "ctp_simple"))))
    probed = _tuned_encoder(work, "ctp_simple", kind="probe")
    assert all(torch.equal(probed[k], pretrained[k]) for k in pretrained)
    assert not all(torch.equal(v, _tuned_encoder(work, "ctp_simple")[k]) for k, v in probed.items())


def test_a_finished_fine_tuning_is_reused_only_for_the_same_recipe(quick):
    work, first = quick
    out = ["--work", str(work), "--out", str(work / "again.json"), "--image", str(work / "again.png")]
    experiment.main(["--quick", *out])
    again = json.loads((work / "again.json").read_text())
    assert all(r["reused"] for r in again["runs"]) and again["top1"] == first["top1"]
    assert again["budget"]["cpu_seconds_reused_finetuning"] == sum(r["cpu_seconds"] for r in first["runs"])
    with pytest.raises(FileExistsError, match="already holds a run"):  # other steps, the same folders
        experiment.main(["--quick", "--arms", "scratch", "--finetune-steps", "3", *out])


def test_the_two_pretraining_arms_play_different_games(quick):
    work, _ = quick
    full, simple = (
        read_state(latest_checkpoint(work / "pretrain" / arm))["config"]["data"]["generation"]
        for arm in ("ctp_full", "ctp_simple")
    )
    assert full["clip"] == simple["clip"]  # the same 64 px geometry
    assert full["patch"]["invisible_prob"] == 0.2 and simple["patch"]["invisible_prob"] == 0.0
    assert full["trajectory"]["inner_keyframe_probs"] == [0.5, 0.3, 0.2] and full["colour"]["brightness_prob"] == 0.5


def test_report_lists_every_arm_fraction_and_seed(quick):
    work, report = quick
    assert set(report["top1"]) == set(ARMS)
    for arm in ARMS:
        assert set(report["top1"][arm]) == {"0.5", "1"}
        assert all(0 <= v <= 1 for by_seed in report["top1"][arm].values() for v in by_seed.values())
    assert report["verdict_at_lowest_fraction"]["fraction"] == "0.5"
    assert report["commit"] and report["machine"] and report["date"] and "--quick" in report["command"]
    assert report["videos"] == {"pool": 4, "train": 10, "val": 5, "test": 5}
    assert (work / "t.png").stat().st_size > 0
    budget = report["budget"]
    assert budget["cpu_seconds_total"] == budget["cpu_seconds_this_process"] > 0  # nothing reused in a fresh folder
    assert budget["cpu_seconds_budget"] == 5400 and len(budget["load_average_end"]) == 3
    assert [(r["arm"], r["fraction"], r["seed"]) for r in report["runs"]] == [
        (arm, f, 0) for arm in ARMS for f in (0.5, 1.0)
    ]
    for arm in ("ctp_full", "ctp_simple"):
        p = report["pretraining"][arm]
        assert not p["reused"] and p["cpu_seconds"] > 0 and p["miou"][-1] == [2, p["miou_end"]]


def test_a_finished_pretraining_is_reused_not_rerun(quick):
    work, report = quick
    spec = json.loads((work / "videos" / "sources.json").read_text())["spec"]
    before = (work / "pretrain" / "ctp_full" / "metrics.jsonl").read_text()
    checkpoint, record = arms.pretrain_arm(
        "ctp_full", work / "videos" / "pool", work / "pretrain" / "ctp_full", 2, spec
    )
    assert checkpoint == latest_checkpoint(work / "pretrain" / "ctp_full") and record["reused"]
    assert record["cpu_seconds"] == report["pretraining"]["ctp_full"]["cpu_seconds"]
    assert (work / "pretrain" / "ctp_full" / "metrics.jsonl").read_text() == before  # nothing ran


def test_summary_and_verdict_are_hand_checkable():
    results = {
        "scratch": {"0.05": {"0": 0.2, "1": 0.3, "2": 0.4}},
        "ctp_full": {"0.05": {"0": 0.6, "1": 0.6, "2": 0.6}},
    }
    summary = summarise(results)
    assert summary["scratch"]["0.05"]["mean"] == pytest.approx(0.3)
    assert summary["scratch"]["0.05"]["sd"] == pytest.approx(0.1)  # sample sd
    v = verdict(summary, "0.05")["ctp_full"]
    assert v["gap"] == pytest.approx(0.3) and v["pooled_sd"] == pytest.approx(0.1 / 2**0.5) and v["above_two_sd"]


def test_the_class_is_the_actors_motion():
    """On a flat background without distractors, the actor's pixels trace the class's motion: a horizontal swing
    moves only the column of its centre, a vertical one only the row, a pulse neither but the area."""
    scene = Scene(background="flat", pan=0.0, distractors=(0, 0))
    tracks = {}
    for kind in dataset.CLASSES:
        video = dataset.render_video(np.random.default_rng([15, 9, 0]), kind, 30, 128, 96, scene).astype(np.int16)
        actor = np.abs(video - video[:, :1, :1]).sum(-1) > 0  # the corners are background in every frame
        assert actor.any(axis=(1, 2)).all()
        ys, xs = (np.array([np.nonzero(m)[k].mean() for m in actor]) for k in (0, 1))
        tracks[kind] = (np.ptp(ys), np.ptp(xs), np.ptp(actor.sum((1, 2))) / actor.sum((1, 2)).mean())
    assert tracks["swing_horizontal"][0] < 2 < 20 < tracks["swing_horizontal"][1]
    assert tracks["swing_vertical"][1] < 2 < 20 < tracks["swing_vertical"][0]
    assert min(tracks["swing_diagonal"][:2]) > 15 and min(tracks["orbit"][:2]) > 15
    assert max(tracks["pulse"][:2]) < 3 and tracks["pulse"][2] > 0.5


def test_videos_of_the_same_plan_are_rendered_once(quick):
    work, _ = quick
    before = {p: p.stat().st_mtime_ns for p in (work / "videos").rglob("*") if p.is_file()}
    dataset.build_dataset(work / "videos", QUICK)
    assert {p: p.stat().st_mtime_ns for p in (work / "videos").rglob("*") if p.is_file()} == before
