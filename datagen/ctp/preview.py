"""Pictures of generated clips: each trajectory's box in its own colour, dashed where the patch is hidden."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .batch import Batch

COLOURS = [(255, 64, 64), (64, 220, 64), (64, 128, 255), (255, 200, 0)]
SCALE = 2  # 112-px frames are small; draw at twice the size


def draw_frame(frame: np.ndarray, boxes: np.ndarray, visible: np.ndarray) -> Image.Image:
    """One (H, W, 3) frame with its K boxes (K, 4) drawn; hidden patches get a dashed outline."""
    image = Image.fromarray(frame).resize((frame.shape[1] * SCALE, frame.shape[0] * SCALE), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for k, (box, shown) in enumerate(zip(boxes * SCALE, visible)):
        colour = COLOURS[k % len(COLOURS)]
        x1, y1, x2, y2 = (float(v) for v in box)
        x2, y2 = x2 - 1, y2 - 1
        if shown:
            draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        else:
            for a, b in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
                _dashed_line(draw, a, b, colour)
    return image


def _dashed_line(
    draw: ImageDraw.ImageDraw,
    a: tuple[float, float],
    b: tuple[float, float],
    colour: tuple[int, int, int],
    dash: float = 6.0,
) -> None:
    length = float(np.hypot(b[0] - a[0], b[1] - a[1]))
    steps = max(int(length // dash), 1)
    for i in range(0, steps, 2):
        s, e = i / steps, min((i + 1) / steps, 1.0)
        draw.line(
            (a[0] + (b[0] - a[0]) * s, a[1] + (b[1] - a[1]) * s, a[0] + (b[0] - a[0]) * e, a[1] + (b[1] - a[1]) * e),
            fill=colour,
            width=2,
        )


def render_preview(batch: Batch, out_dir: str | Path, frame_step: int = 2) -> tuple[Path, Path]:
    """Write `grid.png` (a row per sample, every `frame_step`-th frame) and `clips.gif` (all samples animated)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clips, boxes, visible = batch.clips.cpu().numpy(), batch.boxes.cpu().numpy(), batch.visible.cpu().numpy()
    n, t = clips.shape[:2]
    drawn = [[draw_frame(clips[i, f], boxes[i, :, f], visible[i, :, f]) for f in range(t)] for i in range(n)]
    w, h = drawn[0][0].size
    cols = list(range(0, t, frame_step))
    grid = Image.new("RGB", (len(cols) * (w + 2), n * (h + 2)), (255, 255, 255))
    for i in range(n):
        for c, f in enumerate(cols):
            grid.paste(drawn[i][f], (c * (w + 2), i * (h + 2)))
    grid_path = out / "grid.png"
    grid.save(grid_path)

    per_row = min(n, 4)
    rows = -(-n // per_row)
    frames = []
    for f in range(t):
        sheet = Image.new("RGB", (per_row * (w + 2), rows * (h + 2)), (255, 255, 255))
        for i in range(n):
            sheet.paste(drawn[i][f], ((i % per_row) * (w + 2), (i // per_row) * (h + 2)))
        frames.append(sheet)
    gif_path = out / "clips.gif"
    frames[0].save(gif_path, save_all=True, append_images=frames[1:], duration=120, loop=0)
    return grid_path, gif_path
