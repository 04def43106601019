"""The packet index's stream traits, which decode classes are made of, and its stored packets for every codec."""

from __future__ import annotations

import numpy as np

from datagen.video.manifest import resolve_videos
from datagen.video.packet_index import PacketIndex


def test_the_traits_of_the_shared_footage_and_the_demo_set(shared_videos, demo_dir):
    traits = {}
    for video in resolve_videos([shared_videos, demo_dir], min_frames=1):
        index = PacketIndex.of(video.path)
        traits[video.path.rsplit("/", 2)[-2] + "/" + video.codec] = (
            index.traits.container,
            index.traits.pixel_format,
            index.traits.packed,
            index.traits.reordered,
            index.timestamps_in_display_order,
        )
        assert index.stored is not None, video.path  # every codec's packets are found in the file
    assert traits["hmdb51/mpeg4"] == ("avi", "yuv420p", True, True, False)  # packed B-frames, stamps misleading
    assert traits["ucf101/mpeg4"] == ("avi", "yuv420p", False, False, True)  # Xvid without B-frames
    assert traits["kinetics/h264"] == ("mov", "yuv420p", False, True, True)  # B-frames, stamps in display order
    assert traits[next(k for k in traits if k.endswith("/vp9"))] == ("matroska", "yuv420p", False, False, None)


def test_stored_packets_are_the_demuxers_bytes_in_every_container(demo_dir):
    """Matroska's demuxer gives a block's position, a few bytes before its data: found all the same."""
    import av

    for video in resolve_videos([demo_dir]):
        index = PacketIndex.of(video.path)
        assert index.stored is not None
        with av.open(video.path) as container:
            packets = [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]
        positions = np.arange(len(packets))
        assert [bytes(b) for b in index.stored.read_bytes(video.path, positions)] == packets, video.path
