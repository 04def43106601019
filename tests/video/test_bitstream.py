"""Unpacking DivX's packed B-frames: what FFmpeg's `mpeg4_unpack_bframes` makes of HMDB-51's AVIs, one picture
per packet, and nothing else touched."""

from __future__ import annotations

import av
import pytest

from datagen.video.bitstream import VOP_START, unmark_packed, unpack_b_frames, vop_types
from datagen.video.container import open_video, picture_packets

HMDB = [
    "hmdb51/RATRACE_wave_f_nm_np1_fr_goo_37.avi",
    "hmdb51/SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi",
    "hmdb51/TrumanShow_wave_f_nm_np1_fr_med_26.avi",
    "hmdb51/hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi",
]


def packets(path) -> list[bytes]:
    with open_video(path) as container:
        return [bytes(p) for p in picture_packets(container)]


def ffmpeg_unpacked(path) -> list[bytes]:
    """What FFmpeg's own filter makes of the same packets."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        unpack = av.bitstream.BitStreamFilterContext("mpeg4_unpack_bframes", stream)
        return [bytes(q) for p in picture_packets(container) for q in unpack.filter(p)]


@pytest.mark.parametrize("name", HMDB)
def test_packed_b_frames_come_out_one_picture_per_packet_as_ffmpeg_unpacks_them(shared_videos, name):
    path = shared_videos / name
    packed = packets(path)
    assert any(len(vop_types(p)) == 2 for p in packed)  # the files are packed
    ours = list(unpack_b_frames(enumerate(packed)))
    assert len(ours) == len(packed)
    assert all(len(vop_types(p)) == 1 for p in ours)
    assert ours == ffmpeg_unpacked(path)


def test_a_packed_b_frame_without_its_placeholder_is_refused(shared_videos):
    packed = packets(shared_videos / HMDB[0])
    first = next(i for i, p in enumerate(packed) if len(vop_types(p)) == 2)
    with pytest.raises(ValueError, match="no placeholder"):
        list(unpack_b_frames([(first, packed[first]), (first + 1, packed[first + 2])]))
    # a gap where the placeholder was: its B-frame is simply not wanted
    assert list(unpack_b_frames([(first, packed[first]), (first + 2, packed[first + 2])]))[1] == packed[first + 2]


def test_the_packed_mark_comes_off_divx_user_data_and_nothing_else_changes():
    user = b"\x00\x00\x01\xb2DivX503b2816p"
    assert unmark_packed(user + VOP_START + b"\x10") == b"\x00\x00\x01\xb2DivX503b2816\x00" + VOP_START + b"\x10"
    xvid = b"\x00\x00\x01\xb2XviD0050" + VOP_START + b"\x10"
    assert unmark_packed(xvid) == xvid
    assert unmark_packed(VOP_START + b"p\x00") == VOP_START + b"p\x00"
