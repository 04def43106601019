"""Does CtP pretraining help? The smallest honest transfer experiment, on a CPU (issue 15, docs/transfer.md).

    python -m bench.transfer [--quick] [--split test|val] [--out docs/results/transfer.json] [--work out/transfer]

A labelled video set that needs no download: real encoded videos (a slowly panning textured background,
1-2 small textured distractors gliding in straight lines) in which one more textured object, the actor,
moves in one of five ways (orbit, horizontal, vertical or diagonal swing, pulsing size): the class. Four splits of
disjoint source material (each video's pixels come from its own seed, and the splits' seeds never meet):
an unlabelled pretraining pool, labelled training videos, a validation set for any choice, and the test set.

Arms, all the same tiny encoder and the same fine-tuning recipe and step budget, each with its own
fine-tuning lr chosen on val: `scratch` (random init);
`ctp_full`: CtP pretraining on the pool with the full generation spec (the paper's, with the clip geometry
of the tiny_cpu preset: 64 px crops and patch sizes scaled to them); `ctp_simple`: the tiny_cpu preset's
simplified game. Pretraining and fine-tuning are the project's own
`pretrain()` and `finetune()`, in single-threaded worker processes; the score is `finetune()`'s own
end-of-run video-level top-1 (10 clips per video) on the evaluated split. The report records wall time,
CPU time (the budget: 45 minutes of 2 cores) and load average, since the machine may be shared.
`--linear-probe` is a diagnostic: the same runs with the encoders frozen (linear evaluation).
Seeds are fixed here, before any run: pretraining seed 0, fine-tuning seeds 0, 1, 2 (which also choose the
label subsets).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from datagen.atomic import write_json
from datagen.config import GenerationConfig
from datagen.demo import ENCODERS, encode, texture
from trainer.checkpoint import latest_checkpoint
from trainer.config import load_train_config
from trainer.downstream.config import load_downstream_config
from trainer.downstream.finetune import finetune
from trainer.pretrain import pretrain

log = logging.getLogger("bench.transfer")

CLASSES = ("orbit", "swing_horizontal", "swing_vertical", "swing_diagonal", "pulse")  # all invariant to a flip
SPLITS = ("pool", "train", "val", "test")  # the second entry of every video's seed: no two splits share one
ARMS = ("scratch", "ctp_full", "ctp_simple")
FRACTIONS = (0.05, 0.2, 1.0)
SEEDS = (0, 1, 2)
PRETRAIN_SEED = 0
DATA_SEED = 15  # the first entry of every video's seed
BUDGET_CPU_SECONDS = 2 * 45 * 60  # the 45 minutes on 2 cores


@dataclasses.dataclass(frozen=True)
class Scene:
    """How cluttered the labelled videos are (the choices of docs/transfer.md)."""

    background: str = "texture"  # texture | flat (one random grey)
    pan: float = 0.5  # max background speed, px per frame
    distractors: tuple[int, int] = (1, 2)  # fewest and most distractors
    distractor_size: tuple[int, int] = (14, 26)  # px, at 128 x 96


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one experiment."""

    per_class: dict[str, int]  # labelled videos per class in train, val and test
    pool: int  # unlabelled pretraining videos
    frames: int
    size: tuple[int, int]  # (width, height)
    pretrain_steps: dict[str, int]  # per pretrained arm
    finetune_steps: int  # per run, whatever the label fraction
    finetune_lr: dict[str, float]  # per arm: SGD, for batch 32 (the config's convention), scaled to batch 8
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    arms: tuple[str, ...] = ARMS
    scene: Scene = Scene()
    linear_probe: bool = False  # a diagnostic: the encoders frozen, only the classifier trained


FULL = Plan(
    per_class={"train": 30, "val": 10, "test": 20},
    pool=240,
    frames=50,
    size=(128, 96),
    pretrain_steps={"ctp_full": 3000, "ctp_simple": 750},  # the simple game is learnt in fewer
    finetune_steps=600,
    # Chosen per arm on val (100 % labels, seed 0) from {0.01, 0.04, 0.16, 0.64}: docs/transfer.md.
    finetune_lr={"scratch": 0.01, "ctp_full": 0.16, "ctp_simple": 0.16},
    fractions=FRACTIONS,
    seeds=SEEDS,
    arms=ARMS,
)

