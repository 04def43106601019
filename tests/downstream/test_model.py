"""The downstream classifier and its weight files: exported encoders, pretraining and fine-tuned checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torchvision.models.video import r3d_18

from common.configfile import to_dict
from trainer.config import ModelConfig, TrainConfig
from trainer.downstream.clips import ClipBatch
from trainer.downstream.config import load_downstream_config
from trainer.downstream.finetune import FineTuner
from trainer.downstream.model import VideoClassifier, load_classifier, load_encoder
from trainer.model.encoders import build_encoder, torchvision_model
from trainer.model.network import CtPNetwork
from trainer.runtime.distributed import Ranks
from trainer.runtime.execution import Execution


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_classifier_head_follows_the_recipe():
    torch.manual_seed(0)
    model = VideoClassifier(build_encoder("tiny", pretraining=False), num_classes=7)
    assert model.dropout.p == 0.5
    assert abs(model.fc.weight.std().item() - 0.001) < 0.0002 and not model.fc.bias.any()
    model.eval()
    logits = model(torch.randn(2, 3, 8, 64, 64))
    assert logits.shape == (2, 7)
    assert model.encoder(torch.randn(1, 3, 8, 64, 64)).shape == (1, 128, 1, 4, 4)  # standard strides: 1/16


def test_encoder_from_a_pretraining_checkpoint_adopts_its_architecture(tmp_path, caplog):
    network = CtPNetwork("tiny", num_frames=8)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_()
    path = tmp_path / "ckpt-00000100.pt"
    torch.save({"model": network.state_dict(), "config": to_dict(TrainConfig(model=ModelConfig(encoder="tiny")))}, path)
    with caplog.at_level("WARNING", logger="trainer.downstream.model"):
        encoder = load_encoder("r3d_18", path)  # the checkpoint records its encoder, which wins, and says so
    assert encoder.name == "tiny"
    assert f"{path} holds a tiny encoder, not the config's model.encoder=r3d_18" in caplog.text
    assert "--config tiny_cpu" in caplog.text
    assert_same_tensors(encoder.state_dict(), network.encoder.state_dict())
    assert encoder.layer4[0].downsample[0].stride == (2, 2, 2)  # downstream: standard strides again


def test_encoder_from_torchvision_state_dicts(tmp_path):
    full = r3d_18(num_classes=400).state_dict()  # e.g. supervised weights: their classifier is dropped
    exported = {k: v for k, v in full.items() if not k.startswith("fc.")}  # what `ctp-train export` writes
    assert exported.keys() == torchvision_model("r3d_18").state_dict().keys()
    torch.save(full, tmp_path / "full.pth")
    torch.save(exported, tmp_path / "exported.pth")
    assert_same_tensors(load_encoder("r3d_18", tmp_path / "exported.pth").state_dict(), exported)
    assert_same_tensors(load_encoder("r3d_18", tmp_path / "full.pth").state_dict(), exported)


def test_weight_files_that_do_not_fit_are_explained(tmp_path):
    torch.save(build_encoder("tiny").state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(ValueError, match="does not fit a r3d_18 encoder.*set model.encoder"):
        load_encoder("r3d_18", tmp_path / "tiny.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a readable weights file"):
        load_encoder("tiny", tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_encoder("tiny", tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="not a fine-tuned checkpoint"):
        load_classifier(tmp_path / "tiny.pth")


def test_linear_evaluation_trains_only_the_classifier():
    # model.freeze_encoder: after SGD steps in train mode the encoder's weights and BatchNorm statistics are
    # exactly those loaded, and the classifier has learnt; without it the encoder changes too.
    cfg = load_downstream_config("tiny_cpu", ["model.encoder=tiny", "model.freeze_encoder=true", "optim.lr=0.5"])
    batch = ClipBatch(
        torch.randint(0, 256, (4, 8, 64, 64, 3), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), torch.arange(4)
    )
    for frozen in (True, False):
        tuner = FineTuner(
            dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, freeze_encoder=frozen)),
            ("a", "b"),
            Execution.resolve("cpu"),
            Ranks(0, 1),
        )
        before = {k: v.clone() for k, v in tuner.model.state_dict().items()}
        tuner.model.train()
        for _ in range(3):
            tuner.train_step(batch)
        after = tuner.model.state_dict()
        encoder_kept = all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("encoder."))
        assert encoder_kept == frozen
        assert not torch.equal(after["fc.weight"], before["fc.weight"])
        assert any(k.endswith("running_mean") for k in before)
