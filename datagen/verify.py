"""The GPU path checks itself: each decode class probed against PyAV, the device's renderer against the CPU kernels.

Nothing of the CUDA path can be tested where the project is built, and a GPU decoder's quirks show only on
real input. So on every new machine the GPU path compares itself with the CPU path before it serves:
`startup_check` (replicas and in-process generators on CUDA) probes the decode classes of a sample of the
videos (a few clips per class; a class met later is probed on its first clip, `Decoder`) and renders a few
planned samples with the device's tensor code and with the CPU kernels. A decode class that differs is
routed to PyAV; a renderer that differs refuses to serve (`RendererMismatch`), since wrong samples are worse
than none. `ctp-datagen verify` runs the same checks on demand and prints one table.

Render tolerance: the tensor code rescales in float where the CPU kernels rescale uint8 (torch's two paths
round differently) and fuses float arithmetic in another order: on the shared footage, forcing the float
rescale on the CPU, up to 4 levels per pixel, 0.13 on average. A wrong patch, shape, mask or colour differs
by tens of levels over whole regions.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from datagen.ctp.plan import PlanBatch, SamplePlan
from datagen.ctp.render import render_clips, render_clips_cpu
from datagen.ctp.rng import SampleKey
from datagen.ctp.spec import GenerationConfig
from datagen.video.container import VideoError, VideoInfo
from datagen.video.decode.decoder import Decoder, cpu_backend
from datagen.video.decode.routes import DecodeClass, Route, psnr

log = logging.getLogger(__name__)

MAX_RENDER_DIFF = 8  # levels, any pixel
MAX_RENDER_MEAN = 0.5  # levels, a sample's mean
RENDER_CHECK_FLAG = "--no-render-check"  # the override the refusal names (trainer: run.render_check=false)


class Checked(Protocol):
    """What the checks read of a generator (`datagen.generator.Generator`, which runs `startup_check`)."""

    videos: list[VideoInfo]
    config: GenerationConfig
    device: torch.device
    decoder: Decoder

    def plan_many(self, keys: Sequence[SampleKey]) -> list[SamplePlan]: ...

    def decode(self, plans: list[SamplePlan], whole_frames: bool = False) -> list[torch.Tensor]: ...


class RendererMismatch(ValueError):
    """The device's renderer does not render what the CPU kernels render: serving would spread wrong samples.
    (A ValueError, as the CLIs report those: one line saying what to do, no traceback.)"""


@dataclasses.dataclass(frozen=True)
class ClassCheck:
    """One decode class: the videos seen of it, the backend `auto` picks for its codec, and its route."""

    cls: DecodeClass
    videos: int
    backend: str
    route: Route

    @property
    def verdict(self) -> str:
        if self.backend != "dali":
            return "reference"  # the CPU decoder's by the codec rule: nothing to compare it with
        if not self.route.verified:
            return "routed" if self.route.backend != "dali" else "not verified"
        return "PASS" if self.route.backend == "dali" else "FAIL"


@dataclasses.dataclass(frozen=True)
class RenderCheck:
    """The device's tensor renderer against the CPU kernels on the same frames and plans."""

    device: str
    samples: int
    equal: int  # samples identical byte for byte
    max_diff: int
    mean_diff: float  # the worst sample's mean
    min_psnr: float
    differing: list[tuple[int, ...]]  # keys of the samples beyond tolerance

    @property
    def ok(self) -> bool:
        return self.samples > 0 and not self.differing

    def summary(self) -> str:
        quality = "inf" if math.isinf(self.min_psnr) else f"{self.min_psnr:.1f}"
        text = f"{self.equal}/{self.samples} samples equal, max diff {self.max_diff}, min PSNR {quality} dB"
        return text + (f", samples {self.differing[:4]} beyond tolerance" if self.differing else "")


