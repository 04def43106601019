"""The Matroska writer: FFmpeg's demuxer reads back every packet, timestamp and key flag, the stream's
parameters, its Cues (seeking) and clusters split where 16-bit block offsets end; the pictures decode as
those of the original file."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from datagen.video.container import open_video, picture_packets
from datagen.video.decode.pyav import frame_to_rgb
from datagen.video.manifest import probe
from datagen.video.matroska import CODEC_IDS, Track, matroska


def original(path) -> tuple[Track, list[bytes], list[int], list[bool]]:
    video = probe(path)
    with open_video(path) as container:
        context = container.streams.video[0].codec_context
        packets = list(picture_packets(container))
        track = Track(video.codec, video.width, video.height, bytes(context.extradata or b""))
    pts = np.array([p.pts for p in packets])
    return track, [bytes(p) for p in packets], np.argsort(np.argsort(pts)).tolist(), [p.is_keyframe for p in packets]


@pytest.fixture(scope="module")
def codec_videos(tmp_path_factory):
    """One short demo video per codec the writer names."""
    from datagen.video.synthetic import synthesize_demo

    codecs = ("vp9", "vp8", "mpeg4", "h264", "hevc", "mjpeg", "av1")
    out = tmp_path_factory.mktemp("codecs")
    return synthesize_demo(out, num_videos=len(codecs), seconds=1.6, codecs=codecs)


def test_every_packet_comes_back_with_its_timestamp_key_flag_and_stream_parameters(codec_videos):
    for path in codec_videos:
        track, packets, order, keys = original(path)
        assert track.codec in CODEC_IDS, path
        stamps = [40 * o for o in order]
        data = matroska(track, packets, stamps, keys)
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.codec.canonical_name == track.codec
            assert (stream.codec_context.width, stream.codec_context.height) == (track.width, track.height)
            assert bytes(stream.codec_context.extradata or b"") == track.codec_private
            back = [p for p in container.demux(stream) if p.size]
        assert [bytes(p) for p in back] == packets, path
        assert [p.pts for p in back] == stamps, path  # milliseconds, the stream's time base
        assert [p.is_keyframe for p in back] == keys, path
        with av.open(io.BytesIO(data)) as container, open_video(path) as source:
            ours = [frame_to_rgb(f, probe(path)) for f in container.decode(video=0)]
            theirs = [frame_to_rgb(f, probe(path)) for f in source.decode(video=0)]
        assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs)), path


def test_seeking_uses_the_cues_and_lands_on_a_key_frame(codec_videos):
    path = next(p for p in codec_videos if p.suffix == ".mp4" and "h264" in p.name)
    track, packets, order, keys = original(path)
    stamps = [40 * o for o in order]
    with av.open(io.BytesIO(matroska(track, packets, stamps, keys))) as container:
        stream = container.streams.video[0]
        key_stamps = [s for s, k in zip(stamps, keys) if k]
        assert len(key_stamps) >= 2
        container.seek(key_stamps[-1] + 40, stream=stream, backward=True)
        first = next(p for p in container.demux(stream) if p.size)
        assert first.is_keyframe and first.pts == key_stamps[-1]


def test_clusters_are_split_where_block_offsets_would_overflow(codec_videos):
    """Offsets are signed 16-bit milliseconds: timestamps 20 s apart within one GOP need several clusters."""
    path = next(p for p in codec_videos if "vp9" in p.name)
    track, packets, _, keys = original(path)
    stamps = [20_000 * i for i in range(len(packets))]
    with av.open(io.BytesIO(matroska(track, packets, stamps, [True] + [False] * (len(keys) - 1)))) as container:
        back = [p.pts for p in container.demux(container.streams.video[0]) if p.size]
    assert back == stamps


def test_what_cannot_be_written_is_refused():
    with pytest.raises(ValueError, match="no Matroska codec ID"):
        matroska(Track("mpeg2video", 16, 16), [b"x"], [0], [True])
    with pytest.raises(ValueError, match="needs packets"):
        matroska(Track("vp9", 16, 16), [], [], [])
    assert set(CODEC_IDS) >= {"h264", "hevc", "mpeg4", "vp8", "vp9", "av1", "mjpeg"}
