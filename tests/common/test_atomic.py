import pytest

from common.atomic import replacing, write_atomic, write_json


def test_writes_the_content_and_leaves_no_temporary_file(tmp_path):
    path = write_atomic(tmp_path / "sub" / "r.json", '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = write_atomic(tmp_path / "m.json", b"old")
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_what_a_killed_writer_left_is_replaced_by_the_next_write(tmp_path):
    leftover = tmp_path / ".v.mp4.part"
    leftover.write_bytes(b"half written")
    with replacing(tmp_path / "v.mp4") as tmp:
        assert tmp == leftover
        tmp.write_bytes(b"complete")
    assert (tmp_path / "v.mp4").read_bytes() == b"complete" and not leftover.exists()


def test_json_is_written_one_entry_per_line(tmp_path):
    path = write_json(tmp_path / "r.json", {"top1": 0.5, "per_class": {"a": 1}})
    assert path.read_text() == '{\n "top1": 0.5,\n "per_class": {\n  "a": 1\n }\n}\n'
