"""`ctp-datagen`: index videos, preview and export generated samples, benchmark, and serve them (the service's
commands: datagen/service/cli.py). Argument parsing lives in these two modules only."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from common import jsonlog
from common.commands import command_parser
from common.configfile import parse_command_line, split_overrides

DEMO_DIR = Path("out/demo-videos")
# Each command's one-line help. Only the command being run builds its parser and imports its modules: torch,
# PyAV, gRPC and numba take seconds to load, which `ctp-datagen --help` need not wait for (as ctp-train).
COMMANDS = {
    "index": "probe videos and write a manifest (frame counts, fps, size, codec)",
    "prepare": "re-encode videos for fast random access (H.264, short GOP) and write a manifest",
    "preview": "PNG grid + animated GIF of generated clips with their boxes",
    "sample": "export samples (S, E, I..I+N-1) to an .npz file",
    "bench": "clips/s and frames/s of decode, generation and end to end",
    "verify": "check this machine's decoders and renderer against the CPU path (exit 1 when anything differs)",
    "demo": "synthesise demo videos and preview generated clips (no download, no services)",
    "serve": "run one datagen replica (gRPC; SIGTERM drains)",
    "status": "live replicas, their throughput and load, quarantined videos",
    "pull": "pull N samples of an epoch from live replicas; check exactly-once delivery",
}


def _preview(args: argparse.Namespace) -> int:
    from .ctp.preview import render_preview
    from .options import make_generator

    generator = make_generator(args)
    batch = generator.generate([(args.seed, args.epoch, args.start + i) for i in range(args.num)])
    grid, gif = render_preview(batch, args.out)
    print(f"preview of {len(batch)} clips: {grid} and {gif}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from .options import make_generator

    generator = make_generator(args)
    keys = [(args.seed, args.epoch, args.start + i) for i in range(args.num)]
    parts = [generator.generate(keys[i : i + args.batch_size]) for i in range(0, len(keys), args.batch_size)]
    from .ctp.batch import Batch

    batch = Batch.cat(parts).to("cpu")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        clips=batch.clips.numpy(),
        boxes=batch.boxes.numpy(),
        visible=batch.visible.numpy(),
        keys=batch.keys.numpy(),
    )
    print(
        f"wrote {len(batch)} samples with keys ({args.seed}, {args.epoch}, {args.start}..{args.start + args.num - 1}) to {args.out}"
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from common.atomic import write_json

    from .bench import format_table, run_bench
    from .options import make_generator

    generator = make_generator(args)
    result = run_bench(generator, batch_size=args.batch_size, repeats=args.repeats)
    result |= {
        "threads": torch.get_num_threads(),
        "decode_threads": generator.decoder.num_threads,
        "backend": args.backend,
    }
    print(
        format_table(
            result,
            f"device={generator.device} backend={args.backend} batch={args.batch_size} "
            f"threads={torch.get_num_threads()} videos={len(generator.videos)}",
        )
    )
    if args.json:
        write_json(args.json, result)
        print(f"results: {args.json}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """The installation check: every decode class probed against PyAV, the renderer against the CPU kernels."""
    import json

    from common.tables import format_table

    from .options import make_generator
    from .verify import verify

    generator = make_generator(args, self_check=False)
    generator.decoder.verify = generator.decoder.backend == "auto"
    report = verify(generator, scan=args.scan, per_class=args.per_class, samples=args.samples)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        headers = (
            "decode class",
            "videos",
            "backend",
            "frames against the CPU decoder",
            "verdict",
            "auto decodes with",
        )
        print(format_table(report.rows(), headers, align="<><<<<"))
        print(
            f"{'all checks passed' if report.ok else 'CHECKS FAILED'} on {report.device} in {report.seconds:.1f} s "
            f"({len(generator.videos)} videos, up to {args.scan} classified per codec and file type)"
        )
    return 0 if report.ok else 1


def _demo(args: argparse.Namespace) -> int:
    """The embedded default: synthesise demo videos, then preview generated clips from them."""
    from .video.synthetic import synthesize_demo

    paths = synthesize_demo(args.videos_dir)
    print(f"demo input: {len(paths)} synthetic videos in {args.videos_dir}")
    args.videos = [str(args.videos_dir)]
    return _preview(args)


def _index(args: argparse.Namespace) -> int:
    from .video import manifest

    missing = [root for root in args.roots if not os.path.exists(root)]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    if not any(manifest.find_videos(root) for root in args.roots):
        extensions = " ".join(sorted(manifest.VIDEO_EXTENSIONS))
        raise ValueError(f"no video file in {', '.join(args.roots)} (looked for {extensions}); no manifest written")
    videos, rejected = manifest.index_videos(
        args.roots, min_frames=args.min_frames, progress=True, workers=args.workers, frame_fmt=args.frame_fmt
    )
    if rejected:
        print(manifest.rejected_list(rejected, args.out))
    print(manifest.summary(videos, rejected))
    if not videos:  # an empty manifest would only replace a good one
        print(
            f"ctp-datagen index: error: no usable video among {len(rejected)}; {args.out} not written", file=sys.stderr
        )
        return 1
    manifest.write_manifest(args.out, videos, rejected)
    print(f"manifest: {args.out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .video import manifest, prepare

    if args.short_side < 2 or args.gop < 1:
        raise ValueError("--short-side must be >= 2 and --gop >= 1")
    report = prepare.prepare(
        args.sources,
        args.out,
        prepare.Settings(args.short_side, args.gop, args.crf),
        args.workers,
        progress=sys.stderr.isatty(),
        log_file=args.log,
    )
    print(manifest.summary(report["videos"], report["rejected"]))
    for r in report["rejected"]:
        print(f"rejected {r.path}: {r.reason}")
    c = report["counts"]
    mb = 1 / 2**20
    print(
        f"{c['done']} encoded, {c['skipped']} already done, {c['kept']} frame sources kept as they are, "
        f"{c['rejected']} rejected in {report['seconds']:.1f} s; "
        f"size {report['bytes_before'] * mb:.1f} MiB -> {report['bytes_after'] * mb:.1f} MiB"
    )
    print(f"manifest: {report['manifest']}")
    return 0 if report["videos"] else 1


def _index_parser(sub: argparse._SubParsersAction) -> None:
    """The `index` subcommand: probe a dataset once and write its manifest."""
    from .video import manifest

    parser = sub.add_parser("index", help=COMMANDS["index"])
    parser.add_argument(
        "roots",
        nargs="+",
        metavar="ROOT",
        help="video files, frame sources (a zip or a folder of JPEG frames) or folders of them (searched recursively)",
    )
    parser.add_argument("--out", required=True, metavar="MANIFEST", help="manifest JSON file to write")
    parser.add_argument(
        "--min-frames",
        type=int,
        default=manifest.MIN_FRAMES,
        help=f"reject videos shorter than this (default {manifest.MIN_FRAMES}: pretrain and prepare take every "
        "decodable video, a clip's frames past a short video's end repeating its last frame)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel probes")
    parser.add_argument(
        "--frame-fmt",
        default="",
        metavar="FMT",
        help="the frame names of every frame source, as the official code's frame_fmt (e.g. 'img_{:05d}.jpg', "
        "'{:05d}.jpg'); default: found from the files of each",
    )
    parser.set_defaults(func=_index)


def _prepare_parser(sub: argparse._SubParsersAction) -> None:
    from .video import prepare

    parser = sub.add_parser(
        "prepare",
        help=COMMANDS["prepare"],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("sources", nargs="+", metavar="SRC", help="video files or folders (the tree is mirrored)")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (with manifest.json and prepare.log)"
    )
    parser.add_argument(
        "--short-side", type=int, default=prepare.SHORT_SIDE, help="downscale so the short side is at most this"
    )
    parser.add_argument("--gop", type=int, default=prepare.GOP, help="key-frame interval in frames")
    parser.add_argument(
        "--crf", type=int, default=prepare.CRF, help="x264 constant rate factor (lower: larger, better)"
    )
    parser.add_argument("--workers", type=int, default=0, help="parallel encodes (0: one per CPU core)")
    parser.add_argument("--log", default=None, metavar="FILE", help="plain log of every file (default DIR/prepare.log)")
    parser.set_defaults(func=_prepare)


def build_parser(full: tuple[str, ...] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The parser: the `full` commands' own subparsers, the others one-line entries."""
    parser = command_parser("ctp-datagen", __doc__ or "", COMMANDS, PARSERS, full)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _keyed(p: argparse.ArgumentParser, num: int) -> None:
    from .ctp.rng import seed_arg

    p.add_argument("--num", type=int, default=num, help="number of samples")
    p.add_argument("--seed", type=seed_arg, default=0, help="run seed (first word of every sample key)")
    p.add_argument("--epoch", type=int, default=0, help="epoch (second word of the key)")
    p.add_argument("--start", type=int, default=0, help="first sample index (third word of the key)")


