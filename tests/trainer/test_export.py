"""`ctp-train export`: the encoder of a pretraining checkpoint, loadable by torchvision's own constructors."""

import pytest
import torch
from torchvision.models import video as tv_video

from common.configfile import to_dict
from trainer.cli import main
from trainer.config import load_train_config
from trainer.model.encoders import set_stage4_spatial_stride
from trainer.model.network import CtPNetwork
from trainer.runtime.checkpoint import save_atomic


def pretraining_checkpoint(tmp_path, encoder: str):
    torch.manual_seed(0)
    network = CtPNetwork(encoder, num_frames=16)
    for m in network.modules():  # non-trivial BN statistics, so a wrong key mapping would show
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    cfg = load_train_config(None, [f"model.encoder={encoder}"])
    path = save_atomic({"model": network.state_dict(), "config": to_dict(cfg), "step": 1}, tmp_path / "ckpt.pt")
    return path, network


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_exported_encoder_loads_strictly_into_torchvision(tmp_path, name, capsys):
    checkpoint, network = pretraining_checkpoint(tmp_path, name)
    out = tmp_path / "encoder.pth"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert "encoder written" in capsys.readouterr().out

    weights = torch.load(out, weights_only=True)
    model = getattr(tv_video, name)()
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "fc.weight", "fc.bias"'):
        model.load_state_dict(weights, strict=True)  # the file has no classifier: documented
    model.fc = torch.nn.Identity()
    model.load_state_dict(weights, strict=True)

    clip = torch.randn(1, 3, 16, 112, 112)
    set_stage4_spatial_stride(network.encoder, 2)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval()(clip), network.encoder.eval()(clip).mean(dim=(2, 3, 4)), rtol=1e-4, atol=1e-5
        )


def test_export_of_the_tiny_encoder_is_refused_clearly(tmp_path, capsys):
    checkpoint, _ = pretraining_checkpoint(tmp_path, "tiny")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.pth")]) == 2
    assert "no torchvision counterpart" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_a_file_that_is_no_checkpoint_is_refused_without_unsafe_advice(tmp_path, capsys):
    """torch's own error suggests weights_only=False, which would run the file's code: never passed on."""
    import argparse

    pickled, text = tmp_path / "pickled.pt", tmp_path / "notes.pt"
    torch.save({"model": argparse.Namespace(x=1)}, pickled)
    text.write_text("not a checkpoint\n")
    for path, why in (
        (pickled, "it holds pickled Python objects beyond tensors"),
        (text, "not a file torch.save wrote"),
    ):
        assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "out.pth")]) == 2
        err = capsys.readouterr().err
        assert f"{path} is not a readable ctp-train checkpoint: {why}" in err and "weights_only" not in err
    assert not (tmp_path / "out.pth").exists()


def test_track_eval_of_a_fine_tuned_checkpoint_says_what_to_give_it(tmp_path, demo_dir, capsys):
    from trainer.downstream.config import DownstreamConfig
    from trainer.runtime.checkpoint import FINETUNE_TASK, marked

    finetuned = tmp_path / "finetuned.pt"
    save_atomic(marked(FINETUNE_TASK, {"model": {}, "config": to_dict(DownstreamConfig())}), finetuned)
    assert main(["track-eval", "--checkpoint", str(finetuned), "--videos", str(demo_dir)]) == 2
    err = capsys.readouterr().err
    assert "is a fine-tuned checkpoint" in err and "`ctp-train eval --checkpoint" in err and "unknown option" not in err


def test_seeds_outside_the_key_range_are_refused_by_name(tmp_path, demo_dir, capsys):
    with pytest.raises(SystemExit):
        main(["track-eval", "--checkpoint", str(tmp_path), "--videos", str(demo_dir), "--seed", str(2**64)])
    assert "--seed: seed must be in 0 .. 2**63 - 1" in capsys.readouterr().err
    for seed in (2**64, 2**63, -1):
        assert main(["pretrain", "--config", "tiny_cpu", f"data.videos=[{demo_dir}]", f"data.seed={seed}"]) == 2
        assert f"data.seed must be in 0 .. 2**63 - 1 (sample keys are int64), got {seed}" in capsys.readouterr().err


def test_export_never_lands_on_a_checkpoint_and_replaces_another_file_only_with_force(tmp_path, capsys):
    source, _ = pretraining_checkpoint(tmp_path, "r3d_18")
    kept = source.read_bytes()
    alias = tmp_path / "best.pt"  # a checkpoint under a name of the user's
    alias.write_bytes(kept)
    refusals = {
        source: "is the checkpoint being exported",
        tmp_path / "runs" / "ckpt-00000002.pt": "is a ctp-train checkpoint",  # named as a run's checkpoints are
        alias: "is a ctp-train checkpoint",
        tmp_path: "is a folder",
    }
    for out, why in refusals.items():
        assert main(["export", "--checkpoint", str(source), "--out", str(out), "--force"]) == 2
        assert why in capsys.readouterr().err, out
    assert source.read_bytes() == kept and alias.read_bytes() == kept  # the run can still resume
    assert not (tmp_path / "runs").exists()

    mine = tmp_path / "encoder.pth"
    mine.write_bytes(b"someone's file")
    assert main(["export", "--checkpoint", str(source), "--out", str(mine)]) == 2
    assert "exists: pass --force to replace it" in capsys.readouterr().err and mine.read_bytes() == b"someone's file"
    assert main(["export", "--checkpoint", str(source), "--out", str(mine), "--force"]) == 0
    assert "stem.0.weight" in torch.load(mine, weights_only=True)  # the encoder, written over it
