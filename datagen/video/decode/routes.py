"""Decode classes and their routes: which backend decodes a kind of stream, decided by comparing it with PyAV.

A GPU decoder's quirks depend on what kind of stream it is given: DALI's NVDEC path numbers frames by sorted
packet timestamps and unpacks DivX's packed B-frames only in AVI files, NVDEC's parser may treat not-coded
MPEG-4 VOPs otherwise than FFmpeg, a pixel format may be one it lacks. A review finds some of these, never all.
So videos fall into decode classes — codec, container, pixel format, packing, reordering, timestamp order:
what the packet index knows that changes a decoder's behaviour — and before a backend other than PyAV decodes
a class for real it decodes one clip of it (`probe_indices`) that PyAV decodes too; the frames must agree
(`compare_frames`), else the class is routed to PyAV. A wrong frame raises nothing, so nothing else would
notice.

Tolerance (`compare_frames`): every frame within MIN_FRAME_PSNR of PyAV's and none closer to another frame
of the video than to its own. Colour conversion differs by a level or two (DALI-CPU vs PyAV: at most 1) and
an IEEE-1180 IDCT by ±1 per block; a wrong or shifted frame differs by far more: adjacent frames of the
shared footage are 17–32 dB apart (median per video), and where two are nearly alike the frame must still be
nearest its own.

Frame sources (zips and folders of JPEGs) are classes of their own, probed the same way with libjpeg-turbo
in PyAV's place (`frame_decoder.py`).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable

import numpy as np

from datagen.video.container import VideoInfo
from datagen.video.packet_index import PacketIndex

MIN_FRAME_PSNR = 35.0  # dB against PyAV's frame
_SHIFT_MARGIN = 0.5  # dB: a frame this much nearer another frame than its own is misplaced
_ALIKE_PSNR = 50.0  # dB: two frames of the video this alike cannot tell a shift


@dataclasses.dataclass(frozen=True, order=True)
class DecodeClass:
    """The kind of stream a decoder sees (`of`): videos of one class are decoded alike by a backend."""

    codec: str
    container: str
    pixel_format: str
    packing: str  # "", "packed-B", "placeholders" (not-coded MPEG-4 VOPs), "packed-B+placeholders"
    order: str  # "in order" | "reordered"; and the timestamps: "" (display order), "unordered stamps", "stamps?"
    stored: bool = True  # its packets lie in the file as the container says (what a segment is made of)

    @classmethod
    def of(cls, video: VideoInfo, index: PacketIndex) -> DecodeClass:
        traits = index.traits
        packing = "+".join(p for p, on in (("packed-B", traits.packed), ("placeholders", traits.placeholders)) if on)
        stamps = {True: "", False: ", unordered stamps", None: ", stamps?"}[index.timestamps_in_display_order]
        order = ("reordered" if traits.reordered else "in order") + stamps
        return cls(video.codec, traits.container, traits.pixel_format, packing, order, index.stored is not None)

    @property
    def label(self) -> str:
        parts = [self.codec, self.container, self.pixel_format, self.packing, self.order]
        return "/".join(p for p in parts if p) + ("" if self.stored else "/packets not in place")

    def unfit_for_dali(self) -> str | None:
        """Why DALI cannot be fed this class at all (`dali.clip_segment`), or None."""
        if not self.stored:
            return "its packets are not where the container says: no segment can be made for DALI"
        if "packed-B" in self.packing and "stamps?" in self.order:
            return "packed B-frames in a pattern the packet index does not parse: DALI would number them wrongly"
        return None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A backend's frames of one clip against PyAV's (`compare_frames`)."""

    frames: int
    equal: int  # frames identical to PyAV's
    min_psnr: float  # dB, the worst frame's
    max_diff: int  # levels
    misplaced: list[int]  # frame indices nearer another frame of the video than their own

    @property
    def ok(self) -> bool:
        return self.frames > 0 and self.min_psnr >= MIN_FRAME_PSNR and not self.misplaced

    def summary(self) -> str:
        psnr = "inf" if math.isinf(self.min_psnr) else f"{self.min_psnr:.1f}"
        text = f"{self.equal}/{self.frames} frames equal, min PSNR {psnr} dB, max diff {self.max_diff}"
        return text + (f", frames {self.misplaced[:5]} misplaced" if self.misplaced else "")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def probe_indices(num_frames: int) -> np.ndarray:
    """The frames a probe decodes, sorted: the first, a CtP-like clip (16 frames at stride 2) from the middle,
    a run of consecutive ones in it, and the last — across GOP boundaries and reordered pictures."""
    start = max(0, num_frames // 2 - 16)
    picks = np.r_[0, start + 2 * np.arange(16), start + 7 + np.arange(4), num_frames - 1]
    return np.unique(np.clip(picks, 0, num_frames - 1))


def reference_indices(indices: np.ndarray, num_frames: int) -> np.ndarray:
    """The frames PyAV decodes to judge a probe: each probed one and its neighbours."""
    return np.unique(np.clip(np.r_[indices - 1, indices, indices + 1], 0, num_frames - 1))


def compare_frames(
    candidate: np.ndarray, indices: np.ndarray, reference: np.ndarray, reference_indices: np.ndarray
) -> Comparison:
    """`candidate[j]`, a backend's frame `indices[j]`, against PyAV's frames `reference` (of `reference_indices`,
    which hold each index and its neighbours)."""
    if candidate.shape[1:] != reference.shape[1:] or len(candidate) != len(indices) or not len(indices):
        return Comparison(len(indices), 0, -math.inf, 255, list(map(int, indices)))
    position = {int(f): k for k, f in enumerate(reference_indices)}
    equal, worst, misplaced = 0, math.inf, []
    for frame, got in zip(indices.tolist(), candidate):
        own = reference[position[frame]]
        quality = psnr(got, own)
        equal += quality == math.inf
        worst = min(worst, quality)
        for other in (frame - 1, frame + 1):
            if other in position and other != frame:
                theirs = reference[position[other]]
                if psnr(got, theirs) > quality + _SHIFT_MARGIN and psnr(own, theirs) < _ALIKE_PSNR:
                    misplaced.append(frame)
                    break
    diff = int(np.abs(candidate.astype(np.int16) - reference[[position[f] for f in indices.tolist()]]).max())
    return Comparison(len(indices), equal, worst, diff, misplaced)


@dataclasses.dataclass(frozen=True)
class Route:
    """How a decode class is decoded, and why."""

    backend: str  # "dali" | "pyav" | "libjpeg-turbo" (frame sources' CPU decoder)
    trim: bool = True  # DALI is fed trimmed segments (`PacketIndex.span`)
    verified: bool = False  # a probe compared it with PyAV
    reason: str = ""  # the probe's numbers, or the rule that chose it
    video: str = ""  # the video the probe decoded

    @property
    def name(self) -> str:
        return self.backend + ("" if self.backend != "dali" or self.trim else " (whole segments)")


class DecodeRoutes:
    """The routes of the decode classes met so far (thread-safe); `listeners` hear of each new one."""

    def __init__(self) -> None:
        self._routes: dict[DecodeClass, Route] = {}
        self._lock = threading.Lock()
        self.listeners: list[Callable[[DecodeClass, Route], None]] = []

    def get(self, cls: DecodeClass) -> Route | None:
        with self._lock:
            return self._routes.get(cls)

    def set(self, cls: DecodeClass, route: Route) -> None:
        with self._lock:
            self._routes[cls] = route
        for listener in self.listeners:
            listener(cls, route)

    def items(self) -> list[tuple[DecodeClass, Route]]:
        with self._lock:
            return sorted(self._routes.items())

    def table(self) -> dict[str, str]:
        """Class label → route name: what a replica publishes."""
        return {cls.label: route.name for cls, route in self.items()}
