"""`ctp-train`: pretraining, tracking evaluation, encoder export and the downstream protocols: every command's
arguments (argparse lives here only), each handed to the module that does the work, imported when it runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from common import jsonlog
from common.commands import command_parser
from common.configfile import parse_command_line, split_overrides, to_yaml
from trainer.runtime.signals import STOPPED_EXIT, Stopped, stopped_at_once

# Each command's one-line help. Only the command being run imports its module: torch and friends take seconds to
# load, which `ctp-train --help` need not wait for.
COMMANDS = {
    "pretrain": "CtP self-supervised pretraining of a video encoder",
    "track-eval": "tracking mIoU of a pretrained checkpoint on generated clips",
    "export": "write a checkpoint's encoder as a torchvision state dict",
    "finetune": "fine-tune an encoder for action recognition (UCF-101, HMDB-51, Kinetics, class folders)",
    "eval": "10-clip video-level top-1/top-5 of a fine-tuned checkpoint, per-class accuracy, confusion matrix",
    "retrieve": "VCOP video retrieval: top-k of data.test queries against the data.train gallery",
}


def build_parser(full: tuple[str, ...] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The parser: the `full` commands' own subparsers, the others one-line entries."""
    description = "Catch-the-Patch self-supervised video pretraining and its evaluation."
    return command_parser("ctp-train", description, COMMANDS, PARSERS, full)


