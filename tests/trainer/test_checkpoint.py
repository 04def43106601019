"""Atomic checkpoint files: complete or absent, never torn; clear errors for files that are not checkpoints."""

import pickle

import pytest
import torch

from trainer.runtime.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_atomic,
)


def state(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "config": {"run": {}}, "step": step}


def test_save_and_load_roundtrip(tmp_path):
    path = save_atomic(state(7), checkpoint_path(tmp_path, 7))
    assert path.name == "ckpt-00000007.pt"
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], torch.full((3,), 7.0))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = save_atomic(state(1), tmp_path / "ckpt-00000001.pt")
    with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
        save_atomic({"model": {}, "config": {}, "bad": lambda: None}, path)  # not picklable: fails mid-write
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_latest_and_pruning(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    for step in (5, 100, 20):
        save_atomic(state(step), checkpoint_path(tmp_path, step))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert latest_checkpoint(tmp_path).name == "ckpt-00000100.pt"
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000020.pt", "ckpt-00000100.pt"]


def test_load_errors_are_actionable(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file")
    with pytest.raises(ValueError, match="not a readable ctp-train checkpoint"):
        load_checkpoint(garbage)
    foreign = save_atomic({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="no model/config"):
        load_checkpoint(foreign)


def test_every_checkpoint_says_what_it_holds_and_older_ones_still_do():
    from trainer.runtime.checkpoint import CHECKPOINT_FORMAT, FINETUNE_TASK, PRETRAIN_TASK, checkpoint_task, marked

    assert marked(FINETUNE_TASK, {"step": 3}) == {"task": "finetune", "format": CHECKPOINT_FORMAT, "step": 3}
    assert checkpoint_task(marked(PRETRAIN_TASK, state(1))) == PRETRAIN_TASK
    assert checkpoint_task({"format": 1, **state(1)}) == PRETRAIN_TASK  # a pretraining checkpoint before the marker
    assert checkpoint_task({"task": "finetune", **state(1)}) == FINETUNE_TASK  # a fine-tuned one before


def test_resume_auto_means_the_same_for_pretraining_and_fine_tuning_folders(tmp_path):
    from trainer.runtime.checkpoint import FINETUNED_NAME, resume_point

    pretraining, finetuning, empty = tmp_path / "pre", tmp_path / "fine", tmp_path / "empty"
    for step in (5, 10):
        save_atomic(state(step), checkpoint_path(pretraining, step))
    save_atomic(state(2), finetuning / FINETUNED_NAME)
    (finetuning / "finetuned.json").write_text("{}")
    assert resume_point(pretraining, "auto", overwrite=False) == checkpoint_path(pretraining, 10)
    assert resume_point(finetuning, "auto", overwrite=False) == finetuning / FINETUNED_NAME
    assert resume_point(empty, "auto", overwrite=False) is None  # nothing yet: a new run
    # --resume PATH takes a run folder as every checkpoint argument does (fine-tuning took only a file)
    assert resume_point(empty, str(finetuning), overwrite=False) == finetuning / FINETUNED_NAME
    for folder in (pretraining, finetuning):  # a new run never mixes with another's outputs
        with pytest.raises(FileExistsError, match="already holds a run"):
            resume_point(folder, None, overwrite=False)
    assert resume_point(finetuning, None, overwrite=True) is None and not any(finetuning.iterdir())


def test_resume_is_refused_from_another_task_or_config_naming_what_differs(tmp_path):
    from trainer.runtime.checkpoint import FINETUNE_TASK, PRETRAIN_TASK, check_resumable, marked

    config = {"model": {"encoder": "tiny"}, "data": {"seed": 0}, "classes": ["a", "b"]}
    saved = marked(FINETUNE_TASK, {"config": config})
    with pytest.raises(ValueError, match=r"cannot resume from x.pt: it holds a finetune run, not a pretrain run"):
        check_resumable(saved, PRETRAIN_TASK, config, ("model", "data"), "x.pt")
    check_resumable(saved, FINETUNE_TASK, {**config, "run": {"out_dir": "elsewhere"}}, ("model", "data"), tmp_path)
    with pytest.raises(ValueError) as info:
        check_resumable(saved, FINETUNE_TASK, {**config, "classes": ["a", "c"]}, ("model", "classes"), tmp_path)
    assert '(checkpoint -> this run: classes: ["a", "b"] -> ["a", "c"])' in str(info.value)


def test_pretraining_refuses_to_resume_from_a_fine_tuned_checkpoint(tmp_path):
    from trainer.config import load_train_config
    from trainer.pretrain.loop import Trainer
    from trainer.runtime.checkpoint import FINETUNE_TASK
    from trainer.runtime.execution import Execution

    trainer = Trainer(load_train_config("tiny_cpu"), Execution.resolve("cpu"), epoch_size=8)
    finetuned = {**trainer.state_dict(), "task": FINETUNE_TASK}
    with pytest.raises(ValueError, match="it holds a finetune run, not a pretrain run"):
        trainer.load_state_dict(finetuned, tmp_path / "finetuned.pt")
    old = {k: v for k, v in trainer.state_dict().items() if k != "task"}  # written before the shared marker
    trainer.load_state_dict(old, tmp_path / "ckpt-00000000.pt")
