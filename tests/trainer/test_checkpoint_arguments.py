"""Every command that takes a checkpoint takes its run folder too; export says what it exported; `status` with
Redis down is a clear error."""

import socket

import pytest
import torch
from torchvision.models import video as tv_video

from common.configfile import to_dict
from datagen.cli import main as ctp_datagen
from trainer.cli import main as ctp_train
from trainer.config import load_train_config
from trainer.downstream.config import DownstreamConfig
from trainer.downstream.model import VideoClassifier, load_classifier, load_encoder
from trainer.model.encoders import build_encoder
from trainer.model.network import CtPNetwork
from trainer.runtime.checkpoint import FINETUNE_TASK, checkpoint_path, resolve_checkpoint, save_atomic


def finetuned_run(folder):
    torch.manual_seed(0)
    model = VideoClassifier(build_encoder("r3d_18", pretraining=False), 3)
    cfg = to_dict(DownstreamConfig())
    cfg["model"]["encoder"] = "r3d_18"
    save_atomic(
        {"task": FINETUNE_TASK, "config": cfg, "classes": ["a", "b", "c"], "model": model.state_dict()},
        folder / "finetuned.pt",
    )
    return model


def test_finetune_init_and_eval_checkpoint_take_a_run_folder(tmp_path):
    pretrained = tmp_path / "pretrain"
    network = CtPNetwork("tiny", num_frames=8)
    save_atomic(
        {"model": network.state_dict(), "config": to_dict(load_train_config(None, ["model.encoder=tiny"]))},
        checkpoint_path(pretrained, 7),
    )
    encoder = load_encoder("r3d_18", pretrained)  # the folder: its newest checkpoint, which records its encoder
    assert encoder.name == "tiny"
    assert torch.equal(encoder.state_dict()["stem.0.weight"], network.state_dict()["encoder.stem.0.weight"])

    finetuned = tmp_path / "finetune"
    finetuned.mkdir()
    model = finetuned_run(finetuned)
    assert resolve_checkpoint(finetuned) == finetuned / "finetuned.pt"
    classifier, classes, _ = load_classifier(finetuned)
    assert classes == ("a", "b", "c") and torch.equal(classifier.fc.weight, model.fc.weight)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint \(ckpt-\*.pt or finetuned.pt\) in the folder"):
        resolve_checkpoint(tmp_path)


def test_export_of_a_finetuned_checkpoint_says_so_and_exports_its_encoder(tmp_path, capsys):
    model = finetuned_run(tmp_path)
    out = tmp_path / "encoder.pth"
    assert ctp_train(["export", "--checkpoint", str(tmp_path), "--out", str(out)]) == 0
    assert (
        "fine-tuned checkpoint: its fine-tuned encoder (without the classifier) written to" in capsys.readouterr().out
    )
    torchvision = tv_video.r3d_18()
    torchvision.fc = torch.nn.Identity()
    torchvision.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert torch.equal(torchvision.stem[0].weight, model.encoder.state_dict()["stem.0.weight"])


def test_status_with_redis_down_is_a_clear_error(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert ctp_datagen(["status", "--redis", f"redis://127.0.0.1:{port}/0"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read the control plane at redis://127.0.0.1:{port}/0" in err and "is Redis running" in err
    assert "Traceback" not in err
