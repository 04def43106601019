"""Impossible generation settings are refused when the config is loaded, naming key, value and allowed range;
the generating commands take a training preset's generation section."""

import re

import pytest

from common.configfile import differences, to_dict
from datagen.cli import main
from datagen.ctp.spec import GenerationConfig, load_generation, validate_generation
from trainer.config import PRESETS_DIR, load_train_config


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "clip.crop_size=200",
            "data.generation.clip.short_sides=[112, 128, 144]: must be a non-empty list, each >= clip.crop_size=200",
        ),
        (
            "clip.short_sides=[100]",
            "data.generation.clip.short_sides=[100]: must be a non-empty list, each >= clip.crop_size=112",
        ),
        ("trajectory.num_trajectories=0", "data.generation.trajectory.num_trajectories=0: must be >= 1"),
        ("clip.num_frames=0", "data.generation.clip.num_frames=0: must be >= 1"),
        ("clip.strides=[0]", "data.generation.clip.strides=[0]: must be a non-empty list of values > 0"),
        (
            "patch.opacity=[1.0,0.5]",
            "data.generation.patch.opacity=[1.0, 0.5]: must be [a, b] with 0.0 <= a <= b <= 1.0",
        ),
        (
            "trajectory.interpolation_probs=[0.5,0.5,0.5]",
            "interpolation_probs=[0.5, 0.5, 0.5]: must be non-negative probabilities summing to 1",
        ),
        ("clip.flip_prob=2", "data.generation.clip.flip_prob=2.0: must be a probability in [0, 1]"),
    ],
)
def test_impossible_settings_name_key_value_and_range(override, message):
    with pytest.raises(ValueError, match="invalid generation config") as info:
        load_train_config(None, [f"data.generation.{override}"])
    assert message in str(info.value)


def test_the_defaults_and_every_preset_are_valid():
    validate_generation(GenerationConfig())
    for preset in PRESETS_DIR.glob("*.yaml"):
        load_train_config(str(preset))


def test_generating_commands_take_a_training_preset_or_yaml():
    trained = load_train_config("tiny_cpu").data.generation
    assert trained != GenerationConfig()  # the preset changes generation settings: the test can tell them apart
    assert load_generation("tiny_cpu", []) == trained
    assert load_generation(str(PRESETS_DIR / "tiny_cpu.yaml"), []) == trained
    assert load_generation("tiny_cpu", ["clip.num_frames=4"]).clip.num_frames == 4


def test_a_bad_setting_on_the_command_line_is_a_clear_error(demo_dir, capsys):
    assert main(["preview", "--videos", str(demo_dir), "clip.crop_size=200", "--out", "unused"]) == 2
    assert (
        "clip.short_sides=[112, 128, 144]: must be a non-empty list, each >= clip.crop_size=200"
        in capsys.readouterr().err
    )


def test_differences_name_each_changed_key_old_to_new():
    a, b = to_dict(GenerationConfig()), to_dict(GenerationConfig())
    b["clip"]["crop_size"], b["version"] = 64, a["version"] + 1
    assert differences(a, b) == ["clip.crop_size: 112 -> 64", f"version: {a['version']} -> {a['version'] + 1}"]


