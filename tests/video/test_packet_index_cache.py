"""The packet index kept on disk: written once per video version, read back equal, never trusted when stale
or unreadable, and left in memory only where the folder cannot be written."""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import pytest

from datagen.video import packet_index_cache
from datagen.video.manifest import resolve_videos
from datagen.video.packet_index import PacketIndex
from datagen.video.packet_index_cache import PacketIndexCache, _from_bytes, _to_bytes


def assert_same(a: PacketIndex, b: PacketIndex) -> None:
    for field in dataclasses.fields(PacketIndex):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name == "stored" and x is not None and y is not None:
            assert x.setup == y.setup
            for name in ("offset", "size", "pts", "dts"):
                assert np.array_equal(getattr(x, name), getattr(y, name)), name
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y) and x.dtype == y.dtype, field.name
        else:
            assert x == y, field.name


def test_every_kind_of_index_reads_back_equal(shared_videos, demo_dir):
    """MPEG-4 AVIs (packed B-frames, open GOPs), H.264 MP4s and VP9 WebMs (not parsed: no display order,
    timestamps that may be missing), with their stream traits."""
    videos = resolve_videos([shared_videos, demo_dir], min_frames=1)
    kinds = set()
    for video in videos:
        index = PacketIndex.of(video.path)
        assert_same(_from_bytes(_to_bytes(index)), index)
        kinds.add((video.codec, index.stored is not None, index.closed, index.traits.packed))
    assert {
        ("mpeg4", True, True, False),
        ("mpeg4", True, False, True),
        ("h264", True, True, False),
        ("vp9", True, False, False),
    } <= kinds


def test_a_video_is_indexed_once_per_machine(shared_videos, tmp_path, monkeypatch):
    video = str(shared_videos / "ucf101" / "v_SoccerJuggling_g23_c01.avi")
    first = PacketIndexCache(directory=tmp_path).get(video)
    (stored,) = tmp_path.glob("*.idx")

    def no_demux(path):
        raise AssertionError(f"{path} was indexed again")

    monkeypatch.setattr(PacketIndex, "of", no_demux)
    again = PacketIndexCache(directory=tmp_path).get(video)  # another process, as it were
    assert_same(again, first)
    assert list(tmp_path.glob("*.idx")) == [stored]


def test_a_changed_or_unreadable_index_is_made_again(shared_videos, tmp_path, caplog):
    """A video rewritten in place is another version: indexed anew. An index of another release's format is
    made again without a word (after an upgrade every video's is); a file that is not an index is warned
    about and replaced (a killed writer leaves none: files are renamed into place when complete)."""
    video = tmp_path / "clip.avi"
    video.write_bytes((shared_videos / "ucf101" / "v_SoccerJuggling_g23_c01.avi").read_bytes())
    folder = tmp_path / "cache"
    first = PacketIndexCache(directory=folder).get(str(video))

    os.utime(video, ns=(0, 1))  # the same bytes, another modification time: another version
    PacketIndexCache(directory=folder).get(str(video))
    assert len(list(folder.glob("*.idx"))) == 2

    stored = PacketIndexCache(directory=folder)._file(str(video))
    assert stored is not None and stored.is_file()
    for damaged, warned in ((b"ctp-packet-index 1\n\x02\x00\x00\x00{}", False), (b"\x00" * 64, True)):
        stored.write_bytes(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="datagen.video.packet_index_cache"):
            again = PacketIndexCache(directory=folder).get(str(video))
        assert ("not a readable packet index" in caplog.text) == warned, caplog.text
        assert_same(again, first)
        assert_same(_from_bytes(stored.read_bytes()), first)


def test_a_folder_that_cannot_be_written_leaves_the_indexes_in_memory(shared_videos, tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    cache = PacketIndexCache(directory=blocked / "indexes")
    videos = [
        str(shared_videos / "ucf101" / name)
        for name in ("v_SoccerJuggling_g23_c01.avi", "v_SoccerJuggling_g24_c01.avi")
    ]
    with caplog.at_level(logging.WARNING, logger="datagen.video.packet_index_cache"):
        for video in videos:
            assert cache.get(video).stored is not None
    assert caplog.text.count("set CTP_CACHE_DIR to a writable folder") == 1
    assert cache.directory is None


def test_the_folder_defaults_to_ctp_cache_dir_then_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CTP_CACHE_DIR", str(tmp_path))
    assert packet_index_cache.default_directory() == tmp_path / "packet-indexes"
    monkeypatch.delenv("CTP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert packet_index_cache.default_directory() == tmp_path / "xdg" / "ctp-video" / "packet-indexes"
    assert PacketIndexCache(persist=False).directory is None


@pytest.mark.parametrize("persist", [True, False])
def test_memory_holds_at_most_size_indexes(shared_videos, tmp_path, persist):
    cache = PacketIndexCache(size=1, directory=tmp_path, persist=persist)
    for name in ("v_SoccerJuggling_g23_c01.avi", "v_SoccerJuggling_g24_c01.avi"):
        cache.get(str(shared_videos / "ucf101" / name))
    assert list(cache._indexes) == [str(shared_videos / "ucf101" / "v_SoccerJuggling_g24_c01.avi")]
    assert len(list(tmp_path.glob("*.idx"))) == (2 if persist else 0)
