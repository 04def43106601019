"""The per-sample baseline: CtP generation written the way research code usually does it.

NumPy + OpenCV, one sample at a time, one cv2.resize per patch per frame, per-frame alpha blending, per-frame
colour conversion. It renders the same `SamplePlan`s as the batched generator (so both do the same work;
drawing the random parameters is left out of the baseline's time and kept in the generator's), and exists
only to be measured against: see bench/generation_bench.py.
"""

from __future__ import annotations

import cv2
import numpy as np

from datagen.ctp.plan import ELLIPSE, RHOMBUS, SamplePlan


def reference_sample(frames: np.ndarray, plan: SamplePlan, crop_size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 decoded frames → (T, S, S, 3) uint8 CtP clip."""
    c, p, col = plan.clip, plan.patches, plan.colour
    top, left = c.crop
    crops = []
    for frame in frames:
        resized = cv2.resize(frame, (c.resized[1], c.resized[0]), interpolation=cv2.INTER_LINEAR)
        crop = resized[top : top + crop_size, left : left + crop_size]
        crops.append(crop[:, ::-1] if c.flip else crop)
    clip = np.stack(crops).astype(np.float32)
    clean = clip.copy()

    for k in p.order:
        sx1, sy1, sx2, sy2 = p.boxes[k, p.source_frame[k]].astype(int)
        patch = clean[p.source_frame[k], sy1:sy2, sx1:sx2]
        for t in range(len(clip)):
            if not p.visible[k, t]:
                continue
            x1, y1, x2, y2 = p.boxes[k, t].astype(int)
            w, h = x2 - x1, y2 - y1
            resized_patch = cv2.resize(patch, (w, h), interpolation=cv2.INTER_LINEAR)
            ys, xs = np.mgrid[0:h, 0:w]
            dx, dy = np.abs((xs + 0.5) / w - 0.5), np.abs((ys + 0.5) / h - 0.5)
            if p.shape[k] == ELLIPSE:
                dist = np.sqrt(dx**2 + dy**2)
            elif p.shape[k] == RHOMBUS:
                dist = dx + dy
            else:
                dist = np.maximum(dx, dy)
            if p.soft_start[k] < 0.5:
                alpha = np.clip((0.5 - dist) / (0.5 - p.soft_start[k]), 0, 1)
            else:
                alpha = (dist < 0.5).astype(np.float64)
            alpha = (alpha * p.opacity[k, t])[..., None]
            region = clip[t, y1:y2, x1:x2]
            clip[t, y1:y2, x1:x2] = region * (1 - alpha) + resized_patch * alpha

    out = []
    for t, frame in enumerate(clip):
        if col.hue_saturation:
            hsv = cv2.cvtColor(np.clip(frame, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
            hsv[..., 0] = np.mod(hsv[..., 0] + col.hue_shift, 180)
            hsv[..., 1] = np.clip(hsv[..., 1] * col.saturation, 0, 255)
            frame = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
        frame = np.clip(frame + np.float32(col.brightness[t]), 0, 255)
        frame = np.clip(frame * np.float32(col.contrast[t]), 0, 255)
        out.append(np.round(frame).astype(np.uint8))
    return np.stack(out)
