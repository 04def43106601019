"""Atomic checkpoint files: complete or absent, never torn; clear errors for files that are not checkpoints."""

import pickle

import pytest
import torch

from trainer.checkpoint import (
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