def main(argv: list[str] | None = None) -> int:
    """The command's exit status: 0 done, 2 a clear error, 75 stopped by a signal before the end (STOPPED_EXIT),
    130 a second Ctrl-C. Under torchrun an uncaught exception also leaves error.json where torchrun says
    (TORCHELASTIC_ERROR_FILE), through torch elastic's `record`."""
    if "TORCHELASTIC_ERROR_FILE" not in os.environ:
        return _main(argv)
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_main)(argv) or 0  # record turns SystemExit(0) into None


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in split_overrides(argv)[0] if not a.startswith("-")), None)
    args = parse_command_line(build_parser((command,) if command in COMMANDS else ()), argv)
    jsonlog.setup_plain()
    try:
        args.func(args)
    except Stopped:
        return STOPPED_EXIT  # the log said where it stopped and how to continue
    except Exception as exc:
        if stopped_at_once():  # a second Ctrl-C: whatever it broke, stop without a traceback
            return _interrupted(args.command)
        from datagen.service.client.replicas import NoReplicaError

        if not isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, ConnectionError, NoReplicaError)):
            raise
        print(f"ctp-train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(args.command)
    return 0


def _interrupted(command: str) -> int:
    print(
        f"ctp-train {command}: interrupted; the newest checkpoint in run.out_dir is intact (--resume auto)",
        file=sys.stderr,
    )
    return 130


def _configured(
    subparsers: argparse._SubParsersAction, name: str, description: str, presets: list[str], default: str
) -> argparse.ArgumentParser:
    """A command's parser that takes its config as a preset or YAML file (`--config`; its presets listed below)."""
    p = subparsers.add_parser(
        name, help=COMMANDS[name], description=description, epilog=f"presets: {', '.join(presets)}"
    )
    p.add_argument("--config", default=None, help=f"preset or YAML file (default: {default})")
    return p


def _overrides(p: argparse.ArgumentParser, example: str) -> None:
    """KEY=VALUE operands, anywhere on the line (`common.configfile.parse_command_line`)."""
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {example}")


def _run_options(p: argparse.ArgumentParser, example: str) -> None:
    """What pretraining and fine-tuning runs take alike: where to continue from, overwriting, the resolved config,
    and KEY=VALUE overrides."""
    p.add_argument(
        "--resume",
        default=None,
        metavar="auto|CKPT",
        help="continue a run: `auto` takes the newest checkpoint in run.out_dir, if any; or a checkpoint file or "
        "run folder (default: a new run)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the checkpoints and metrics of a run already in run.out_dir first (default: refuse)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    _overrides(p, example)


def _pretrain_parser(subparsers: argparse._SubParsersAction) -> None:
    from trainer.config import presets

    p = _configured(
        subparsers,
        "pretrain",
        "Pretrain an encoder with Catch-the-Patch on clips generated in-process from video files. "
        "Configuration: a preset or YAML file, then KEY=VALUE overrides (YAML values), e.g. "
        "`ctp-train pretrain --config tiny_cpu data.videos=[out/demo] optim.epochs=5`.",
        presets(),
        "built-in defaults",
    )
    _run_options(p, "data.batch_size=64")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> None:
    from trainer.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    from trainer.pretrain.loop import pretrain
    from trainer.runtime.distributed import Ranks

    score = pretrain(cfg, resume=args.resume, overwrite=args.overwrite)
    if score is not None and Ranks.from_env().is_main:
        print(
            f"tracking mIoU {score.miou:.4f}  first-box baseline {score.baseline_miou:.4f}  "
            f"({score.clips} held-out clips)  run: {cfg.run.out_dir}"
        )


def _finetune_parser(subparsers: argparse._SubParsersAction) -> None:
    from trainer.downstream.config import presets

    p = _configured(
        subparsers,
        "finetune",
        "Fine-tune a classifier on data.train from an exported encoder or a pretraining checkpoint "
        "(--init; without it: random initialisation, the baseline), validating on data.test every run.val_every "
        "epochs. The defaults are the paper's recipe. Run under torchrun for DDP. Example: `ctp-train finetune "
        "--config ucf101 --init r3d18_ctp.pth data.train.videos=/data/UCF-101 data.train.annotations=/data/ucfTrainTestlist`.",
        presets(),
        "the paper's recipe",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="WEIGHTS",
        help="exported encoder, pretraining checkpoint or run folder (its newest checkpoint; sets model.init; "
        "default: random initialisation)",
    )
    p.add_argument(
        "--label-fraction",
        type=float,
        default=None,
        metavar="F",
        help="train on this share of each class's labelled videos, e.g. 0.1 (sets data.label_fraction)",
    )
    _run_options(p, "optim.epochs=50")
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> None:
    from trainer.downstream.config import load_downstream_config

    overrides = list(args.overrides)
    if args.init is not None:
        overrides.append(f"model.init={json.dumps(args.init)}")  # a quoted YAML string
    if args.label_fraction is not None:
        overrides.append(f"data.label_fraction={args.label_fraction}")
    cfg = load_downstream_config(args.config, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return
    from trainer.downstream.finetune import finetune

    finetune(cfg, resume=args.resume, overwrite=args.overwrite)


def _track_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    from datagen.ctp.rng import seed_arg

    p = subparsers.add_parser(
        "track-eval",
        help=COMMANDS["track-eval"],
        description="Generate held-out CtP clips from VIDEOS (with the checkpoint's generation config) and "
        "report the mean IoU of the predicted trajectories beside the first-box baseline.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a pretraining checkpoint (ckpt-*.pt) or a run folder (its newest checkpoint)",
    )
    p.add_argument("--videos", nargs="+", required=True, help="video files, folders or manifests")
    p.add_argument("--clips", type=int, default=256, help="number of generated clips (default 256)")
    p.add_argument("--seed", type=seed_arg, default=0, help="generation seed, 0 .. 2**63 - 1 (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default 16)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--json", type=Path, help="also write the result as JSON (keys miou, baseline_miou, clips)")
    p.set_defaults(func=_track_eval)


def _track_eval(args: argparse.Namespace) -> None:
    from common.atomic import write_json
    from trainer.pretrain.track_eval import score_checkpoint

    score, checkpoint, step = score_checkpoint(
        args.checkpoint, args.videos, args.clips, args.seed, args.batch_size, args.device
    )
    print(f"tracking mIoU {score.miou:.4f}  first-box baseline {score.baseline_miou:.4f}  ({score.clips} clips)")
    if args.json:
        write_json(args.json, dataclasses.asdict(score) | {"checkpoint": str(checkpoint), "step": step})


def _export_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help=COMMANDS["export"],
        description="Extract the pretrained encoder for downstream use. The result loads with strict=True into "
        "torchvision.models.video.r3d_18() / r2plus1d_18() after setting `model.fc = torch.nn.Identity()` "
        "(the file has no fc weights).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a pretraining checkpoint (ckpt-*.pt), a fine-tuned one (finetuned.pt: exports its fine-tuned encoder) "
        "or a run folder (its newest checkpoint)",
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output file, e.g. r3d18_ctp.pth (never a checkpoint; an existing file only with --force)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out file (never a checkpoint)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> None:
    from trainer.export import export_encoder

    path, finetuned = export_encoder(args.checkpoint, args.out, args.force)
    kind = "fine-tuned checkpoint: its fine-tuned encoder (without the classifier)" if finetuned else "encoder"
    print(f"{kind} written to {path}")


def _eval_parser(subparsers: argparse._SubParsersAction) -> None:
    from trainer.downstream.config import presets

    p = _configured(
        subparsers,
        "eval",
        "Evaluate a `ctp-train finetune` checkpoint on its data.test split (or another one given by "
        "overrides, e.g. data.test.split=2). Results are printed and written as JSON (and the confusion matrix as "
        "PNG) next to the checkpoint.",
        presets(),
        "the checkpoint's own config",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a fine-tuned checkpoint (finetuned.pt) or its run folder",
    )
    p.add_argument("--out", type=Path, default=None, help="results JSON (default: next to the checkpoint)")
    _overrides(p, "data.test.split=2")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> None:
    from trainer.downstream.evaluate import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, args.config, args.overrides, args.out)


def _retrieve_parser(subparsers: argparse._SubParsersAction) -> None:
    from trainer.downstream.config import presets

    p = _configured(
        subparsers,
        "retrieve",
        "Retrieval with an encoder's pooled final feature map (exported encoder, pretraining or "
        "fine-tuned checkpoint; without --weights: random initialisation of model.encoder). Gallery = data.train, "
        "queries = data.test; set both to any two splits, e.g. data.test.format=hmdb51 data.test.videos=... .",
        presets(),
        "a fine-tuned checkpoint's own config",
    )
    p.add_argument("--weights", type=Path, default=None, help="exported encoder or checkpoint (default: random init)")
    p.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: next to the weights, or in run.out_dir)"
    )
    _overrides(p, "data.train.split=2")
    p.set_defaults(func=_retrieve)


def _retrieve(args: argparse.Namespace) -> None:
    from trainer.downstream.retrieve import retrieve_with

    retrieve_with(args.weights, args.config, args.overrides, args.out)


PARSERS = {
    "pretrain": _pretrain_parser,
    "track-eval": _track_eval_parser,
    "export": _export_parser,
    "finetune": _finetune_parser,
    "eval": _eval_parser,
    "retrieve": _retrieve_parser,
}


if __name__ == "__main__":
    sys.exit(main())