@dataclasses.dataclass
class Report:
    device: str
    classes: list[ClassCheck]
    render: RenderCheck | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Nothing differed: no decode class failed its probe and the renderer matched (where checked)."""
        return all(c.verdict != "FAIL" for c in self.classes) and (self.render is None or self.render.ok)

    def rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = [
            (c.cls.label, str(c.videos), c.backend, c.route.reason, c.verdict, c.route.name) for c in self.classes
        ]
        if self.render is not None:
            verdict = "PASS" if self.render.ok else "FAIL"
            then = "serve" if self.render.ok else f"refuse to serve ({RENDER_CHECK_FLAG} overrides)"
            rows.append(
                ("render (CtP samples)", str(self.render.samples), self.device, self.render.summary(), verdict, then)
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "ok": self.ok,
            "seconds": round(self.seconds, 2),
            "classes": [
                {"class": c.cls.label, "videos": c.videos, "verdict": c.verdict} | dataclasses.asdict(c.route)
                for c in self.classes
            ],
            "render": None if self.render is None else dataclasses.asdict(self.render) | {"ok": self.render.ok},
        }


def classify(
    decoder: Decoder, videos: Sequence[VideoInfo], scan: int = 64
) -> tuple[dict[DecodeClass, list[VideoInfo]], list[str]]:
    """Videos by decode class, from the packet indexes of up to `scan` videos per codec and file type, spread
    over the list (a class found nowhere in them is probed on its first clip instead); and the videos that
    could not be indexed, with the reason."""
    groups: dict[tuple[str, str], list[VideoInfo]] = collections.defaultdict(list)
    for video in videos:
        groups[(video.codec, Path(video.path).suffix.lower())].append(video)
    classes: dict[DecodeClass, list[VideoInfo]] = collections.defaultdict(list)
    unreadable = []
    for group in groups.values():
        picks = [group[int(i)] for i in np.unique(np.linspace(0, len(group) - 1, min(scan, len(group))).round())]
        for video in picks:
            try:
                classes[decoder.decode_class(video)].append(video)
            except VideoError as exc:
                unreadable.append(f"{video.path}: {exc.reason}")
    return dict(sorted(classes.items())), unreadable


def check_decoding(
    decoder: Decoder, videos: Sequence[VideoInfo], scan: int = 64, per_class: int = 2
) -> list[ClassCheck]:
    """Route every decode class found among `videos` (`classify`): those `auto` sends to DALI are probed on up
    to `per_class` of their videos (`Decoder.check_class`), the others are the CPU decoder's by the codec rule
    (PyAV's, libjpeg-turbo's for frame sources)."""
    classes, unreadable = classify(decoder, videos, scan)
    for line in unreadable:
        log.warning("cannot classify %s", line)
    checks = []
    for cls, members in classes.items():
        if cls.codec in decoder.dali_codecs:
            route = decoder.routes.get(cls) or decoder.check_class(cls, members[:per_class])
            checks.append(ClassCheck(cls, len(members), "dali", route))
        else:
            cpu = cpu_backend(cls.codec)
            route = Route(cpu, reason=f"the reference: {cls.codec} is {cpu}'s on {decoder.device.type}")
            checks.append(ClassCheck(cls, len(members), cpu, route))
    return checks


def check_rendering(generator: Checked, samples: int = 8, seed: int = 0) -> RenderCheck:
    """Render `samples` planned samples with the tensor code on the generator's device and with the CPU
    kernels, from the same decoded frames, and compare."""
    keys = [SampleKey(seed, 0, i) for i in range(samples)]
    plans = generator.plan_many(keys)
    frames = generator.decode(plans, whole_frames=True)
    batch = PlanBatch.stack(plans)
    crop = generator.config.clip.crop_size
    on_device = render_clips(batch, frames, crop).cpu()
    on_cpu = render_clips_cpu(batch, [f.cpu() for f in frames], crop)
    diff = (on_device.int() - on_cpu.int()).abs()
    per_sample_max = diff.flatten(1).amax(1)
    per_sample_mean = diff.flatten(1).float().mean(1)
    differing = [
        tuple(int(v) for v in batch.keys[i])
        for i in range(len(plans))
        if per_sample_max[i] > MAX_RENDER_DIFF or per_sample_mean[i] > MAX_RENDER_MEAN
    ]
    return RenderCheck(
        device=str(generator.device),
        samples=len(plans),
        equal=int((per_sample_max == 0).sum()),
        max_diff=int(diff.max()),
        mean_diff=float(per_sample_mean.max()),
        min_psnr=min(psnr(a.numpy(), b.numpy()) for a, b in zip(on_device, on_cpu)),
        differing=differing,
    )


def verify(generator: Checked, scan: int = 64, per_class: int = 2, samples: int = 8) -> Report:
    """Every check, on the generator's device and decoder."""
    started = time.monotonic()
    classes = check_decoding(generator.decoder, generator.videos, scan, per_class)
    render = check_rendering(generator, samples) if samples else None
    return Report(str(generator.device), classes, render, time.monotonic() - started)


def startup_check(generator: Checked, check_renderer: bool = True) -> Report:
    """What a replica or an in-process generator runs before it serves on CUDA (bounded: a few videos per codec
    and file type, two probes per class, eight rendered samples); raises RendererMismatch, naming the
    samples and the override, when the renderer differs."""
    report = verify(generator, scan=8, per_class=2, samples=8 if check_renderer else 0)
    summary = ", ".join(f"{c.cls.label}: {c.route.name}" for c in report.classes)
    log.info("self-check on %s in %.1f s: %s", generator.device, report.seconds, summary)
    if report.render is not None and not report.render.ok:
        raise RendererMismatch(
            f"the CtP renderer on {generator.device} does not render what the CPU kernels render "
            f"({report.render.summary()}): refusing to serve wrong samples. Report it with the output of "
            f"`ctp-datagen verify --device {generator.device}`; {RENDER_CHECK_FLAG} (trainer: "
            "run.render_check=false) serves them anyway"
        )
    return report
