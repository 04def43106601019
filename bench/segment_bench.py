"""What DALI is fed per clip: the Matroska segment written from the packet index, against the remux it replaced.

    python -m bench.segment_bench [--clips 64] [--threads 1 2] [--repeats 5]

Per dataset of the shared footage (UCF-101 and HMDB-51 MPEG-4 AVIs, Kinetics H.264 MP4s), CtP clips (16
frames, stride 1-5 with jitter): ms per clip to make the segment, and pictures in it (what NVDEC decodes).
The baseline, kept here, is the remux of the earlier release: open the container, seek to the key frame,
copy the packets through FFmpeg's Matroska muxer, one clip at a time on the decode thread. Ours reads the
packets with one `pread` and writes the file itself (`datagen.video.decode.dali.clip_segment`), trimmed or whole, and runs
in the decoder's thread pool (`--threads`: clips in flight at once). Ratios against the baseline, same run.
"""

from __future__ import annotations

import argparse
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np

from common.atomic import write_json
from common.tables import format_table
from datagen.video.container import VideoInfo, open_video, picture_packets
from datagen.video.decode.dali import clip_segment
from datagen.video.manifest import resolve_videos
from datagen.video.packet_index import PacketIndex, packet_timestamp

SHARED = Path(__file__).resolve().parents[2] / "shared" / "videos"


def container_remux(path: str, index: PacketIndex, first: int, last: int) -> tuple[bytes, int]:
    """The earlier release's segment: from the key frame shown at or before `first` to one packet past the last
    shown at or before `last` (by timestamp order), copied through FFmpeg's muxer; (bytes, pictures)."""
    start = index.key_packet(first)
    before = np.flatnonzero(index.shown <= last)
    stop = min(max(int(before[-1]) if before.size else start, start) + 1, len(index.shown) - 1)
    positions = np.arange(start, stop + 1)
    positions = positions[index.shown[positions] >= index.shown[start]]
    wanted = set(positions.tolist())
    out = io.BytesIO()
    with open_video(path) as src, av.open(out, "w", format="matroska") as dst:
        stream = src.streams.video[0]
        target = dst.add_stream_from_template(stream)
        position: int | None = 0
        if start > 0 and index.timestamps[start] is not None:
            src.seek(index.timestamps[start], backward=True, any_frame=False, stream=stream)
            position = None
        for packet in picture_packets(src):
            if position is None:
                if not (packet.is_keyframe and packet_timestamp(packet) == index.timestamps[start]):
                    continue
                position = start
            if position in wanted:
                packet.stream = target
                dst.mux(packet)
            position += 1
            if position > stop:
                break
    return out.getvalue(), len(positions)


def ctp_clips(videos: list[VideoInfo], count: int, seed: int = 0) -> list[tuple[VideoInfo, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        video = videos[i % len(videos)]
        stride = int(rng.integers(1, 6))
        start = int(rng.integers(0, max(1, video.num_frames - 16 * stride)))
        frames = start + np.arange(16) * stride + rng.integers(0, stride, 16)
        out.append((video, np.unique(np.clip(frames, 0, video.num_frames - 1))))
    return out


def timed(fn, items: list, threads: int, repeats: int) -> tuple[float, list]:
    """ms per item of `fn` over `items`, `threads` at once, the best of `repeats` passes; and the results."""
    best, results = float("inf"), []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            started = time.perf_counter()
            if threads == 1:
                results = [fn(*item) for item in items]
            else:
                results = list(pool.map(lambda item: fn(*item), items))
            best = min(best, (time.perf_counter() - started) * 1000 / len(items))
    return best, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="clips per dataset")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="clips in flight (ours)")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the clips; the best is reported")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args()
    rows = []
    for name, folder in (("UCF-101", "ucf101"), ("HMDB-51", "hmdb51"), ("Kinetics", "kinetics")):
        videos = resolve_videos([SHARED / folder])
        indexes = {v.path: PacketIndex.of(v.path) for v in videos}
        clips = ctp_clips(videos, args.clips)
        spans = [(v.path, indexes[v.path], int(f[0]), int(f[-1])) for v, f in clips]
        old_ms, old = timed(container_remux, spans, 1, args.repeats)
        old_pictures = np.mean([n for _, n in old])
        rows.append((name, "container remux (before)", 1, f"{old_ms:.2f}", "1.00x", f"{old_pictures:.1f}"))
        for trim in (False, True):
            for threads in args.threads:
                requests = [(v.path, indexes[v.path], f, trim) for v, f in clips]
                ms, segments = timed(clip_segment, requests, threads, args.repeats)
                pictures = np.mean([len(s.frames) for s in segments])
                label = f"Matroska from the index, {'trimmed' if trim else 'whole'}"
                rows.append((name, label, threads, f"{ms:.2f}", f"{old_ms / ms:.2f}x", f"{pictures:.1f}"))
    headers = ("dataset", "segment", "threads", "ms/clip", "vs before", "pictures/clip")
    print(format_table(rows, headers, align="<<>>>>"))
    if args.json:
        write_json(
            args.json, {"clips": args.clips, "repeats": args.repeats, "rows": [dict(zip(headers, r)) for r in rows]}
        )


if __name__ == "__main__":
    main()