QUICK = Plan(
    per_class={"train": 2, "val": 1, "test": 1},
    pool=4,
    frames=20,
    size=(96, 64),
    pretrain_steps={"ctp_full": 2, "ctp_simple": 2},
    finetune_steps=2,
    finetune_lr=dict.fromkeys(ARMS, 0.1),
    fractions=(0.5, 1.0),
    seeds=(0,),
)


# --- the labelled set ------------------------------------------------------------------------------------


def actor_path(
    rng: np.random.Generator, kind: str, frames: int, width: int, height: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(T, 2) centre (y, x) and (T,) scale of the actor for motion `kind`, kept inside the frame."""
    period, phase = rng.uniform(10, 18), rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * np.arange(frames) / period + phase)
    amplitude = rng.uniform(14, 22)
    offset = np.zeros((frames, 2))
    scale = np.ones(frames)
    if kind == "orbit":
        turn = rng.choice([-1.0, 1.0])
        offset = amplitude * np.stack([wave, turn * np.cos(2 * np.pi * np.arange(frames) / period + phase)], 1)
    elif kind == "swing_horizontal":
        offset[:, 1] = 1.4 * amplitude * wave
    elif kind == "swing_vertical":
        offset[:, 0] = 1.4 * amplitude * wave
    elif kind == "swing_diagonal":
        offset = amplitude * np.stack([wave, rng.choice([-1.0, 1.0]) * wave], 1)
    elif kind == "pulse":
        scale = 1 + rng.uniform(0.35, 0.5) * wave
    else:
        raise ValueError(f"unknown motion {kind!r}; one of {CLASSES}")
    reach = np.abs(offset).max(0) + np.asarray(size) * scale.max() / 2 + 1
    centre = rng.uniform(reach, np.maximum(reach + 1, np.array([height, width]) - reach))
    return centre + offset, scale


def render_video(
    rng: np.random.Generator, kind: str, frames: int, width: int, height: int, scene: Scene = Scene()
) -> np.ndarray:
    """A slowly panning background, a few small textured distractors gliding in straight lines, and the
    actor on top, whose motion is the class (the only thing that separates the classes)."""
    pan = rng.uniform(-scene.pan, scene.pan, 2)  # background (x, y) px per frame
    margin = np.ceil(np.abs(pan) * frames).astype(int) + 1
    origin = np.where(pan < 0, margin - 1, 0)  # the window stays inside the background
    size = (height + margin[1], width + margin[0])
    if scene.background == "texture":
        background = texture(rng, *size)
    else:
        background = np.full((*size, 3), int(rng.integers(40, 216)), np.uint8)
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        ox, oy = np.round(origin + pan * t).astype(int)
        video[t] = background[oy : oy + height, ox : ox + width]
    for _ in range(int(rng.integers(scene.distractors[0], scene.distractors[1] + 1))):
        h, w = (int(v) for v in rng.integers(scene.distractor_size[0], scene.distractor_size[1] + 1, 2))
        start, end = (rng.uniform(np.array([h, w]) / 2, np.array([height, width]) - np.array([h, w]) / 2) for _ in "se")
        line = start + np.linspace(0, 1, frames)[:, None] * (end - start)
        _paste(video, texture(rng, h, w), _mask(rng, h, w), line, np.ones(frames))
    h, w = (int(v) for v in rng.integers(30, 43, 2))
    tex, mask = texture(rng, h, w), _mask(rng, h, w)
    _paste(video, tex, mask, *actor_path(rng, kind, frames, width, height, (h, w)))
    return video


def _mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An ellipse or a rectangle, even odds."""
    yy, xx = np.mgrid[:h, :w]
    ellipse = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 1.0
    return ellipse if rng.random() < 0.5 else np.ones((h, w), bool)


def _paste(video: np.ndarray, tex: np.ndarray, mask: np.ndarray, centres: np.ndarray, scales: np.ndarray) -> None:
    """Draw the object `tex` (shape `mask`) into every frame at its (y, x) centre and scale, clipped to the frame."""
    height, width = video.shape[1:3]
    h, w = mask.shape
    for frame, (cy, cx), s in zip(video, centres, scales):
        sh, sw = max(2, round(h * s)), max(2, round(w * s))
        t = cv2.resize(tex, (sw, sh), interpolation=cv2.INTER_LINEAR)
        m = cv2.resize(mask.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST).astype(bool)
        y0, x0 = round(cy - sh / 2), round(cx - sw / 2)
        ys, xs = slice(max(y0, 0), min(y0 + sh, height)), slice(max(x0, 0), min(x0 + sw, width))
        sub = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        frame[ys, xs][m[sub]] = t[sub][m[sub]]


def video_seed(split: str, index: int) -> list[int]:
    return [DATA_SEED, SPLITS.index(split), index]


def build_dataset(root: Path, plan: Plan) -> dict[str, Any]:
    """Write the four splits under `root` (kept between runs when the plan is the same); returns the source list:
    for every file its split, class (None in the pool) and seed."""
    index_file = root / "sources.json"
    spec = {
        "per_class": plan.per_class,
        "pool": plan.pool,
        "frames": plan.frames,
        "size": list(plan.size),
        "classes": list(CLASSES),
        "data_seed": DATA_SEED,
        "scene": dataclasses.asdict(plan.scene),
    }
    spec = json.loads(json.dumps(spec))  # as read back (tuples become lists), or the cache never matches
    if index_file.is_file() and json.loads(index_file.read_text())["spec"] == spec:
        return json.loads(index_file.read_text())
    width, height = plan.size
    codecs = ("vp9", "mpeg4", "h264")  # datagen.demo's: DALI-CPU decodes VP9, PyAV the others
    sources = []
    counts = {"pool": plan.pool, **{s: n * len(CLASSES) for s, n in plan.per_class.items()}}
    for split, count in counts.items():
        for i in range(count):
            kind = CLASSES[i % len(CLASSES)]
            seed = video_seed(split, i)
            codec = codecs[i % len(codecs)]
            folder = root / "pool" if split == "pool" else root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{split}_{i:04d}_{codec}{ENCODERS[codec][1]}"
            encode(
                path,
                render_video(np.random.default_rng(seed), kind, plan.frames, width, height, plan.scene),
                codec,
                fps=25,
            )
            sources.append(
                {
                    "path": str(path.relative_to(root)),
                    "split": split,
                    "class": None if split == "pool" else kind,
                    "seed": seed,
                }
            )
    index = {"spec": spec, "videos": sources}
    write_json(index_file, index)
    return index


# --- the arms ----------------------------------------------------------------------------------------------


def full_spec(simple: GenerationConfig) -> GenerationConfig:
    """The paper's generation spec with the tiny preset's clip geometry (64 px crops, patch sizes and speed
    scaled to them): inner key frames, scale change, shapes, soft edges, opacity, MRM and colour jitter all on."""
    full = GenerationConfig()
    trajectory = dataclasses.replace(
        full.trajectory, anchor_scales=simple.trajectory.anchor_scales, max_speed=simple.trajectory.max_speed
    )
    return dataclasses.replace(full, clip=simple.clip, trajectory=trajectory)


def pretrain_arm(arm: str, pool: Path, out: Path, steps: int, spec: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """CtP pretraining of the tiny encoder on the pool for `steps` steps; returns its final checkpoint and its
    record (time, CPU time, load, mIoU along the run). A finished pretraining of the same arm, steps and
    video spec in `out` is reused with the record it wrote, so a long pretraining runs once."""
    record_file = out / "transfer_pretrain.json"
    wanted = {"arm": arm, "steps": steps, "videos": spec}
    found = latest_checkpoint(out)
    if record_file.is_file() and found is not None:
        record = json.loads(record_file.read_text())
        if {k: record.get(k) for k in wanted} == wanted:
            log.info("%s: reusing the pretraining in %s (finished %s)", arm, out, record["finished"])
            return found, {**record, "reused": True}
    cfg = load_train_config(
        "tiny_cpu",
        [
            f"data.videos=[{pool}]",
            f"data.seed={PRETRAIN_SEED}",
            "data.clips_per_video=1",
            f"run.out_dir={out}",
            "run.progress=false",
            "run.log_every=20",
            f"run.checkpoint_every={10 * steps}",
            f"eval.every_steps={max(1, steps // 4)}",  # the mIoU along the run, against the first-box baseline
        ],
    )
    per_epoch = math.ceil(len(list(pool.iterdir())) / cfg.data.batch_size)
    epochs = max(1, round(steps / per_epoch))
    optim = dataclasses.replace(cfg.optim, epochs=epochs, milestones=(max(1, round(0.8 * epochs)),))
    generation = full_spec(cfg.data.generation) if arm == "ctp_full" else cfg.data.generation
    cfg = dataclasses.replace(cfg, optim=optim, data=dataclasses.replace(cfg.data, generation=generation))
    wall, cpu = time.perf_counter(), cpu_seconds()
    score = pretrain(cfg)
    if score is None:  # stopped by a signal: no finished pretraining to record or reuse
        raise SystemExit(f"{arm}: pretraining stopped before its end; delete {out} and rerun")
    log.info("%s: tracking mIoU %.3f, first-box baseline %.3f", arm, score.miou, score.baseline_miou)
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "miou" in r]
    record = {
        **wanted,
        "miou": [[r["step"], r["miou"]] for r in evals],
        "miou_end": score.miou,
        "baseline_miou": score.baseline_miou,
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": cpu_seconds() - cpu,
        "load_average_end": os.getloadavg(),
        "finished": now(),
    }
    write_json(record_file, record)  # whole or absent: a killed run is redone, never half-reused
    found = latest_checkpoint(out)
    assert found is not None
    return found, {**record, "reused": False}


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and its finished children: the budget's measure, since
    wall time on a shared machine says more about the other users than about the experiment."""
    used = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(u.ru_utime + u.ru_stime for u in used)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def finetune_run(
    train: Path,
    evaluated: Path,
    init: Path | None,
    fraction: float,
    seed: int,
    steps: int,
    lr: float,
    out: Path,
    spec: dict[str, Any],
    frozen: bool = False,
) -> dict[str, Any]:
    """`finetune()` with the tiny_cpu downstream recipe for about `steps` steps: its end-of-run top-1 on
    `evaluated`, with the run's time, CPU time and the load average at its end. A finished run in `out` of
    the same recipe on the same videos (`spec`) is reused with the record it wrote, so that a grid of choices
    on val can grow one arm at a time; a different one there is refused by `finetune()`."""
    record_file = out / "transfer_finetune.json"
    wanted = {"init": str(init), "fraction": fraction, "seed": seed, "steps": steps, "lr": lr, "frozen": frozen}
    wanted["videos"] = spec
    if record_file.is_file():
        record = json.loads(record_file.read_text())
        if {k: record.get(k) for k in wanted} == wanted:
            return {**record["result"], "reused": True}  # its time counts in the budget as a reused pretraining's
    wall, cpu = time.perf_counter(), cpu_seconds()
    cfg = load_downstream_config(
        "tiny_cpu",
        [
            f"data.train.videos={train}",
            f"data.test.videos={evaluated}",
            f"data.label_fraction={fraction}",
            f"data.seed={seed}",
            "data.batch_size=8",
            f"optim.lr={lr}",
            f"run.out_dir={out}",
            "run.progress=false",
            "run.log_every=50",
            f"model.init={json.dumps(str(init) if init else '')}",
            f"model.freeze_encoder={str(frozen).lower()}",
        ],
    )
    labelled = sum(1 for p in train.rglob("*") if p.is_file())
    videos = sum(max(1, round(fraction * n)) for n in _class_sizes(train))
    assert videos <= labelled
    epochs = max(1, round(steps / math.ceil(videos / cfg.data.batch_size)))
    cfg = dataclasses.replace(
        cfg,
        optim=dataclasses.replace(cfg.optim, epochs=epochs, milestones=()),
        run=dataclasses.replace(cfg.run, val_every=epochs),
    )
    checkpoint = finetune(cfg)
    summary = json.loads(checkpoint.with_suffix(".json").read_text())
    assert summary["train_videos"] == videos, (summary["train_videos"], videos)
    result = {
        "top1": summary["validation"]["top1"],
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": cpu_seconds() - cpu,
        "load_average_end": os.getloadavg(),
    }
    write_json(record_file, {**wanted, "result": result})  # whole or absent, as the pretraining's record
    return {**result, "reused": False}


def _class_sizes(folder: Path) -> list[int]:
    return [sum(1 for p in c.iterdir() if p.is_file()) for c in sorted(folder.iterdir()) if c.is_dir()]


# --- reporting ---------------------------------------------------------------------------------------------


def summarise(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per arm and fraction: mean and sample sd of top-1 over the seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, by_fraction in results.items():
        for fraction, by_seed in by_fraction.items():
            values = np.asarray(list(by_seed.values()), dtype=np.float64)
            sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out.setdefault(arm, {})[fraction] = {"mean": float(values.mean()), "sd": sd, "n": len(values)}
    return out


def verdict(summary: dict[str, dict[str, dict[str, float]]], fraction: str) -> dict[str, Any]:
    """Each pretrained arm against scratch at `fraction`: the gap in means and whether it exceeds 2 pooled sd."""
    base = summary["scratch"][fraction]
    out = {}
    for arm in summary:
        if arm == "scratch":
            continue
        mine = summary[arm][fraction]
        pooled = math.sqrt((base["sd"] ** 2 + mine["sd"] ** 2) / 2)
        gap = mine["mean"] - base["mean"]
        out[arm] = {"gap": gap, "pooled_sd": pooled, "above_two_sd": bool(gap > 2 * pooled)}
    return out


def plot(summary: dict[str, dict[str, dict[str, float]]], path: Path, title: str) -> None:
    """Accuracy vs label fraction (log axis), mean ± sd per arm, drawn with PIL (no matplotlib in the venv)."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 720, 440, 70, 170, 40, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    fractions = sorted({float(f) for arm in summary.values() for f in arm})
    lo, hi = math.log(min(fractions)) - 0.2, math.log(max(fractions)) + 0.2

    def xy(fraction: float, accuracy: float) -> tuple[float, float]:
        x = left + (math.log(fraction) - lo) / (hi - lo) * (width - left - right)
        return x, top + (1 - accuracy) * (height - top - bottom)

    for a in np.linspace(0, 1, 6):
        y = xy(fractions[0], a)[1]
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 40, y - 6), f"{100 * a:.0f}%", fill="black")
    for f in fractions:
        x = xy(f, 0)[0]
        draw.text((x - 14, height - bottom + 8), f"{100 * f:g}%", fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 12), title, fill="black")
    draw.text((width // 2 - 80, height - 24), "label fraction (log scale)", fill="black")
    chance = 1 / len(CLASSES)
    chance_y = xy(fractions[0], chance)[1]
    draw.line([(left, chance_y), (width - right, chance_y)], fill=(150, 150, 150))
    draw.text((width - right + 6, chance_y - 6), "chance", fill=(120, 120, 120))
    colours = {"scratch": (200, 40, 40), "ctp_full": (30, 90, 200), "ctp_simple": (30, 150, 60)}
    for n, (arm, by_fraction) in enumerate(summary.items()):
        colour = colours.get(arm, (0, 0, 0))
        points = []
        for f in fractions:
            if f"{f:g}" not in by_fraction:  # a run stopped early: the points it has
                continue
            s = by_fraction[f"{f:g}"]
            x, y = xy(f, s["mean"])
            x += (n - 1) * 4  # side by side, so the bars stay readable
            _, y0 = xy(f, s["mean"] - s["sd"])
            _, y1 = xy(f, s["mean"] + s["sd"])
            draw.line([(x, y0), (x, y1)], fill=colour, width=2)
            draw.line([(x - 4, y0), (x + 4, y0)], fill=colour, width=2)
            draw.line([(x - 4, y1), (x + 4, y1)], fill=colour, width=2)
            points.append((x, y))
        draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        draw.text((width - right + 6, top + 10 + 18 * n), f"- {arm}", fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def table(summary: dict[str, dict[str, dict[str, float]]], results: dict[str, dict[str, dict[str, float]]]) -> str:
    fractions = list(next(iter(summary.values())))
    lines = [
        "| arm | " + " | ".join(f"{100 * float(f):g} % labels" for f in fractions) + " |",
        "|---|" + "---|" * len(fractions),
    ]
    for arm, by_fraction in summary.items():
        cells = []
        for f in fractions:
            if f not in by_fraction:
                cells.append("not run")
                continue
            s = by_fraction[f]
            seeds = ", ".join(f"{100 * v:.1f}" for v in results[arm][f].values())
            cells.append(f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f} ({seeds})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --- the experiment ----------------------------------------------------------------------------------------


def _worker() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("trainer", "datagen"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(
    plan: Plan, work: Path, split: str, out: Path, image: Path | None, command: str, workers: int = 2
) -> dict[str, Any]:
    started, cpu_started, started_at, load_start = time.perf_counter(), cpu_seconds(), now(), os.getloadavg()
    data = work / "videos"
    index = build_dataset(data, plan)
    timings = {"videos_s": time.perf_counter() - started}
    pretraining: dict[str, Any] = {}
    results: dict[str, dict[str, dict[str, float]]] = {}
    runs = []
    # One single-threaded process per core: a tiny model uses two threads poorly, and scratch's runs need
    # no pretraining, so they fill the cores while the pretrainings run.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker) as pool:
        pretrainings = {
            arm: pool.submit(
                pretrain_arm, arm, data / "pool", work / "pretrain" / arm, plan.pretrain_steps[arm], index["spec"]
            )
            for arm in plan.arms
            if arm != "scratch"
        }
        jobs = {}
        for arm in plan.arms:  # scratch first: its jobs are queued before waiting for any pretraining
            init = None
            if arm in pretrainings:
                init, pretraining[arm] = pretrainings[arm].result()
                timings[f"pretrain_{arm}_done_s"] = time.perf_counter() - started
            for fraction in plan.fractions:
                for seed in plan.seeds:
                    lr = plan.finetune_lr[arm]
                    kind = "probe" if plan.linear_probe else "finetune"
                    run_dir = work / kind / split / arm / f"lr{lr:g}" / f"{fraction:g}" / f"seed{seed}"
                    args = (data / "train", data / split, init, fraction, seed, plan.finetune_steps, lr)
                    run_args = (run_dir, index["spec"], plan.linear_probe)
                    jobs[arm, fraction, seed] = pool.submit(finetune_run, *args, *run_args)
        for (arm, fraction, seed), job in jobs.items():
            done = job.result()
            results.setdefault(arm, {}).setdefault(f"{fraction:g}", {})[str(seed)] = done["top1"]
            runs.append({"arm": arm, "fraction": fraction, "seed": seed, **done})
            log.info("%s %g seed %d: %s top-1 %.3f", arm, fraction, seed, split, done["top1"])
    timings["total_s"] = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_started
    reused = sum(r["cpu_seconds"] for r in pretraining.values() if r["reused"])
    reused_finetuning = sum(r["cpu_seconds"] for r in runs if r["reused"])
    budget = {
        "started": started_at,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "cpu_seconds_this_process": cpu,
        "cpu_seconds_reused_pretraining": reused,  # spent by an earlier run of the same pretraining
        "cpu_seconds_reused_finetuning": reused_finetuning,  # likewise, by earlier runs of the same fine-tunings
        "cpu_seconds_total": cpu + reused + reused_finetuning,
        "cpu_seconds_budget": BUDGET_CPU_SECONDS,
    }
    summary = summarise(results)
    lowest = f"{min(plan.fractions):g}"
    report = {
        "command": command,
        "machine": machine(),
        "date": now(),
        "commit": commit(),
        "evaluated_split": split,
        "plan": dataclasses.asdict(plan),
        "classes": CLASSES,
        "videos": {s: sum(1 for v in index["videos"] if v["split"] == s) for s in SPLITS},
        "pretraining": pretraining,
        "seconds": timings,
        "budget": budget,
        "workers": workers,
        "top1": results,
        "runs": runs,
        "summary": summary,
        "verdict_at_lowest_fraction": {"fraction": lowest, **verdict(summary, lowest)},
    }
    write_json(out, report)
    if image is not None:
        plot(summary, image, f"tiny encoder, {split} top-1 (mean ± sd over {len(plan.seeds)} seeds), 5 motion classes")
    print(table(summary, results))
    print(json.dumps(report["verdict_at_lowest_fraction"], indent=1))
    print(
        f"took {timings['total_s'] / 60:.1f} min wall, {budget['cpu_seconds_total']:.0f} CPU-s "
        f"(budget {BUDGET_CPU_SECONDS}); results: {out}"
    )
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few videos and steps: checks the pipeline, not the outcome")
    p.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="what the fine-tuned models are scored on: val for any choice, test for the report",
    )
    p.add_argument("--work", type=Path, default=Path("out/transfer"), help="videos, checkpoints and run folders")
    p.add_argument("--out", type=Path, default=Path("docs/results/transfer.json"), help="the results JSON")
    p.add_argument("--image", type=Path, default=Path("docs/images/transfer.png"), help="the plot (PNG)")
    p.add_argument("--pretrain-steps", type=int, default=None, help="override the plan's pretraining steps")
    p.add_argument("--finetune-steps", type=int, default=None, help="override the plan's fine-tuning steps")
    p.add_argument(
        "--arms", nargs="+", choices=ARMS, default=None, help="a subset of the arms (scratch is the reference)"
    )
    p.add_argument("--fractions", nargs="+", type=float, default=None, help="override the plan's label fractions")
    p.add_argument(
        "--finetune-lr",
        type=float,
        default=None,
        help="one fine-tuning lr (per 32 clips) for every arm, instead of the plan's per-arm lr",
    )
    p.add_argument("--scene", default=None, help="override the scene, as JSON fields of Scene (choices on val only)")
    p.add_argument(
        "--workers", type=int, default=2, help="single-threaded processes running the pretrainings and fine-tunings"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="override the plan's fine-tuning seeds")
    p.add_argument(
        "--linear-probe",
        action="store_true",
        help="a diagnostic: train only the classifier on each arm's frozen encoder (model.freeze_encoder)",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("trainer", "datagen"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.arms and "scratch" not in args.arms:
        p.error("--arms must include scratch: every arm is judged against it")
    plan = QUICK if args.quick else FULL
    overrides: dict[str, Any] = {
        k: v
        for k, v in (
            ("pretrain_steps", args.pretrain_steps and dict.fromkeys(ARMS[1:], args.pretrain_steps)),
            ("finetune_steps", args.finetune_steps),
            ("arms", tuple(args.arms or ())),
            ("fractions", tuple(args.fractions or ())),
            ("seeds", tuple(args.seeds or ())),
            ("finetune_lr", args.finetune_lr and dict.fromkeys(ARMS, args.finetune_lr)),
            ("scene", args.scene and dataclasses.replace(plan.scene, **json.loads(args.scene))),
            ("linear_probe", args.linear_probe),
        )
        if v
    }
    run(
        dataclasses.replace(plan, **overrides),
        args.work,
        args.split,
        args.out,
        args.image,
        " ".join(["python -m bench.transfer", *argv]),
        args.workers,
    )


if __name__ == "__main__":
    main()