def _preview_parser(sub: argparse._SubParsersAction) -> None:
    from .options import add_generation_args

    p = sub.add_parser("preview", help=COMMANDS["preview"], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_generation_args(p)
    _keyed(p, 8)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for grid.png and clips.gif")
    p.set_defaults(func=_preview)


def _sample_parser(sub: argparse._SubParsersAction) -> None:
    from .options import add_generation_args

    p = sub.add_parser("sample", help=COMMANDS["sample"], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_generation_args(p)
    _keyed(p, 16)
    p.add_argument("--batch-size", type=int, default=32, help="samples generated at once")
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE.npz",
        help="clips (N,T,H,W,3) uint8, boxes (N,K,T,4), visible (N,K,T), keys (N,3)",
    )
    p.set_defaults(func=_sample)


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    from .options import add_generation_args

    p = sub.add_parser("bench", help=COMMANDS["bench"], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_generation_args(p)
    p.add_argument("--batch-size", type=int, default=32, help="samples per timed batch")
    p.add_argument("--repeats", type=int, default=3, help="timed batches per row")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=_bench)


def _verify_parser(sub: argparse._SubParsersAction) -> None:
    from .options import add_generation_args

    p = sub.add_parser(
        "verify",
        help=COMMANDS["verify"],
        description="Groups the videos into decode classes (codec, container, pixel format, packed B-frames, "
        "reordering, timestamp order), decodes a probe clip of each class DALI would take with DALI and with "
        "PyAV and compares the frames (within 35 dB PSNR, none nearer another frame than its own), and renders a "
        "few planned samples with the device's tensor code and with the CPU kernels (within 8 levels). Prints "
        "one table: class, backend, numbers, verdict, and what `auto` will decode the class with.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_generation_args(p)
    p.add_argument("--scan", type=int, default=64, help="videos classified per codec and file type")
    p.add_argument("--per-class", type=int, default=2, help="videos probed per decode class")
    p.add_argument("--samples", type=int, default=8, help="CtP samples rendered on both sides (0: none)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.set_defaults(func=_verify)


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    from .options import add_generation_args

    p = sub.add_parser("demo", help=COMMANDS["demo"], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_generation_args(p, videos="optional")
    _keyed(p, 8)
    p.add_argument("--videos-dir", type=Path, default=DEMO_DIR, help="where the demo videos are written")
    p.add_argument("--out", default="out/demo", metavar="DIR", help="folder for grid.png and clips.gif")
    p.set_defaults(func=_demo)


def _service_parser(name: str):
    def add(sub: argparse._SubParsersAction) -> None:
        from .service import cli as service_cli

        service_cli.PARSERS[name](sub, COMMANDS[name])

    return add


PARSERS = {
    "index": _index_parser,
    "prepare": _prepare_parser,
    "preview": _preview_parser,
    "sample": _sample_parser,
    "bench": _bench_parser,
    "verify": _verify_parser,
    "demo": _demo_parser,
    **{name: _service_parser(name) for name in ("serve", "status", "pull")},
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in split_overrides(argv)[0] if not a.startswith("-")), None)
    parser = build_parser((command,) if command in COMMANDS else ())
    if "--set" in argv:
        parser.error("--set is gone: give overrides as KEY=VALUE operands, e.g. clip.num_frames=8 (as ctp-train)")
    args = parse_command_line(parser, argv)
    jsonlog.setup_plain(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ConnectionError) as exc:
        print(f"ctp-datagen {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