def test_options_and_overrides_in_any_order_and_a_single_value_for_a_list(tmp_path, capsys):
    from trainer.cli import main as ctp_train

    assert load_train_config(None, ["data.videos=m.json"]).data.videos == ("m.json",)
    # the overrides after --config reach the config (and its check), not argparse's "unrecognized arguments"
    assert (
        ctp_train(
            ["pretrain", f"run.out_dir={tmp_path}", "--config", "tiny_cpu", "data.batch_size=0", "optim.epochs=0"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "data.batch_size must be >= 1" in err and "optim.epochs must be >= 1" in err
    with pytest.raises(SystemExit):
        ctp_train(["pretrain", "--config", "tiny_cpu", "a=1", "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_print_config_shows_the_resolved_config_that_loads_back(tmp_path, capsys):
    from trainer.cli import main as ctp_train
    from trainer.downstream.config import load_downstream_config

    assert ctp_train(["pretrain", "--config", "tiny_cpu", "--print-config", "data.batch_size=7", "data.videos=x"]) == 0
    printed = tmp_path / "pretrain.yaml"
    printed.write_text(capsys.readouterr().out)
    assert load_train_config(str(printed)) == load_train_config("tiny_cpu", ["data.batch_size=7", "data.videos=[x]"])
    assert ctp_train(["finetune", "--config", "tiny_cpu", "--print-config", "--init", "w.pth", "optim.epochs=3"]) == 0
    printed = tmp_path / "finetune.yaml"
    printed.write_text(capsys.readouterr().out)
    assert load_downstream_config(str(printed)).optim.epochs == 3
    assert load_downstream_config(str(printed)).model.init == "w.pth"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.encoder=resnet50", "model.encoder must be one of r3d_18, r2plus1d_18, tiny; got 'resnet50'"),
        ("optim.name=adam", "optim.name must be one of sgd, adamw; got 'adam'"),
        ("run.precision=fp16", "run.precision must be one of auto, fp32, tf32, bf16; got 'fp16'"),
    ],
)
def test_a_choice_outside_its_literal_names_the_key_and_the_allowed_values(override, message):
    with pytest.raises(ValueError) as info:
        load_train_config(None, [override])
    assert message in str(info.value)


def test_fine_tuning_choices_are_checked_by_the_same_loader():
    from trainer.downstream.config import load_downstream_config

    with pytest.raises(ValueError, match="clips.decode_backend must be one of auto, dali, pyav; got 'ffmpeg'"):
        load_downstream_config(None, ["clips.decode_backend=ffmpeg"])
    with pytest.raises(ValueError, match="data.train.subset must be one of train, test; got 'val'"):
        load_downstream_config(None, ["data.train.subset=val"])


def test_one_override_syntax_for_both_clis(demo_dir, tmp_path, capsys):
    """KEY=VALUE operands anywhere, in ctp-datagen as in ctp-train; a training key is taken by a replica as is."""
    assert (
        load_generation("tiny_cpu", ["data.generation.clip.num_frames=4"])
        == load_train_config("tiny_cpu", ["data.generation.clip.num_frames=4"]).data.generation
    )
    assert main(["preview", "clip.crop_size=200", "--videos", str(demo_dir), "--out", "unused"]) == 2
    assert "clip.crop_size=200 (the crop is cut" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["preview", "--videos", str(demo_dir), "--set", "clip.crop_size=64", "--out", "unused"])
    assert "--set is gone: give overrides as KEY=VALUE operands" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["index", str(demo_dir), "--out", str(tmp_path / "m.json"), "clip.crop_size=64"])
    assert "index takes no KEY=VALUE overrides" in capsys.readouterr().err


def test_numbers_in_every_spelling_an_ml_user_writes(tmp_path):
    """YAML 1.1 reads 1e-4 as a string; the loader takes it (and 5E-4, 1e2 for an int, 64.0, 1_000) as a number."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  lr: 1e-4\n  weight_decay: 5E-4\n  epochs: 1e2\n  milestones: [1e1, 20]\n")
    cfg = load_train_config(str(recipe), ["optim.gamma=.5", "data.batch_size=64.0", "eval.every_steps=1_000"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.epochs, cfg.optim.milestones) == (1e-4, 5e-4, 100, (10, 20))
    assert (cfg.optim.gamma, cfg.data.batch_size, cfg.eval.every_steps) == (0.5, 64, 1000)
    assert isinstance(cfg.optim.epochs, int) and isinstance(cfg.optim.lr, float)
    for bad, message in (
        ("optim.epochs=1.5", "optim.epochs: expected int, got 1.5"),
        ("optim.epochs=1e-1", "optim.epochs: expected int, got '1e-1'"),
        ("optim.lr=fast", "optim.lr: expected float, got 'fast'"),
        ("optim.lr=true", "optim.lr: expected float, got True"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            load_train_config(None, [bad])
