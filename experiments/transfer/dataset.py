"""The transfer experiment's labelled set, which needs no download: real encoded videos in which an actor's
motion is the class, over a panning background with distractors; four splits of disjoint source material."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from common.atomic import write_json
from datagen.video.synthetic import ENCODERS, encode, texture

if TYPE_CHECKING:
    from experiments.transfer.plan import Plan

CLASSES = ("orbit", "swing_horizontal", "swing_vertical", "swing_diagonal", "pulse")  # all invariant to a flip
SPLITS = ("pool", "train", "val", "test")  # the second entry of every video's seed: no two splits share one
DATA_SEED = 15  # the first entry of every video's seed


@dataclasses.dataclass(frozen=True)
class Scene:
    """How cluttered the labelled videos are (the choices of docs/transfer.md)."""

    background: str = "texture"  # texture | flat (one random grey)
    pan: float = 0.5  # max background speed, px per frame
    distractors: tuple[int, int] = (1, 2)  # fewest and most distractors
    distractor_size: tuple[int, int] = (14, 26)  # px, at 128 x 96


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
    codecs = ("vp9", "mpeg4", "h264")  # datagen.video.synthetic's: DALI-CPU decodes VP9, PyAV the others
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
