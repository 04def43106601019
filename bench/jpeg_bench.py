"""Which CPU JPEG decoder frame sources use, and what a clip of JPEG frames costs against one of MPEG-4.

    python -m bench.jpeg_bench [--videos PATH...] [--quality 95] [--clips 64] [--repeats 5] [--json FILE]

The frames of the shared UCF-101 and HMDB-51 videos (PyAV's decode) are encoded as JPEG once (OpenCV, the
given quality; 95 is OpenCV's default and the official-style zips' of bench/end_to_end_bench.py). First
table: ms per frame of each library that wraps libjpeg-turbo — OpenCV's `imdecode` (BGR, and RGB after a
`cvtColor` as the official code's path), PIL, simplejpeg (a new array; into the caller's RGB or RGBX array,
as `datagen/video/jpeg.py` decodes), and DALI-CPU's `fn.decoders.image` (a batch of 64 per run) — with the largest
difference of each from simplejpeg's pixels. Second table: ms per 16-frame CtP clip (the frames a
`Generator` plans) read from the official-style zips the official way (`zipfile` + `imdecode` + `cvtColor`
+ stack), by `FrameDecoder` (pread + simplejpeg into the RGBX clip), and decoded from the video files by
PyAV (seek + decode, the pictures a clip needs). Calls interleaved, best of the repeats, one thread.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import zipfile
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import simplejpeg
import torch
from PIL import Image

from bench.end_to_end_bench import read_clip
from bench.timing import interleaved_best
from common.atomic import write_json
from common.tables import format_table
from datagen.ctp.rng import SampleKey
from datagen.ctp.spec import GenerationConfig
from datagen.generator import Generator
from datagen.video.decode.dali_images import DaliJpegDecoder
from datagen.video.decode.decoder import Decoder
from datagen.video.decode.frame_decoder import FrameDecoder
from datagen.video.frames import OFFICIAL_FMT
from datagen.video.manifest import probe, resolve_videos

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"


def decoders(jpegs: list[bytes]) -> dict:
    """name → a function decoding every picture (returning the RGB(X) arrays)."""
    shapes = [simplejpeg.decode_jpeg_header(j)[:2] for j in jpegs]
    rgb = [np.empty((h, w, 3), np.uint8) for h, w in shapes]
    rgbx = [np.empty((h, w, 4), np.uint8) for h, w in shapes]
    arrays = [np.frombuffer(j, np.uint8) for j in jpegs]
    dali = DaliJpegDecoder(torch.device("cpu"), batch_size=64, num_threads=1)
    targets = [torch.empty((h, w, 3), dtype=torch.uint8) for h, w in shapes]

    def imdecode(j: bytes) -> np.ndarray:
        return cast(np.ndarray, cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR))

    def into(out: list[np.ndarray], space: str) -> list[np.ndarray]:
        for j, o in zip(jpegs, out):
            simplejpeg.decode_jpeg(j, space, buffer=o)
        return out

    def by_dali() -> list[np.ndarray]:
        dali.decode(arrays, targets)
        return [t.numpy() for t in targets]

    return {
        "OpenCV imdecode (BGR)": lambda: [imdecode(j)[..., ::-1] for j in jpegs],
        "OpenCV imdecode + cvtColor (RGB, the official path)": lambda: [
            cv2.cvtColor(imdecode(j), cv2.COLOR_BGR2RGB) for j in jpegs
        ],
        "PIL (RGB)": lambda: [np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs],
        "simplejpeg, a new RGB array": lambda: [simplejpeg.decode_jpeg(j, "RGB") for j in jpegs],
        "simplejpeg into the caller's RGB array": lambda: into(rgb, "RGB"),
        "simplejpeg into the caller's RGBX array (ours)": lambda: into(rgbx, "RGBX"),
        "DALI-CPU fn.decoders.image, batches of 64": by_dali,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="+", default=[str(SHARED / "ucf101"), str(SHARED / "hmdb51")])
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    videos = resolve_videos(args.videos)
    pyav = Decoder("cpu", "pyav", num_threads=1)
    flags = [cv2.IMWRITE_JPEG_QUALITY, args.quality]
    with tempfile.TemporaryDirectory() as tmp:
        zips = []
        for k, video in enumerate(videos):
            frames = pyav.decode(video, np.arange(video.num_frames)).numpy()
            zips.append(Path(tmp) / f"{k:03d}.zip")
            with zipfile.ZipFile(zips[-1], "w", zipfile.ZIP_STORED) as z:
                for i, frame in enumerate(frames):
                    z.writestr(OFFICIAL_FMT.format(i + 1), cv2.imencode(".jpg", frame[..., ::-1], flags)[1].tobytes())
        sources = [probe(z) for z in zips]
        archives = [zipfile.ZipFile(z) for z in zips]
        jpegs = [archives[0].read(n) for n in archives[0].namelist()[::4]] + [
            archives[-1].read(n) for n in archives[-1].namelist()[::4]
        ]
        seconds, results = interleaved_best(decoders(jpegs), args.repeats)
        reference = results["simplejpeg into the caller's RGB array"]
        rows = [
            (
                name,
                f"{seconds[name] / len(jpegs) * 1e3:.3f}",
                max(
                    int(np.abs(np.asarray(a)[..., :3].astype(int) - b).max()) for a, b in zip(results[name], reference)
                ),
            )
            for name in seconds
        ]
        sizes = sorted({f"{v.width}x{v.height}" for v in videos})
        print(f"{len(jpegs)} JPEG frames ({', '.join(sizes)}), quality {args.quality}, one thread")
        print(format_table(rows, ("decoder (libjpeg-turbo inside each)", "ms/frame", "max diff")))

        plans = Generator(videos, GenerationConfig(), "cpu", pyav).plan_many(
            [SampleKey(0, 0, i) for i in range(args.clips)]
        )
        decoder = FrameDecoder(torch.device("cpu"))

        def official() -> None:
            for p in plans:
                read_clip(archives[p.video], p.clip.frame_indices)

        def ours() -> None:
            for p in plans:
                decoder.decode(sources[p.video], p.clip.frame_indices, channels=4)

        def from_video() -> None:
            for p in plans:
                pyav.pyav.decode(videos[p.video], p.clip.frame_indices, channels=4)

        clips = {
            "official: zipfile + imdecode + cvtColor + stack": official,
            "ours: FrameDecoder (pread + simplejpeg into the RGBX clip)": ours,
            "ours from the video files: PyAV (MPEG-4 Part 2)": from_video,
        }
        pictures = pyav.pyav.frames_decoded
        clip_seconds, _ = interleaved_best(clips, args.repeats)
        pictures = (pyav.pyav.frames_decoded - pictures) / (args.repeats + 1) / len(plans)
        per_clip = {name: s / len(plans) * 1e3 for name, s in clip_seconds.items()}
        first = next(iter(per_clip.values()))
        print(f"\n{len(plans)} CtP clips of 16 frames (PyAV decoded {pictures:.1f} pictures per clip)")
        print(
            format_table(
                [(n, f"{v:.2f}", f"{first / v:.2f}x") for n, v in per_clip.items()], ("clip", "ms", "vs official")
            )
        )
    if args.json:
        write_json(
            args.json,
            {
                "frames": len(jpegs),
                "quality": args.quality,
                "ms_per_frame": {n: seconds[n] / len(jpegs) * 1e3 for n in seconds},
                "max_diff_from_simplejpeg": {r[0]: r[2] for r in rows},
                "clips": len(plans),
                "ms_per_clip": per_clip,
                "pyav_pictures_per_clip": pictures,
            },
        )


if __name__ == "__main__":
    main()
